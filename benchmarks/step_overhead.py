#!/usr/bin/env python
"""Time per training step: ``patentclip-train --recipe clip`` (and ``--recipe designclip``, ``--recipe
llm-informed``) vs vanilla open_clip's ``train_one_epoch`` on the same tiny model, batch and precision, and the
extra cost of each loss term, in one run.

    python benchmarks/step_overhead.py [--batch-size 64 --steps 2 --rounds 12 --zero-stage auto --threads 1]
    python benchmarks/step_overhead.py --quick --json out.json     # batch 8, 2 rounds: seconds (the suite's test)

Both sides run in this one process on the CPU, fp32, one rank, on the same in-memory batch (no data loading):

* vanilla: ``open_clip_train.train.train_one_epoch`` with open_clip's own model (0-dim logit_scale), ClipLoss
  (``create_loss``), AdamW with open_clip's parameter groups and its cosine schedule, over a list of batches;
* patentclip: what ``patentclip-train`` builds (arguments through its parser with ``--recipe clip``, the
  PatentTrainModule, the DeepSpeed engine from ``launch.distributed.deepspeed_config``, ``launch.step.train_step``,
  the cosine schedule, the per-step ``.item()`` of the logged terms);
* the other recipes, each against the same vanilla open_clip: ``--recipe designclip`` (class-aware
  classification head, class-aware contrastive and multi-view contrastive: it encodes a second image per
  sample, so it is expected well above 1x) and ``--recipe llm-informed`` (clip + class + category contrastive,
  uncertainty weights, text tower frozen as the trainer freezes it) -- reported, no target;
* loss terms: the same trainer with ``clip`` plus one more term, all non-view terms (fixed and uncertainty
  weighting), or ``multiview_contrastive`` (which encodes a second image per sample) -- all on ONE model,
  engine and optimizer whose criterion is switched between these loss sets, so only the loss differs;
* the trainer and vanilla open_clip are two instances each, averaged per round.

Runners are interleaved round by round (one "epoch" of ``--steps`` steps each per round, the first round a
warm-up, the order rotated every round). Step times are medians over the rounds; ratios are paired by round (a
runner's time over its reference's in the same round, median over the rounds), which cancels load that drifts
over time. Two clocks: the process CPU time (the default for the ratios; with ``--threads 1`` it is the work
done, and it is robust when other jobs share the machine) and the wall clock. Prints the table and the ratios
against the targets (``--recipe clip`` <= 1.10x vanilla; the non-view terms together < +5%). ``--json`` writes
the figures and a ``"summary"`` list (benchmarks/_common.py) that ``benchmarks/run_all.py`` collects.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402  (after DS_ACCELERATOR)

from _common import at_most, below, parse_args, row, write_json  # noqa: E402
from patentclip.plugins.data import batch as B  # noqa: E402

NON_VIEW = ["class_aware_contrastive", "class_aware_classification", "class_contrastive", "category_contrastive"]
NUM_CLASSES = 12
RECIPES = ["designclip", "llm-informed"]  # timed against vanilla open_clip besides --recipe clip


class ListLoader:
    """What train_one_epoch needs of a DataInfo: a dataloader with num_batches/num_samples, set_epoch."""

    def __init__(self, batches, batch_size):
        self.batches = batches
        self.num_batches = len(batches)
        self.num_samples = len(batches) * batch_size

    def __iter__(self):
        return iter(self.batches)


class ListData:
    def __init__(self, batches, batch_size):
        self.dataloader = ListLoader(batches, batch_size)

    def set_epoch(self, epoch):
        pass


def make_batch(bs, image_size, context_length, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {B.IMAGE: torch.randn(bs, 3, image_size, image_size, generator=g),
            B.TEXT: torch.randint(1, 49000, (bs, context_length), generator=g),
            B.IMAGE2: torch.randn(bs, 3, image_size, image_size, generator=g),
            B.CLASS_ID: torch.randint(0, NUM_CLASSES, (bs,), generator=g),
            B.HAS_VIEW2: torch.ones(bs, dtype=torch.long),
            B.KEY: [f"k{i}" for i in range(bs)], B.VIEW: ["front"] * bs, B.VIEW2: ["side"] * bs,
            B.PATENT_ID: [f"p{i}" for i in range(bs)]}


def class_table():
    from patentclip.plugins.classes import ClassInfo, ClassTable

    return ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", 2 + 100 // (i + 1)) for i in range(NUM_CLASSES)])


def vanilla_runner(a, batch, steps):
    """open_clip's own train_one_epoch on `steps` copies of the batch."""
    import torch
    from open_clip import create_loss, create_model_and_transforms
    from open_clip_train.params import parse_args
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    from patentclip.launch.model import optimizer_param_groups

    args = parse_args(["--model", a.model, "--batch-size", str(a.batch_size), "--precision", "fp32", "--device",
                       "cpu", "--lr", "1e-4", "--warmup", "5", "--log-every-n-steps", str(10 ** 9)])
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    args.wandb, args.distill = False, False
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(args.model, precision="fp32", device="cpu", output_dict=True)
    loss = create_loss(args)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, args.wd),  # open_clip main's two groups
                                  lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps)
    data = {"train": ListData([(batch[B.IMAGE], batch[B.TEXT])] * steps, a.batch_size)}
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, steps * 1000)
    state = {"epoch": 0}

    def run():
        train_one_epoch(model, data, loss, state["epoch"], optimizer, None, scheduler, None, args)
        state["epoch"] += 1

    return run


