"""``patentclip-eval``: evaluate a model on patent shards, as the papers measure it.

Metrics (exact definitions in :mod:`patentclip.launch.metrics`, protocol in docs/evaluation.md):
  * image->image retrieval as "LLM-informed patent image retrieval" (sec. 3.4) defines it: mAP, R@5, R@10 and
    MRR@10 (also HitRate@K, P@K, per-class mAP) with the prior-art filter -- a query granted on day t_q
    searches only drawings granted before t_q -- for all classes and for head / tail classes separately
    (head = the 40% most frequent training classes, or classes.json's "category"). Relevance by class (the
    paper) or by patent (DeepPatent's re-identification), --relevance. The query's own patent is never a
    candidate in the class setting; in the patent setting the query drawing itself is not. R@K is the paper's
    recall (relevant items in the top K / all relevant items); the hit rate is reported as HitRate@K.
  * image->text and text->image R@1/5/10 (each drawing with its caption; DesignCLIP / PatentCLIP tables)
  * zero-shot classification top-1/top-5 and balanced top-1 with class-name prompts (--templates), per class
  * linear-probe classification on frozen image features (DesignCLIP's fine-tuned setting): fitted on
    --probe-train-data, or k-fold cross-validated by patent on the evaluation split when none is given
  * the trained classification head's accuracy (image-only mode), when the checkpoint has one
Results for head / tail classes carry the prefixes i2i_head/ and i2i_tail/ (retrieval) and the suffixes _head /
_tail (classification: accuracy over the drawings of head / tail classes).

Also run during training on --val-data every --val-frequency epochs (tensorboard val/*, checkpoints/
results.jsonl as in open_clip). --report DIR writes an HTML page with figures (patentclip.launch.report).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from patentclip.plugins.data import batch as B
from patentclip.plugins.image_transport import transport_of

DEFAULT_TEMPLATES = (
    "a patent drawing of {}.",
    "ornamental design for {}.",
    "a line drawing of {}.",
    "{}.",
)

# the headline metrics printed in tables, in this order
HEADLINE = ("zeroshot_top1", "linear_probe_top1", "i2i_mAP", "i2i_R@10", "i2i_MRR@10", "image_to_text_R@5",
            "text_to_image_R@5")


@dataclass
class EvalSettings:
    """How an evaluation is run (recorded with its results)."""

    relevance: str = "class"          # "class": same Locarno class is relevant; "patent": same patent (re-ID)
    prior_art: str = "auto"           # "on" / "off" / "auto" (= on for class relevance, off for patent)
    ks: Tuple[int, ...] = (5, 10)
    mrr_k: int = 10
    templates: Tuple[str, ...] = DEFAULT_TEMPLATES
    linear_probe: str = "auto"        # "auto": train features if given, else cross-validation; "off"
    probe_folds: int = 2
    max_chunk_bytes: int = 1 << 30    # memory of one retrieval chunk (metrics.retrieval_metrics)
    seed: int = 0
    zero_shot: bool = True            # False: no zero-shot metrics (--zeroshot-frequency between its epochs)

    def __post_init__(self):
        if self.relevance not in ("class", "patent"):
            raise ValueError(f"relevance must be 'class' or 'patent', got {self.relevance!r}")
        if self.prior_art not in ("auto", "on", "off"):
            raise ValueError(f"prior_art must be 'auto', 'on' or 'off', got {self.prior_art!r}")
        if self.relevance == "patent" and self.prior_art == "on":
            raise ValueError("the prior-art filter cannot be used with relevance by patent: all drawings of a "
                             "patent share its grant date, so none of them is prior art to another")
        if self.linear_probe not in ("auto", "off"):
            raise ValueError(f"linear_probe must be 'auto' or 'off', got {self.linear_probe!r}")
        self.ks = tuple(int(k) for k in self.ks)
        self.templates = tuple(self.templates)

    @property
    def use_prior_art(self) -> bool:
        return self.prior_art == "on" or (self.prior_art == "auto" and self.relevance == "class")


@dataclass
class EvalResult:
    metrics: Dict[str, float]                      # flat scalars (tensorboard, results.jsonl, --out)
    per_class: List[Dict]                          # one dict per class
    settings: Dict                                 # EvalSettings + protocol details
    features: Optional[Dict] = None                # extract_features() of the evaluation split
    db_features: Optional[Dict] = None             # of the retrieval database when it is another split
    examples: List[Dict] = field(default_factory=list)  # retrieval examples for the report


# ----------------------------------------------------------------------------------------------------------------
# features
# ----------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def extract_features(model, dataloader, device, input_dtype=torch.float32, max_batches: Optional[int] = None,
                     with_text: bool = True) -> Dict:
    """Run the model over an evaluation loader; L2-normalised features (on the CPU) and the metadata of every
    drawing. ``with_text=False`` encodes the images only (a retrieval database, linear-probe training data). The
    images are finished on ``device`` by the loader's image transport."""
    model.eval()
    transport = transport_of(dataloader)
    out: Dict[str, List] = {"image_features": [], "text_features": [], "text_tokens": [], "class_id": [],
                            "grant_day": [], "patent_id": [], "view": [], "key": []}
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        images = transport.images(batch, B.IMAGE, device, input_dtype)
        if with_text:
            feats = model(images, batch[B.TEXT].to(device=device))
            out["text_features"].append(F.normalize(feats["text_features"].float(), dim=-1).cpu())
            out["text_tokens"].append(batch[B.TEXT].cpu())
        else:
            feats = {"image_features": model.encode_image(images, normalize=True)}  # as forward() does
        out["image_features"].append(F.normalize(feats["image_features"].float(), dim=-1).cpu())
        out["class_id"].append(batch[B.CLASS_ID].cpu())
        out["grant_day"].append(batch[B.GRANT_DAY].cpu())
        for k, name in (("patent_id", B.PATENT_ID), ("view", B.VIEW), ("key", B.KEY)):
            out[k].extend(batch[name])
    if not out["image_features"]:
        raise ValueError("the evaluation data yielded no samples")
    for k in ("image_features", "class_id", "grant_day"):
        out[k] = torch.cat(out[k])
    out["text_features"] = torch.cat(out["text_features"]) if with_text else None
    # identical captions (the same token sequence) get one id: they are one text for image-text retrieval
    out["text_id"] = torch.unique(torch.cat(out["text_tokens"]), dim=0, return_inverse=True)[1] if with_text else None
    del out["text_tokens"]
    return out


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, class_names: Sequence[str], templates: Sequence[str], device,
                         input_dtype=torch.float32) -> torch.Tensor:
    from open_clip import build_zero_shot_classifier

    return build_zero_shot_classifier(model, tokenizer=tokenizer, classnames=list(class_names),
                                      templates=list(templates), num_classes_per_batch=10, device=device,
                                      use_tqdm=False).float().cpu()


