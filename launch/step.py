"""One training step of patentclip-train: forward through the DeepSpeed engine, backward, optimizer step.

``train_step`` is open_clip's ``train_one_epoch`` step body (``model(images, texts)`` -> loss -> backward ->
step -> clamp ``logit_scale``) with the patent batch (class ids, views) handed to the loss plugins.

``train_step_accum`` is open_clip's ``--accum-freq`` feature cache under DeepSpeed: the features of the
``accum_freq`` micro-batches are computed once without gradient; then each micro-batch is recomputed with
gradient, the loss is taken over all micro-batches (the recomputed one plus the cached others, whose
embeddings serve as negatives), and ``engine.backward(loss, scale_wrt_gas=False)`` + ``engine.step()`` run
per micro-batch, the DeepSpeed config having ``gradient_accumulation_steps = accum_freq`` (the optimizer
steps at the last one). Like open_clip the loss is not divided by accum_freq: the summed gradient of the
encoders equals that of one batch of ``accum_freq x batch_size``. Unlike open_clip, ``logit_scale`` and the
loss plugins' own parameters (heads, learned weights) take their gradient in the last pass only (open_clip
adds ``logit_scale``'s ``accum_freq`` times), so every gradient equals the big batch's exactly.

``begin_step`` (called by the trainer before every optimizer step) makes every random draw of the model and loss
side a pure function of (seed, step, rank): it seeds torch's global generator (CPU and CUDA) from them (open_clip's
patch dropout, dropout layers, any loss drawing from torch) and tells the loss plugins the step (their own
generators, e.g. the classification head's caption dropout). A resumed run thus draws what the uninterrupted
run drew at the same step, whatever consumed the global generator in between (creating a data-loader iterator
draws its base seed from it).

``prepare_engine`` (called by both) switches off DeepSpeed's gradient all-reduce where it is the identity (one
rank, ZeRO 0, fp32, a plain torch optimizer).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Iterator, List, Sequence, Tuple

import torch

from patentclip.launch.model import FEATURE_SCALARS, merge_batches
from patentclip.plugins.data.batch import IMAGE, IMAGE_FIELDS, TEXT
from patentclip.plugins.image_transport import FLOAT, ImageTransport
from patentclip.plugins.seeding import stable_int


# the module's copy of logit_scale differs from the fp32 master copy by at most the bf16/fp16 rounding
# (below 0.02 at ln 100): farther than this from the bounds, the master copy needs no clamp either
_CLAMP_MARGIN = 0.05


def clamp_logit_scale(engine, args) -> None:
    """open_clip clamps logit_scale to [0, ln 100] after every step. Under ZeRO or bf16 the optimizer's fp32
    master copy is the truth, so clamp that one (an in-place clamp of the module parameter would be lost).

    Reading the master copy is a collective (an all-reduce over the data-parallel group); it is skipped when the
    module's copy, the same on every rank, is clearly inside the bounds (the usual case)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    p = engine.module.clip.logit_scale
    if args.zero_stage == 0 and not (engine.bfloat16_enabled() or engine.fp16_enabled()):
        with torch.no_grad():
            p.clamp_(0, math.log(100))
        return
    lo, hi = p.detach().float().aminmax()
    if float(lo) >= _CLAMP_MARGIN and float(hi) <= math.log(100) - _CLAMP_MARGIN:
        return
    full = safe_get_full_fp32_param(p)
    if full is not None:
        safe_set_full_fp32_param(p, full.clamp(0, math.log(100)))


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's global generator for optimizer step ``step`` on ``rank`` (see ``begin_step``)."""
    return stable_int("step", seed, step, rank)


def begin_step(engine, args, step: int) -> None:
    """Before optimizer step ``step``: seed torch's global generator from (seed, step, rank) and tell the loss
    plugins the step (module docstring)."""
    torch.manual_seed(step_seed(args.seed, step, args.rank))
    module = getattr(engine, "module", engine)
    module.criterion.set_step(step)


