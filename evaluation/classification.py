"""Classification of the evaluation drawings from their image features: zero-shot (class-name prompts), the
linear probe (fitted on training features or cross-validated by patent) and the trained classification head
(image-only mode), each as top-1 / top-5 / balanced top-1 overall and top-1 over head / tail classes."""
from __future__ import annotations

from typing import Dict, List, Optional

import torch

from patentclip.evaluation import linear_probe as LP
from patentclip.evaluation import metrics as M
from patentclip.evaluation.features import index_strings
from patentclip.evaluation.settings import EvalSettings


def find_classification_head(module) -> Optional[torch.nn.Module]:
    """The first submodule with a ``classify_image`` method (the AttentionFusionHead inside the loss set)."""
    if module is None:
        return None
    for m in module.modules():
        if callable(getattr(m, "classify_image", None)):
            return m
    return None


@torch.no_grad()
def head_logits(head: torch.nn.Module, image_features: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Image-only logits of the classification head, in batches, on the head's device and dtype."""
    p = next(head.parameters(), None)
    dev = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    was_training = head.training
    head.eval()
    out = [head.classify_image(image_features[i:i + batch_size].to(dev, dtype)).float().cpu()
           for i in range(0, image_features.shape[0], batch_size)]
    head.train(was_training)
    return torch.cat(out)


def _accuracy_block(name: str, acc: Dict, class_id: torch.Tensor, is_head: Optional[torch.Tensor]) -> Dict[str, float]:
    """``{name}_top1/_top5/_balanced_top1`` and, with head/tail classes, ``{name}_top1_head`` / ``_tail``: top-1
    accuracy over the drawings of head / tail classes."""
    out = {f"{name}_top1": acc["top1"], f"{name}_balanced_top1": acc["balanced_top1"]}
    if "top5" in acc:
        out[f"{name}_top5"] = acc["top5"]
    if is_head is not None:
        pc = acc["per_class_top1"]
        counts = torch.bincount(class_id.long(), minlength=len(pc))
        for part, mask in (("head", is_head), ("tail", ~is_head)):
            n = int(counts[mask].sum())
            if n > 0:
                hits = sum(round(pc[c] * int(counts[c])) for c in range(len(pc)) if mask[c] and pc[c] is not None)
                out[f"{name}_top1_{part}"] = hits / n
    return out


def classification_from_features(feats: Dict, num_classes: int, settings: EvalSettings, *,
                                 zs_classifier: Optional[torch.Tensor] = None,
                                 head: Optional[torch.nn.Module] = None,
                                 probe_train: Optional[Dict] = None,
                                 is_head: Optional[torch.Tensor] = None, device="cpu"):
    """Zero-shot, linear-probe and classification-head accuracy: (flat metrics, per-class lists, info)."""
    y = feats["class_id"].long()
    x = feats["image_features"]
    metrics: Dict[str, float] = {}
    per_class: Dict[str, List] = {}
    info: Dict = {}
    if zs_classifier is not None:
        acc = M.zero_shot_accuracy(x, zs_classifier, y, topk=(1, 5), num_classes=num_classes)
        metrics.update(_accuracy_block("zeroshot", acc, y, is_head))
        per_class["zeroshot_top1"] = acc["per_class_top1"]
    if settings.linear_probe != "off":
        dev = torch.device(device)
        if probe_train is not None:
            acc = LP.linear_probe_train_test(
                probe_train["image_features"].to(dev), probe_train["class_id"].long().to(dev), x.to(dev), y.to(dev),
                num_classes, train_groups=index_strings(probe_train["patent_id"])[0], seed=settings.seed)
            info["linear_probe_fit"] = {"protocol": "train-split", "l2": acc["l2"],
                                    "train_samples": int(probe_train["class_id"].numel())}
        elif len(set(feats["patent_id"])) >= 2:
            acc = LP.linear_probe_cross_validation(x.to(dev), y.to(dev), index_strings(feats["patent_id"])[0],
                                                   num_classes, folds=settings.probe_folds, seed=settings.seed)
            info["linear_probe_fit"] = {"protocol": f"cross-validation ({settings.probe_folds} folds by patent)",
                                    "l2": acc["l2"]}
        else:
            acc = None
        if acc is not None:
            metrics.update(_accuracy_block("linear_probe", acc, y, is_head))
            per_class["linear_probe_top1"] = acc["per_class_top1"]
    if head is not None:
        logits = head_logits(head, x)
        if logits.shape[1] != num_classes:
            raise ValueError(f"the classification head has {logits.shape[1]} outputs for {num_classes} classes")
        acc = M.classification_accuracy(logits, y, topk=(1, 5), num_classes=num_classes)
        metrics.update(_accuracy_block("classifier", acc, y, is_head))
        per_class["classifier_top1"] = acc["per_class_top1"]
    return metrics, per_class, info
