"""Loss plugins and the weighted combination the training step optimises.

A loss plugin is registered in ``LOSSES`` as a class ``(args, class_table) -> nn.Module`` whose
``forward(features, batch)`` returns a dict of named, unweighted terms. ``features`` is the model's output
dict (``image_features``, ``text_features``, ``logit_scale`` ...), ``batch`` the pipeline's batch dict
(``class_id`` ...). ``--loss`` selects terms and weights: ``--loss clip`` or
``--loss class_aware_contrastive=0.1,clip=1``.

Distributed use follows open_clip's ClipLoss exactly: features are gathered across ranks
(``--gather-with-grad`` keeps the gradient through the gather), ``--local-loss`` computes each rank's rows
against the gathered columns. Class ids are gathered alongside the features, so class-dependent terms see
the global batch.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip import ClipLoss
from torch import nn

from patentclip.plugins.classes import ClassTable
from patentclip.plugins.registry import LOSSES


def parse_loss_spec(spec: str) -> List[Tuple[str, float]]:
    """``"clip"`` -> [("clip", 1.0)]; ``"a=0.1,b=1"`` -> [("a", 0.1), ("b", 1.0)]."""
    terms = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--loss: weight of {name!r} is not a number: {weight!r}") from None
        terms.append((name.strip(), w))
    if not terms:
        raise ValueError("--loss: no loss named")
    names = [n for n, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"--loss: a loss is named twice in {spec!r}")
    return terms


def class_balance_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-class loss weights ``w_c = f_c^-beta``, normalised so their mean over the training samples is 1.

    DesignCLIP weights a sample of class c by ``1 / f_c^beta`` (f_c: class frequency). Scaling all weights by
    one constant so that ``sum_c p_c w_c = 1`` (``p_c = f_c``) keeps the loss on the scale of the CLIP loss,
    identical to it at beta = 0, and independent of the batch. Classes without training samples get the
    largest weight of any present class (they cannot occur in training batches anyway).
    """
    counts = counts.to(torch.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("class counts are all zero: classes.json has no training samples")
    freq = counts / counts.sum()
    w = torch.zeros_like(freq)
    w[present] = freq[present].pow(-beta)
    w = w / (freq * w).sum()
    if (~present).any():
        w[~present] = w[present].max()
    return w.to(torch.float32)


def gather_no_grad(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size <= 1:
        return t
    parts = [torch.zeros_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


class _ContrastiveBase(nn.Module):
    """Shares open_clip's ClipLoss logits (gather, local loss) across the contrastive plugins."""

    def __init__(self, args, class_table: ClassTable):
        super().__init__()
        self.world_size = getattr(args, "world_size", 1)
        self.rank = getattr(args, "rank", 0)
        self.local_loss = getattr(args, "local_loss", False)
        self.clip = ClipLoss(local_loss=self.local_loss, gather_with_grad=getattr(args, "gather_with_grad", False),
                             cache_labels=True, rank=self.rank, world_size=self.world_size)

    def row_class_ids(self, class_id: torch.Tensor) -> torch.Tensor:
        """Class ids of the logit rows: local ids with --local-loss, else the gathered global ids."""
        if self.world_size > 1 and not self.local_loss:
            return gather_no_grad(class_id, self.world_size)
        return class_id


@LOSSES.register("clip")
class CLIPContrastive(_ContrastiveBase):
    """open_clip's symmetric InfoNCE (``ClipLoss``), unchanged: the same numbers as vanilla open_clip."""

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        return {"clip": self.clip(features["image_features"], features["text_features"], features["logit_scale"])}


@LOSSES.register("class_aware_contrastive")
class ClassAwareContrastive(_ContrastiveBase):
    """DesignCLIP's class-aware contrastive loss LCACL.

    The symmetric image-text InfoNCE of CLIP in which the terms of sample i (its image->text row and its
    text->image row) are weighted by ``w_{c_i}`` from :func:`class_balance_weights` with ``--loss-beta``:

        L = 1/N sum_i w_{c_i} * ( CE(s * v_i . T, i) + CE(s * t_i . V, i) ) / 2

    N is the number of rows (the global batch, or the local batch with --local-loss).
    """

    def __init__(self, args, class_table: ClassTable):
        super().__init__(args, class_table)
        self.beta = float(getattr(args, "loss_beta", 1.0))
        self.register_buffer("class_weights", class_balance_weights(class_table.counts(), self.beta),
                             persistent=False)

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        image_features, text_features = features["image_features"], features["text_features"]
        logits_per_image, logits_per_text = self.clip.get_logits(image_features, text_features,
                                                                 features["logit_scale"])
        labels = self.clip.get_ground_truth(image_features.device, logits_per_image.shape[0])
        cls = self.row_class_ids(batch["class_id"].to(image_features.device))
        w = self.class_weights.to(logits_per_image.dtype)[cls]
        per_sample = (F.cross_entropy(logits_per_image, labels, reduction="none")
                      + F.cross_entropy(logits_per_text, labels, reduction="none")) / 2
        return {"class_aware_contrastive": (w * per_sample).mean()}


class LossSet(nn.Module):
    """The weighted sum of the selected loss plugins. Its parameters (if any plugin has some) are trained."""

    def __init__(self, spec: str, args, class_table: ClassTable):
        super().__init__()
        self.terms = parse_loss_spec(spec)
        self.losses = nn.ModuleDict({name: LOSSES.build(name, args, class_table) for name, _ in self.terms})
        self.weights = dict(self.terms)

    def forward(self, features: Dict, batch: Dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        parts: Dict[str, torch.Tensor] = {}
        total = None
        for name, loss in self.losses.items():
            out = loss(features, batch)
            for key, value in out.items():
                parts[key] = value
                weighted = self.weights[name] * value
                total = weighted if total is None else total + weighted
        return total, parts
