"""A model to evaluate: from any checkpoint :func:`patentclip.launch.checkpoint_format.read_checkpoint` reads
(open_clip ``epoch_N.pt``, DeepSpeed folder, exported folder, an s3:// URL of these), freshly initialised
('untrained'), or an open_clip pretrained tag -- the open_clip model with its preprocessing, tokenizer and
classification head (:func:`load_for_eval`, :func:`build_model`)."""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional

import open_clip
import torch

from patentclip.launch import safe_load
from patentclip.launch.checkpoint_format import Checkpoint, build_head_module, load_open_clip_state_dict, read_checkpoint
from patentclip.plugins.models import register_model_configs


class _RandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded for model ... Model initialized randomly" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def weights_loaded_after():
    """While a model is built whose weights are loaded right after (from a checkpoint): open_clip's factory logs
    that it initialised the model randomly, which would be false for what the user gets, so that one record is
    dropped (open_clip logs it on the root logger)."""
    drop = _RandomInitWarning()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_model(ck: Checkpoint, model_name: Optional[str] = None, device="cpu"):
    """(open_clip model with the checkpoint's weights, eval preprocess, tokenizer, model name), in eval mode."""
    if ck.kind == "export":
        ident = f"local-dir:{ck.local_dir}"
        model, _, preprocess = open_clip.create_model_and_transforms(ident, device=device, output_dict=True)
        return model.eval(), preprocess, open_clip.get_tokenizer(ident), ck.model_name or ident
    register_model_configs()
    name = model_name or ck.model_name
    if not name:
        raise ValueError(f"{ck.source} does not record its model name: pass --model")
    if model_name and ck.model_name and model_name != ck.model_name:
        logging.warning("--model %s, but the checkpoint was trained as %s", model_name, ck.model_name)
    with weights_loaded_after():
        model, _, preprocess = open_clip.create_model_and_transforms(name, precision="fp32", device="cpu",
                                                                     output_dict=True, **ck.model_kwargs)
    load_open_clip_state_dict(model, ck.state_dict)
    logging.info("Loaded the weights of %s from %s", name, ck.source)
    ctx = ck.model_kwargs.get("force_context_length")
    tokenizer = open_clip.get_tokenizer(name, context_length=ctx) if ctx else open_clip.get_tokenizer(name)
    return model.to(device).eval(), preprocess, tokenizer, name


@dataclass
class LoadedModel:
    model: torch.nn.Module
    preprocess: object
    tokenizer: object
    name: str
    head: Optional[torch.nn.Module] = None
    classes: Optional[List[Dict]] = None      # the checkpoint's training class table
    source: str = ""


def load_for_eval(checkpoint: Optional[str], model_name: Optional[str], pretrained: Optional[str], device,
                  workdir: Optional[str] = None, head_builder=None, trust: bool = False) -> LoadedModel:
    """A model to evaluate: from any checkpoint :func:`patentclip.launch.checkpoint_format.read_checkpoint` reads
    (open_clip .pt, DeepSpeed folder, exported folder, s3:// URL of these), or freshly initialised ('untrained' /
    None), or an open_clip pretrained tag. The checkpoint is read weights-only unless ``trust``
    (``--trust-checkpoint``; launch/safe_load.py)."""
    register_model_configs()
    if checkpoint and checkpoint != "untrained":
        ck = read_checkpoint(checkpoint, workdir, head_builder, trust)
        model, preprocess, tokenizer, name = build_model(ck, model_name, device)
        head = build_head_module(ck.head, head_builder).to(device) if ck.head is not None else None
        return LoadedModel(model, preprocess, tokenizer, name, head, ck.classes, ck.source)
    if not model_name:
        raise ValueError("--model is required without a checkpoint")
    with safe_load.weights_only_loads(pretrained or model_name, trust=trust):  # a local --pretrained file too
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained, precision="fp32",
                                                                     device=device, output_dict=True,
                                                                     weights_only=not trust)
    label = f"{model_name}/{pretrained}" if pretrained else f"{model_name} (untrained)"
    return LoadedModel(model.eval(), preprocess, open_clip.get_tokenizer(model_name), model_name, source=label)


def load_model_for_eval(model_name: str, checkpoint: Optional[str], pretrained: Optional[str], device):
    """(model, preprocess) from an open_clip .pt, a DeepSpeed checkpoint folder, an exported folder, or none."""
    with tempfile.TemporaryDirectory(prefix="patentclip-eval-") as work:
        m = load_for_eval(checkpoint, model_name, pretrained, device, work)
    return m.model, m.preprocess
