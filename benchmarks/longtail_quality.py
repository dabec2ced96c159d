#!/usr/bin/env python
"""The papers' long-tail claims on data anyone can regenerate: does class-aware training help the tail?

    python benchmarks/longtail_quality.py [--patents 1200 --classes 24 --epochs 6 --seeds 0,1,2 --parallel 2]

A synthetic long-tailed design-patent set (``patentclip.shards.synth``: 24 Locarno-like classes of parametric
3-D wireframes, four views per patent, patent counts per class following a Zipf law with exponent 1.1, so the
largest class has ~25x the patents of the smallest) is built once with fixed seeds and split by patent
(80 % train, 20 % validation). Head classes are the 40 % most frequent (``classes.json``'s ``category``, the
shard builder's documented rule), the rest are tail.

The tiny model (``patentclip-tiny``, trained from scratch: nothing is downloaded) is trained with each
configuration below for the SAME number of optimizer steps (``--epochs`` x ``--samples-per-epoch`` / batch;
the class-aware sampler keeps the epoch length), same batch, learning rate and schedule, for every seed; the
seed changes the initialisation, the data order, the sampler's draws and the augmentations, not the data.
Then ``patentclip-eval`` measures on the validation split, as the LLM-informed paper does: image-to-image
retrieval mAP and R@10 with the prior-art filter, for all, head and tail classes; image-to-text R@5; zero-shot
top-1 with class-name prompts.

Configurations (an ablation in the spirit of the LLM-informed paper's Table 2, plus the three recipes):

    clip               --recipe clip (the baseline: open_clip's CLIP loss, natural class distribution)
    +class losses      clip + class_contrastive + category_contrastive, learned uncertainty weights
    +sampler           ... + the class-aware sampler (beta 1.2, DesignCLIP's value)
    +multi-view        ... + multiview_contrastive (a second view of the same patent)
    designclip         --recipe designclip (LCACLS 1.0 + LCACL 0.1 + LMVCL 0.2, beta 1.2, class-aware sampler)
    llm-informed       --recipe llm-informed (L_clip + L_cls + L_cat, uncertainty weights, drawing
                       augmentations, and the paper's FROZEN text encoder -- which here is a random one)

Prints a table of mean +- standard deviation over the seeds and each configuration's difference to the
baseline, writes everything as JSON (``--json``, with a ``summary`` list) and the per-run metrics under
``--work`` (default ``bench-results/longtail``; finished runs with the same settings are reused, so an
interrupted benchmark continues). Takes ~25 min on 2 CPU cores with the defaults; ``--quick`` (2 configurations, 1 seed, 1 epoch)
takes ~2 min and only checks that the machinery works.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "clip": ["--recipe", "clip"],
    "+class losses": ["--recipe", "clip", "--loss", "clip,class_contrastive,category_contrastive",
                      "--loss-weighting", "uncertainty"],
    "+sampler": ["--recipe", "clip", "--loss", "clip,class_contrastive,category_contrastive",
                 "--loss-weighting", "uncertainty", "--sampler", "class_aware", "--sampler-beta", "1.2"],
    "+multi-view": ["--recipe", "clip", "--loss",
                    "clip,class_contrastive,category_contrastive,multiview_contrastive",
                    "--loss-weighting", "uncertainty", "--sampler", "class_aware", "--sampler-beta", "1.2"],
    "designclip": ["--recipe", "designclip"],
    "llm-informed": ["--recipe", "llm-informed"],
}
# (metric key of patentclip-eval, column label)
METRICS = [
    ("i2i_mAP", "mAP"), ("i2i_head/mAP", "mAP head"), ("i2i_tail/mAP", "mAP tail"),
    ("i2i_R@10", "R@10"), ("i2i_head/R@10", "R@10 head"), ("i2i_tail/R@10", "R@10 tail"),
    ("image_to_text_R@5", "i2t R@5"), ("zeroshot_top1", "zero-shot"),
    ("zeroshot_top1_head", "zs head"), ("zeroshot_top1_tail", "zs tail"),
]
HEADLINE = ["i2i_head/mAP", "i2i_tail/mAP", "i2i_tail/R@10", "image_to_text_R@5", "zeroshot_top1"]


def build_data(work: Path, a) -> dict:
    """The long-tailed synthetic set, built once per (patents, classes, image size, data seed)."""
    from patentclip.shards.build import build_shards, shard_pattern
    from patentclip.shards.synth import generate_synthetic_patents

    root = work / f"data-p{a.patents}-c{a.classes}-s{a.image_size}-d{a.data_seed}"
    if not (root / "shards" / "val" / "sizes.json").exists():
        print(f"building the synthetic set in {root}", file=sys.stderr, flush=True)
        manifest = generate_synthetic_patents(root / "patents", num_patents=a.patents, num_classes=a.classes,
                                              image_size=a.image_size, seed=a.data_seed)
        build_shards(manifest, root / "shards", samples_per_shard=400, splits=(("train", 0.8), ("val", 0.2)),
                     seed=a.data_seed, progress=False)
    classes = json.loads((root / "shards" / "train" / "classes.json").read_text())
    classes = classes["classes"] if isinstance(classes, dict) else classes
    train_n = sum(json.loads((root / "shards" / "train" / "sizes.json").read_text()).values())
    val_n = sum(json.loads((root / "shards" / "val" / "sizes.json").read_text()).values())
    return {"train": shard_pattern(root / "shards" / "train"), "val": shard_pattern(root / "shards" / "val"),
            "classes": classes, "train_drawings": train_n, "val_drawings": val_n, "root": str(root)}


def run_settings(config: str, seed: int, a) -> dict:
    """Everything a run's result depends on: a finished run in --work is reused only if these match."""
    keys = ("patents", "classes", "image_size", "data_seed", "epochs", "samples_per_epoch", "batch_size", "lr",
            "warmup", "threads")
    return {"config": config, "argv": CONFIGS[config], "seed": seed, **{k: getattr(a, k) for k in keys}}


