#!/usr/bin/env python
"""Data pipeline throughput: patentclip's ``patent-wds`` pipeline vs open_clip's own ``get_wds_dataset`` on the
same shards, workers and image size, in one run, plus the raw read + decode rate of the same shards as the
ceiling; and the cost of multi-view pairs (one extra view per example).

    python benchmarks/data_throughput.py [--patents 600 --image-size 256 --model ViT-B-32 --workers 2]
    python benchmarks/data_throughput.py --quick --json out.json     # tiny sizes, seconds (the suite's test)

Prints samples/s of each and the ratios. Targets (issue): >= 0.95x open_clip with views off, and >= 0.8x the
raw read + decode rate (decode to RGB, nothing else).

patentclip runs with its default ``--image-transport uint8`` (plugins/image_transport.py): the workers stop at
the uint8 pixels and the step normalises them on the device. Its loader rate is therefore also given *with* that
normalisation done in the consuming process, on ``--device`` (the CUDA GPU when there is one, else this CPU,
where it competes with the workers for the cores): the rate at which a training loop actually receives
model-ready tensors. The float transport (everything in the workers, as open_clip does) is measured too.

Ceilings, each with the same workers and batch size: raw read + decode to RGB, counted per batch (no per-drawing
message between processes; the figure the target is set against), the same counted per drawing (session 2's
definition, which pays one inter-process message per drawing), and read + decode + the model's preprocess (the
work of any CLIP pipeline that preprocesses on the CPU). With CPU bicubic resizing, which costs more than the
decode of a line drawing, and open_clip's tokenizer (~0.4 ms a caption), no CPU pipeline gets near the raw
decode rate; open_clip's own reaches ~0.2x. The pipelines are read in ``--epochs`` rounds after one warm-up
round, each round reading every pipeline once in a rotated order; rates are medians over the rounds and every
ratio is the median of the ratios within a round (paired), which cancels the machine's slow spells. ``--json`` writes the figures and a ``"summary"`` list of rows
(benchmarks/_common.py) that ``benchmarks/run_all.py`` collects.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _common import at_least, parse_args, row, temporary_dir, write_json

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def make_shards(root: Path, patents: int, image_size: int, samples_per_shard: int = 250) -> str:
    from patentclip.shards.build import shard_pattern
    from patentclip.shards.build import build_shards
    from patentclip.shards.synth import generate_synthetic_patents

    if not (root / "shards" / "train" / "sizes.json").exists():
        m = generate_synthetic_patents(root / "patents", num_patents=patents, num_classes=12, image_size=image_size,
                                       seed=0)
        build_shards(m, root / "shards", samples_per_shard=samples_per_shard, splits=(("train", 1.0),), seed=0,
                     progress=False)
    return shard_pattern(root / "shards" / "train")


def one_pass(make_iter, count_fn, epoch: int) -> float:
    """Samples/s of one pass over the pipeline."""
    t, n = time.perf_counter(), 0
    for item in make_iter(epoch):
        n += count_fn(item)
    return n / (time.perf_counter() - t)


def interleaved(pipelines: dict, rounds: int) -> dict:
    """{name: [samples/s per round]}: one untimed warm-up round, then ``rounds`` rounds that read every pipeline
    once, in an order rotated round by round, so that a slow spell of the machine (CPU steal) falls on all
    pipelines alike and ratios can be paired by round."""
    names = list(pipelines)
    rates = {n: [] for n in names}
    for r in range(rounds + 1):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            make_iter, count_fn = pipelines[n]
            rate = one_pass(make_iter, count_fn, r)
            if r > 0:
                rates[n].append(rate)
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patents", type=int, default=600)
    ap.add_argument("--image-size", type=int, default=256, help="Stored drawing size (px).")
    ap.add_argument("--model", default="ViT-B-32", help="open_clip model whose preprocess is used (no weights).")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3,
                    help="Timed rounds; each reads every pipeline once, in rotated order (after a warm-up round).")
    ap.add_argument("--work-dir", default=None, help="Working folder, kept (default: a temporary one, removed).")
    ap.add_argument("--samples-per-shard", type=int, default=250)
    ap.add_argument("--device", default=None,
                    help="Where the uint8 pixels are normalised when measuring model-ready batches (default: cuda "
                         "if available, else cpu).")
    ap.add_argument("--json", default=None, help="Write the figures here as JSON (with a \"summary\" list).")
    ap.add_argument("--quick", action="store_true",
                    help="Tiny sizes (60 patents at 128 px in 4 shards, patentclip-tiny's preprocess, batch 16, "
                         "1 timed pass): finishes in seconds; for checking the script, not for the figures.")
    a = parse_args(ap, argv, dict(patents=60, image_size=128, model="patentclip-tiny", batch_size=16, epochs=1,
                                  samples_per_shard=60))

    import open_clip
    import torch
    from open_clip_train.data import get_wds_dataset
    from PIL import Image

    from patentclip.launch.args import default_args
    from patentclip.plugins import openclip_compat
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import DATASETS

    torch.set_num_threads(1)
    register_model_configs()
    load_builtin_plugins()
    openclip_compat.apply()
    work = Path(a.work_dir) if a.work_dir else temporary_dir("patentclip-bench-data-")
    pattern = make_shards(work, a.patents, a.image_size, a.samples_per_shard)
    _, preprocess, _ = open_clip.create_model_and_transforms(a.model, pretrained=None)
    tokenizer = open_clip.get_tokenizer(a.model)
    table = load_class_table(pattern)
    n_total = sum(json.loads((work / "shards" / "train" / "sizes.json").read_text()).values())

    def oc_args(**kw):
        return default_args(**{"train_data": pattern, "batch_size": a.batch_size, "workers": a.workers,
                               "sampler": "class_aware", **kw})

    results = {}

    # ceilings: read every member and decode every image, nothing else, the same worker processes and batching
    import webdataset as wds
    from patentclip.plugins.data.batch import IMAGE_FIELDS, KEY
    from patentclip.plugins.openclip_compat import group_by_keys_nothrow
    from patentclip.shards import sample_format as SF
    from webdataset.tariterators import tar_file_iterator

    class Raw(torch.utils.data.IterableDataset):
        def __init__(self, transform=None, per: int = 1):
            self.transform, self.per = transform, per

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info else (0, 1)
            urls = wds.shardlists.expand_urls(pattern)[wid::nw]
            n = 0
            for u in urls:
                with open(u, "rb") as f:
                    for s in group_by_keys_nothrow({**x, "__url__": u} for x in tar_file_iterator(f)):
                        img = Image.open(io.BytesIO(s[SF.image_ext_of(s)])).convert("RGB")
                        if self.transform is not None:
                            self.transform(img)
                        n += 1
                        if n == self.per:
                            yield n
                            n = 0
            if n:
                yield n

    def ceiling(transform=None, per=1):
        # persistent workers, as the pipelines have (patentclip's loader, open_clip's get_wds_dataset): the ceiling
        # is measured without worker start-up, on the same footing as what it is compared with
        dl = torch.utils.data.DataLoader(Raw(transform, per), batch_size=None, num_workers=a.workers,
                                         persistent_workers=a.workers > 0)
        return (lambda p: dl), (lambda x: x)

    pipelines = {"raw_read_decode": ceiling(per=a.batch_size), "raw_read_decode_per_drawing": ceiling(per=1),
                 "raw_read_decode_preprocess": ceiling(preprocess, per=a.batch_size)}
    oc = get_wds_dataset(oc_args(), preprocess, True, epoch=0, floor=False, tokenizer=tokenizer)

    def oc_iter(p):
        oc.set_epoch(p)
        return oc.dataloader

    pipelines["open_clip_get_wds_dataset"] = (oc_iter, lambda b: len(b[0]))

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    finish = {"s": 0.0, "n": 0}

    def finished(b, transport):  # what the step does first: model-ready float images on the device
        t = time.perf_counter()
        for k in IMAGE_FIELDS:
            if k in b:
                b[k] = transport.images(b, k, device, torch.float32)
                if device.type == "cuda":
                    torch.cuda.synchronize()
        finish["s"] += time.perf_counter() - t
        finish["n"] += len(b[KEY])
        return len(b[KEY])

    def drawings(b):
        return len(b[KEY])

    for label, kw, finish_on_device in (("patentclip_sampler_on_views_off", {}, False),
                                        ("patentclip_views_off_finished_on_device", {}, True),
                                        ("patentclip_views_off_float_transport", {"image_transport": "float"}, False),
                                        ("patentclip_sampler_on_views_on", {"multiview": True}, False)):
        info = DATASETS.get("patent-wds")(oc_args(**kw), preprocess, True, epoch=0, tokenizer=tokenizer,
                                          class_table=table)
        count = (lambda b, t=info.dataloader.image_transport: finished(b, t)) if finish_on_device else drawings

        def it(p, info=info):
            info.set_epoch(p)
            return info.dataloader

        pipelines[label] = (it, count)

    rates = interleaved(pipelines, a.epochs)
    results = {n: statistics.median(v) for n, v in rates.items()}
    finish_ms = 1000 * finish["s"] / max(1, finish["n"])

    def paired(num: str, den: str) -> float:
        """Median over the rounds of the ratio within each round."""
        return statistics.median(x / y for x, y in zip(rates[num], rates[den]))

    ours = results["patentclip_sampler_on_views_off"]
    p_ours, p_fin = "patentclip_sampler_on_views_off", "patentclip_views_off_finished_on_device"
    p_oc, p_raw = "open_clip_get_wds_dataset", "raw_read_decode"
    ratios = {
        "patentclip / open_clip (views off)": paired(p_ours, p_oc),
        "patentclip / raw decode ceiling (views off)": paired(p_ours, p_raw),
        "patentclip finished on device / open_clip (views off)": paired(p_fin, p_oc),
        "patentclip finished on device / raw decode ceiling (views off)": paired(p_fin, p_raw),
        "patentclip float transport / open_clip (views off)": paired("patentclip_views_off_float_transport", p_oc),
        "uint8 / float transport (loader)": paired(p_ours, "patentclip_views_off_float_transport"),
        "patentclip / raw decode ceiling counted per drawing": paired(p_ours, "raw_read_decode_per_drawing"),
        "open_clip / raw decode ceiling": paired(p_oc, p_raw),
        "patentclip / read+decode+preprocess ceiling (views off)": paired(p_ours, "raw_read_decode_preprocess"),
        "open_clip / read+decode+preprocess ceiling": paired(p_oc, "raw_read_decode_preprocess"),
        "views on / views off (throughput)": paired("patentclip_sampler_on_views_on", p_ours),
    }
    cost_per_view = 1 / results["patentclip_sampler_on_views_on"] - 1 / ours
    print(f"data throughput: {n_total} drawings of {a.image_size} px, preprocess of {a.model}, "
          f"{a.workers} workers, batch {a.batch_size}, {os.cpu_count()} CPUs, finishing on {device}")
    for k, v in results.items():
        print(f"  {k:<40} {v:9.1f} samples/s")
    for k, v in ratios.items():
        print(f"  {k:<64} {v:6.3f}x")
    print(f"  extra cost of one more view per example: {1000 * cost_per_view:.2f} ms/sample")
    print(f"  normalising the uint8 pixels on {device} in the consuming process: {finish_ms:.3f} ms/sample")
    if a.json:
        summary = [
            at_least("patentclip / open_clip pipeline (views off)", ratios["patentclip / open_clip (views off)"],
                     0.95),
            at_least("patentclip / raw read+decode ceiling (views off)",
                     ratios["patentclip / raw decode ceiling (views off)"], 0.8),
            row(f"patentclip normalised on {device.type} / open_clip pipeline (views off)",
                ratios["patentclip finished on device / open_clip (views off)"], "x"),
            row(f"patentclip normalised on {device.type} / raw read+decode ceiling (views off)",
                ratios["patentclip finished on device / raw decode ceiling (views off)"], "x"),
            row("uint8 / float image transport (loader)", ratios["uint8 / float transport (loader)"], "x"),
            row("patentclip float transport / open_clip pipeline",
                ratios["patentclip float transport / open_clip (views off)"], "x"),
            row("patentclip / raw read+decode ceiling counted per drawing",
                ratios["patentclip / raw decode ceiling counted per drawing"], "x"),
            row("patentclip / read+decode+preprocess ceiling (views off)",
                ratios["patentclip / read+decode+preprocess ceiling (views off)"], "x"),
            row("open_clip / raw read+decode ceiling", ratios["open_clip / raw decode ceiling"], "x"),
            row("open_clip / read+decode+preprocess ceiling", ratios["open_clip / read+decode+preprocess ceiling"],
                "x"),
            row("views on / views off (throughput)", ratios["views on / views off (throughput)"], "x"),
            row("patentclip pipeline (views off)", ours, "samples/s"),
            row("open_clip get_wds_dataset", results["open_clip_get_wds_dataset"], "samples/s"),
            row("raw read+decode ceiling", results["raw_read_decode"], "samples/s"),
            row("raw read+decode ceiling counted per drawing", results["raw_read_decode_per_drawing"], "samples/s"),
            row("read+decode+preprocess ceiling", results["raw_read_decode_preprocess"], "samples/s"),
            row("extra cost of a second view", 1000 * cost_per_view, "ms/sample"),
            row(f"normalising uint8 pixels on {device.type}", finish_ms, "ms/sample"),
        ]
        write_json(a.json, {"summary": summary, "samples_per_s": results, "ratios": ratios,
                            "ms_per_extra_view": 1000 * cost_per_view, "finish_ms_per_sample": finish_ms,
                            "finish_device": str(device), "workers": a.workers,
                            "image_size": a.image_size, "model": a.model, "samples": n_total,
                            "batch_size": a.batch_size, "epochs": a.epochs, "quick": a.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
