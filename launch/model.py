"""The model being trained: an open_clip CLIP plus the loss plugins' parameters, as one module.

DeepSpeed trains one ``nn.Module``. ``PatentTrainModule`` holds the open_clip model under ``.clip`` and the
``LossSet`` under ``.criterion`` (so loss parameters, e.g. learned loss weights or a classification head,
are trained, checkpointed and restored with the model). ``open_clip_state_dict`` gives back exactly what
vanilla open_clip saves and loads.
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from patentclip.plugins.losses import LossSet


def make_logit_scale_nonscalar(model: nn.Module) -> None:
    """DeepSpeed cannot broadcast or clip 0-dim parameters: store ``logit_scale`` (and ``logit_bias``) as shape [1].

    The forward pass is unchanged (broadcasting); :func:`open_clip_state_dict` turns them back to 0-dim.
    """
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter) and p.ndim == 0:
            setattr(model, name, nn.Parameter(p.detach().reshape(1).clone(), requires_grad=p.requires_grad))


def open_clip_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict as vanilla open_clip has it (0-dim logit_scale/logit_bias), on CPU, fp32."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        if k in ("logit_scale", "logit_bias") and v.ndim == 1 and v.numel() == 1:
            v = v.reshape(())
        sd[k] = v
    return sd


def load_open_clip_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """Load an open_clip state dict (0-dim or [1] logit_scale, with or without a ``module.`` prefix)."""
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    fixed = {}
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape and own[k].numel() == v.numel() == 1:
            v = v.reshape(own[k].shape)
        fixed[k] = v
    model.load_state_dict(fixed)


class PatentTrainModule(nn.Module):
    """open_clip model + loss plugins; ``forward(images, texts, batch) -> (loss, terms, features)``."""

    def __init__(self, clip_model: nn.Module, criterion: LossSet):
        super().__init__()
        self.clip = clip_model
        self.criterion = criterion

    def forward(self, images: torch.Tensor, texts: torch.Tensor, batch: Dict):
        features = self.clip(images, texts)
        total, terms = self.criterion(features, batch)
        return total, terms, features


def optimizer_param_groups(module: nn.Module, weight_decay: float):
    """open_clip's two AdamW groups: no weight decay on gains, biases, norms and logit_scale."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]
