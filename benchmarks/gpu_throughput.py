#!/usr/bin/env python
"""Training throughput per GPU: ``patentclip-train --recipe clip`` (bf16, DeepSpeed ZeRO-1) vs vanilla open_clip
(torch DDP, ``--precision amp_bf16``) on ViT-B-32 and ViT-L-14, and the model FLOP utilisation of each.

    python benchmarks/gpu_throughput.py [--model ViT-B-32,ViT-L-14 --batch-size ViT-B-32=256,ViT-L-14=64
                                         --steps 20 --warmup-steps 5 --rounds 5 --peak-tflops 989 --json out.json]
    python benchmarks/gpu_throughput.py --quick      # patentclip-tiny on the CPU, a few steps: checks the code path

One process, one rank (a 1-process group: NCCL on CUDA, gloo on the CPU, shared by both sides), random init (no
weights are downloaded), the same synthetic in-memory batch for both sides, already on the device (no data
loading: this measures the training step):

* vanilla: ``open_clip_train.train.train_one_epoch`` with open_clip's own model wrapped in
  ``DistributedDataParallel``, ClipLoss (``create_loss``), AdamW with open_clip's parameter groups, its cosine
  schedule and ``torch.autocast`` of ``--precision amp_bf16`` (fp32 weights; no grad scaler, as open_clip);
* patentclip: what ``patentclip-train --recipe clip --precision bf16 --zero-stage 1`` builds (its argument
  parser, the PatentTrainModule, the DeepSpeed engine from ``launch.distributed.deepspeed_config`` -- bf16 weights, fp32
  master copy and optimizer state in ZeRO-1 --, ``launch.step.train_step``, the cosine schedule and the per-step
  ``.item()`` of the logged terms).

Each round runs ``--steps`` steps of each side (one open_clip "epoch", one loop of train_step), interleaved and
the order alternated round by round, after one untimed warm-up round of ``--warmup-steps``; on CUDA the clock
is read between ``torch.cuda.synchronize()`` calls. Step times are medians over the rounds; the ratio
patentclip/vanilla (samples/s) is paired by round (vanilla's time over patentclip's in the same round, median
over the rounds), which cancels drift. As open_clip's main does on CUDA, TF32 matmuls and cudnn.benchmark are
on (for both sides).

Model FLOP utilisation: the FLOPs of one training step (forward, CLIP loss and backward of the open_clip model at
the batch size; not the optimizer) are counted once with ``torch.utils.flop_counter.FlopCounterMode``, outside
the timed loop; achieved FLOP/s = FLOPs per step / median step time, MFU = achieved / peak. The peak is
``--peak-tflops`` or, by ``torch.cuda.get_device_name()``, the dense bf16 tensor-core peak of a known GPU
(H100 SXM 989, H100 PCIe 756, H100 NVL 835, H200 989, A100 312, L40S 362 TFLOP/s); otherwise (CPU, unknown GPU)
only the achieved TFLOP/s is given. On CUDA the peak memory of each side is reported too: the peak allocated
during its steps less the other side's resident state (weights, gradients, optimizer state; both sides stay on
the GPU while interleaved).

Without CUDA (or with ``--quick``) it runs patentclip-tiny on the CPU in fp32, same code path, ZeRO-1, gloo.
``--json PATH`` writes ``{"summary": [{"figure", "value", "unit", "target", "met"}, ...], "device", ...}``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BATCH = {"ViT-B-32": 256, "ViT-L-14": 64}
# dense bf16 tensor-core peaks, TFLOP/s; first match of the substring in torch.cuda.get_device_name() wins
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0),
               ("L40S", 362.0)]
GIB = 1024 ** 3


def parse_batch_sizes(text):
    """'256' (every model) or 'ViT-B-32=256,ViT-L-14=64' -> {model or None: size}."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        name, _, size = item.rpartition("=")
        out[name or None] = int(size)
    return out