def run_one(config: str, seed: int, data: dict, a, work: Path) -> dict:
    """Train one configuration with one seed, evaluate its last checkpoint; returns the metrics."""
    name = f"{config.replace('+', 'plus-').replace(' ', '_')}-seed{seed}"
    out = work / "runs" / name
    metrics_file = out / "metrics.json"
    settings = run_settings(config, seed, a)
    if metrics_file.exists() and not a.rerun:
        done = json.loads(metrics_file.read_text())
        if done.get("settings") == settings:  # finished earlier with the same settings: reuse
            return done
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
           "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    train = [sys.executable, "-m", "patentclip.launch.train", "--train-data", data["train"],
             "--train-num-samples", str(a.samples_per_epoch), "--model", "patentclip-tiny",
             "--batch-size", str(a.batch_size), "--epochs", str(a.epochs), "--lr", str(a.lr),
             "--warmup", str(a.warmup), "--wd", "0.1", "--workers", "0", "--seed", str(seed),
             "--logs", str(out), "--name", "train", "--val-frequency", "0", "--save-frequency", str(a.epochs),
             "--log-every-n-steps", "1000000", "--device", "cpu", "--precision", "fp32", *CONFIGS[config]]
    t0 = time.time()
    r = subprocess.run(train, env=env, capture_output=True, text=True)
    train_s = time.time() - t0
    (out / "train.stderr").write_text(r.stderr[-20000:])
    if r.returncode != 0:
        raise RuntimeError(f"{name}: training failed (exit {r.returncode}); see {out / 'train.stderr'}:\n"
                           + r.stderr[-2000:])
    steps = sum(1 for _ in open(out / "train" / "train_steps.jsonl"))
    ckpt = out / "train" / "checkpoints" / f"epoch_{a.epochs}.pt"
    ev = [sys.executable, "-m", "patentclip.evaluation.cli", "--val-data", data["val"],
          "--train-classes-json", str(Path(data["root"]) / "shards" / "train" / "classes.json"),
          "--model", "patentclip-tiny", "--checkpoint", str(ckpt), "--workers", "0", "--device", "cpu",
          "--linear-probe", "off", "--seed", "0", "--out", str(out / "eval.json")]
    r = subprocess.run(ev, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: evaluation failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    m = json.loads((out / "eval.json").read_text())
    m = m.get("metrics", m)
    row = {"config": config, "seed": seed, "steps": steps, "train_s": train_s,
           **{k: m.get(k) for k, _ in METRICS}, "settings": settings}
    metrics_file.write_text(json.dumps(row, indent=1))
    shutil.rmtree(out / "train" / "checkpoints" / "deepspeed", ignore_errors=True)  # keep epoch_N.pt only
    return row


def mean_sd(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows, configs, seeds) -> dict:
    """Per configuration: mean and sd over seeds of every metric, and the paired difference to the baseline
    (same seed), mean and sd."""
    by = {(r["config"], r["seed"]): r for r in rows}
    base = configs[0]
    table = {}
    for c in configs:
        entry = {"steps": sorted({by[(c, s)]["steps"] for s in seeds if (c, s) in by}),
                 "train_s": mean_sd([by[(c, s)]["train_s"] for s in seeds if (c, s) in by])[0]}
        for k, _ in METRICS:
            mu, sd = mean_sd([by[(c, s)].get(k) for s in seeds if (c, s) in by])
            diffs = [by[(c, s)][k] - by[(base, s)][k] for s in seeds
                     if (c, s) in by and (base, s) in by and by[(c, s)].get(k) is not None
                     and by[(base, s)].get(k) is not None]
            dmu, dsd = mean_sd(diffs)
            entry[k] = {"mean": mu, "sd": sd, "diff_vs_" + base: dmu, "diff_sd": dsd, "n": len(diffs)}
        table[c] = entry
    return table


def format_table(table, configs, seeds) -> str:
    cols = [(k, lab) for k, lab in METRICS]
    w = 13
    lines = [f"{'config':<14}" + "".join(f"{lab:>{w}}" for _, lab in cols) + f"{'steps':>7}",
             "-" * (14 + w * len(cols) + 7)]
    for c in configs:
        cells = []
        for k, _ in cols:
            v = table[c][k]
            cells.append(f"{'-':>{w}}" if v["mean"] is None else f"{100 * v['mean']:>{w - 6}.1f} ±{100 * v['sd']:4.1f}")
        steps = table[c]["steps"]
        lines.append(f"{c:<14}" + "".join(cells) + f"{'/'.join(map(str, steps)):>7}")
    lines.append("")
    lines.append(f"difference to clip, paired by seed (mean ± sd over {len(seeds)} seed(s), percentage points):")
    for c in configs[1:]:
        cells = []
        for k, _ in cols:
            v = table[c][k]
            d = v.get("diff_vs_" + configs[0])
            cells.append(f"{'-':>{w}}" if d is None else f"{100 * d:>+{w - 6}.1f} ±{100 * v['diff_sd']:4.1f}")
        lines.append(f"{c:<14}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patents", type=int, default=1200, help="Synthetic patents, 4 drawings each.")
    ap.add_argument("--classes", type=int, default=24, help="Design classes (at most 24).")
    ap.add_argument("--image-size", type=int, default=64, help="Stored drawing size (the tiny model's input).")
    ap.add_argument("--data-seed", type=int, default=0, help="Seed of the synthetic set (fixed across runs).")
    ap.add_argument("--seeds", default="0,1,2", help="Training seeds, comma-separated.")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="Configurations to run, comma-separated; the "
                    "first is the baseline of the differences. Known: " + ", ".join(CONFIGS))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--samples-per-epoch", type=int, default=None,
                    help="--train-num-samples of every run (default: the train split's drawings).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--parallel", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="Runs at the same time (default: 2 on a 2-core machine).")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run.")
    ap.add_argument("--work", default="bench-results/longtail",
                    help="Working folder, kept: the data set and every run's metrics. A run finished earlier "
                         "with the same settings is not trained again, so an interrupted benchmark continues "
                         "where it stopped. Default: %(default)s.")
    ap.add_argument("--rerun", action="store_true", help="Retrain runs whose metrics exist in --work.")
    ap.add_argument("--quick", action="store_true",
                    help="clip and +class losses, seed 0, 1 epoch of 400 patents: checks the machinery only.")
    ap.add_argument("--json", default=None, help="Write the figures here as JSON.")
    a = ap.parse_args(argv)
    if a.quick:
        a.patents, a.epochs, a.seeds, a.configs, a.warmup = 400, 1, "0", "clip,+class losses", 5
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    work = Path(a.work)
    if a.quick and a.work == ap.get_default("work"):
        work = Path(tempfile.mkdtemp(prefix="patentclip-longtail-quick-"))
    work.mkdir(parents=True, exist_ok=True)
    data = build_data(work, a)
    if a.samples_per_epoch is None:
        a.samples_per_epoch = data["train_drawings"]
    heads = sum(1 for c in data["classes"] if c.get("category") == "head")
    counts = sorted((c["count"] for c in data["classes"]), reverse=True)
    print(f"synthetic set: {a.patents} patents, {len(data['classes'])} classes ({heads} head, "
          f"{len(data['classes']) - heads} tail; drawings per class {counts[0]} .. {counts[-1]}), "
          f"{data['train_drawings']} train / {data['val_drawings']} val drawings", flush=True)
    steps = a.epochs * (a.samples_per_epoch // a.batch_size)
    jobs = [(c, s) for s in seeds for c in configs]
    print(f"{len(jobs)} runs ({len(configs)} configurations x {len(seeds)} seeds), ~{steps} steps of batch "
          f"{a.batch_size} each, {a.parallel} at a time", flush=True)
    rows, failed = [], []
    t0 = time.time()
    with cf.ThreadPoolExecutor(a.parallel) as pool:
        futs = {pool.submit(run_one, c, s, data, a, work): (c, s) for c, s in jobs}
        for i, f in enumerate(cf.as_completed(futs), 1):
            c, s = futs[f]
            try:
                rows.append(f.result())
                r = rows[-1]
                print(f"  [{i}/{len(jobs)}] {c} seed {s}: {r['steps']} steps in {r['train_s']:.0f} s, "
                      f"mAP head {100 * (r['i2i_head/mAP'] or 0):.1f} tail {100 * (r['i2i_tail/mAP'] or 0):.1f}, "
                      f"zero-shot {100 * (r['zeroshot_top1'] or 0):.1f}  ({time.time() - t0:.0f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every failed run, go on with the others
                failed.append({"config": c, "seed": s, "error": str(exc)})
                print(f"  [{i}/{len(jobs)}] {c} seed {s}: FAILED: {exc}", file=sys.stderr, flush=True)
    table = aggregate(rows, configs, seeds)
    print(f"\nvalidation split, {data['val_drawings']} drawings; percentages, mean ± sd over seeds {seeds}:")
    print(format_table(table, configs, seeds))
    step_sets = {tuple(table[c]["steps"]) for c in configs if table[c]["steps"]}
    if len(step_sets) > 1:
        print(f"WARNING: the configurations did not all take the same number of steps: {step_sets}",
              file=sys.stderr)
    summary = []
    for c in configs:
        for k in HEADLINE:
            v = table[c][k]
            if v["mean"] is not None:
                summary.append({"figure": f"{c}: {k} (mean of {len(seeds)} seeds)", "value": 100 * v["mean"],
                                "unit": "%", "target": None, "met": None})
            d = v.get("diff_vs_" + configs[0])
            if c != configs[0] and d is not None:
                summary.append({"figure": f"{c} - {configs[0]}: {k}", "value": 100 * d, "unit": "pp",
                                "target": None, "met": None})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "data": {k: v for k, v in data.items() if k != "classes"},
                       "classes": data["classes"], "runs": rows, "failed": failed, "table": table,
                       "summary": summary}, f, indent=2)
    print(f"\nruns and metrics in {work / 'runs'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
