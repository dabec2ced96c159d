"""How the cost of patentclip's image-retrieval evaluation grows with queries x database, the old full sort against
ranking by counting, in one run; and what the papers' size (252K queries x 823K drawings) would take.

    python benchmarks/eval_scaling.py                              # CPU sizes up to ~10 minutes (--budget-s)
    python benchmarks/eval_scaling.py --device cuda --preset gpu   # up to 250K queries x 800K drawings, one GPU
    python benchmarks/eval_scaling.py --quick --json out.json      # tiny sizes, seconds (the suite's test)

For each size it times :func:`patentclip.evaluation.metrics.retrieval_metrics` exactly as ``patentclip-eval`` calls it
(prior-art filter on random grant dates, the query's own patent excluded, head/tail groups, chunks sized from
``--max-chunk-mb``) on random L2-normalised features with long-tailed classes, once per ranking method, the methods
in turn (so that a change in the machine's load hits all of them alike):

* ``sort``  -- the old path: a full stable sort of every row (what the evaluation did before);
* ``count`` -- the default: mAP from the ranks of the relevant items found by counting, the top K by ``topk``;
* ``topk``  -- the top-K metrics only (R@K, HitRate@K, P@K, MRR@K; no mAP).

It checks that ``count`` and ``topk`` give exactly ``sort``'s numbers, and prints per method: wall seconds,
nanoseconds per (query, database) pair of wall time and of this process's CPU time (the CPU figure moves less when
other jobs share the machine), the peak memory growth (CPU: the process's RSS, sampled; CUDA: the allocator's peak
above the data), and the ratio sort / count. It fits ``time ~ (Q x N)^a`` for each method (1 = linear) and
extrapolates each method's cost per pair at the largest size measured to the papers' 252K x 823K pairs on this
device. Sizes whose projected time would exceed ``--budget-s`` (all methods together) are skipped and said so.
``--json`` writes the rows, the fits, the extrapolation and a ``"summary"`` list (benchmarks/_common.py) that
``benchmarks/run_all.py`` collects.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch

from _common import at_least, at_most, parse_args, row, write_json

from patentclip.evaluation import metrics as M
from patentclip.plugins.classes import head_class_mask

EXPONENT_TARGET = 1.1
SPEEDUP_TARGET = 1.2            # sort / count, CPU time at the largest size
PAPER = (252_000, 823_000)      # DeepPatent2 query set x database in the LLM-informed paper
METHODS = ("sort", "count", "topk")

PRESETS = {
    # (queries, database) pairs
    # growing queries x database, then databases towards the papers' 823K (the sort's cost per pair grows with N)
    "cpu": [(500, 4000), (1000, 16000), (2000, 32000), (1000, 64000), (500, 256000), (200, 823000),
            (400, 823000)],
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


def run_method(data, method: str, args, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    release_freed_memory()
    with PeakRSS() as mem:
        c0, t0 = time.process_time(), time.perf_counter()
        r = M.retrieval_metrics(**data, ks=(5, 10), mrr_k=10, max_chunk_bytes=args.max_chunk_mb << 20, method=method)
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
    peak = ((torch.cuda.max_memory_allocated() - base) / 2 ** 20) if device.type == "cuda" else (mem.peak - mem.start)
    return r, {"seconds": dt, "cpu_seconds": dc, "peak_mb": peak}


def run_size(q, n, args, device, methods):
    data = make_data(q, n, args.dim, args.classes, device)
    out = {"queries": q, "database": n, "pairs": q * n, "chunk_queries": M.auto_chunk_size(n, args.max_chunk_mb << 20)}
    results = {}
    for m in methods:
        r, t = run_method(data, m, args, device)
        results[m] = r
        out[m] = {**t, "ns_per_pair": 1e9 * t["seconds"] / (q * n), "cpu_ns_per_pair": 1e9 * t["cpu_seconds"] / (q * n)}
    ref = results.get("sort")
    if ref is not None:  # the methods agree exactly (tests/test_metrics.py checks it on the test sets)
        for m in methods:
            for k, v in ref.items():
                if m == "topk" and "mAP" in k:
                    continue
                same = (v == results[m][k]) or (isinstance(v, float) and math.isnan(v) and math.isnan(results[m][k]))
                if not same:
                    raise AssertionError(f"{m} differs from sort at {q} x {n}: {k} {results[m][k]!r} vs {v!r}")
    out["mAP"] = results["count"]["mAP"] if "count" in results else None
    out["valid_queries"] = results[methods[0]]["num_valid_queries"]
    return out


def fit_exponent(rows, method):
    if len(rows) < 2:
        return None
    xs = torch.tensor([math.log(r["pairs"]) for r in rows], dtype=torch.float64)
    ys = torch.tensor([math.log(r[method]["seconds"]) for r in rows], dtype=torch.float64)
    if float(((xs - xs.mean()) ** 2).sum()) == 0.0:  # one size repeated: nothing to fit
        return None
    return float(((xs - xs.mean()) * (ys - ys.mean())).sum() / ((xs - xs.mean()) ** 2).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="Sizes (default: cpu, or gpu on cuda).")
    p.add_argument("--sizes", default=None, help="Explicit sizes, e.g. '1000x4000,2000x8000'.")
    p.add_argument("--methods", default=",".join(METHODS), help="Ranking methods to time. Default: %(default)s.")
    p.add_argument("--budget-s", type=float, default=600.0,
                   help="Skip sizes whose projected time (all methods) would pass this many seconds in total.")
    p.add_argument("--dim", type=int, default=512, help="Embedding size (ViT-B-32: 512).")
    p.add_argument("--classes", type=int, default=32, help="Classes (Locarno has 32).")
    p.add_argument("--max-chunk-mb", type=int, default=1024, help="Memory budget of one chunk (patentclip-eval's).")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--json", "--out", dest="json", default=None,
                   help="Write the rows, the fits, the extrapolation and a \"summary\" list as JSON here.")
    p.add_argument("--quick", action="store_true", help="The tiny preset (3 sizes up to 200 x 800), dim 128: "
                                                        "seconds; for checking the script, not for the figures.")
    args = parse_args(p, argv, dict(preset="tiny", dim=128))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not set(methods) <= set(METHODS) or "count" not in methods:
        p.error(f"--methods must include count and be among {', '.join(METHODS)}")
    if args.sizes:
        sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",")]
    else:
        sizes = PRESETS[args.preset or ("gpu" if device.type == "cuda" else "cpu")]
    run_size(*sizes[0], args, device, methods)  # warm-up (allocator, kernels, threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device {device}{' ' + torch.cuda.get_device_name(device) if device.type == 'cuda' else ''}, "
          f"threads {torch.get_num_threads()}, {os.cpu_count()} cores, load average {load:.1f}, dim {args.dim}, "
          f"{args.classes} classes, chunk budget {args.max_chunk_mb} MiB; prior-art filter + same-patent exclusion "
          f"+ head/tail groups; methods {', '.join(methods)}", flush=True)
    hdr = (f"{'queries':>7} {'database':>8} {'Q x N':>9} " + " ".join(f"{m + ' s':>9} {'ns/pair':>7} {'cpu ns':>7}"
                                                                       f" {'MiB':>5}" for m in methods)
           + (f" {'sort/count':>10}" if "sort" in methods else ""))
    print(hdr)
    print("-" * len(hdr))
    rows, skipped, spent = [], [], 0.0
    t_start = time.perf_counter()
    for q, n in sizes:
        if rows:  # project from the last size's cost per pair
            per_pair = sum(rows[-1][m]["seconds"] for m in methods) / rows[-1]["pairs"]
            if spent + per_pair * q * n > args.budget_s:
                skipped.append((q, n))
                continue
        r = run_size(q, n, args, device, methods)
        rows.append(r)
        spent = time.perf_counter() - t_start
        cells = " ".join(f"{r[m]['seconds']:>9.2f} {r[m]['ns_per_pair']:>7.1f} {r[m]['cpu_ns_per_pair']:>7.1f} "
                         f"{max(0.0, r[m]['peak_mb']):>5.0f}" for m in methods)
        ratio = f" {r['sort']['seconds'] / r['count']['seconds']:>10.2f}" if "sort" in methods else ""
        print(f"{q:>7} {n:>8} {r['pairs']:>9.3g} {cells}{ratio}", flush=True)
    if skipped:
        print(f"\nskipped (projected past --budget-s {args.budget_s:.0f} s): "
              + ", ".join(f"{q} x {n}" for q, n in skipped))
    fits = {m: fit_exponent(rows, m) for m in methods}
    if any(a is not None for a in fits.values()):
        print("\nfit time ~ (Q x N)^a: " + ", ".join(f"{m} a = {a:.2f}" for m, a in fits.items() if a is not None))
    last = rows[-1]
    pairs = PAPER[0] * PAPER[1]
    extrap = {m: last[m]["ns_per_pair"] * 1e-9 * pairs for m in methods}
    print(f"papers' size {PAPER[0]} x {PAPER[1]} ({pairs:.3g} pairs) on this {device.type} at the cost per pair of "
          f"{last['queries']} x {last['database']}: " + ", ".join(f"{m} {extrap[m] / 3600:.2f} h" for m in methods))
    if args.json:
        write_json(args.json, {"summary": summary_rows(rows, fits, extrap, methods, device), "rows": rows,
                               "fits": fits, "extrapolation_s": extrap, "paper_size": PAPER, "skipped": skipped,
                               "device": str(device), "threads": torch.get_num_threads(), "load_average": load,
                               "dim": args.dim, "classes": args.classes, "max_chunk_mb": args.max_chunk_mb,
                               "quick": args.quick})
    return 0


def summary_rows(rows, fits, extrap, methods, device):
    """The summary contract's rows: the fit exponent of the default method (target <= 1.1), sort / count at the
    largest size (CPU time, target >= 1.2x; and wall time), cost per pair and peak memory per method at the largest
    size, and the extrapolation to the papers' size."""
    out = []
    last = rows[-1]
    size = f"{last['queries']} x {last['database']}"
    if fits.get("count") is not None:
        out.append(at_most("fit exponent a of time ~ (queries x database)^a (count)", fits["count"], EXPONENT_TARGET,
                           unit=""))
    if "sort" in methods:  # the target on CPU time: wall time on a shared machine moves with the neighbours' load
        out.append(at_least(f"old full sort / counting, this process's CPU time at {size}",
                            last["sort"]["cpu_seconds"] / last["count"]["cpu_seconds"], SPEEDUP_TARGET))
        out.append(row(f"old full sort / counting, wall time at {size}",
                       last["sort"]["seconds"] / last["count"]["seconds"], "x"))
    for m in methods:
        out.append(row(f"cost per (query, database) pair at {size}, {m}", last[m]["ns_per_pair"], "ns/pair"))
        out.append(row(f"peak memory growth at {size}, {m}", max(0.0, last[m]["peak_mb"]), "MB"))
        out.append(row(f"252K x 823K on this {device.type}, {m} (extrapolated)", extrap[m] / 3600, "h"))
    return out


if __name__ == "__main__":
    sys.exit(main())