def peak_tflops(a, device):
    """(peak TFLOP/s or None, where it came from)."""
    import torch

    if a.peak_tflops:
        return a.peak_tflops, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown on CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"built-in table: {key} dense bf16"
    return None, f"unknown GPU {name!r}"


def count_step_flops(model, loss, images, texts, autocast):
    """FLOPs of forward + loss + backward of the open_clip model on the batch (gradients dropped after)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    with FlopCounterMode(display=False) as counter:
        with autocast():
            total = sum(loss(**model(images, texts), output_dict=True).values())
        total.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def vanilla_runner(name, bs, precision, device, batch):
    """open_clip's train_one_epoch with its model in DDP; returns (run(steps), FLOPs per step, cleanup)."""
    import torch
    from open_clip import create_loss, create_model_and_transforms
    from open_clip_train.params import parse_args
    from open_clip_train.precision import get_autocast
    from open_clip_train.scheduler import cosine_lr
    from open_clip_train.train import train_one_epoch

    import step_overhead
    from patentclip.launch.model import optimizer_param_groups
    from patentclip.plugins.data import batch as B

    args = parse_args(["--model", name, "--batch-size", str(bs), "--precision", precision, "--lr", "1e-4",
                       "--warmup", "5", "--log-every-n-steps", str(10 ** 9)])
    args.device = str(device)
    args.distributed, args.world_size, args.rank, args.local_rank = True, 1, 0, 0
    args.wandb, args.distill = False, False
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(name, precision=precision, device=device, output_dict=True)
    loss = create_loss(args)
    flops = count_step_flops(model, loss, batch[B.IMAGE], batch[B.TEXT], get_autocast(precision, device.type))
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(optimizer_param_groups(model, args.wd), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps)
    scheduler = cosine_lr(optimizer, args.lr, args.warmup, 10 ** 7)
    scaler = torch.amp.GradScaler(device=device.type) if precision == "amp" else None  # as open_clip's main
    state = {"epoch": 0}

    def run(steps):
        data = {"train": step_overhead.ListData([(batch[B.IMAGE], batch[B.TEXT])] * steps, bs)}
        train_one_epoch(ddp, data, loss, state["epoch"], optimizer, scaler, scheduler, None, args)
        state["epoch"] += 1

    return run, flops, lambda: None


def patentclip_runner(name, bs, precision, zero_stage, device, batch):
    """patentclip-train's module, DeepSpeed engine and train_step; returns (run(steps), engine label, cleanup)."""
    import deepspeed
    import torch
    from open_clip import create_model_and_transforms
    from open_clip_train.scheduler import cosine_lr

    import step_overhead
    from patentclip.launch.args import parse_train_args
    from patentclip.launch.model import PatentTrainModule, make_logit_scale_nonscalar, optimizer_param_groups
    from patentclip.launch.step import train_step
    from patentclip.launch.distributed import deepspeed_config
    from patentclip.plugins.losses import LossSet

    args = parse_train_args(["--train-data", "unused", "--model", name, "--batch-size", str(bs), "--precision",
                             precision, "--device", str(device), "--lr", "1e-4", "--warmup", "5", "--zero-stage",
                             str(zero_stage), "--recipe", "clip"])
    args.distributed, args.world_size, args.rank, args.local_rank = False, 1, 0, 0
    torch.manual_seed(0)
    model, _, _ = create_model_and_transforms(name, precision="fp32", device=device, output_dict=True)
    make_logit_scale_nonscalar(model)
    module = PatentTrainModule(model, LossSet(args.loss, args, step_overhead.class_table())).to(device)
    optimizer = torch.optim.AdamW(optimizer_param_groups(module, args.wd), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=deepspeed_config(args))
    scheduler = cosine_lr(engine.optimizer, args.lr, args.warmup, 10 ** 7)
    input_dtype = torch.bfloat16 if engine.bfloat16_enabled() else (
        torch.float16 if engine.fp16_enabled() else torch.float32)
    label = (f"{'bf16' if engine.bfloat16_enabled() else 'fp16' if engine.fp16_enabled() else 'fp32'} "
             f"ZeRO-{engine.zero_optimization_stage()}")
    state = {"step": 0}

    def run(steps):
        engine.train()
        for _ in range(steps):
            scheduler(state["step"])
            total, terms, _ = train_step(engine, batch, args, device, input_dtype)
            {k: v.detach().float().item() for k, v in {**terms, "loss": total}.items()}  # the trainer's logging
            state["step"] += 1

    return run, label, engine.destroy