# ----------------------------------------------------------------------------------------------------------------
# head / tail classes
# ----------------------------------------------------------------------------------------------------------------
def class_categories(class_table=None, classes: Optional[List[Dict]] = None) -> Optional[List[Optional[str]]]:
    """The ``category`` ("head"/"tail") of each class, from a class list, the ClassInfo objects, or the raw
    classes.json the table was loaded from; None when no class has one."""
    cats = None
    if classes is not None:
        cats = [c.get("category") for c in classes]
    elif class_table is not None:
        cats = [getattr(c, "category", None) for c in class_table.classes]
        if all(c is None for c in cats) and class_table.source and class_table.source != "<memory>":
            try:
                import fsspec

                with fsspec.open(class_table.source, "r") as f:
                    raw = json.load(f)
                raw = raw["classes"] if isinstance(raw, dict) and "classes" in raw else raw
                by_id = {int(c["id"]): c.get("category") for c in raw}
                cats = [by_id.get(c.id) for c in class_table.classes]
            except (OSError, ValueError, KeyError, TypeError):
                pass
    if cats is None or all(c is None for c in cats):
        return None
    return cats


def head_classes(class_table, train_counts=None, categories=None, classes: Optional[List[Dict]] = None) -> torch.Tensor:
    """``(C,)`` bool: which classes are head classes, by :func:`patentclip.launch.metrics.head_class_mask`
    (classes.json ``category`` when every class has one, else the top 40% by training frequency).

    Training frequencies: ``train_counts``, else the counts of ``classes`` (a checkpoint's training class table),
    else the counts of ``class_table``.
    """
    from patentclip.launch.metrics import head_class_mask

    if categories is None:
        categories = class_categories(class_table, classes)
    if train_counts is None:
        train_counts = ([int(c.get("count", 0)) for c in classes] if classes is not None
                        else class_table.counts())
    train_counts = torch.as_tensor(train_counts, dtype=torch.float64)
    if train_counts.numel() != len(class_table):
        raise ValueError(f"{train_counts.numel()} training counts for {len(class_table)} classes")
    return head_class_mask(train_counts, categories)


