"""How the cost of patentclip's image-retrieval evaluation grows with queries x database.

    python benchmarks/eval_scaling.py                        # CPU sizes (about a minute on 2 cores)
    python benchmarks/eval_scaling.py --device cuda --preset gpu   # up to 250K queries x 800K drawings, one GPU
    python benchmarks/eval_scaling.py --quick --json out.json      # tiny sizes, seconds (the suite's test)

For each size it times :func:`patentclip.evaluation.metrics.retrieval_metrics` exactly as ``patentclip-eval`` calls
it (prior-art filter on random grant dates, the query's own patent excluded, head/tail groups, chunks sized from
``--max-chunk-mb``), on random L2-normalised features, and prints seconds, nanoseconds per (query, database)
pair and the ratios to the smallest size: time ratio / pair ratio stays near 1 when the cost is linear in
Q x N (the sort adds a log N factor). It also fits ``time ~ (Q x N)^a`` and prints ``a`` (1 = linear), and the
peak memory (CUDA: the allocator's peak above the data; CPU: the peak growth of the process's RSS, sampled), which
the chunking bounds. ``--json`` writes the rows, the fit and a ``"summary"`` list (benchmarks/_common.py) that
``benchmarks/run_all.py`` collects; the exponent's target is <= 1.1 (linear in Q x N, up to the sort's log N).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch

from _common import at_most, parse_args, row, write_json

from patentclip.plugins.classes import head_class_mask

EXPONENT_TARGET = 1.1

PRESETS = {
    # (queries, database) pairs
    "cpu": [(500, 4000), (1000, 4000), (1000, 8000), (2000, 8000), (2000, 16000), (4000, 16000)],
    "gpu": [(10_000, 100_000), (20_000, 100_000), (20_000, 200_000), (50_000, 400_000), (100_000, 800_000),
            (250_000, 800_000)],
    "tiny": [(100, 400), (200, 400), (200, 800)],
}


def make_data(q: int, n: int, dim: int, classes: int, device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    # long-tailed class sizes, days over ~30 years, ~5 drawings per patent
    probs = 1.0 / torch.arange(1, classes + 1, dtype=torch.float64)
    qf = torch.nn.functional.normalize(torch.randn(q, dim, generator=g), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    ql = torch.multinomial(probs, q, replacement=True, generator=g)
    dl = torch.multinomial(probs, n, replacement=True, generator=g)
    qt = torch.randint(0, 11_000, (q,), generator=g)
    dt = torch.randint(0, 11_000, (n,), generator=g)
    qp = torch.randint(0, max(1, n // 5), (q,), generator=g)
    dp = torch.arange(n) // 5
    head = head_class_mask(probs)  # the class table's head/tail rule on the expected class frequencies
    hq = head[ql]
    to = lambda t: t.to(device)  # noqa: E731
    return dict(query_features=to(qf), db_features=to(dbf), query_labels=to(ql), db_labels=to(dl),
                query_times=to(qt), db_times=to(dt), query_patent_ids=to(qp), db_patent_ids=to(dp),
                label_groups={"head": hq, "tail": ~hq})


def rss_mb() -> float:
    """Current resident set size of this process (MiB), from /proc (Linux); else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def release_freed_memory() -> None:
    """Give memory freed by earlier runs back to the OS (glibc keeps it otherwise), so RSS growth is this run's."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Samples the process's RSS every few milliseconds in a thread; ``peak`` - ``start`` = growth during the block."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval

    def __enter__(self):
        import threading

        self.start = self.peak = rss_mb()
        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, rss_mb())
                time.sleep(self.interval)

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb())


def run_one(q, n, args, device):
    from patentclip.evaluation import metrics as M

    data = make_data(q, n, args.dim, args.classes, device)
    chunk = M.auto_chunk_size(n, args.max_chunk_mb << 20)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    release_freed_memory()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        r = M.retrieval_metrics(**data, ks=(5, 10), mrr_k=10, max_chunk_bytes=args.max_chunk_mb << 20)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    peak = ((torch.cuda.max_memory_allocated() - base) / 2 ** 20) if device.type == "cuda" else (mem.peak - mem.start)
    return {"queries": q, "database": n, "pairs": q * n, "seconds": dt, "ns_per_pair": 1e9 * dt / (q * n),
            "chunk_queries": chunk, "peak_mb": peak, "mAP": r["mAP"], "valid_queries": r["num_valid_queries"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="Sizes (default: cpu, or gpu on cuda).")
    p.add_argument("--sizes", default=None, help="Explicit sizes, e.g. '1000x4000,2000x8000'.")
    p.add_argument("--dim", type=int, default=512, help="Embedding size (ViT-B-32: 512).")
    p.add_argument("--classes", type=int, default=32, help="Classes (Locarno has 32).")
    p.add_argument("--max-chunk-mb", type=int, default=1024, help="Memory budget of one chunk (patentclip-eval's).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--json", "--out", dest="json", default=None,
                   help="Write the rows, the fit and a \"summary\" list as JSON here (--out: the old name).")
    p.add_argument("--quick", action="store_true", help="The tiny preset (3 sizes up to 200 x 800), dim 128: "
                                                        "seconds; for checking the script, not for the figures.")
    args = parse_args(p, argv, dict(preset="tiny", dim=128))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sizes:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        sizes = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    run_one(*sizes[0], args, device)  # warm-up (allocator, kernels, threads)
    rows = []
    print(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, dim {args.dim}, {args.classes} classes, chunk budget "
          f"{args.max_chunk_mb} MiB; prior-art filter + same-patent exclusion + head/tail groups", flush=True)
    hdr = (f"{'queries':>9} {'database':>9} {'Q x N':>12} {'seconds':>9} {'ns/pair':>8} {'chunk':>6} "
           f"{'peak MiB':>9} {'pairs x':>8} {'time x':>8} {'time/pairs':>10}")
    print(hdr)
    print("-" * len(hdr))
    for q, n in sizes:
        row = run_one(q, n, args, device)
        rows.append(row)
        base = rows[0]
        pr = row["pairs"] / base["pairs"]
        tr = row["seconds"] / base["seconds"]
        row["pair_ratio"], row["time_ratio"] = pr, tr
        print(f"{q:>9} {n:>9} {row['pairs']:>12.3g} {row['seconds']:>9.3f} {row['ns_per_pair']:>8.2f} "
              f"{row['chunk_queries']:>6} {row['peak_mb']:>9.0f} {pr:>8.2f} {tr:>8.2f} {tr / pr:>10.2f}", flush=True)
    a = None
    if len(rows) >= 2:
        xs = torch.tensor([math.log(r["pairs"]) for r in rows], dtype=torch.float64)
        ys = torch.tensor([math.log(r["seconds"]) for r in rows], dtype=torch.float64)
        a = float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())
        print(f"\nfit: time ~ (Q x N)^{a:.2f}   (1.00 = linear in queries x database)")
    if args.json:
        write_json(args.json, {"summary": summary_rows(rows, a), "rows": rows, "fit_exponent": a,
                               "device": str(device), "threads": torch.get_num_threads(), "dim": args.dim,
                               "classes": args.classes, "max_chunk_mb": args.max_chunk_mb, "quick": args.quick})
    return 0


def summary_rows(rows, exponent):
    """The summary contract's rows: the fit exponent (target <= 1.1), each size's seconds, and at the largest
    size the cost per pair, time ratio / pair ratio against the smallest size and the peak memory growth."""
    out = []
    if exponent is not None:
        out.append(at_most("fit exponent a of time ~ (queries x database)^a", exponent, EXPONENT_TARGET, unit=""))
    for r in rows:
        out.append(row(f"eval time, {r['queries']} queries x {r['database']} database", r["seconds"], "s"))
    last = rows[-1]
    size = f"{last['queries']} x {last['database']}"
    out.append(row(f"cost per (query, database) pair at {size}", last["ns_per_pair"], "ns/pair"))
    if len(rows) >= 2:
        out.append(row(f"time ratio / pair ratio, {size} vs {rows[0]['queries']} x {rows[0]['database']}",
                       last["time_ratio"] / last["pair_ratio"], "x"))
    out.append(row(f"peak memory growth at {size}", max(0.0, last["peak_mb"]), "MB"))
    return out


if __name__ == "__main__":
    sys.exit(main())
