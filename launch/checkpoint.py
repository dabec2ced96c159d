"""Checkpoints of a patentclip run.

Layout under ``<logs>/<name>/checkpoints/`` (open_clip's place for them):

    epoch_<N>.pt           open_clip format {epoch, name, state_dict}: vanilla open_clip loads it
                           (``--pretrained epoch_N.pt``; logit_scale stored 0-dim as open_clip has it)
    deepspeed/<tag>/       the DeepSpeed engine state (model, optimizer and ZeRO partitions, one file per rank)
    deepspeed/latest       the tag of the newest complete DeepSpeed checkpoint

``--resume latest`` restores the newest DeepSpeed checkpoint (model, optimizer, epoch, step);
``--resume <dir>`` restores a DeepSpeed checkpoint folder (its ``latest`` or a tag folder), and
``--resume <file.pt>`` loads the weights of an open_clip checkpoint and starts at its epoch with a fresh
optimizer (as open_clip does for a bare checkpoint).
"""
from __future__ import annotations

import logging
import os
import shutil
from typing import Dict, Optional, Tuple

import torch

from patentclip.launch.model import load_open_clip_state_dict, open_clip_state_dict

DS_SUBDIR = "deepspeed"


def deepspeed_dir(checkpoint_path: str) -> str:
    return os.path.join(checkpoint_path, DS_SUBDIR)


def latest_tag(ds_dir: str) -> Optional[str]:
    latest = os.path.join(ds_dir, "latest")
    if not os.path.isfile(latest):
        return None
    with open(latest) as f:
        tag = f.read().strip()
    return tag if tag and os.path.isdir(os.path.join(ds_dir, tag)) else None


def save(engine, args, *, epoch: int, step: int, class_table, extra: Optional[Dict] = None) -> None:
    """Save after ``epoch`` completed epochs (``step`` optimizer steps). Must be called on every rank."""
    ds_dir = deepspeed_dir(args.checkpoint_path)
    os.makedirs(ds_dir, exist_ok=True)
    tag = f"epoch_{epoch}"
    client_state = {"epoch": epoch, "step": step, "name": args.name, "model": args.model,
                    "classes": [c.__dict__ for c in class_table.classes], **(extra or {})}
    engine.save_checkpoint(ds_dir, tag=tag, client_state=client_state)
    if args.rank == 0:
        model = engine.module.clip
        oc = {"epoch": epoch, "name": args.name, "state_dict": open_clip_state_dict(model),
              "model": args.model, "classes": client_state["classes"]}
        tmp = os.path.join(args.checkpoint_path, f"epoch_{epoch}.pt.tmp")
        torch.save(oc, tmp)
        os.replace(tmp, os.path.join(args.checkpoint_path, f"epoch_{epoch}.pt"))
        if args.delete_previous_checkpoint:
            prev = epoch - 1
            for p in (os.path.join(args.checkpoint_path, f"epoch_{prev}.pt"), os.path.join(ds_dir, f"epoch_{prev}")):
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                elif os.path.exists(p):
                    os.remove(p)
        logging.info("Saved checkpoint epoch %d (step %d) to %s", epoch, step, args.checkpoint_path)


def resolve_resume(args) -> Optional[Tuple[str, str, Optional[str]]]:
    """What ``--resume`` points at: ("deepspeed", dir, tag) or ("open_clip", file, None) or None."""
    if not args.resume:
        return None
    if args.resume == "latest":
        ds_dir = deepspeed_dir(args.checkpoint_path)
        tag = latest_tag(ds_dir)
        return ("deepspeed", ds_dir, tag) if tag else None
    path = args.resume
    if os.path.isfile(path):
        return ("open_clip", path, None)
    if os.path.isdir(path):
        if latest_tag(path):
            return ("deepspeed", path, latest_tag(path))
        if os.path.isdir(os.path.join(path, DS_SUBDIR)) and latest_tag(os.path.join(path, DS_SUBDIR)):
            return ("deepspeed", os.path.join(path, DS_SUBDIR), latest_tag(os.path.join(path, DS_SUBDIR)))
        if any(f.startswith("mp_rank_") for f in os.listdir(path)):
            return ("deepspeed", os.path.dirname(os.path.abspath(path)), os.path.basename(os.path.abspath(path)))
    raise FileNotFoundError(
        f"--resume {path}: not a checkpoint (expected 'latest', an open_clip epoch_N.pt file, or a DeepSpeed "
        f"checkpoint folder with a 'latest' file or mp_rank_* files)")


def load_weights_before_engine(model, target) -> int:
    """For ``--resume <file.pt>``: load open_clip weights into the model BEFORE the DeepSpeed engine is built
    (the engine copies parameters into its fp32/bf16 partitions at init). Returns the checkpoint's epoch."""
    _, path, _ = target
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    load_open_clip_state_dict(model, sd)
    epoch = int(ckpt.get("epoch", 0)) if isinstance(ckpt, dict) else 0
    logging.info("Loaded open_clip weights from %s (epoch %d); optimizer state starts fresh", path, epoch)
    return epoch


def restore_engine(engine, target) -> Tuple[int, int]:
    """For a DeepSpeed checkpoint: restore model, optimizer and ZeRO partitions; returns (epoch, step).
    Call on every rank."""
    _, path, tag = target
    load_path, client_state = engine.load_checkpoint(path, tag=tag)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {os.path.join(path, tag)}")
    epoch, step = int(client_state.get("epoch", 0)), int(client_state.get("step", 0))
    logging.info("Resumed DeepSpeed checkpoint %s (epoch %d, step %d)", os.path.join(path, tag), epoch, step)
    return epoch, step
