#!/usr/bin/env python
"""S3 streaming vs local disk, per shard size: samples/s of patentclip's ``patent-wds`` training pipeline reading the
same shards from a local folder and from a real S3 server on this machine (SeaweedFS on 127.0.0.1,
tests/s3_server.py, which this script starts and stops), with the same workers, preprocess, sampler and batch
size, in one run, for each shard size of ``--shard-mb``.

    python benchmarks/s3_streaming.py [--shard-mb 0.5,5,20,50 --pass-mb 200 --image-size 256 --workers 2]
    python benchmarks/s3_streaming.py --quick --json out.json     # tiny sizes, seconds (the suite's test)

Data: synthetic drawings (as benchmarks/data_throughput.py builds them) at ``--image-size`` px, the drawing size
the builder stores for a 224-px model (``--image-size 512``: the old default, about 3x the bytes per drawing).
Shards of a given size are made by writing the built samples again under new patent ids (``<patent>r<i>``, so
every copy is a patent of its own for the sampler) until each shard holds about ``MB`` megabytes; each size gets
enough shards for every worker to read at least ``--groups`` shard groups per pass (``--pass-mb`` at least), so a
pass is long against a worker's first-group wait. The loaders are made once per source and size and kept across
passes with their persistent workers, as ``patentclip-train`` keeps them across epochs.

The passes are interleaved (local, S3, then S3, local, ...; rotated with a third pipeline) so that all see the same
background load; the first pass of each is a warm-up. Printed per size: every pass's ratio S3/local time (paired
within a round), their median and range; the median is the figure. Also printed: the CPU seconds the SeaweedFS
server used (it shares the machine's cores with the loader workers, as a co-located cache or gateway would; a
remote S3 service would not). Per pass, where the machine's time went (/proc): the loader's CPU (this process and
its workers), SeaweedFS's, the other processes' (other users of a shared machine) and the hypervisor's steal; a
pass's S3/local ratio is printed as the product of the loader's CPU cost ratio (local over S3 loader CPU-s: what
S3 itself costs the workers) and the ratio of the shares of the machine the loader got in the two passes
(contention from other processes, which the loader does not control); a paired pass below 0.8x the median ratio
is reported as slow with those figures, so an outlier can be told apart from a slower S3 path -- on this shared
machine, issue 21's slow passes are passes where the loader got a smaller share (docs/benchmarks.md).
``--compare-read-ahead`` also times S3 without the next epoch's first group read ahead (plugins/data/read_ahead.py)
and prints the ratio and the first-batch waits.
Target: S3 >= 0.9x local disk at shards of 20 MB and more. ``--work-dir`` keeps the built shards (keyed by their
settings) for a rerun (a rerun with the same ``--work-dir`` works: tested); the S3 server's data folder is made
fresh each run. ``--json`` writes the figures and a
``"summary"`` list (benchmarks/_common.py) that ``benchmarks/run_all.py`` collects.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (at_least, exit_on_sigterm, machine_cpu, parse_args, proc_cpu, row, temporary_dir,  # noqa: E402
                     tree_cpu, write_json)

TARGET = 0.9
TARGET_MB = 20.0   # the target holds for shards of this size and more
NO_HOLD = "s3-no-read-ahead"   # --compare-read-ahead's third pipeline
CPUS = os.cpu_count() or 1
SLOW = 0.8   # a paired pass whose ratio is below this fraction of the median is reported as slow, with its load


def decomposed(paired, load):
    """Per paired pass, its S3/local ratio as the product of the loader's CPU cost ratio (local loader CPU-s over
    S3 loader CPU-s: what S3 costs the workers, the client's per-byte work included) and its share ratio (the
    loader's CPU-s per wall second during the S3 pass over that during the local pass): wall = loader CPU-s /
    share. A share falls when other processes take the CPU (contention on a shared machine) or when the loader
    waits instead of computing (network, disk: the per-pass iowait tells the latter)."""
    out = []
    for i, r in enumerate(paired):
        s3, loc = load["s3"][i], load["local"][i]
        cpu = loc["loader_cpu_s"] / max(1e-9, s3["loader_cpu_s"])
        out.append({"ratio": r, "cpu_ratio": cpu, "share_ratio": r / cpu})
    return out


def outliers(paired, load):
    """[(index, explanation)] of the paired passes whose S3/local ratio is below SLOW x the median, with the
    decomposition of :func:`decomposed` and the other processes' share of the machine in both passes."""
    if len(paired) < 3:
        return []
    med = statistics.median(paired)
    parts = decomposed(paired, load)
    out = []
    for i, r in enumerate(paired):
        if r < SLOW * med:
            s3, loc, d = load["s3"][i], load["local"][i], parts[i]
            out.append((i, f"= loader CPU cost ratio {d['cpu_ratio']:.3f} x share ratio {d['share_ratio']:.3f}; "
                           f"other processes took {100 * s3['others_share']:.0f}% of the machine during its S3 pass "
                           f"and {100 * loc['others_share']:.0f}% during its local pass; steal {s3['steal_s']:.2f} / "
                           f"{loc['steal_s']:.2f} s; iowait {s3['iowait_s']:.2f} / {loc['iowait_s']:.2f} s; "
                           f"loader CPU {s3['loader_cpu_s']:.2f} / {loc['loader_cpu_s']:.2f} s"))
    return out


