#!/usr/bin/env python
"""S3 streaming vs local disk: samples/s of patentclip's ``patent-wds`` training pipeline reading the same shards
from a local folder and from a real S3 server on this machine (SeaweedFS on 127.0.0.1, tests/s3_server.py, which
this script starts and stops), with the same workers, preprocess, sampler and batch size, in one run.

    python benchmarks/s3_streaming.py [--patents 400 --image-size 256 --model ViT-B-32 --workers 2 --passes 3]
    python benchmarks/s3_streaming.py --quick --json out.json     # tiny sizes, seconds (the suite's test)

The shards are built once (synthetic drawings, as benchmarks/data_throughput.py does) and uploaded to a bucket
with s3fs; the S3 pipeline reads them as patentclip-train does (``s3://`` through the webdataset ``gopen`` handler
of ``patentclip.plugins.remote_io``, endpoint and credentials from the standard AWS environment variables, the
class table and sizes.json over S3 too). The passes are interleaved (local, S3, then S3, local, ...) so that both
see the same background load; the first pass of each is a warm-up, the best timed pass counts. Also printed: the
CPU seconds the SeaweedFS server used (it shares the machine's cores with the loader workers, as a co-located
cache or gateway would; a remote S3 service would not). Target: S3 >= 0.85x local disk (within 15 %, the same
bound as the shard build's). ``--json`` writes the figures and a ``"summary"`` list (benchmarks/_common.py) that
``benchmarks/run_all.py`` collects.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import at_least, exit_on_sigterm, parse_args, proc_cpu, row, temporary_dir, write_json  # noqa: E402

TARGET = 0.85


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patents", type=int, default=400, help="Synthetic patents, 4 drawings each (default: 400).")
    ap.add_argument("--image-size", type=int, default=256, help="Stored drawing size in px (default: 256).")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model whose preprocess is used (no weights).")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of each pipeline (default: 2).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--samples-per-shard", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3, help="Timed passes per source, after a warm-up pass each.")
    ap.add_argument("--work-dir", default=None, help="Working folder, kept (default: a temporary one, removed).")
    ap.add_argument("--json", default=None, help="Write the figures here as JSON (with a \"summary\" list).")
    ap.add_argument("--quick", action="store_true",
                    help="Tiny sizes (48 patents at 96 px in 4 shards, patentclip-tiny's preprocess, batch 16, 1 "
                         "timed pass): seconds; for checking the script, not for the figures.")
    a = parse_args(ap, argv, dict(patents=48, image_size=96, model="patentclip-tiny", batch_size=16,
                                  samples_per_shard=48, passes=1))
    exit_on_sigterm()  # the finally below stops the S3 server when run_all stops this benchmark

    import open_clip
    import torch

    from data_throughput import make_shards
    from patentclip.plugins import openclip_compat
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.data.batch import KEY
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import DATASETS

    sys.path.insert(0, str(HERE.parent / "tests"))
    from s3_server import S3Server

    torch.set_num_threads(1)
    register_model_configs()
    load_builtin_plugins()
    openclip_compat.apply()
    work = Path(a.work_dir) if a.work_dir else temporary_dir("patentclip-bench-s3-")
    server = None
    try:
        local_pattern = make_shards(work, a.patents, a.image_size, a.samples_per_shard)
        train_dir = work / "shards" / "train"
        n_total = sum(json.loads((train_dir / "sizes.json").read_text()).values())
        shard_bytes = sum(p.stat().st_size for p in train_dir.glob("*.tar"))

        server = S3Server(str(work / "s3")).start()
        os.environ.update(server.env())  # s3fs in this process and in the (forked) loader workers
        server.make_bucket("bench")
        fs = server.filesystem()
        if fs.exists("bench/train"):
            fs.rm("bench/train", recursive=True)
        fs.put(str(train_dir), "bench/train", recursive=True)
        s3_pattern = "s3://bench/train/" + Path(local_pattern).name
        uploaded = sorted(k for k in fs.find("bench/train") if k.endswith(".tar"))
        if len(uploaded) != len(list(train_dir.glob("*.tar"))):
            raise RuntimeError(f"uploaded {len(uploaded)} shards, expected {len(list(train_dir.glob('*.tar')))}")

        _, preprocess, _ = open_clip.create_model_and_transforms(a.model, pretrained=None)
        tokenizer = open_clip.get_tokenizer(a.model)

        def pipeline(pattern):
            args = argparse.Namespace(
                train_data=pattern, val_data=None, train_num_samples=None, val_num_samples=None, seed=0,
                batch_size=a.batch_size, workers=a.workers, world_size=1, rank=0, dataset_resampled=False,
                train_data_upsampling_factors=None, sampler="class_aware", sampler_beta=1.0, caption_choice="random",
                multiview=False, shuffle_group_shards=4)
            return DATASETS.get("patent-wds")(args, preprocess, True, epoch=0, tokenizer=tokenizer,
                                              class_table=load_class_table(pattern))

        sources = {"local": pipeline(local_pattern), "s3": pipeline(s3_pattern)}
        times = {name: [] for name in sources}
        counts = {}
        srv_cpu = []
        print(f"s3 streaming: {n_total} drawings of {a.image_size} px in {len(uploaded)} shards "
              f"({shard_bytes / 2 ** 20:.1f} MB), preprocess of {a.model}, {a.workers} workers, batch "
              f"{a.batch_size}, {os.cpu_count()} CPUs; S3 = SeaweedFS at {server.endpoint}", flush=True)
        for p in range(a.passes + 1):
            order = list(sources) if p % 2 == 0 else list(sources)[::-1]
            for name in order:
                info = sources[name]
                info.set_epoch(p)
                c0 = proc_cpu(server.proc.pid)
                t = time.perf_counter()
                n = sum(len(b[KEY]) for b in info.dataloader)
                dt = time.perf_counter() - t
                counts[name] = n
                if name == "s3":
                    srv_cpu.append(proc_cpu(server.proc.pid) - c0)
                tag = "warm-up" if p == 0 else f"pass {p}"
                print(f"  {tag:8s} {name:5s} {n} samples in {dt:6.2f} s = {n / dt:8.1f} samples/s", flush=True)
                if p > 0:
                    times[name].append(dt)
        if counts["local"] != counts["s3"]:
            raise RuntimeError(f"local and S3 pipelines gave {counts['local']} and {counts['s3']} samples")
        best = {name: counts[name] / min(ts) for name, ts in times.items()}
        ratio = best["s3"] / best["local"]
        paired = sorted(ts / tl for ts, tl in zip(times["s3"], times["local"]))
        print(f"\nbest of {a.passes} pass(es): local {best['local']:.1f} samples/s, S3 {best['s3']:.1f} samples/s")
        print(f"S3 / local disk: {ratio:.3f}x (target >= {TARGET}x): {'OK' if ratio >= TARGET else 'MISSED'}; "
              f"SeaweedFS used {max(srv_cpu):.2f} CPU-s per S3 pass at most")
        if a.json:
            summary = [at_least("S3 / local disk (patent-wds pipeline, samples/s)", ratio, TARGET),
                       row("local disk", best["local"], "samples/s"),
                       row("S3 (SeaweedFS on 127.0.0.1)", best["s3"], "samples/s"),
                       row("S3 read rate", shard_bytes / 2 ** 20 * best["s3"] / counts["s3"], "MB/s")]
            write_json(a.json, {"summary": summary, "samples_per_s": best, "s3_vs_local": ratio,
                                "s3_vs_local_per_pass": paired, "pass_seconds": times,
                                "seaweedfs_cpu_s_per_pass": srv_cpu, "samples": counts["s3"], "shards": len(uploaded),
                                "shard_mb": shard_bytes / 2 ** 20, "workers": a.workers, "batch_size": a.batch_size,
                                "image_size": a.image_size, "model": a.model, "passes": a.passes, "quick": a.quick})
        return 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