# ----------------------------------------------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------------------------------------------
def _index_strings(*lists: Sequence[str]) -> List[torch.Tensor]:
    ids: Dict[str, int] = {}
    out = []
    for lst in lists:
        out.append(torch.tensor([ids.setdefault(s, len(ids)) for s in lst], dtype=torch.long))
    return out


def retrieval_inputs(query: Dict, db: Optional[Dict], settings: EvalSettings, is_head: Optional[torch.Tensor] = None):
    """Arguments of :func:`metrics.retrieval_metrics` for ``query`` against ``db`` (None: the query set itself).

    Returns ``(qidx, kwargs)``: the query indices evaluated (queries without a known grant date are left out
    when the prior-art filter is on) and the keyword arguments (labels, times, exclusions, head/tail groups)
    for those queries.
    """
    same = db is None
    db = query if same else db
    n_q = len(query["key"])
    if settings.relevance == "class":
        ql, dl = query["class_id"].long(), db["class_id"].long()
    else:
        ql, dl = _index_strings(query["patent_id"], db["patent_id"])
    qidx = torch.arange(n_q)
    kw: Dict = {}
    if settings.use_prior_art:
        qidx = qidx[query["grant_day"] >= 0]
        dt = db["grant_day"].double().clone()
        dt[dt < 0] = math.inf  # a drawing without a grant date is never prior art
        kw["query_times"] = query["grant_day"][qidx].double()
        kw["db_times"] = dt
    if same:
        kw["exclude"] = qidx.clone()  # the query itself
    else:
        pos = {k: i for i, k in enumerate(db["key"])}
        kw["exclude"] = torch.tensor([pos.get(query["key"][i], -1) for i in qidx.tolist()], dtype=torch.long)
    if settings.relevance == "class":
        qp, dp = _index_strings(query["patent_id"], db["patent_id"])
        kw["query_patent_ids"], kw["db_patent_ids"] = qp[qidx], dp
    kw["query_labels"], kw["db_labels"] = ql[qidx], dl
    if is_head is not None:
        h = is_head[query["class_id"][qidx].long()]
        kw["label_groups"] = {"head": h, "tail": ~h}
    return qidx, kw


def retrieval_from_features(query: Dict, db: Optional[Dict], settings: EvalSettings,
                            is_head: Optional[torch.Tensor] = None, device="cpu") -> Dict:
    """Image-to-image retrieval metrics (flat ``i2i_*``) plus per-query details."""
    from patentclip.launch import metrics as M

    dbf = query["image_features"] if db is None else db["image_features"]
    qidx, kw = retrieval_inputs(query, db, settings, is_head)
    labels_q, labels_db = kw.pop("query_labels"), kw.pop("db_labels")
    dev = torch.device(device)
    kw = {k: ({n: m for n, m in v.items()} if isinstance(v, dict) else v.to(dev)) for k, v in kw.items()}
    r = M.retrieval_metrics(query["image_features"][qidx].to(dev), dbf.to(dev), labels_q.to(dev), labels_db.to(dev),
                            ks=settings.ks, mrr_k=settings.mrr_k, max_chunk_bytes=settings.max_chunk_bytes,
                            return_per_query=True, **kw)
    pq = r.pop("per_query")
    out = {f"i2i_{k}": float(v) for k, v in r.items()}
    out["i2i_num_queries_unknown_date"] = float(len(query["key"]) - len(qidx))
    return {"metrics": out, "per_query": pq, "qidx": qidx}