def read_samples(train_dir: Path):
    """[(key, {ext: bytes})] of the built shards, in order."""
    out = []
    for tar in sorted(train_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            cur, members = None, {}
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                if key != cur and cur is not None:
                    out.append((cur, members))
                    members = {}
                cur = key
                members[ext] = tf.extractfile(m).read()
            if cur is not None:
                out.append((cur, members))
    return out


def renamed(key: str, ext: str, data: bytes, copy: int):
    """The sample under patent ``<patent>r<copy>`` (its json's patent_id too)."""
    patent, view = key.rsplit("_", 1)
    new = f"{patent}r{copy}"
    if ext == "json":
        meta = json.loads(data)
        if "patent_id" in meta:
            meta["patent_id"] = new
        data = json.dumps(meta).encode()
    return f"{new}_{view}", data


def sized_shards(base_dir: Path, out_dir: Path, shard_mb: float, min_shards: int, pass_mb: float) -> Path:
    """Shards of about ``shard_mb`` MB each from the base samples (module docstring); kept when already made."""
    if (out_dir / "sizes.json").exists():
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    samples = read_samples(base_dir)
    per_sample = sum(len(k) + sum(len(v) + 1024 for v in m.values()) for k, m in samples) / len(samples)
    per_shard = max(1, round(shard_mb * 2 ** 20 / per_sample))
    n_shards = max(min_shards, -(-int(pass_mb * 2 ** 20) // int(per_shard * per_sample)))
    sizes, copy, i = {}, 0, 0
    for s in range(n_shards):
        name = f"shard-{s:06d}.tar"
        with tarfile.open(tmp / name, "w") as tf:
            for _ in range(per_shard):
                key, members = samples[i]
                for ext, data in members.items():
                    k, d = renamed(key, ext, data, copy)
                    ti = tarfile.TarInfo(f"{k}.{ext}")
                    ti.size, ti.mtime = len(d), 0
                    tf.addfile(ti, io.BytesIO(d))
                i += 1
                if i == len(samples):
                    i, copy = 0, copy + 1
        sizes[name] = per_shard
    shutil.copy(base_dir / "classes.json", tmp / "classes.json")
    (tmp / "sizes.json").write_text(json.dumps(sizes))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shard-mb", default="0.5,5,20,50", help="Shard sizes in MB, comma-separated.")
    ap.add_argument("--pass-mb", type=float, default=200.0, help="At least this many MB read per pass and source.")
    ap.add_argument("--patents", type=int, default=400, help="Synthetic patents, 4 drawings each (default: 400).")
    ap.add_argument("--image-size", type=int, default=256, help="Stored drawing size in px (default: 256).")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model whose preprocess is used (no weights).")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of each pipeline (default: 2).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--group-shards", type=int, default=4, help="--shuffle-group-shards (default: 4).")
    ap.add_argument("--groups", type=int, default=2, help="Shard groups per worker and pass at least (default 2).")
    ap.add_argument("--passes", type=int, default=3, help="Timed passes per source and size, after a warm-up.")
    ap.add_argument("--compare-read-ahead", action="store_true",
                    help="Also time the S3 pipeline without the next epoch's first group read ahead "
                         "(plugins/data/read_ahead.py) and print the ratio.")
    ap.add_argument("--work-dir", default=None, help="Working folder, kept (default: a temporary one, removed).")
    ap.add_argument("--json", default=None, help="Write the figures here as JSON (with a \"summary\" list).")
    ap.add_argument("--quick", action="store_true",
                    help="Tiny sizes (48 patents at 96 px, shards of 0.05 and 0.2 MB, patentclip-tiny's preprocess, "
                         "batch 16, 1 timed pass): seconds; for checking the script, not for the figures.")
    a = parse_args(ap, argv, dict(patents=48, image_size=96, model="patentclip-tiny", batch_size=16, passes=1,
                                  shard_mb="0.05,0.2", pass_mb=0.5, group_shards=1, groups=1))
    exit_on_sigterm()  # the finally below stops the S3 server when run_all stops this benchmark

    import open_clip
    import torch

    from data_throughput import make_shards
    from patentclip.launch.args import default_args
    from patentclip.plugins import openclip_compat
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.data.batch import KEY
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import DATASETS
    from patentclip.shards.build import shard_pattern

    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3_server import S3Server

    torch.set_num_threads(1)
    register_model_configs()
    load_builtin_plugins()
    openclip_compat.apply()
    work = Path(a.work_dir) if a.work_dir else temporary_dir("patentclip-bench-s3-")
    sizes_mb = [float(x) for x in a.shard_mb.split(",") if x.strip()]
    server = None
    me = os.getpid()
    try:
        base = work / f"base-p{a.patents}-px{a.image_size}"
        make_shards(base, a.patents, a.image_size, 1000)
        s3_dir = work / "s3"
        shutil.rmtree(s3_dir, ignore_errors=True)  # a fresh server store each run (a kept one fails to restart)
        server = S3Server(str(s3_dir)).start()
        os.environ.update(server.env())  # s3fs in this process and in the (forked) loader workers
        server.make_bucket("bench")
        fs = server.filesystem()
        _, preprocess, _ = open_clip.create_model_and_transforms(a.model, pretrained=None)
        tokenizer = open_clip.get_tokenizer(a.model)

        def pipeline(pattern):
            args = default_args(train_data=pattern, batch_size=a.batch_size, workers=a.workers,
                                sampler="class_aware", shuffle_group_shards=a.group_shards)
            return DATASETS.get("patent-wds")(args, preprocess, True, epoch=0, tokenizer=tokenizer,
                                              class_table=load_class_table(pattern))

        print(f"s3 streaming: synthetic drawings of {a.image_size} px, preprocess of {a.model}, {a.workers} workers, "
              f"batch {a.batch_size}, groups of {a.group_shards} shards, {os.cpu_count()} CPUs; S3 = SeaweedFS at "
              f"{server.endpoint}", flush=True)
        results = []
        for mb in sizes_mb:
            d = sized_shards(base / "shards" / "train", work / f"sized-px{a.image_size}-{mb:g}mb",
                             mb, a.workers * a.group_shards * a.groups, a.pass_mb)
            tars = sorted(d.glob("*.tar"))
            shard_bytes = sum(p.stat().st_size for p in tars)
            prefix = f"bench/{d.name}"
            fs.put(str(d), prefix, recursive=True)
            uploaded = sorted(k for k in fs.find(prefix) if k.endswith(".tar"))
            if len(uploaded) != len(tars):
                raise RuntimeError(f"uploaded {len(uploaded)} shards of {d}, expected {len(tars)}")
            local_pattern = shard_pattern(d)
            s3_pattern = f"s3://{prefix}/{Path(local_pattern).name}"
            sources = {"local": pipeline(local_pattern), "s3": pipeline(s3_pattern)}
            if a.compare_read_ahead:  # the same S3 pipeline without the next epoch's first group read ahead
                sources[NO_HOLD] = pipeline(s3_pattern)
                sources[NO_HOLD].dataloader.dataset.read_ahead_next_epoch = False
            names = list(sources)
            times = {name: [] for name in sources}
            counts, srv_cpu, firsts = {}, [], {name: [] for name in sources}
            load = {name: [] for name in sources}   # per timed pass: CPU-s of the loader, of others, steal
            print(f"\n{mb:g} MB shards: {len(tars)} shards, {shard_bytes / 2 ** 20:.1f} MB per pass", flush=True)
            for p in range(a.passes + 1):
                order = names[p % len(names):] + names[:p % len(names)]   # rotated: the same load on each
                for name in order:
                    info = sources[name]
                    info.set_epoch(p)
                    c0, m0, o0 = proc_cpu(server.proc.pid), machine_cpu(), tree_cpu(me, [server.proc.pid])
                    t = time.perf_counter()
                    n, first = 0, None
                    for b in info.dataloader:
                        n += len(b[KEY])
                        first = first if first is not None else time.perf_counter() - t
                    dt = time.perf_counter() - t
                    srv = proc_cpu(server.proc.pid) - c0
                    m1, own = machine_cpu(), tree_cpu(me, [server.proc.pid]) - o0
                    others = max(0.0, m1["busy"] - m0["busy"] - own - srv)
                    counts[name] = n
                    if name == "s3":
                        srv_cpu.append(srv)
                    tag = "warm-up" if p == 0 else f"pass {p}"
                    print(f"  {tag:8s} {name:18s} {n} samples in {dt:6.2f} s = {n / dt:8.1f} samples/s "
                          f"(first batch after {first:.2f} s); CPU-s: loader {own:.2f}, SeaweedFS {srv:.2f}, "
                          f"other processes {others:.2f} ({100 * others / (dt * CPUS):.0f}% of the machine), "
                          f"steal {m1['steal'] - m0['steal']:.2f}, iowait {m1['iowait'] - m0['iowait']:.2f}",
                          flush=True)
                    if p > 0:
                        times[name].append(dt)
                        firsts[name].append(first)
                        load[name].append({"loader_cpu_s": own, "seaweedfs_cpu_s": srv, "others_cpu_s": others,
                                           "others_share": others / (dt * CPUS),
                                           "steal_s": m1["steal"] - m0["steal"],
                                           "iowait_s": m1["iowait"] - m0["iowait"]})
            for info in sources.values():
                info.dataloader.close()
            if len(set(counts.values())) != 1:
                raise RuntimeError(f"the pipelines gave different sample counts: {counts}")
            paired = [tl / ts for ts, tl in zip(times["s3"], times["local"])]
            ratio = statistics.median(paired)
            rate = {name: counts[name] / statistics.median(ts) for name, ts in times.items()}
            print(f"  S3 / local: median {ratio:.3f}x over {len(paired)} paired pass(es), range "
                  f"{min(paired):.3f}-{max(paired):.3f}; local {rate['local']:.0f}, S3 {rate['s3']:.0f} samples/s; "
                  f"first batch {statistics.median(firsts['local']):.2f} s local, "
                  f"{statistics.median(firsts['s3']):.2f} s S3; SeaweedFS {max(srv_cpu):.2f} CPU-s per S3 pass")
            hold_ratio = None
            if a.compare_read_ahead:
                held = [tn / ts for ts, tn in zip(times["s3"], times[NO_HOLD])]
                hold_ratio = statistics.median(held)
                print(f"  S3 with / without the next epoch's first group read ahead: median {hold_ratio:.3f}x, "
                      f"range {min(held):.3f}-{max(held):.3f}; first batch {statistics.median(firsts['s3']):.2f} s "
                      f"vs {statistics.median(firsts[NO_HOLD]):.2f} s")
            parts = decomposed(paired, load)
            cpu_ratio = statistics.median(d["cpu_ratio"] for d in parts)
            print("  S3 / local = loader CPU cost ratio x share of the machine ratio, per pass: "
                  + ", ".join(f"{d['ratio']:.2f} = {d['cpu_ratio']:.2f} x {d['share_ratio']:.2f}" for d in parts)
                  + f"; CPU cost ratio median {cpu_ratio:.3f}")
            slow = outliers(paired, load)
            for i, why in slow:
                print(f"  slow pass {i + 1}: S3/local {paired[i]:.3f}x; {why}")
            results.append({"shard_mb": shard_bytes / len(tars) / 2 ** 20, "nominal_mb": mb, "shards": len(tars),
                            "samples": counts["s3"], "ratio": ratio, "ratio_per_pass": paired,
                            "cpu_cost_ratio": cpu_ratio, "decomposed_per_pass": parts,
                            "with_without_epoch_read_ahead": hold_ratio,
                            "samples_per_s": rate, "pass_seconds": times, "first_batch_s": firsts,
                            "seaweedfs_cpu_s_per_pass": srv_cpu, "load_per_pass": load,
                            "slow_passes": [{"pass": i + 1, "ratio": paired[i], "why": why} for i, why in slow]})
            fs.rm(prefix, recursive=True)
        print("\nshard MB   S3/local (median, range)   loader CPU cost local/S3 (median)")
        for r in results:
            ok = "" if r["shard_mb"] < TARGET_MB else ("  OK" if r["ratio"] >= TARGET else "  MISSED")
            print(f"  {r['shard_mb']:7.2f}  {r['ratio']:.3f}x  ({min(r['ratio_per_pass']):.3f}-"
                  f"{max(r['ratio_per_pass']):.3f}){ok}   {r['cpu_cost_ratio']:.3f}x")
        if a.json:
            summary = []
            for r in results:
                label = f"S3 / local disk, {r['shard_mb']:.1f} MB shards (patent-wds pipeline, samples/s)"
                summary.append(at_least(label, r["ratio"], TARGET) if r["shard_mb"] >= TARGET_MB
                               else row(label, r["ratio"], "x"))
                summary.append(row(f"S3 / local loader CPU cost, {r['shard_mb']:.1f} MB shards (local CPU-s / S3 "
                                   f"CPU-s)", r["cpu_cost_ratio"], "x"))
                if r["with_without_epoch_read_ahead"] is not None:
                    summary.append(row(f"S3 with / without the next epoch's first group read ahead, "
                                       f"{r['shard_mb']:.1f} MB shards", r["with_without_epoch_read_ahead"], "x"))
            write_json(a.json, {"summary": summary, "sizes": results, "workers": a.workers,
                                "batch_size": a.batch_size, "image_size": a.image_size, "model": a.model,
                                "passes": a.passes, "group_shards": a.group_shards, "quick": a.quick})
        return 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
