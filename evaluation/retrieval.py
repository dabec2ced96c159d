"""Image-to-image retrieval of the evaluation drawings: the protocol (relevance by class, by patent or by the
examiner's citations (:mod:`patentclip.evaluation.citations`), the
prior-art filter, the query's own drawing or patent excluded, head / tail query groups) turned into the arguments
of :func:`patentclip.evaluation.metrics.retrieval_metrics`, the flat ``i2i_*`` metrics, and retrieval examples
(queries with their top results) for the report."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch

from patentclip.evaluation import citations as C
from patentclip.evaluation import metrics as M
from patentclip.evaluation.features import index_strings
from patentclip.evaluation.settings import EvalSettings


def retrieval_inputs(query: Dict, db: Optional[Dict], settings: EvalSettings, is_head: Optional[torch.Tensor] = None):
    """Arguments of :func:`metrics.retrieval_metrics` for ``query`` against ``db`` (None: the query set itself).

    Returns ``(qidx, kwargs)``: the query indices evaluated (queries without a known grant date are left out
    when the prior-art filter is on) and the keyword arguments (labels, times, exclusions, head/tail groups)
    for those queries.
    """
    same = db is None
    db = query if same else db
    n_q = len(query["key"])
    if settings.relevance in ("class", "citation"):  # citation: the class only groups queries (mAP_macro)
        ql, dl = query["class_id"].long(), db["class_id"].long()
    else:
        ql, dl = index_strings(query["patent_id"], db["patent_id"])
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
    if settings.relevance in ("class", "citation"):
        qp, dp = index_strings(query["patent_id"], db["patent_id"])
        kw["query_patent_ids"], kw["db_patent_ids"] = qp[qidx], dp
    if settings.relevance == "citation":  # query["citations"]: patent id -> cited numbers (run_evaluation)
        kw["relevant"] = C.relevant_indices([query["patent_id"][i] for i in qidx.tolist()], db["patent_id"],
                                            query["citations"])
    kw["query_labels"], kw["db_labels"] = ql[qidx], dl
    if is_head is not None:
        h = is_head[query["class_id"][qidx].long()]
        kw["label_groups"] = {"head": h, "tail": ~h}
    return qidx, kw


def retrieval_from_features(query: Dict, db: Optional[Dict], settings: EvalSettings,
                            is_head: Optional[torch.Tensor] = None, device="cpu") -> Dict:
    """Image-to-image retrieval metrics (flat ``i2i_*``) plus per-query details."""
    dbf = query["image_features"] if db is None else db["image_features"]
    qidx, kw = retrieval_inputs(query, db, settings, is_head)
    labels_q, labels_db = kw.pop("query_labels"), kw.pop("db_labels")
    dev = torch.device(device)
    kw = {k: ({n: m for n, m in v.items()} if isinstance(v, dict) else v.to(dev)) for k, v in kw.items()}
    r = M.retrieval_metrics(query["image_features"][qidx].to(dev), dbf.to(dev), labels_q.to(dev), labels_db.to(dev),
                            ks=settings.ks, mrr_k=settings.mrr_k, max_chunk_bytes=settings.max_chunk_bytes,
                            method=settings.ranking, return_per_query=True, **kw)
    pq = r.pop("per_query")
    out = {f"i2i_{k}": float(v) for k, v in r.items()}
    out["i2i_num_queries_unknown_date"] = float(len(query["key"]) - len(qidx))
    return {"metrics": out, "per_query": pq, "qidx": qidx}


def retrieval_examples(query: Dict, db: Optional[Dict], settings: EvalSettings, per_query: Dict, qidx: torch.Tensor,
                       is_head: Optional[torch.Tensor], n: int = 6, k: int = 5, device="cpu") -> List[Dict]:
    """``n`` example queries (alternately head and tail classes, seeded) with their top-``k`` results."""
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
        if name in ("query_times", "query_patent_ids", "query_labels", "exclude", "relevant"):
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
    elif settings.relevance == "citation":
        cited = C.cited_sets(query["citations"])
        rel = lambda qi, di: C.canonical_patent_key(dbd["patent_id"][di]) in cited.get(query["patent_id"][qi], ())  # noqa: E731,E501
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
                    "ap": float(per_query["ap"][s]) if "ap" in per_query else None, "num_relevant": int(per_query["num_relevant"][s]),
                    "num_candidates": int(per_query["num_candidates"][s]), "results": results})
    return out