def bench_model(a, name, bs, device, precision):
    """Both sides on one model; returns the raw figures."""
    import open_clip
    import torch

    import step_overhead
    from patentclip.plugins.data import batch as B

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    allocated = (lambda: torch.cuda.memory_allocated(device)) if cuda else (lambda: 0)
    cfg = open_clip.get_model_config(name)
    image_size = cfg["vision_cfg"]["image_size"]
    image_size = image_size if isinstance(image_size, int) else image_size[0]
    full = step_overhead.make_batch(bs, image_size, cfg["text_cfg"]["context_length"])
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in full.items()
             if k not in B.SECOND_VIEW_FIELDS}
    del full
    vanilla_precision = {"bf16": "amp_bf16", "fp16": "amp"}.get(precision, precision)
    print(f"[{name}] building vanilla open_clip (DDP, {vanilla_precision}) and patentclip ({precision}, "
          f"ZeRO-{a.zero_stage}), batch {bs}", file=sys.stderr, flush=True)
    # resident state of each side (weights, gradients, optimizer state): what it allocates while built and
    # during its warm-up steps
    resident = {"vanilla": 0, "patentclip": 0}
    m = allocated()
    run_v, flops, cleanup_v = vanilla_runner(name, bs, vanilla_precision, device, batch)
    resident["vanilla"] += allocated() - m
    m = allocated()
    run_p, pc_label, cleanup_p = patentclip_runner(name, bs, precision, a.zero_stage, device, batch)
    resident["patentclip"] += allocated() - m
    runners = {"vanilla": run_v, "patentclip": run_p}
    for side in runners:  # warm-up round (cudnn autotuning, lazy optimizer state), untimed
        sync()
        m = allocated()
        runners[side](a.warmup_steps)
        sync()
        resident[side] += allocated() - m

    times = {side: [] for side in runners}
    peak = {side: 0 for side in runners}
    for r in range(a.rounds):
        for side in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            sync()
            t = time.perf_counter()
            runners[side](a.steps)
            sync()
            times[side].append((time.perf_counter() - t) / a.steps)
            if cuda:
                other = "patentclip" if side == "vanilla" else "vanilla"
                peak[side] = max(peak[side], torch.cuda.max_memory_allocated(device) - resident[other])
        print(f"[{name}] round {r + 1}/{a.rounds}: vanilla {times['vanilla'][-1]:.4f} s/step, patentclip "
              f"{times['patentclip'][-1]:.4f} s/step", file=sys.stderr, flush=True)
    cleanup_v()
    cleanup_p()
    del runners, run_v, run_p, cleanup_v, cleanup_p
    del batch
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    step = {side: statistics.median(ts) for side, ts in times.items()}
    return {"model": name, "batch_size": bs, "patentclip": f"patentclip {pc_label}",
            "vanilla": f"vanilla DDP {'amp' if vanilla_precision.startswith('amp') else vanilla_precision}",
            "vanilla_precision": vanilla_precision, "flops_per_step": flops, "s_per_step_rounds": times,
            "s_per_step": step, "samples_per_s": {side: bs / t for side, t in step.items()},
            "ratio": statistics.median(v / p for v, p in zip(times["vanilla"], times["patentclip"])),
            "achieved_tflops": {side: flops / t / 1e12 for side, t in step.items()},
            "peak_memory_gib": {side: v / GIB for side, v in peak.items()} if cuda else None,
            "resident_memory_gib": {side: v / GIB for side, v in resident.items()} if cuda else None,
            "memory_left_after_cleanup_gib": allocated() / GIB if cuda else None}


