"""The whole evaluation of one model on one split: features, image-text recall, classification, retrieval, the
per-class table and retrieval examples, as one :class:`EvalResult` (:func:`run_evaluation`; its flat metrics:
:func:`evaluate_model`), and the plain-text table of the headline metrics (:func:`format_table`).

The metrics and their definitions: :mod:`patentclip.evaluation.cli` (what ``patentclip-eval`` reports) and
docs/evaluation.md.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from patentclip.evaluation import citations as C
from patentclip.evaluation.classification import classification_from_features
from patentclip.evaluation.features import extract_features, zero_shot_classifier
from patentclip.evaluation.image_text import image_text_from_features
from patentclip.evaluation.retrieval import retrieval_examples, retrieval_from_features
from patentclip.evaluation.extra_metrics import extra_from_features
from patentclip.evaluation.settings import DEFAULT_TEMPLATES, EvalSettings

# the headline metrics printed in tables, in this order
HEADLINE = ("zeroshot_top1", "linear_probe_top1", "i2i_mAP", "i2i_R@10", "i2i_MRR@10", "image_to_text_R@5",
            "text_to_image_R@5")


@dataclass
class EvalResult:
    metrics: Dict[str, float]                      # flat scalars (tensorboard, results.jsonl, --out)
    per_class: List[Dict]                          # one dict per class
    settings: Dict                                 # EvalSettings + protocol details
    features: Optional[Dict] = None                # extract_features() of the evaluation split
    db_features: Optional[Dict] = None             # of the retrieval database when it is another split
    examples: List[Dict] = field(default_factory=list)  # retrieval examples for the report


def run_evaluation(model, dataloader, class_table, tokenizer, device, input_dtype=torch.float32,
                   settings: Optional[EvalSettings] = None, *, head: Optional[torch.nn.Module] = None,
                   is_head: Optional[torch.Tensor] = None, train_counts=None, db_loader=None, db_features=None,
                   probe_train_loader=None, examples: int = 0, example_k: int = 5,
                   compute_device=None, citations=None) -> EvalResult:
    """Every metric ``patentclip-eval`` reports for ``model`` on ``dataloader``'s drawings.

    ``is_head``: (C,) bool head-class mask (default: ``class_table.head_mask(train_counts)``, the class table's
    head / tail split of the training counts).
    ``db_loader``: another split to search (default: the evaluation drawings themselves); ``db_features``: its
    features as they are (e.g. a prior-art index's stored vectors, :func:`patentclip.evaluation.index.eval_features`).
    ``probe_train_loader``: training drawings for the linear probe (default: cross-validation).
    ``examples``: number of retrieval examples to keep for the report.
    ``citations``: patent id -> the patent numbers its examiner cited (:func:`citations.load_citations`), needed
    by ``settings.relevance == "citation"``.
    """
    settings = settings or EvalSettings()
    if settings.relevance == "citation":
        citations = C.require(citations, "the evaluation shards")
    compute_device = compute_device or device
    if is_head is None:
        is_head = class_table.head_mask(train_counts)
    feats = extract_features(model, dataloader, device, input_dtype)
    db = extract_features(model, db_loader, device, input_dtype, with_text=False) if db_loader is not None \
        else db_features
    if settings.relevance == "citation":
        feats["citations"] = citations
    probe = (extract_features(model, probe_train_loader, device, input_dtype, with_text=False)
             if probe_train_loader is not None else None)
    classifier = zero_shot_classifier(model, tokenizer, class_table.names, settings.templates, device,
                                      input_dtype) if settings.zero_shot else None
    n_cls = len(class_table)

    metrics: Dict[str, float] = {}
    metrics.update(image_text_from_features(feats, settings, compute_device))
    cls_metrics, per_class_lists, info = classification_from_features(
        feats, n_cls, settings, zs_classifier=classifier, head=head, probe_train=probe, is_head=is_head,
        device=compute_device)
    metrics.update(cls_metrics)
    ret = retrieval_from_features(feats, db, settings, is_head, compute_device)
    metrics.update(ret["metrics"])
    metrics.update(extra_from_features(settings.extra_metrics, feats, class_table))
    metrics["num_samples"] = float(len(feats["key"]))
    metrics = {k: float(v) for k, v in metrics.items()}

    # per-class table
    pq, qidx = ret["per_query"], ret["qidx"]
    valid = pq["num_relevant"] > 0
    q_cls = feats["class_id"][qidx].long()
    ap_sum = torch.zeros(n_cls, dtype=torch.float64)
    ap_cnt = torch.zeros(n_cls, dtype=torch.long)
    if "ap" in pq:  # not with --ranking topk
        ap_sum.index_add_(0, q_cls[valid], pq["ap"][valid])
        ap_cnt = torch.bincount(q_cls[valid], minlength=n_cls)
    eval_counts = torch.bincount(feats["class_id"].long(), minlength=n_cls)
    tc = class_table.counts() if train_counts is None else torch.as_tensor(train_counts, dtype=torch.float64)
    per_class = []
    for c in class_table.classes:
        row = {"id": c.id, "code": c.code, "name": c.name, "train_count": int(tc[c.id]),
               "eval_count": int(eval_counts[c.id]), "is_head": bool(is_head[c.id]),
               "i2i_mAP": float(ap_sum[c.id] / ap_cnt[c.id]) if ap_cnt[c.id] > 0 else None}
        for name, vals in per_class_lists.items():
            row[name] = vals[c.id]
        per_class.append(row)
    settings_d = {**asdict(settings), "prior_art_filter": settings.use_prior_art, **info,
                  "retrieval_database": "evaluation split" if db is None else "separate split",
                  "head_classes": [c.id for c in class_table.classes if is_head[c.id]],
                  "classification_head": head is not None}
    if settings.relevance == "citation":
        settings_d["citations"] = C.describe(citations, feats["patent_id"], (db or feats)["patent_id"])
    ex = retrieval_examples(feats, db, settings, pq, qidx, is_head, examples, example_k, compute_device) \
        if examples else []
    return EvalResult(metrics=metrics, per_class=per_class, settings=settings_d, features=feats, db_features=db,
                      examples=ex)


def evaluate_model(model, dataloader, class_table, tokenizer, device, input_dtype=torch.float32,
                   templates: Sequence[str] = DEFAULT_TEMPLATES, settings: Optional[EvalSettings] = None,
                   **kwargs) -> Dict[str, float]:
    """The flat metrics of :func:`run_evaluation` (``num_samples`` included)."""
    if settings is None:
        settings = EvalSettings(templates=tuple(templates))
    return run_evaluation(model, dataloader, class_table, tokenizer, device, input_dtype, settings, **kwargs).metrics


def format_table(rows: Dict[str, Dict[str, float]], keys: Sequence[str] = HEADLINE) -> str:
    """A plain-text table: one row per model, one column per metric (percentages)."""
    names = list(rows)
    w0 = max(8, *(len(n) for n in names))
    widths = [max(7, len(k)) for k in keys]

    def cell(row, k, w):
        v = row.get(k)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return f"{'-':>{w}}"
        return f"{100 * v:>{w - 1}.1f}%"

    head = f"{'model':<{w0}}  " + "  ".join(f"{k:>{w}}" for k, w in zip(keys, widths))
    lines = [head, "-" * len(head)]
    for n in names:
        lines.append(f"{n:<{w0}}  " + "  ".join(cell(rows[n], k, w) for k, w in zip(keys, widths)))
    return "\n".join(lines)