def move_batch(batch: Dict, device, input_dtype, image_transport: ImageTransport = FLOAT) -> Dict:
    """Images to the device in the model's dtype, finished there by the loader's ``image_transport`` (uint8
    pixels normalised; the default: float images, moved only), every other tensor to the device; lists (keys,
    views) stay."""
    out = {}
    for k, v in batch.items():
        if k in IMAGE_FIELDS and torch.is_tensor(v):
            v = image_transport.images(batch, k, device, input_dtype)
        elif torch.is_tensor(v):
            v = v.to(device=device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(dtype=input_dtype)
        out[k] = v
    return out


def prepare_engine(engine) -> None:
    """One-time tuning of the DeepSpeed engine for the step (idempotent; ``train_step`` calls it).

    One data-parallel rank, ZeRO stage 0, fp32, a plain torch optimizer: DeepSpeed still flattens every
    gradient into buckets, "all-reduces" them over the one rank and copies them back after each backward (about
    a fifth of an AdamW step on CPU). Averaging over one rank is the identity, so that reduction is switched off
    (``engine.enable_backward_allreduce``); nothing else changes. Any other configuration is left alone.
    """
    if getattr(engine, "_patentclip_prepared", False):
        return
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    if (getattr(engine, "dp_world_size", 0) == 1 and engine.zero_optimization_stage() == 0
            and not (engine.bfloat16_enabled() or engine.fp16_enabled())
            and isinstance(getattr(engine.optimizer, "optimizer", engine.optimizer), torch.optim.Optimizer)
            and not isinstance(engine.optimizer, DeepSpeedZeroOptimizer)
            and not hasattr(engine.optimizer, "set_gradient_accumulation_boundary")):
        engine.enable_backward_allreduce = False
    engine._patentclip_prepared = True


def train_step(engine, batch: Dict, args, device, input_dtype, image_transport: ImageTransport = FLOAT
               ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict]:
    """Forward, backward and optimizer step on one batch; returns (total loss, loss terms, model features).
    ``image_transport``: the loader's (``loader.image_transport``), which finishes its images on the device."""
    prepare_engine(engine)
    batch = move_batch(batch, device, input_dtype, image_transport)
    total_loss, terms, features = engine(batch[IMAGE], batch[TEXT], batch)
    engine.backward(total_loss)
    engine.step()
    clamp_logit_scale(engine, args)
    return total_loss, terms, features


def accumulate_batches(batches: Iterable[Dict], accum_freq: int) -> Iterator[List[Dict]]:
    """Groups of ``accum_freq`` consecutive batches; a last incomplete group is dropped (as open_clip does)."""
    if accum_freq < 1:
        raise ValueError(f"--accum-freq must be >= 1, got {accum_freq}")
    group: List[Dict] = []
    for batch in batches:
        group.append(batch)
        if len(group) == accum_freq:
            yield group
            group = []


def train_step_accum(engine, batches: Sequence[Dict], args, device, input_dtype,
                     image_transport: ImageTransport = FLOAT) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict]:
    """One optimizer step over ``len(batches)`` micro-batches with open_clip's feature cache (module docstring).

    Needs ``gradient_accumulation_steps == len(batches)`` in the DeepSpeed config. Returns the loss and terms
    of the whole accumulated batch (those of the last pass) and the last micro-batch's features."""
    if len(batches) == 1:
        return train_step(engine, batches[0], args, device, input_dtype, image_transport)
    gas = engine.gradient_accumulation_steps()
    if gas != len(batches):
        raise ValueError(f"{len(batches)} micro-batches but DeepSpeed's gradient_accumulation_steps is {gas}: "
                         f"set it to --accum-freq")
    prepare_engine(engine)
    batches = [move_batch(b, device, input_dtype, image_transport) for b in batches]
    cached = []
    with torch.no_grad():
        for b in batches:
            feats = engine(b[IMAGE], b[TEXT], b, features_only=True)
            cached.append({k: v for k, v in feats.items() if k not in FEATURE_SCALARS})
    merged = merge_batches(batches)
    last = len(batches) - 1
    for j, b in enumerate(batches):
        total_loss, terms, features = engine(b[IMAGE], b[TEXT], b,
                                             accum={"features": cached, "batch": merged, "index": j},
                                             loss_param_grad=(j == last))
        # backward of a new node, not of the engine's output itself: DeepSpeed 0.19 divides the gradient of its
        # forward outputs by gradient_accumulation_steps unless engine.backward has registered the graph first,
        # and a hook on the output tensor itself runs too late for that (ZeRO 0: every gradient halved at gas 2)
        engine.backward(total_loss.clone(), scale_wrt_gas=False)
        engine.step()
    clamp_logit_scale(engine, args)
    return total_loss, terms, features