def resolve_args(a, cuda_available):
    """Fill the defaults that depend on the device; returns a note to print, or None."""
    note = None
    if a.device is None and not a.quick and not cuda_available:
        a.quick = True
        note = "no GPU found (torch.cuda.is_available() is False)"
    if a.quick:
        a.device, a.model = "cpu", a.model or "patentclip-tiny"
        a.precision = a.precision or "fp32"
    a.device = a.device or ("cuda" if cuda_available else "cpu")
    if a.device.startswith("cuda") and not cuda_available:
        raise SystemExit("--device cuda: no GPU found (torch.cuda.is_available() is False); leave --device out "
                         "to run the CPU check")
    cuda = a.device.startswith("cuda")
    a.model = [m for m in (a.model or ("ViT-B-32,ViT-L-14" if cuda else "patentclip-tiny")).split(",") if m]
    a.precision = a.precision or ("bf16" if cuda else "fp32")
    if a.precision == "fp16" and not cuda:
        raise SystemExit("--precision fp16 needs a GPU")
    a.steps = a.steps or (20 if cuda else 3)
    a.warmup_steps = a.warmup_steps if a.warmup_steps is not None else (5 if cuda else 1)
    a.rounds = a.rounds or (5 if cuda else 3)
    sizes = parse_batch_sizes(a.batch_size)
    a.batch_sizes = {m: sizes.get(m, sizes.get(None, DEFAULT_BATCH.get(m, 64 if cuda else 16))) for m in a.model}
    if note:
        note += f": running the --quick CPU check instead: {', '.join(a.model)} on the CPU, {a.precision}"
    elif a.quick:
        note = f"--quick: {', '.join(a.model)} on the CPU, {a.precision}"
    return note


