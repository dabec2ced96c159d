#!/usr/bin/env python
"""The papers' long-tail claims, from a pretrained start as users run them: does class-aware training help the tail?

    python benchmarks/longtail_quality.py [--seeds 0,1,2 --configs ... --parallel 2]

Users fine-tune pretrained CLIP models (PatentCLIP: OpenAI / LAION weights; the LLM-informed paper: ImageNet
backbones against CLIP's frozen text encoder). Nothing may be downloaded here, so the pretraining is done here too,
on other patents:

Stage 1 (the "pretrained" models, built once, kept in ``--work``):
    * a disjoint synthetic corpus (``patentclip.shards.synth``, data seed ``--stage1-data-seed``: other patents of
      the same 24 design families, the same kind of captions, the same Zipf class sizes), all of it for training;
    * ``patentclip-tiny`` trained on it with ``--recipe clip``: the pretrained CLIP (its ``epoch_N.pt``), whose
      text tower the LLM-informed runs keep frozen -- now a meaningful one;
    * each test-size timm backbone (``patentclip-tiny-{resnet,efficientnet,vit,swinv2}``) trained on it with
      ArcFace over its patents (``--recipe arcface``: one centre per stage-1 patent, a label space other than the
      design classes, as ImageNet's is), its trunk saved as a timm state dict: the stand-in for timm's ImageNet
      weights (``--pretrained-image-source``). (A first version trained them as classifiers of the 24 design
      classes: supervised pretraining on the very classes that retrieval is judged by, which ImageNet weights do
      not have; docs/benchmarks.md keeps its two runs as a caveat.)

Stage 2 (the study): the long-tailed set of the earlier study (1200 patents x 4 views, 24 classes, Zipf 1.1, data
seed 0, split by patent 80/20; head = the 40 % largest classes), every configuration below for the same number of
optimizer steps, same batch, learning rate and schedule, seeds ``--seeds`` (the seed changes the new parts'
initialisation -- projectors, heads, ArcFace centres --, data order, sampler draws and augmentations; not the data
or the stage-1 models). ``patentclip-eval`` then measures image-to-image retrieval on the validation split with the
prior-art filter, relevance by class, as the LLM-informed paper does: mAP, R@5, R@10, MRR@10 for head, tail and all
classes (plus image-text R@5 and zero-shot accuracy in the JSON).

    Table 2 shape (ablation; image tower: patentclip-tiny's ViT from the stage-1 CLIP)
      clip            --recipe clip
      +class losses   clip + class_contrastive + category_contrastive, uncertainty weights
      +sampler        ... + the class-aware sampler (beta 1.2)
      +multi-view     ... + multiview_contrastive
      designclip      --recipe designclip
      llm-informed    --recipe llm-informed (text tower frozen: the stage-1 CLIP's)
    Table 1 shape (backbones and baselines)
      pretrained (no fine-tuning)   the stage-1 CLIP as it is (one row, no seeds)
      llm-informed ResNet / EfficientNet / ViT (timm) / SwinV2   --recipe llm-informed on patentclip-tiny-<b>: image
                                    tower from the stage-1 backbone, text tower from the stage-1 CLIP, frozen
      EfficientNet+ArcFace, SwinV2+ArcFace   --recipe effnetb0-arcface / swinv2b-arcface on the test-size backbone
                                    from its stage-1 weights (one ArcFace centre per training patent)
      designclip+ArcFace            DesignCLIP's two stages: --recipe arcface from this seed's designclip run

Prints both tables (mean ± sd over the seeds) and each configuration's difference to ``clip`` paired by seed, writes
everything as JSON (``--json``, with a ``summary`` list) and keeps the runs under ``--work`` (default
``bench-results/longtail``; a finished run with the same settings is reused, so an interrupted study continues).
``--quick`` (a 400-patent set, stage 1 of 1 epoch, two configurations, 1 seed) checks the machinery in minutes.

One concern (this study) in about 450 lines, a fifth of them this docstring, which states its protocol.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
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
from typing import Dict, List, Optional

ABLATION = ["clip", "+class losses", "+sampler", "+multi-view", "designclip", "llm-informed"]
BACKBONES = {"resnet": "ResNet", "efficientnet": "EfficientNet", "vit": "ViT (timm)", "swinv2": "SwinV2"}
CLASS_LOSSES = ["--loss", "clip,class_contrastive,category_contrastive", "--loss-weighting", "uncertainty"]
SAMPLER = ["--sampler", "class_aware", "--sampler-beta", "1.2"]

# name -> model, patentclip-train flags, where it starts: "clip" (the stage-1 CLIP), "backbone" (a stage-1 timm
# trunk), "backbone+text" (trunk + the stage-1 CLIP's text tower), "after:<config>" (that config's run, same seed)
CONFIGS: Dict[str, Dict] = {
    "clip": {"model": "patentclip-tiny", "argv": ["--recipe", "clip"], "start": "clip"},
    "+class losses": {"model": "patentclip-tiny", "argv": ["--recipe", "clip", *CLASS_LOSSES], "start": "clip"},
    "+sampler": {"model": "patentclip-tiny", "argv": ["--recipe", "clip", *CLASS_LOSSES, *SAMPLER], "start": "clip"},
    "+multi-view": {"model": "patentclip-tiny", "start": "clip",
                    "argv": ["--recipe", "clip", "--loss",
                             "clip,class_contrastive,category_contrastive,multiview_contrastive",
                             "--loss-weighting", "uncertainty", *SAMPLER]},
    "designclip": {"model": "patentclip-tiny", "argv": ["--recipe", "designclip"], "start": "clip"},
    "llm-informed": {"model": "patentclip-tiny", "argv": ["--recipe", "llm-informed"], "start": "clip"},
    **{f"llm-informed {label}": {"model": f"patentclip-tiny-{b}", "argv": ["--recipe", "llm-informed"],
                                 "start": "backbone+text", "backbone": b} for b, label in BACKBONES.items()},
    "EfficientNet+ArcFace": {"model": "patentclip-tiny-efficientnet", "argv": ["--recipe", "effnetb0-arcface"],
                             "start": "backbone", "backbone": "efficientnet"},
    "SwinV2+ArcFace": {"model": "patentclip-tiny-swinv2", "argv": ["--recipe", "swinv2b-arcface"],
                       "start": "backbone", "backbone": "swinv2"},
    "designclip+ArcFace": {"model": "patentclip-tiny", "argv": ["--recipe", "arcface"], "start": "after:designclip"},
}
PRETRAINED_ROW = "pretrained (no fine-tuning)"
TABLE1 = [PRETRAINED_ROW, "EfficientNet+ArcFace", "SwinV2+ArcFace", "designclip+ArcFace",
          *[f"llm-informed {label}" for label in BACKBONES.values()], "llm-informed", "designclip"]
GROUPS = (("head", "i2i_head/"), ("tail", "i2i_tail/"), ("all", "i2i_"))
T1_METRICS = (("mAP", "mAP"), ("R@5", "R@5"), ("R@10", "R@10"), ("M@10", "MRR@10"))
T2_METRICS = (("mAP", "mAP"), ("R@10", "R@10"))
EXTRA = ("image_to_text_R@5", "zeroshot_top1", "zeroshot_top1_head", "zeroshot_top1_tail")
METRIC_KEYS = [p + m for _, p in GROUPS for _, m in T1_METRICS] + list(EXTRA)


def env(a) -> Dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(a.threads), "MKL_NUM_THREADS": str(a.threads),
            "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def build_set(root: Path, patents: int, classes: int, image_size: int, seed: int, splits) -> Dict:
    from patentclip.shards.build import build_shards, shard_pattern
    from patentclip.shards.synth import generate_synthetic_patents

    names = [n for n, _ in splits]
    if not all((root / "shards" / n / "sizes.json").exists() for n in names):
        print(f"building the synthetic set in {root}", file=sys.stderr, flush=True)
        manifest = generate_synthetic_patents(root / "patents", num_patents=patents, num_classes=classes,
                                              image_size=image_size, seed=seed)
        build_shards(manifest, root / "shards", samples_per_shard=400, splits=tuple(splits), seed=seed,
                     progress=False)
    out = {"root": str(root)}
    for n in names:
        classes_json = json.loads((root / "shards" / n / "classes.json").read_text())
        out[n] = shard_pattern(root / "shards" / n)
        out[f"{n}_drawings"] = sum(json.loads((root / "shards" / n / "sizes.json").read_text()).values())
        out[f"{n}_classes"] = classes_json["classes"] if isinstance(classes_json, dict) else classes_json
    with open(root / "patents" / "manifest.jsonl") as f:
        out["patent_ids"] = sorted(json.loads(line)["patent_id"] for line in f if line.strip())
    return out


# ----------------------------------------------------------------------------------------------------------------
# runs
# ----------------------------------------------------------------------------------------------------------------
def train_run(out: Path, settings: Dict, argv: List[str], a, rerun: bool = False) -> Dict:
    """patentclip-train into ``out/train`` (reused when ``out/done.json`` has the same settings)."""
    done = out / "done.json"
    if done.exists() and not rerun:
        info = json.loads(done.read_text())
        if info.get("settings") == settings:
            return info
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "patentclip.launch.train", *map(str, argv), "--workers", "0", "--logs", str(out),
           "--name", "train", "--val-frequency", "0", "--log-every-n-steps", "1000000", "--device", "cpu",
           "--precision", "fp32", "--wd", "0.1"]
    t0 = time.time()
    r = subprocess.run(cmd, env=env(a), capture_output=True, text=True)
    (out / "train.stderr").write_text(r.stderr[-20000:])
    if r.returncode != 0:
        raise RuntimeError(f"{out.name}: training failed (exit {r.returncode}); see {out / 'train.stderr'}:\n"
                           + r.stderr[-2000:])
    ckpts = sorted((out / "train" / "checkpoints").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    info = {"settings": settings, "train_s": time.time() - t0, "checkpoint": str(ckpts[-1]),
            "steps": sum(1 for _ in open(out / "train" / "train_steps.jsonl")), "command": cmd}
    shutil.rmtree(out / "train" / "checkpoints" / "deepspeed", ignore_errors=True)  # keep epoch_N.pt only
    done.write_text(json.dumps(info, indent=1))
    return info


def evaluate(checkpoint: str, data: Dict, out: Path, a) -> Dict:
    path = out / "eval.json"
    if path.exists() and path.stat().st_mtime >= os.path.getmtime(checkpoint) and not a.rerun:
        m = json.loads(path.read_text())
        return m.get("metrics", m)
    cmd = [sys.executable, "-m", "patentclip.evaluation.cli", "--val-data", data["val"],
           "--train-classes-json", str(Path(data["root"]) / "shards" / "train" / "classes.json"),
           "--checkpoint", checkpoint, "--workers", "0", "--device", "cpu", "--linear-probe", "off",
           "--seed", "0", "--ks", "5,10", "--mrr-k", "10", "--relevance", "class", "--out", str(path)]
    r = subprocess.run(cmd, env=env(a), capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"evaluation of {checkpoint} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    m = json.loads(path.read_text())
    return m.get("metrics", m)


def trunk_file(checkpoint: str, dest: Path) -> str:
    """The timm trunk of a CLIP checkpoint with a timm image tower, as a timm state dict file."""
    import torch

    from patentclip.launch import safe_load

    sd = safe_load.load(checkpoint, checkpoint, map_location="cpu")["state_dict"]  # weights-only, as everywhere
    trunk = {k[len("visual.trunk."):]: v for k, v in sd.items() if k.startswith("visual.trunk.")}
    if not trunk:
        raise RuntimeError(f"{checkpoint} has no visual.trunk.* weights")
    tmp = dest.with_suffix(".tmp")
    torch.save(trunk, tmp)
    os.replace(tmp, dest)
    return str(dest)


def stage1(work: Path, s1: Dict, a, pool: cf.ThreadPoolExecutor) -> Dict:
    """The stage-1 CLIP and backbones (reused when built with the same settings)."""
    common = ["--train-data", s1["train"], "--batch-size", a.batch_size, "--lr", a.stage1_lr, "--warmup",
              a.warmup, "--seed", 0]
    clip_epochs = ["--epochs", a.stage1_epochs, "--save-frequency", a.stage1_epochs]
    backbone_epochs = ["--epochs", a.stage1_backbone_epochs, "--save-frequency", a.stage1_backbone_epochs]
    jobs = {"clip": (clip_epochs + ["--model", "patentclip-tiny", "--recipe", "clip"], "patentclip-tiny")}
    for b in a.backbones:
        jobs[b] = (backbone_epochs + ["--model", f"patentclip-tiny-{b}", "--recipe", "arcface", "--arcface-labels",
                                      "patent", "--arcface-scale", "30", "--arcface-margin", "0.2",
                                      "--aug-random-erasing", "0", "--aug-gridmask", "0"], f"patentclip-tiny-{b}")
    futs = {}
    for name, (extra, model) in jobs.items():
        settings = {"stage": 1, "job": name, "data": s1["digest"], "argv": [str(x) for x in common + extra]}
        futs[name] = pool.submit(train_run, work / "stage1" / name, settings, common + extra, a)
    out = {"runs": {}}
    for name, f in futs.items():
        info = f.result()
        out["runs"][name] = info
        print(f"  stage 1 {name}: {info['steps']} steps, {info['train_s']:.0f} s", flush=True)
    out["clip"] = out["runs"]["clip"]["checkpoint"]
    out["backbones"] = {b: trunk_file(out["runs"][b]["checkpoint"], work / "stage1" / f"{b}-trunk.pth")
                        for b in a.backbones}
    out["digests"] = {n: digest(r["settings"]) for n, r in out["runs"].items()}
    return out


def stage2_argv(config: str, seed: int, data: Dict, s1: Dict, a, after: Optional[str] = None) -> List:
    c = CONFIGS[config]
    argv = ["--train-data", data["train"], "--train-num-samples", a.samples_per_epoch, "--model", c["model"],
            "--batch-size", a.batch_size, "--epochs", a.epochs, "--lr", a.lr, "--warmup", a.warmup,
            "--seed", seed, "--save-frequency", a.epochs, *c["argv"]]
    start = c["start"]
    if start == "clip":
        argv += ["--pretrained", s1["clip"]]
    elif start.startswith("backbone"):
        argv += ["--pretrained-image-source", s1["backbones"][c["backbone"]]]
        if start == "backbone+text":
            argv += ["--pretrained-text", s1["clip"]]
    elif start.startswith("after:"):
        argv += ["--pretrained", after]
    return argv


def run_config(config: str, seed: int, data: Dict, s1: Dict, a, work: Path, deps: Dict) -> Dict:
    after = None
    start = CONFIGS[config]["start"]
    if start.startswith("after:"):
        after = deps[(start[len("after:"):], seed)].result()["checkpoint"]
    argv = stage2_argv(config, seed, data, s1, a, after)
    c = CONFIGS[config]
    uses = (["clip"] if c["start"] in ("clip", "backbone+text") or start.startswith("after:") else []) + \
        ([c["backbone"]] if "backbone" in c else [])
    settings = {"stage": 2, "config": config, "seed": seed, "stage1": {u: s1["digests"][u] for u in uses},
                "argv": [str(x) for x in argv if str(x) != after], "after": digest(after) if after else None}
    out = work / "runs" / f"{config.replace('+', 'plus-').replace(' ', '_').replace('(', '').replace(')', '')}-seed{seed}"
    info = train_run(out, settings, argv, a)
    metrics = evaluate(info["checkpoint"], data, out, a)
    return {"config": config, "seed": seed, "steps": info["steps"], "train_s": info["train_s"],
            "checkpoint": info["checkpoint"], **{k: metrics.get(k) for k in METRIC_KEYS}}


# ----------------------------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------------------------
def mean_sd(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(rows, configs, seeds, base="clip") -> Dict:
    """Per configuration: mean and sd over seeds of every metric, and the paired difference to ``base``."""
    by = {(r["config"], r["seed"]): r for r in rows}
    table = {}
    for c in configs:
        have = [s for s in seeds if (c, s) in by]
        entry = {"seeds": have, "steps": sorted({by[(c, s)]["steps"] for s in have}),
                 "train_s": mean_sd([by[(c, s)]["train_s"] for s in have])[0]}
        for k in METRIC_KEYS:
            mu, sd = mean_sd([by[(c, s)].get(k) for s in have])
            diffs = [by[(c, s)][k] - by[(base, s)][k] for s in have
                     if (base, s) in by and by[(c, s)].get(k) is not None and by[(base, s)].get(k) is not None]
            dmu, dsd = mean_sd(diffs)
            entry[k] = {"mean": mu, "sd": sd, "diff": dmu, "diff_sd": dsd, "n": len(diffs)}
        table[c] = entry
    return table


def cell(v, key="mean", sd="sd", signed=False) -> str:
    if v is None or v.get(key) is None:
        return "-"
    x = 100 * v[key]
    s = f"{x:+.1f}" if signed else f"{x:.1f}"
    return s if v.get(sd) is None else f"{s} ± {100 * v[sd]:.1f}"


def markdown_table(table, rows, metrics, title) -> str:
    head = "| " + title + " | " + " | ".join(f"{g} {lab}" for g, _ in GROUPS for lab, _ in metrics) + " | steps |"
    lines = [head, "|" + "---|" * (2 + len(GROUPS) * len(metrics))]
    for r in rows:
        if r not in table:
            continue
        e = table[r]
        cells = [cell(e.get(p + m)) for _, p in GROUPS for _, m in metrics]
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {'/'.join(map(str, e['steps'])) or '-'} |")
    return "\n".join(lines)


def diff_table(table, rows, metrics, base="clip") -> str:
    lines = [f"| difference to {base} (paired by seed, points) | "
             + " | ".join(f"{g} {lab}" for g, _ in GROUPS for lab, _ in metrics) + " |",
             "|" + "---|" * (1 + len(GROUPS) * len(metrics))]
    for r in rows:
        if r not in table or r == base or r == PRETRAINED_ROW:
            continue
        lines.append(f"| {r} | " + " | ".join(cell(table[r].get(p + m), "diff", "diff_sd", True)
                                             for _, p in GROUPS for _, m in metrics) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patents", type=int, default=1200, help="Stage-2 synthetic patents, 4 drawings each.")
    ap.add_argument("--classes", type=int, default=24, help="Design classes (at most 24).")
    ap.add_argument("--image-size", type=int, default=64, help="Stored drawing size.")
    ap.add_argument("--data-seed", type=int, default=0, help="Seed of the stage-2 set.")
    ap.add_argument("--stage1-patents", type=int, default=1200, help="Stage-1 (pretraining) patents.")
    ap.add_argument("--stage1-data-seed", type=int, default=1000, help="Seed of the stage-1 set (other patents).")
    ap.add_argument("--stage1-epochs", type=int, default=6)
    ap.add_argument("--stage1-backbone-epochs", type=int, default=3,
                    help="Epochs of each backbone's stage-1 classifier training.")
    ap.add_argument("--stage1-lr", type=float, default=2e-3)
    ap.add_argument("--backbones", default=",".join(BACKBONES),
                    help="Test-size timm backbones to pretrain in stage 1 and study (default: all four).")
    ap.add_argument("--seeds", default="0,1,2", help="Stage-2 training seeds, comma-separated.")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help="Stage-2 configurations, comma-separated (the baseline 'clip' is always run). Known: "
                         + ", ".join(CONFIGS))
    ap.add_argument("--epochs", type=int, default=2, help="Stage-2 epochs.")
    ap.add_argument("--samples-per-epoch", type=int, default=None,
                    help="--train-num-samples of every stage-2 run (default: the train split's drawings).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3, help="Stage-2 learning rate (fine-tuning).")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=max(1, min(2, os.cpu_count() or 1)),
                    help="Runs at the same time (default: 2 on a 2-core machine).")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run.")
    ap.add_argument("--work", default="bench-results/longtail",
                    help="Working folder, kept: the data sets, the stage-1 models and every run's metrics; finished "
                         "runs with the same settings are reused. Default: %(default)s.")
    ap.add_argument("--rerun", action="store_true", help="Retrain stage-2 runs whose results exist in --work.")
    ap.add_argument("--quick", action="store_true",
                    help="400 patents, stage 1 of 1 epoch with one backbone, clip and llm-informed ResNet, seed 0, "
                         "1 epoch: checks the machinery only.")
    ap.add_argument("--json", default=None, help="Write the figures here as JSON.")
    a = ap.parse_args(argv)
    if a.quick:
        a.patents, a.stage1_patents, a.stage1_epochs, a.epochs, a.seeds = 400, 400, 1, 1, "0"
        a.stage1_backbone_epochs = 1
        a.backbones, a.configs, a.warmup = "resnet", "clip,llm-informed ResNet", 5
    a.backbones = [b for b in a.backbones.split(",") if b]
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {unknown}; known: {list(CONFIGS)}")
    configs = ["clip"] + [c for c in configs if c != "clip"]
    for c in configs:  # what a configuration needs
        need = CONFIGS[c].get("backbone")
        if need and need not in a.backbones:
            ap.error(f"{c} needs the {need} backbone: add it to --backbones")
        if CONFIGS[c]["start"].startswith("after:") and CONFIGS[c]["start"][6:] not in configs:
            configs.insert(configs.index(c), CONFIGS[c]["start"][6:])
    work = Path(a.work)
    if a.quick and a.work == ap.get_default("work"):
        work = Path(tempfile.mkdtemp(prefix="patentclip-longtail-quick-"))
    work.mkdir(parents=True, exist_ok=True)

    data = build_set(work / f"data-p{a.patents}-c{a.classes}-s{a.image_size}-d{a.data_seed}", a.patents, a.classes,
                     a.image_size, a.data_seed, (("train", 0.8), ("val", 0.2)))
    s1data = build_set(work / f"stage1-data-p{a.stage1_patents}-c{a.classes}-s{a.image_size}-d{a.stage1_data_seed}",
                       a.stage1_patents, a.classes, a.image_size, a.stage1_data_seed, (("train", 1.0),))
    s1data["digest"] = digest([a.stage1_patents, a.classes, a.image_size, a.stage1_data_seed])
    shared = sorted(set(data["patent_ids"]) & set(s1data["patent_ids"]))
    if a.samples_per_epoch is None:
        a.samples_per_epoch = data["train_drawings"]
    heads = sum(1 for c in data["train_classes"] if c.get("category") == "head")
    print(f"stage-2 set: {a.patents} patents, {len(data['train_classes'])} classes ({heads} head), "
          f"{data['train_drawings']} train / {data['val_drawings']} val drawings; stage-1 set: {a.stage1_patents} "
          f"other patents ({s1data['train_drawings']} drawings; {len(shared)} patent ids shared with stage 2)",
          flush=True)
    t0 = time.time()
    rows, failed = [], []
    with cf.ThreadPoolExecutor(a.parallel) as pool:
        print(f"stage 1: patentclip-tiny CLIP ({a.stage1_epochs} epochs) and backbones {a.backbones} "
              f"({a.stage1_backbone_epochs} epochs)", flush=True)
        s1 = stage1(work, s1data, a, pool)
        pre = evaluate(s1["clip"], data, work / "stage1" / "clip", a)
        pre_row = {"config": PRETRAINED_ROW, "seed": None, "steps": 0, "train_s": 0.0,
                   **{k: pre.get(k) for k in METRIC_KEYS}}
        steps = a.epochs * (a.samples_per_epoch // a.batch_size)
        # dependencies first (FIFO pool: a run waiting for another never holds back the one it waits for)
        order = sorted(configs, key=lambda c: CONFIGS[c]["start"].startswith("after:"))
        jobs = [(c, s) for s in seeds for c in order]  # seed by seed: a partial study has whole seeds
        print(f"stage 2: {len(jobs)} runs ({len(configs)} configurations x {len(seeds)} seeds), ~{steps} steps of "
              f"batch {a.batch_size} each, {a.parallel} at a time", flush=True)
        deps: Dict = {}
        for c, s in jobs:
            deps[(c, s)] = pool.submit(run_config, c, s, data, s1, a, work, deps)
        for i, f in enumerate(cf.as_completed(list(deps.values())), 1):
            c, s = next(k for k, v in deps.items() if v is f)
            try:
                r = f.result()
                rows.append(r)
                print(f"  [{i}/{len(jobs)}] {c} seed {s}: {r['steps']} steps in {r['train_s']:.0f} s, mAP head "
                      f"{100 * (r['i2i_head/mAP'] or 0):.1f} tail {100 * (r['i2i_tail/mAP'] or 0):.1f} all "
                      f"{100 * (r['i2i_mAP'] or 0):.1f}  ({time.time() - t0:.0f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - report every failed run, go on with the others
                failed.append({"config": c, "seed": s, "error": str(exc)})
                print(f"  [{i}/{len(jobs)}] {c} seed {s}: FAILED: {exc}", file=sys.stderr, flush=True)
    table = aggregate(rows, configs, seeds)
    table[PRETRAINED_ROW] = {"seeds": [], "steps": [0], "train_s": 0.0,
                             **{k: {"mean": pre_row[k], "sd": None} for k in METRIC_KEYS}}
    t1 = markdown_table(table, TABLE1, T1_METRICS, "Table 1 shape")
    t2 = markdown_table(table, ABLATION, T2_METRICS, "Table 2 shape (ablation)")
    print(f"\nvalidation split, {data['val_drawings']} drawings, prior-art filter, relevance by class; percentages, "
          f"mean ± sd over seeds {seeds}:\n\n{t1}\n\n{diff_table(table, TABLE1, T1_METRICS)}\n\n{t2}\n\n"
          f"{diff_table(table, ABLATION, T2_METRICS)}")
    summary = []
    for c in [PRETRAINED_ROW] + configs:
        for k in ("i2i_head/mAP", "i2i_tail/mAP", "i2i_mAP", "i2i_tail/R@10", "i2i_MRR@10"):
            v = table[c][k]
            if v["mean"] is not None:
                summary.append({"figure": f"{c}: {k}" + (f" (mean of {len(seeds)} seeds)" if c != PRETRAINED_ROW
                                                         else ""), "value": 100 * v["mean"], "unit": "%",
                                "target": None, "met": None})
            if c not in ("clip", PRETRAINED_ROW) and v.get("diff") is not None:
                summary.append({"figure": f"{c} - clip: {k}", "value": 100 * v["diff"], "unit": "pp",
                                "target": None, "met": None})
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": {k: v for k, v in vars(a).items()},
                       "data": {k: v for k, v in data.items() if k not in ("train_classes", "val_classes",
                                                                          "patent_ids")},
                       "classes": data["train_classes"], "stage1": s1, "pretrained": pre_row, "runs": rows,
                       "failed": failed, "table": table, "tables_md": [t1, t2], "summary": summary}, f, indent=2)
    print(f"\nruns and metrics in {work}  ({time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