def retrieval_examples(query: Dict, db: Optional[Dict], settings: EvalSettings, per_query: Dict, qidx: torch.Tensor,
                       is_head: Optional[torch.Tensor], n: int = 6, k: int = 5, device="cpu") -> List[Dict]:
    """``n`` example queries (alternately head and tail classes, seeded) with their top-``k`` results."""
    from patentclip.launch import metrics as M

    if n <= 0:
        return []
    dbd = query if db is None else db
    valid = (per_query["num_relevant"] > 0).nonzero().flatten()
    if valid.numel() == 0:
        return []
    g = torch.Generator().manual_seed(settings.seed)
    valid = valid[torch.randperm(valid.numel(), generator=g)]
    pools = [valid]
    if is_head is not None:
        h = is_head[query["class_id"][qidx[valid]].long()]
        pools = [valid[h], valid[~h]]
    chosen: List[int] = []
    pos = [0] * len(pools)
    while len(chosen) < min(n, valid.numel()):
        progressed = False
        for i, pool in enumerate(pools):
            if pos[i] < pool.numel() and len(chosen) < n:
                chosen.append(int(pool[pos[i]]))
                pos[i] += 1
                progressed = True
        if not progressed:
            break
    sel = torch.tensor(chosen, dtype=torch.long)              # positions among the evaluated queries
    _, kw = retrieval_inputs(query, db, settings, is_head)
    sub = {}
    for name, v in kw.items():
        if name in ("query_times", "query_patent_ids", "query_labels", "exclude"):
            sub[name] = v[sel]
        elif name != "label_groups":
            sub[name] = v
    dbf = dbd["image_features"]
    dev = torch.device(device)
    r = M.retrieval_metrics(query["image_features"][qidx[sel]].to(dev), dbf.to(dev),
                            sub.pop("query_labels").to(dev), sub.pop("db_labels").to(dev),
                            ks=(k,), mrr_k=settings.mrr_k, return_top_k=k, return_per_query=True,
                            **{a: b.to(dev) for a, b in sub.items()})
    if settings.relevance == "class":
        rel = lambda qi, di: int(dbd["class_id"][di]) == int(query["class_id"][qi])  # noqa: E731
    else:
        rel = lambda qi, di: dbd["patent_id"][di] == query["patent_id"][qi]  # noqa: E731
    out = []
    for row, s in enumerate(sel.tolist()):
        qi = int(qidx[s])
        results = []
        for di in r["top_indices"][row].tolist():
            if di < 0:
                continue
            results.append({"key": dbd["key"][di], "class_id": int(dbd["class_id"][di]),
                            "patent_id": dbd["patent_id"][di], "grant_day": int(dbd["grant_day"][di]),
                            "hit": bool(rel(qi, di))})
        cid = int(query["class_id"][qi])
        out.append({"key": query["key"][qi], "class_id": cid, "patent_id": query["patent_id"][qi],
                    "grant_day": int(query["grant_day"][qi]),
                    "is_head": None if is_head is None else bool(is_head[cid]),
                    "ap": float(per_query["ap"][s]), "num_relevant": int(per_query["num_relevant"][s]),
                    "num_candidates": int(per_query["num_candidates"][s]), "results": results})
    return out