def summary_rows(res, per, peak, cuda):
    name = res["model"]
    rows = [(f"{name} {res['patentclip']} / {res['vanilla']} (samples/s {per})", res["ratio"], "x")]
    for side in ("patentclip", "vanilla"):
        label = "patentclip" if side == "patentclip" else "vanilla open_clip"
        rows += [(f"{name} {label} samples/s {per}", res["samples_per_s"][side], "samples/s"),
                 (f"{name} {label} step time", res["s_per_step"][side], "s"),
                 (f"{name} {label} achieved TFLOP/s", res["achieved_tflops"][side], "TFLOP/s")]
        if peak:
            rows.append((f"{name} {label} MFU", 100 * res["achieved_tflops"][side] / peak, "%"))
        if cuda:
            rows.append((f"{name} {label} peak GPU memory", res["peak_memory_gib"][side], "GiB"))
    rows.append((f"{name} FLOPs per training step (batch {res['batch_size']})", res["flops_per_step"] / 1e9,
                 "GFLOP"))
    return [{"figure": f, "value": float(v), "unit": u, "target": None, "met": None} for f, v, u in rows]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help="Comma-separated open_clip model names (default: ViT-B-32,ViT-L-14 on CUDA, "
                         "patentclip-tiny on the CPU); random init, nothing downloaded.")
    ap.add_argument("--batch-size", default=None,
                    help="Per GPU: N for every model, or MODEL=N,... (default: ViT-B-32=256, ViT-L-14=64, "
                         "others 64 on CUDA / 16 on the CPU).")
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available).")
    ap.add_argument("--precision", default=None, choices=["bf16", "fp16", "fp32"],
                    help="patentclip's --precision; vanilla gets amp_bf16 / amp / fp32 (default: bf16 on CUDA, "
                         "fp32 on the CPU).")
    ap.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2], help="patentclip's --zero-stage.")
    ap.add_argument("--steps", type=int, default=None, help="Timed steps per side per round (20 CUDA, 3 CPU).")
    ap.add_argument("--warmup-steps", type=int, default=None, help="Untimed steps per side first (5 CUDA, 1 CPU).")
    ap.add_argument("--rounds", type=int, default=None, help="Timed rounds (5 CUDA, 3 CPU).")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="Peak TFLOP/s of the GPU for the MFU (default: a built-in table of known GPUs).")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on the CPU (default: torch's).")
    ap.add_argument("--quick", action="store_true",
                    help="patentclip-tiny on the CPU, fp32, a few steps (what a machine without CUDA runs).")
    ap.add_argument("--json", default=None, help="Also write the figures here as JSON.")
    a = ap.parse_args(argv)

    import torch

    note = resolve_args(a, torch.cuda.is_available())
    if note:
        print(note, flush=True)
    cuda = a.device.startswith("cuda")
    # DeepSpeed picks its accelerator at import: set it before step_overhead (which defaults it to cpu) and
    # before anything imports deepspeed
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if cuda else "cpu")
    sys.path.insert(0, BENCH_DIR)

    import logging

    import deepspeed

    from patentclip.launch.distributed import init_deepspeed
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins

    logging.basicConfig(level=logging.WARNING)
    register_model_configs()
    load_builtin_plugins()
    if cuda:
        device = torch.device(a.device if ":" in a.device else "cuda:0")
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # as open_clip_train.main
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
        device_desc = f"{name} ({device}), torch {torch.__version__}, deepspeed {deepspeed.__version__}"
        per = "per GPU"
    else:
        device = torch.device("cpu")
        if a.threads:
            torch.set_num_threads(a.threads)
        device_desc = (f"CPU, {torch.get_num_threads()} thread(s), torch {torch.__version__}, deepspeed "
                       f"{deepspeed.__version__}" + (" (no GPU found)" if not torch.cuda.is_available() else ""))
        per = "per process (CPU)"
    os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
    init_deepspeed(argparse.Namespace(), device)  # the 1-process group (nccl / gloo) both sides share
    for logger in list(logging.root.manager.loggerDict):
        logging.getLogger(logger).setLevel(logging.WARNING)
    peak, peak_source = peak_tflops(a, device)
    print(f"device: {device_desc}; peak: {f'{peak:g} TFLOP/s ({peak_source})' if peak else peak_source}",
          flush=True)

    results = [bench_model(a, m, a.batch_sizes[m], device, a.precision) for m in a.model]

    print(f"\ntraining step, 1 rank, synthetic batch on the device; {a.rounds} rounds x {a.steps} steps per side "
          f"(after {a.warmup_steps} warm-up), median step time; ratio paired by round")
    summary = []
    for res in results:
        print(f"\n{res['model']}, batch {res['batch_size']} {per}, {res['flops_per_step'] / 1e9:.1f} GFLOP/step "
              f"(FlopCounterMode, forward+loss+backward)")
        print(f"  {'side':<32} {'s/step':>9} {'samples/s':>10} {'TFLOP/s':>9} {'MFU':>7}"
              + (f" {'peak mem':>9}" if cuda else ""))
        for side in ("vanilla", "patentclip"):
            tf = res["achieved_tflops"][side]
            print(f"  {res[side]:<32} {res['s_per_step'][side]:9.4f} {res['samples_per_s'][side]:10.1f} "
                  f"{tf:9.3f} {f'{100 * tf / peak:6.1f}%' if peak else '    n/a'}"
                  + (f" {res['peak_memory_gib'][side]:7.2f}GiB" if cuda else ""))
        print(f"  patentclip / vanilla samples/s {per}: {res['ratio']:.3f}x")
        if cuda and res["memory_left_after_cleanup_gib"] > 0.5:
            print(f"  (note: {res['memory_left_after_cleanup_gib']:.2f} GiB still allocated after this model)")
        summary += summary_rows(res, per, peak, cuda)
    if not peak:
        print("\nMFU: n/a (peak unknown, pass --peak-tflops); achieved TFLOP/s above")
    else:
        print(f"\nMFU against {peak:g} TFLOP/s ({peak_source})")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"summary": summary, "device": device_desc, "peak_tflops": peak, "peak_source": peak_source,
                       "config": {k: v for k, v in vars(a).items()}, "results": results}, f, indent=2)
        print(f"wrote {a.json}")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