class SwitchableCriterion(torch.nn.Module):
    """Several LossSets in one module (all their parameters in the one optimizer); ``active`` picks the one a
    step uses. Lets the loss terms be timed on the same model, engine and optimizer: only the loss differs."""

    def __init__(self, sets):
        super().__init__()
        self.sets = torch.nn.ModuleDict(sets)
        self.active = next(iter(sets))

    @property
    def needs_second_view(self):
        return self.sets[self.active].needs_second_view

    @property
    def needs_text(self):
        return self.sets[self.active].needs_text

    def set_step(self, step: int) -> None:
        self.sets[self.active].set_step(step)

    def forward(self, features, batch):
        return self.sets[self.active](features, batch)


def patentclip_runner(a, batch, steps, variants=None, extra_argv=()):
    """patentclip-train's model, engine and step (see the module docstring) on `steps` copies of the batch.

    ``variants``: {name: (loss spec, weighting)} -> one engine whose criterion switches between these LossSets;
    returns {name: run}. Without: ``--recipe clip`` (plus ``extra_argv``, where a later ``--recipe X`` wins, as
    argparse keeps the last value and apply_recipe then sets X's settings) and returns run. The towers the
    recipe (or ``--lock-text``/``--lock-image``) freezes are frozen as patentclip-train does."""
    import torch
    from open_clip import create_model_and_transforms
    from open_clip_train.scheduler import cosine_lr

    from patentclip.launch.args import parse_train_args
    from patentclip.launch.model import (PatentTrainModule, lock_towers, make_logit_scale_nonscalar,
                                         optimizer_param_groups)
    from patentclip.launch.step import train_step
    from patentclip.launch.distributed import deepspeed_config
    from patentclip.plugins.losses import LossSet

    argv = ["--train-data", "unused", "--model", a.model, "--batch-size", str(a.batch_size), "--precision", "fp32",
            "--device", "cpu", "--lr", "1e-4", "--warmup", "5", "--zero-stage", str(a.zero_stage), "--recipe", "clip",
            *extra_argv]
    args = parse_train_args(argv)
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(args.model, precision="fp32", device="cpu", output_dict=True)
    make_logit_scale_nonscalar(model)
    lock_towers(model, args)  # as launch/train.py does, before the optimizer sees the parameters
    if variants:
        sets = {}
        for name, (spec, weighting) in variants.items():
            v_args = argparse.Namespace(**{**vars(args), "loss": spec, "loss_weighting": weighting})
            sets[name] = LossSet(spec, v_args, class_table())
        criterion = SwitchableCriterion(sets)
    else:
        criterion = LossSet(args.loss, args, class_table())
    module = PatentTrainModule(model, criterion)
    optimizer = torch.optim.AdamW(optimizer_param_groups(module, args.wd), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps)
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(args))
    scheduler = cosine_lr(engine.optimizer, args.lr, args.warmup, steps * 1000)
    single = {k: v for k, v in batch.items() if k not in B.SECOND_VIEW_FIELDS}
    device, state = torch.device("cpu"), {"step": 0}

    def make_run(name=None):
        def run():
            if name is not None:
                criterion.active = name
            b = batch if criterion.needs_second_view else single
            engine.train()
            for _ in range(steps):
                scheduler(state["step"])
                total, terms, _ = train_step(engine, b, args, device, torch.float32)
                {k: v.detach().float().item() for k, v in {**terms, "loss": total}.items()}
                state["step"] += 1
        return run

    if variants:
        return {name: make_run(name) for name in variants}
    return make_run()