# ----------------------------------------------------------------------------------------------------------------
# classification
# ----------------------------------------------------------------------------------------------------------------
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
    from patentclip.launch import linear_probe as LP
    from patentclip.launch import metrics as M

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
                num_classes, train_groups=_index_strings(probe_train["patent_id"])[0], seed=settings.seed)
            info["linear_probe_fit"] = {"protocol": "train-split", "l2": acc["l2"],
                                    "train_samples": int(probe_train["class_id"].numel())}
        elif len(set(feats["patent_id"])) >= 2:
            acc = LP.linear_probe_cross_validation(x.to(dev), y.to(dev), _index_strings(feats["patent_id"])[0],
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


# ----------------------------------------------------------------------------------------------------------------
# the whole evaluation
# ----------------------------------------------------------------------------------------------------------------
def run_evaluation(model, dataloader, class_table, tokenizer, device, input_dtype=torch.float32,
                   settings: Optional[EvalSettings] = None, *, head: Optional[torch.nn.Module] = None,
                   is_head: Optional[torch.Tensor] = None, train_counts=None, db_loader=None,
                   probe_train_loader=None, examples: int = 0, example_k: int = 5,
                   compute_device=None) -> EvalResult:
    """Every metric of the module docstring for ``model`` on ``dataloader``'s drawings.

    ``is_head``: (C,) bool head-class mask (default: :func:`head_classes` of ``class_table`` / ``train_counts``).
    ``db_loader``: another split to search (default: the evaluation drawings themselves).
    ``probe_train_loader``: training drawings for the linear probe (default: cross-validation).
    ``examples``: number of retrieval examples to keep for the report.
    """
    from patentclip.launch import metrics as M

    settings = settings or EvalSettings()
    compute_device = compute_device or device
    if is_head is None:
        is_head = head_classes(class_table, train_counts)
    feats = extract_features(model, dataloader, device, input_dtype)
    db = extract_features(model, db_loader, device, input_dtype, with_text=False) if db_loader is not None else None
    probe = (extract_features(model, probe_train_loader, device, input_dtype, with_text=False)
             if probe_train_loader is not None else None)
    classifier = zero_shot_classifier(model, tokenizer, class_table.names, settings.templates, device,
                                      input_dtype) if settings.zero_shot else None
    n_cls = len(class_table)

    metrics: Dict[str, float] = {}
    dev = torch.device(compute_device)
    metrics.update(M.image_text_recall(feats["image_features"].to(dev), feats["text_features"].to(dev),
                                       ks=(1, 5, 10), text_ids=feats["text_id"].to(dev),
                                       max_chunk_bytes=settings.max_chunk_bytes))
    cls_metrics, per_class_lists, info = classification_from_features(
        feats, n_cls, settings, zs_classifier=classifier, head=head, probe_train=probe, is_head=is_head,
        device=compute_device)
    metrics.update(cls_metrics)
    ret = retrieval_from_features(feats, db, settings, is_head, compute_device)
    metrics.update(ret["metrics"])
    metrics["num_samples"] = float(len(feats["key"]))
    metrics = {k: float(v) for k, v in metrics.items()}

    # per-class table
    pq, qidx = ret["per_query"], ret["qidx"]
    valid = pq["num_relevant"] > 0
    q_cls = feats["class_id"][qidx].long()
    ap_sum = torch.zeros(n_cls, dtype=torch.float64).index_add_(0, q_cls[valid], pq["ap"][valid])
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


def evaluate_during_training(engine, val_data, class_table, tokenizer, epoch, args, device, input_dtype,
                             writer=None) -> Dict[str, float]:
    """Rank 0 evaluates the engine's model on the validation split; other ranks return at once.

    ``class_table`` is the training class table, so head / tail classes follow the training frequencies. The
    classification head, when the loss set has one, is evaluated too; the linear probe is cross-validated on
    the validation split (2 folds by patent).
    """
    if args.rank != 0:
        return {}
    templates = args.eval_zeroshot_templates.split("|") if getattr(args, "eval_zeroshot_templates", None) \
        else DEFAULT_TEMPLATES
    # open_clip's --zeroshot-frequency: zero-shot metrics every N-th epoch and the last (0: never)
    zero_shot = args.zeroshot_frequency > 0 and (epoch % args.zeroshot_frequency == 0 or epoch == args.epochs)
    settings = EvalSettings(templates=tuple(templates), seed=getattr(args, "seed", 0), zero_shot=zero_shot)
    model = engine.module.clip
    head = find_classification_head(getattr(engine.module, "criterion", None))
    was_training = model.training
    head_was_training = head.training if head is not None else False
    try:
        metrics = evaluate_model(model, val_data.dataloader, class_table, tokenizer, device, input_dtype,
                                 settings=settings, head=head)
    finally:
        model.train(was_training)
        if head is not None:
            head.train(head_was_training)
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if args.save_logs:
        if writer is not None:
            for k, v in metrics.items():
                if math.isfinite(v):
                    writer.add_scalar("val/" + k, v, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps({**metrics, "epoch": epoch}) + "\n")
    return metrics


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


# ----------------------------------------------------------------------------------------------------------------
# loading models
# ----------------------------------------------------------------------------------------------------------------
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
                  workdir: Optional[str] = None, head_builder=None) -> LoadedModel:
    """A model to evaluate: from any checkpoint :func:`patentclip.launch.export.read_checkpoint` reads (open_clip
    .pt, DeepSpeed folder, exported folder, s3:// URL of these), or freshly initialised ('untrained' / None),
    or an open_clip pretrained tag."""
    import open_clip

    from patentclip.launch import export as X
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    if checkpoint and checkpoint != "untrained":
        ck = X.read_checkpoint(checkpoint, workdir, head_builder)
        model, preprocess, tokenizer, name = X.build_model(ck, model_name, device)
        head = X.build_head_module(ck.head, head_builder).to(device) if ck.head is not None else None
        return LoadedModel(model, preprocess, tokenizer, name, head, ck.classes, ck.source)
    if not model_name:
        raise ValueError("--model is required without a checkpoint")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained, precision="fp32",
                                                                 device=device, output_dict=True)
    label = f"{model_name}/{pretrained}" if pretrained else f"{model_name} (untrained)"
    return LoadedModel(model.eval(), preprocess, open_clip.get_tokenizer(model_name), model_name, source=label)


