"""Classification metrics: top-k, per-class and balanced accuracy of logits, and zero-shot accuracy of image
features against class text embeddings (conventions: :mod:`patentclip.evaluation.metrics`).

Ties are broken by class index: of two classes with the same logit the one with the smaller index ranks first
(unlike ``torch.topk``), so results do not depend on the device or the kernel.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch

from patentclip.evaluation.metrics.inputs import NAN, as_tensor, cutoffs, feature_matrix, mean, vector


@torch.no_grad()
def classification_accuracy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    topk: Iterable[int] = (1, 5),
    *,
    num_classes: Optional[int] = None,
) -> Dict[str, object]:
    """Top-k, per-class and balanced accuracy of ``(N, C)`` logits against ``(N,)`` labels.

    Sample ``n`` is top-k correct iff the rank of its true class ``y`` is ``<= k``, where
    ``rank = 1 + #{c : logit_c > logit_y} + #{c < y : logit_c == logit_y}`` (ties broken by
    class index, smaller first -- deterministic, unlike ``torch.topk``).

    Returns:
        ``top{k}`` = fraction of samples top-k correct, for each k in ``topk`` with k <= C
        (larger k are skipped); ``per_class_top1`` = list of length C with the top-1 accuracy
        over the samples of each class (``None`` for classes without samples, so the dict stays
        JSON-serialisable); ``balanced_top1`` = mean of ``per_class_top1`` over the classes that
        have samples; ``num_samples``.
    """
    logits = as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"logits must be (N, C), got {tuple(logits.shape)}")
    if not logits.is_floating_point() or logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    n, n_cls = logits.shape
    if num_classes is not None and int(num_classes) != n_cls:
        raise ValueError(f"num_classes={num_classes} but logits have {n_cls} columns")
    labels = vector(labels, n, "labels", logits.device).to(torch.int64)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= n_cls):
        raise ValueError(f"labels must be in [0, {n_cls})")
    topk = cutoffs(topk, "topk")
    if torch.isnan(logits).any():
        raise ValueError("NaN logits")
    true = logits.gather(1, labels[:, None])  # (N, 1)
    idx = torch.arange(n_cls, device=logits.device)[None, :]
    beats = (logits > true) | ((logits == true) & (idx < labels[:, None]))
    rank = 1 + beats.sum(1)  # (N,)
    out: Dict[str, object] = {}
    for k in topk:
        if k <= n_cls:
            out[f"top{k}"] = mean((rank <= k).double())
    correct1 = (rank == 1).to(torch.int64).cpu()
    lab = labels.cpu()
    tot = torch.bincount(lab, minlength=n_cls)
    hit = torch.bincount(lab, weights=correct1.double(), minlength=n_cls)
    per_class = [float(hit[c] / tot[c]) if tot[c] > 0 else None for c in range(n_cls)]
    present = [a for a in per_class if a is not None]
    out["per_class_top1"] = per_class
    out["balanced_top1"] = (math.fsum(present) / len(present)) if present else NAN
    out["num_samples"] = n
    return out


@torch.no_grad()
def zero_shot_accuracy(
    image_features: torch.Tensor,
    classifier: torch.Tensor,
    labels: torch.Tensor,
    *,
    topk: Iterable[int] = (1, 5),
    num_classes: Optional[int] = None,
) -> Dict[str, object]:
    """Zero-shot classification accuracy.

    ``classifier`` is the ``(D, C)`` matrix of L2-normalised class text embeddings returned by
    ``open_clip.build_zero_shot_classifier``; logits = ``image_features @ classifier`` and the
    result is exactly :func:`classification_accuracy` of those logits (``top1``, ``top5`` for
    k <= C, ``per_class_top1``, ``balanced_top1``, ``num_samples``).
    """
    img = feature_matrix(image_features, "image_features")
    cls = as_tensor(classifier, img.device)
    if cls.dim() != 2 or cls.shape[0] != img.shape[1]:
        raise ValueError(f"classifier must be (D={img.shape[1]}, C), got {tuple(cls.shape)}")
    cls = cls.float() if (not cls.is_floating_point() or cls.dtype in (torch.float16, torch.bfloat16)) else cls
    logits = img @ cls.to(img.dtype)
    return classification_accuracy(logits, labels, topk=topk, num_classes=num_classes)