def init_single_rank():
    import socket

    from patentclip.launch.distributed import init_deepspeed
    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("MASTER_PORT", str(port))
    init_deepspeed(argparse.Namespace(), torch.device("cpu"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="patentclip-tiny")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2, help="Steps per runner per round.")
    ap.add_argument("--rounds", type=int, default=12, help="Timed rounds (after one warm-up round).")
    ap.add_argument("--zero-stage", default="auto", choices=["auto", "0", "1", "2"],
                    help="patentclip-train's --zero-stage (its default, auto, is 0 on one rank); the other of "
                         "0/1 is timed too.")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, see above).")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="The clock of the ratios.")
    ap.add_argument("--json", default=None, help="Also write the figures here as JSON (with a \"summary\" list).")
    ap.add_argument("--quick", action="store_true",
                    help="Batch 8, 1 step per round, 2 rounds: seconds; for checking the script, not the figures.")
    a = parse_args(ap, argv, dict(batch_size=8, steps=1, rounds=2))
    a.zero_stage = 0 if a.zero_stage == "auto" else int(a.zero_stage)  # what auto means on one rank

    import logging

    import torch

    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins

    logging.basicConfig(level=logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    register_model_configs()
    load_builtin_plugins()
    init_single_rank()
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.WARNING)

    import open_clip

    cfg = open_clip.get_model_config(a.model)
    batch = make_batch(a.batch_size, cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"])
    # the trainer against vanilla open_clip: two instances of each (their mean per round), so that how one
    # instance's buffers happen to sit in memory does not decide the ratio
    runners = {
        "vanilla open_clip #1": vanilla_runner(a, batch, a.steps),
        "vanilla open_clip #2": vanilla_runner(a, batch, a.steps),
        "patentclip --recipe clip #1": patentclip_runner(a, batch, a.steps),
        "patentclip --recipe clip #2": patentclip_runner(a, batch, a.steps),
    }
    other = 1 if a.zero_stage == 0 else 0
    other_name = f"patentclip --recipe clip --zero-stage {other}"
    runners[other_name] = patentclip_runner(a, batch, a.steps, extra_argv=["--zero-stage", str(other)])
    # the other recipes, same model, batch and precision, each against vanilla open_clip
    recipe_names = {r: f"patentclip --recipe {r}" for r in RECIPES}
    for r, name in recipe_names.items():
        runners[name] = patentclip_runner(a, batch, a.steps, extra_argv=["--recipe", r])
    # the loss terms: one engine, the criterion switched between the variants
    variants = {"loss clip": ("clip", "fixed")}
    for term in NON_VIEW:
        variants[f"+ {term}"] = (f"clip,{term}", "fixed")
    variants["+ all non-view terms"] = (",".join(["clip"] + NON_VIEW), "fixed")
    variants["+ all non-view, uncertainty weights"] = (",".join(["clip"] + NON_VIEW), "uncertainty")
    variants["+ multiview_contrastive (2nd view)"] = ("clip,multiview_contrastive", "fixed")
    runners.update(patentclip_runner(a, batch, a.steps, variants=variants))

    times = {"cpu": {name: [] for name in runners}, "wall": {name: [] for name in runners}}
    names = list(runners)
    for r in range(a.rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = runners[name]
            w, c = time.perf_counter(), time.process_time()
            run()
            if r > 0:
                times["wall"][name].append((time.perf_counter() - w) / a.steps)
                times["cpu"][name].append((time.process_time() - c) / a.steps)
        print(f"round {r}/{a.rounds} done", file=sys.stderr, flush=True)

    # paired ratios: each round's time of a runner over the same round's reference (vanilla for the trainer,
    # the same engine with the clip loss for the loss terms), median over the rounds
    def per_round(clock, names):
        return [sum(vals) / len(vals) for vals in zip(*(times[clock][n] for n in names))]

    groups = {"vanilla open_clip": ["vanilla open_clip #1", "vanilla open_clip #2"],
              "patentclip --recipe clip": ["patentclip --recipe clip #1", "patentclip --recipe clip #2"]}
    groups.update({n: [n] for n in runners if not n.endswith(("#1", "#2"))})
    refs = {"patentclip --recipe clip": "vanilla open_clip", other_name: "vanilla open_clip"}
    refs.update({name: "vanilla open_clip" for name in recipe_names.values()})
    refs.update({n: "loss clip" for n in variants if n != "loss clip"})

    def ratios(clock, name):
        return sorted(x / y for x, y in zip(per_round(clock, groups[name]), per_round(clock, groups[refs[name]])))

    def q(xs, f):
        return xs[min(len(xs) - 1, int(f * len(xs)))]

    med = {clock: {g: statistics.median(per_round(clock, ns)) for g, ns in groups.items()} for clock in times}
    print(f"\nstep time, {a.model}, batch {a.batch_size}, fp32 CPU, {torch.get_num_threads()} thread(s), "
          f"ZeRO {a.zero_stage}, 1 rank; {a.rounds} rounds x {a.steps} steps; medians, ratios paired by round "
          f"on the {a.clock} clock [25%-75% of the rounds]")
    print(f"{'runner':<44} {'cpu s/step':>10} {'wall s/step':>11}   {'ratio':<28}")
    summary = {}
    for name in groups:
        if name not in refs:
            label = "reference"
        else:
            rs = ratios(a.clock, name)
            summary[name] = {"ratio": statistics.median(rs), "q25": q(rs, 0.25), "q75": q(rs, 0.75),
                             "against": refs[name]}
            if refs[name] == "vanilla open_clip":
                label = f"{statistics.median(rs):.3f}x vanilla [{q(rs, 0.25):.3f}-{q(rs, 0.75):.3f}]"
            else:
                label = f"{statistics.median(rs) - 1:+.1%} vs clip [{q(rs, 0.25) - 1:+.1%} {q(rs, 0.75) - 1:+.1%}]"
        print(f"{name:<44} {med['cpu'][name]:10.4f} {med['wall'][name]:11.4f}   {label}")
    ratio = summary["patentclip --recipe clip"]["ratio"]
    non_view = summary["+ all non-view terms"]["ratio"] - 1
    wall_ratio = statistics.median(ratios("wall", "patentclip --recipe clip"))
    wall_non_view = statistics.median(ratios("wall", "+ all non-view terms")) - 1
    print(f"\n--recipe clip --zero-stage {other} / vanilla open_clip: {summary[other_name]['ratio']:.3f}x")
    for r, name in recipe_names.items():
        print(f"--recipe {r} / vanilla open_clip: {summary[name]['ratio']:.3f}x (no target)"
              f"   [wall clock: {statistics.median(ratios('wall', name)):.3f}x]")
    print(f"--recipe clip / vanilla open_clip: {ratio:.3f}x (target <= 1.10x): {'OK' if ratio <= 1.10 else 'MISSED'}"
          f"   [wall clock: {wall_ratio:.3f}x]")
    print(f"all non-view loss terms together: {non_view:+.1%} (target < +5%): {'OK' if non_view < 0.05 else 'MISSED'}"
          f"   [wall clock: {wall_non_view:+.1%}]")
    if a.json:
        rows = [at_most("--recipe clip / vanilla open_clip (step time)", ratio, 1.10),
                row("--recipe clip / vanilla open_clip (step time, wall clock)", wall_ratio, "x")]
        notes = {"designclip": " (2 views per sample)", "llm-informed": " (text tower frozen)"}
        rows += [row(f"--recipe {r}{notes.get(r, '')} / vanilla open_clip (step time)", summary[name]["ratio"], "x")
                 for r, name in recipe_names.items()]
        rows.append(row(f"--recipe clip --zero-stage {other} / vanilla open_clip (step time)",
                        summary[other_name]["ratio"], "x"))
        rows.append(below("extra step time of all non-view loss terms together", 100 * non_view, 5.0))
        rows += [row(f"extra step time of loss term {n.lstrip('+ ')}", 100 * (summary[n]["ratio"] - 1), "%")
                 for n in variants if n not in ("loss clip", "+ all non-view terms")]
        rows.append(row(f"vanilla open_clip step ({a.clock} clock)", med[a.clock]["vanilla open_clip"], "s"))
        write_json(a.json, {"summary": rows, "config": vars(a), "median_s_per_step": med, "ratios": summary,
                            "clip_vs_vanilla": ratio, "non_view_extra": non_view, "wall_clip_vs_vanilla": wall_ratio,
                            "wall_non_view_extra": wall_non_view,
                            "recipes_vs_vanilla": {r: summary[n]["ratio"] for r, n in recipe_names.items()}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
