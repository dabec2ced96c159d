"""One training step of patentclip-train: forward through the DeepSpeed engine, backward, optimizer step.

This is open_clip's ``train_one_epoch`` step body (``model(images, texts)`` -> loss -> backward -> step ->
clamp ``logit_scale``) with the patent batch (class ids, views) handed to the loss plugins.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch


def clamp_logit_scale(engine, args) -> None:
    """open_clip clamps logit_scale to [0, ln 100] after every step. Under ZeRO or bf16 the optimizer's fp32
    master copy is the truth, so clamp that one (an in-place clamp of the module parameter would be lost)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    p = engine.module.clip.logit_scale
    if args.zero_stage == 0 and not (engine.bfloat16_enabled() or engine.fp16_enabled()):
        with torch.no_grad():
            p.clamp_(0, math.log(100))
        return
    full = safe_get_full_fp32_param(p)
    if full is not None:
        safe_set_full_fp32_param(p, full.clamp(0, math.log(100)))


def move_batch(batch: Dict, device, input_dtype) -> Dict:
    """Images to the model's dtype, every other tensor to the device; lists (keys, views) stay."""
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device=device, non_blocking=True)
            if v.is_floating_point():
                v = v.to(dtype=input_dtype)
        out[k] = v
    return out


def train_step(engine, batch: Dict, args, device, input_dtype) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], Dict]:
    """Forward, backward and optimizer step on one batch; returns (total loss, loss terms, model features)."""
    batch = move_batch(batch, device, input_dtype)
    total_loss, terms, features = engine(batch["image"], batch["text"], batch)
    engine.backward(total_loss)
    engine.step()
    clamp_logit_scale(engine, args)
    return total_loss, terms, features