def load_model_for_eval(model_name: str, checkpoint: Optional[str], pretrained: Optional[str], device):
    """(model, preprocess) from an open_clip .pt, a DeepSpeed checkpoint folder, an exported folder, or none."""
    with tempfile.TemporaryDirectory(prefix="patentclip-eval-") as work:
        m = load_for_eval(checkpoint, model_name, pretrained, device, work)
    return m.model, m.preprocess


# ----------------------------------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patentclip-eval", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1] + """
Examples:
  patentclip-eval --val-data 'shards/val/val-{000000..000001}.tar' \\
      --checkpoint logs/run/checkpoints/epoch_10.pt --out metrics.json
  patentclip-eval --val-data ... --checkpoint s3://bucket/run/checkpoints --baseline untrained --model patentclip-tiny \\
      --probe-train-data 'shards/train/train-{000000..000011}.tar' --report report/
""")
    g = p.add_argument_group("model and data")
    g.add_argument("--val-data", required=True, help="Evaluation shards (brace/:: patterns as in open_clip).")
    g.add_argument("--model", default=None,
                   help="open_clip model name (patentclip-tiny, ViT-B-32, ...); default: the one the checkpoint "
                        "records.")
    g.add_argument("--checkpoint", default=None,
                   help="Weights: an open_clip epoch_N.pt, a DeepSpeed checkpoint folder (a run's checkpoints/ or "
                        "a tag folder), a patentclip-export folder, any of these at an s3:// (fsspec) URL, or "
                        "'untrained' for freshly initialised weights (seeded by --seed).")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai), for baselines.")
    g.add_argument("--classes-json", default=None, help="classes.json (default: beside the first val shard).")
    g.add_argument("--train-classes-json", default=None,
                   help="classes.json of the training split: its counts define head/tail classes (default: the "
                        "training class table stored in the checkpoint, else --classes-json's counts).")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--val-num-samples", type=int, default=None)
    g.add_argument("--seed", type=int, default=0, help="Seed of 'untrained' weights, probe splits and examples.")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--out", default=None,
                   help="Write JSON here: the metrics (top level), 'per_class' and 'settings' (and 'baseline').")
    g = p.add_argument_group("retrieval")
    g.add_argument("--relevance", choices=["class", "patent"], default="class",
                   help="A result is relevant if it shows the query's Locarno class (the LLM-informed paper) or "
                        "the query's patent (DeepPatent re-identification). Default: %(default)s.")
    g.add_argument("--prior-art", choices=["auto", "on", "off"], default="auto",
                   help="Prior-art filter: only drawings granted strictly before the query's patent are searched. "
                        "auto = on for --relevance class, off for patent. Default: %(default)s.")
    g.add_argument("--retrieval-db", default=None,
                   help="Shards of the database to search (default: the evaluation drawings themselves).")
    g.add_argument("--ks", default="5,10", help="Cut-offs K of R@K / HitRate@K / P@K. Default: %(default)s.")
    g.add_argument("--mrr-k", type=int, default=10, help="K of MRR@K. Default: %(default)s.")
    g.add_argument("--max-chunk-mb", type=int, default=1024,
                   help="Memory of one retrieval chunk (queries x database scores and sort). Default: %(default)s.")
    g = p.add_argument_group("classification")
    g.add_argument("--templates", default=None, help="Zero-shot templates separated by '|', with {} for the class name.")
    g.add_argument("--linear-probe", choices=["auto", "off"], default="auto",
                   help="auto: fit on --probe-train-data if given, else cross-validate on the evaluation split.")
    g.add_argument("--probe-train-data", default=None, help="Training shards for the linear probe.")
    g.add_argument("--probe-folds", type=int, default=2, help="Folds of the cross-validated probe.")
    g = p.add_argument_group("report")
    g.add_argument("--report", default=None, help="Write an HTML report with PNG figures into this folder.")
    g.add_argument("--baseline", default=None,
                   help="A baseline to compare with in the table and report: a checkpoint (as --checkpoint), "
                        "'untrained', or 'pretrained:<tag>' for an open_clip pretrained model.")
    g.add_argument("--baseline-model", default=None, help="Model name of the baseline (default: --model's).")
    g.add_argument("--report-examples", type=int, default=6, help="Retrieval examples in the report.")
    g.add_argument("--report-top-k", type=int, default=5, help="Results shown per retrieval example.")
    g.add_argument("--map-method", choices=["pca", "tsne"], default="pca",
                   help="2-D embedding map: PCA (torch) or t-SNE (needs scikit-learn).")
    g.add_argument("--map-points", type=int, default=3000, help="At most this many drawings in the embedding map.")
    return p


def _loader(shards, preprocess, tokenizer, class_table, args):
    from patentclip.plugins.registry import DATASETS

    data_args = argparse.Namespace(val_data=shards, val_num_samples=args.val_num_samples, seed=args.seed,
                                   batch_size=args.batch_size, workers=args.workers, world_size=1, rank=0,
                                   train_data=None, dataset_resampled=False)
    return DATASETS.get("patent-wds")(data_args, preprocess, False, tokenizer=tokenizer,
                                      class_table=class_table).dataloader


def _evaluate_cli_model(loaded: LoadedModel, class_table, settings, args, device, is_head, train_counts, examples):
    loader = _loader(args.val_data, loaded.preprocess, loaded.tokenizer, class_table, args)
    db_loader = _loader(args.retrieval_db, loaded.preprocess, loaded.tokenizer, class_table, args) \
        if args.retrieval_db else None
    probe_loader = _loader(args.probe_train_data, loaded.preprocess, loaded.tokenizer, class_table, args) \
        if args.probe_train_data and settings.linear_probe != "off" else None
    return run_evaluation(loaded.model, loader, class_table, loaded.tokenizer, device, torch.float32, settings,
                          head=loaded.head, is_head=is_head, train_counts=train_counts, db_loader=db_loader,
                          probe_train_loader=probe_loader, examples=examples, example_k=args.report_top_k)


def _check_classes(class_table, classes: Optional[List[Dict]], what: str) -> None:
    if classes is None:
        return
    if len(classes) != len(class_table):
        raise ValueError(f"{what} was trained on {len(classes)} classes, the evaluation classes.json has "
                         f"{len(class_table)}")
    diff = [c["id"] for c in classes if class_table.classes[int(c["id"])].name != c.get("name")]
    if diff:
        logging.warning("%s: class names differ from %s for ids %s", what, class_table.source, diff[:10])


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    from patentclip.plugins.classes import ClassTable, load_class_table
    from patentclip.plugins.builtin import load_builtin_plugins

    load_builtin_plugins()
    try:
        settings = EvalSettings(relevance=args.relevance, prior_art=args.prior_art,
                                ks=tuple(int(k) for k in args.ks.split(",") if k.strip()), mrr_k=args.mrr_k,
                                templates=tuple(args.templates.split("|")) if args.templates else DEFAULT_TEMPLATES,
                                linear_probe=args.linear_probe, probe_folds=args.probe_folds,
                                max_chunk_bytes=args.max_chunk_mb << 20, seed=args.seed)
    except ValueError as exc:
        print(f"patentclip-eval: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    class_table = load_class_table(args.val_data, args.classes_json)
    with tempfile.TemporaryDirectory(prefix="patentclip-eval-") as work:
        torch.manual_seed(args.seed)
        try:
            loaded = load_for_eval(args.checkpoint, args.model, args.pretrained, device, work)
            _check_classes(class_table, loaded.classes, loaded.source)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"patentclip-eval: {exc}", file=sys.stderr)
            return 2
        if args.train_classes_json:
            train_table = ClassTable.load(args.train_classes_json)
            train_counts = train_table.counts()
            categories = class_categories(train_table)
        elif loaded.classes is not None:
            train_counts = torch.tensor([int(c.get("count", 0)) for c in loaded.classes], dtype=torch.float64)
            categories = class_categories(classes=loaded.classes)
        else:
            logging.warning("no training class counts (no --train-classes-json, none in the checkpoint): head/tail "
                            "classes follow the evaluation split's counts in %s", class_table.source)
            train_counts, categories = class_table.counts(), None
        categories = categories or class_categories(class_table)
        is_head = head_classes(class_table, train_counts, categories)
        n_examples = args.report_examples if args.report else 0
        result = _evaluate_cli_model(loaded, class_table, settings, args, device, is_head, train_counts, n_examples)
        label = os.path.basename(str(args.checkpoint).rstrip("/")) if args.checkpoint else loaded.source
        rows = {label: result.metrics}
        baseline = None
        if args.baseline:
            bname = args.baseline_model or args.model or loaded.name
            torch.manual_seed(args.seed)
            if args.baseline.startswith("pretrained:"):
                bl = load_for_eval(None, bname, args.baseline.split(":", 1)[1], device, work)
            else:
                bl = load_for_eval(args.baseline, bname, None, device, work)
            baseline = _evaluate_cli_model(bl, class_table, settings, args, device, is_head, train_counts, 0)
            blabel = "baseline: " + (os.path.basename(args.baseline.rstrip("/")) or args.baseline)
            rows[blabel] = baseline.metrics
    print(format_table(rows))
    if args.out:
        doc = {**result.metrics, "per_class": result.per_class, "settings": result.settings,
               "model": {"name": loaded.name, "source": loaded.source}}
        if baseline is not None:
            doc["baseline"] = {"source": args.baseline, "metrics": baseline.metrics, "per_class": baseline.per_class}
        with open(args.out, "w") as f:
            json.dump(_jsonable(doc), f, indent=2)
    if args.report:
        from patentclip.launch import report as R

        loader = _loader(args.val_data, loaded.preprocess, loaded.tokenizer, class_table, args)
        db_loader = _loader(args.retrieval_db, loaded.preprocess, loaded.tokenizer, class_table, args) \
            if args.retrieval_db else None
        keys = {e["key"] for e in result.examples} | {r["key"] for e in result.examples for r in e["results"]}
        images = R.collect_images([loader] + ([db_loader] if db_loader is not None else []), keys, loaded.preprocess)
        page = R.write_report(args.report, result, class_table, baseline=baseline, images=images,
                              title=f"patentclip evaluation: {label}", model_label=label,
                              baseline_label=(f"baseline ({args.baseline})" if args.baseline else None),
                              map_method=args.map_method, map_points=args.map_points)
        print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
