"""Ranking metrics: image retrieval (mAP, R@K, HitRate@K, P@K, MRR@K, with the prior-art filter) and
image<->text recall, on L2-normalised features (conventions: :mod:`patentclip.evaluation.metrics`).

Definitions
-----------
:func:`retrieval_metrics` -- image retrieval as in "Large Language Model Informed Patent Image
Retrieval" (sec. 3.4).  For a query ``q`` let ``C_q`` be its *candidate set* (the database,
minus items removed by the prior-art time filter, ``exclude`` and the same-patent exclusion),
ranked by similarity, and ``Rel_q`` the relevant candidates (``db_label == query_label``, or
the database items listed for ``q`` in ``relevant``, e.g. its examiner's citations).  A
query with ``|Rel_q| = 0`` is *not valid*: it is left out of every average and counted in
``num_queries_without_relevant``.  For a valid query, with ``rel(i)`` = 1 if the candidate at
rank ``i`` is relevant:

* ``AP_q  = (1/|Rel_q|) * sum_{i : rel(i)=1} P_q(i)``, ``P_q(i) = (1/i) sum_{j<=i} rel(j)`` --
  standard non-interpolated average precision over the *full* ranked candidate list (equal
  to ``sklearn.metrics.average_precision_score`` on the candidates when scores are
  distinct).  ``mAP`` = mean of ``AP_q`` over valid queries.
* ``R@K``  = mean over valid queries of ``|relevant in top K| / |Rel_q|`` -- **the paper's
  Recall@K**.  Table 1 of the paper reports MRR@10 above R@10 for every model (e.g. ViT-B-32,
  all classes: M@10 = 81.3 > R@10 = 58.6), which is impossible for a hit rate (``1/r_q <= 1``
  only for queries that have a hit in the top 10, so MRR@10 <= hit rate@10) and also fits
  neither P@K (its R@5 < R@10 for every model, and R@10 is about 2 x R@5 for the weak
  baselines, as a fraction of all relevant items grows).  This is what every patentclip report
  calls "R@K".
* ``HitRate@K`` = fraction of valid queries with **at least one** relevant item in the top K
  (the "Recall@K" of the deep-metric-learning literature and of image<->text retrieval, see
  :func:`image_text_recall`).  With exactly one relevant item per query both definitions agree.
* ``P@K``  = mean over valid queries of ``|relevant in top K| / K`` (the divisor is always K,
  also when fewer than K candidates exist).
* ``MRR@K`` = mean over valid queries of ``1 / r_q`` if ``r_q <= K`` else 0, where ``r_q`` is
  the rank of the first relevant candidate.
* ``mAP_macro`` = AP averaged first within each query label, then across labels (a
  "per-class" mAP; equals ``mAP`` when every label has the same number of valid queries).

:func:`image_text_recall` -- DesignCLIP-style image<->text retrieval R@1/5/10, the hit-rate
definition (``HitRate@K`` above; sample ``i``'s image and text are the positive pair by default;
identical texts count as one text, whose positives are all the drawings it describes, when
``text_ids`` says which texts are identical).

Memory and cost
---------------
:func:`retrieval_metrics` works on ``chunk_size`` queries at a time against the whole database:
one ``(chunk_size, N)`` score matrix and a few masks and index arrays of the same shape, at most
:data:`BYTES_PER_SCORE` bytes per (query, database item) pair of the chunk.  Without an explicit
``chunk_size`` the chunk is sized from ``max_chunk_bytes`` (default 1 GiB), so peak memory is
bounded whatever the number of queries.  Work: one dot product per pair, then the ranking of
:mod:`patentclip.evaluation.metrics.ranks` (``method``): by default the top K by ``torch.topk``
and the ranks of the relevant items by counting, linear in ``N`` (no row is sorted whole; small
databases excepted, where sorting is cheaper); ``method="sort"``, the former path, sorts every
row.  ``benchmarks/eval_scaling.py`` measures all three in one run.

One concern (the ranking metrics) in just over 400 lines, about 70 of them the definitions above.
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Optional

import torch

from patentclip.evaluation.metrics import ranks as R
from patentclip.evaluation.metrics.inputs import NAN, as_tensor, cutoffs, feature_matrix, mean, vector

#: Bytes of working memory per (query, database item) pair of a chunk in :func:`retrieval_metrics`
#: (an upper estimate).  method "sort": fp32 scores (4) + sorted values and int64 indices (12) +
#: the sort's scratch (up to 12) + masks (2), then masks in rank order and int32 ranks (6) and about
#: 40 bytes per *relevant* pair for the AP bookkeeping.  method "count": scores (4) + masks (3) +
#: int64 cell indices (8) and their float source (4) + a histogram of at most one int64 per item
#: (8) + the sorted subset (~16 per subset pair); measured 40 at an 823K database.
BYTES_PER_SCORE = 48


def _aggregate(pq: Mapping[str, torch.Tensor], mask: Optional[torch.Tensor], ks, mrr_k,
               labels: torch.Tensor, prefix: str = "") -> Dict[str, float]:
    n_total = pq["num_relevant"].shape[0]
    if mask is None:
        mask = torch.ones(n_total, dtype=torch.bool)
    valid = mask & (pq["num_relevant"] > 0)
    out: Dict[str, float] = {}
    if "ap" in pq:  # not with method="topk"
        ap = pq["ap"][valid]
        out[f"{prefix}mAP"] = mean(ap)
        # per-label (macro) mAP
        if ap.numel():
            lab = labels[valid]
            uniq, inv = torch.unique(lab, return_inverse=True)
            sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inv, ap)
            cnts = torch.bincount(inv, minlength=uniq.numel()).double()
            out[f"{prefix}mAP_macro"] = float((sums / cnts).mean())
        else:
            out[f"{prefix}mAP_macro"] = NAN
    for k in ks:
        h = pq[f"hits@{k}"][valid]
        out[f"{prefix}R@{k}"] = mean(h.double() / pq["num_relevant"][valid].double())
    for k in ks:
        h = pq[f"hits@{k}"][valid]
        out[f"{prefix}HitRate@{k}"] = mean((h > 0).double())
    for k in ks:
        h = pq[f"hits@{k}"][valid]
        out[f"{prefix}P@{k}"] = mean(h.double() / k)
    first = pq["first_relevant_rank"][valid]
    rr = torch.where((first >= 1) & (first <= mrr_k), 1.0 / first.double(),
                     torch.zeros_like(first, dtype=torch.float64))
    out[f"{prefix}MRR@{mrr_k}"] = mean(rr)
    n_q = int(mask.sum())
    n_valid = int(valid.sum())
    out[f"{prefix}num_queries"] = n_q
    out[f"{prefix}num_valid_queries"] = n_valid
    out[f"{prefix}num_queries_without_relevant"] = n_q - n_valid
    return out


def auto_chunk_size(num_db: int, max_chunk_bytes: int = 1 << 30) -> int:
    """Queries per chunk so that one chunk's working memory (:data:`BYTES_PER_SCORE` bytes per
    (query, database item) pair) stays within ``max_chunk_bytes``; at least 1."""
    return max(1, int(max_chunk_bytes) // (BYTES_PER_SCORE * max(1, int(num_db))))


@torch.no_grad()
def retrieval_metrics(
    query_features: torch.Tensor,
    db_features: torch.Tensor,
    query_labels: torch.Tensor,
    db_labels: torch.Tensor,
    *,
    ks: Iterable[int] = (5, 10),
    mrr_k: int = 10,
    query_times: Optional[torch.Tensor] = None,
    db_times: Optional[torch.Tensor] = None,
    exclude: Optional[torch.Tensor] = None,
    query_patent_ids: Optional[torch.Tensor] = None,
    db_patent_ids: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    max_chunk_bytes: int = 1 << 30,
    label_groups: Optional[Mapping[str, torch.Tensor]] = None,
    return_per_query: bool = False,
    return_top_k: int = 0,
    method: str = "count",
    relevant: Optional[torch.Tensor] = None,
) -> Dict[str, object]:
    """Image-retrieval metrics (mAP, R@K, HitRate@K, P@K, MRR@K) with the optional prior-art time filter.

    Args:
        query_features: ``(Q, D)`` L2-normalised query embeddings.
        db_features: ``(N, D)`` L2-normalised database embeddings.  Similarity = dot product.
        query_labels, db_labels: ``(Q,)`` / ``(N,)`` integer tensors.  Database item ``d`` is
            *relevant* to query ``q`` iff ``db_labels[d] == query_labels[q]`` (class ids for
            class-level retrieval, patent ids for re-identification: the caller decides).
        ks: cut-offs for ``R@K``, ``HitRate@K`` and ``P@K`` (default 5 and 10).
        mrr_k: cut-off of ``MRR@K`` (default 10).
        query_times, db_times: optional ``(Q,)`` / ``(N,)`` tensors of grant times (e.g. days
            since epoch); give both or neither.  When given, the **prior-art filter** applies:
            only database items with ``db_times[d] < query_times[q]`` (strictly earlier) are
            candidates for query ``q``.
        exclude: optional ``(Q,)`` integer tensor of one database index to drop per query
            (e.g. the query itself when query set == database; ``-1`` = drop nothing), or a
            ``(Q, E)`` tensor of several indices padded with ``-1``.
        query_patent_ids, db_patent_ids: optional ``(Q,)`` / ``(N,)`` integer tensors; when
            both are given, database drawings of the query's own patent
            (``db_patent_ids[d] == query_patent_ids[q]``) are not candidates
            ("exclude same patent").
        chunk_size: queries processed at a time; peak memory is about
            ``chunk_size * N * BYTES_PER_SCORE`` bytes.  Default: :func:`auto_chunk_size` of
            ``max_chunk_bytes``.  Results do not depend on it.
        max_chunk_bytes: memory budget of one chunk when ``chunk_size`` is not given (1 GiB).
        label_groups: optional ``{name: (Q,) bool mask}``; every metric is also reported for
            the queries of each group under ``"{name}/{metric}"`` (e.g. ``head/mAP``).
        return_per_query: also return ``per_query``: a dict of CPU tensors ``ap``,
            ``first_relevant_rank`` (0 = no relevant candidate), ``num_relevant``,
            ``num_candidates`` and ``hits@K`` (#relevant in the top K).
        return_top_k: also return ``top_indices``: a ``(Q, return_top_k)`` CPU int64 tensor of
            the database indices of each query's best candidates in rank order (``-1`` where a
            query has fewer candidates).
        method: how rows are ranked (:mod:`patentclip.evaluation.metrics.ranks`; same results):
            ``"count"`` (default) ranks the relevant items by counting and the top K by
            ``torch.topk``, without sorting whole rows; ``"sort"`` sorts every row (the reference);
            ``"topk"`` computes the top-K metrics only (R@K, HitRate@K, P@K, MRR@K; no ``mAP`` keys,
            and ``first_relevant_rank`` is -1 for a first relevant item below the top ``max(ks,
            mrr_k)``).
        relevant: optional ``(Q, M)`` integer tensor of the database indices relevant to each
            query, padded with ``-1``; when given it **replaces** label equality as the
            relevance rule (e.g. the drawings of the patents an examiner cited against the
            query's patent); the labels then only group queries for ``mAP_macro``. A relevant
            item must still be a candidate (time filter and exclusions apply).

    Returns:
        dict with ``mAP``, ``R@K``, ``HitRate@K`` and ``P@K`` for each K in ``ks``,
        ``MRR@{mrr_k}``, plus ``mAP_macro``, ``num_queries`` (queries considered),
        ``num_valid_queries`` and ``num_queries_without_relevant`` (queries with no relevant
        candidate; they are excluded from every average, so
        ``num_valid_queries = num_queries - num_queries_without_relevant``).  Metrics are
        fractions in [0, 1] (NaN when there is no valid query); see the module docstring for
        the exact definitions.  Ties in score are broken by database index (smaller first).
    """
    ks = cutoffs(ks)
    mrr_k = int(mrr_k)
    if mrr_k < 1:
        raise ValueError("mrr_k must be >= 1")
    if method not in R.METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {', '.join(R.METHODS)}")
    return_top_k = int(return_top_k)
    if return_top_k < 0:
        raise ValueError("return_top_k must be >= 0")
    q = feature_matrix(query_features, "query_features")
    dev = q.device
    db = feature_matrix(db_features, "db_features", dev).to(q.dtype)
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"feature dims differ: {q.shape[1]} vs {db.shape[1]}")
    n_q, n_db = q.shape[0], db.shape[0]
    # a NaN or infinity anywhere in a row makes its sum non-finite: one value per row, no (N, D) temporary
    if not (bool(torch.isfinite(q.sum(1)).all()) and bool(torch.isfinite(db.sum(1)).all())):
        raise ValueError("NaN or infinite values in the features")
    if chunk_size is None:
        chunk_size = auto_chunk_size(n_db, max_chunk_bytes)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    q_lab = vector(query_labels, n_q, "query_labels", dev)
    db_lab = vector(db_labels, n_db, "db_labels", dev)

    if (query_times is None) != (db_times is None):
        raise ValueError("give both query_times and db_times, or neither")
    q_t = db_t = None
    if query_times is not None:
        q_t = vector(query_times, n_q, "query_times", dev, integer=False)
        db_t = vector(db_times, n_db, "db_times", dev, integer=False)

    if (query_patent_ids is None) != (db_patent_ids is None):
        raise ValueError("give both query_patent_ids and db_patent_ids, or neither")
    q_pid = db_pid = None
    if query_patent_ids is not None:
        q_pid = vector(query_patent_ids, n_q, "query_patent_ids", dev)
        db_pid = vector(db_patent_ids, n_db, "db_patent_ids", dev)

    ex = None
    if exclude is not None:
        ex = as_tensor(exclude, dev)
        if ex.is_floating_point() or ex.dtype == torch.bool:
            raise TypeError("exclude must be an integer tensor")
        if ex.dim() == 1:
            ex = ex[:, None]
        if ex.dim() != 2 or ex.shape[0] != n_q:
            raise ValueError(f"exclude must have shape ({n_q},) or ({n_q}, E), got {tuple(as_tensor(exclude).shape)}")
        ex = ex.to(torch.int64)
        if ex.numel() and (int(ex.max()) >= n_db or int(ex.min()) < -1):
            raise ValueError("exclude indices must be in [-1, N)")

    rel_idx = None
    if relevant is not None:
        rel_idx = as_tensor(relevant, dev)
        if rel_idx.is_floating_point() or rel_idx.dtype == torch.bool or rel_idx.dim() != 2 or \
                rel_idx.shape[0] != n_q:
            raise ValueError(f"relevant must be a ({n_q}, M) integer tensor, got "
                             f"{tuple(rel_idx.shape)} {rel_idx.dtype}")
        rel_idx = rel_idx.to(torch.int64)
        if rel_idx.numel() and (int(rel_idx.max()) >= n_db or int(rel_idx.min()) < -1):
            raise ValueError("relevant indices must be in [-1, N)")

    groups = {}
    if label_groups:
        for name, m in label_groups.items():
            m = as_tensor(m)
            if m.dtype != torch.bool or m.shape != (n_q,):
                raise ValueError(f"label_groups[{name!r}] must be a ({n_q},) bool mask")
            groups[name] = m.cpu()

    ap_l, first_l, nrel_l, ncand_l, top_l = [], [], [], [], []
    hits_l = {k: [] for k in ks}
    for s in range(0, n_q, chunk_size):
        e = min(s + chunk_size, n_q)
        c = e - s
        scores = q[s:e] @ db.T  # (c, N); finite: the features were checked
        cand = db_t[None, :] < q_t[s:e, None] if q_t is not None else \
            torch.ones((c, n_db), dtype=torch.bool, device=dev)
        if q_pid is not None:
            cand &= db_pid[None, :] != q_pid[s:e, None]
        if ex is not None:
            exc = ex[s:e]
            ok = exc >= 0
            r = torch.arange(c, device=dev)[:, None].expand_as(exc)[ok]
            cand[r, exc[ok]] = False
        if rel_idx is None:
            rel = (db_lab[None, :] == q_lab[s:e, None]) & cand
        else:  # the given relevant items (citations) instead of label equality, still only candidates
            rel = torch.zeros((c, n_db), dtype=torch.bool, device=dev)
            ri = rel_idx[s:e]
            ok = ri >= 0
            rel[torch.arange(c, device=dev)[:, None].expand_as(ri)[ok], ri[ok]] = True
            rel &= cand
        # the metrics' statistics of the chunk (ties: the smaller database index first)
        st = R.chunk_statistics(scores, cand, rel, sorted(set(ks) | {mrr_k}) if method == "topk" else ks,
                                return_top_k, method)
        del scores, cand, rel
        ap, first, nrel, ncand, top = (st["ap"], st["first_relevant_rank"], st["num_relevant"],
                                       st["num_candidates"], st["top"])
        hits = {k: st[f"hits@{k}"] for k in ks}
        if ap is not None:
            ap_l.append(ap.cpu())
        first_l.append(first.cpu())
        nrel_l.append(nrel.cpu())
        ncand_l.append(ncand.cpu())
        for k in ks:
            hits_l[k].append(hits[k].cpu())
        if top is not None:
            top_l.append(top.cpu())

    def cat(xs, dtype):
        return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype)

    pq = {
        **({"ap": cat(ap_l, torch.float64)} if method != "topk" else {}),
        "first_relevant_rank": cat(first_l, torch.int64),
        "num_relevant": cat(nrel_l, torch.int64),
        "num_candidates": cat(ncand_l, torch.int64),
    }
    for k in ks:
        pq[f"hits@{k}"] = cat(hits_l[k], torch.int64)

    labels_cpu = q_lab.cpu()
    out: Dict[str, object] = _aggregate(pq, None, ks, mrr_k, labels_cpu)
    for name, m in groups.items():
        out.update(_aggregate(pq, m, ks, mrr_k, labels_cpu, prefix=f"{name}/"))
    if return_per_query:
        out["per_query"] = pq
    if return_top_k:
        out["top_indices"] = torch.cat(top_l) if top_l else torch.zeros((0, return_top_k), dtype=torch.int64)
    return out


@torch.no_grad()
def merge_identical_texts(text_features: torch.Tensor, text_ids) -> tuple:
    """``(features of each distinct text, index of each sample's text among them)`` for ``text_ids[j]`` = an id
    that is equal for identical texts (e.g. the row index of text j's token sequence among the distinct ones).
    The features of a distinct text are those of its first sample (identical texts have identical features)."""
    dev = text_features.device
    ids = vector(text_ids, text_features.shape[0], "text_ids", dev)
    _, inverse = torch.unique(ids, return_inverse=True)
    n_u = int(inverse.max()) + 1 if inverse.numel() else 0
    first = torch.full((n_u,), text_features.shape[0], dtype=torch.long, device=dev)
    first = first.scatter_reduce(0, inverse, torch.arange(ids.shape[0], device=dev), reduce="amin")
    return text_features[first], inverse


def image_text_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    ks: Iterable[int] = (1, 5, 10),
    *,
    image_groups: Optional[torch.Tensor] = None,
    text_groups: Optional[torch.Tensor] = None,
    text_ids: Optional[torch.Tensor] = None,
    chunk_size: Optional[int] = None,
    max_chunk_bytes: int = 1 << 30,
) -> Dict[str, float]:
    """Image<->text retrieval recall (hit rate) at K, as in DesignCLIP / CLIP evaluations.

    Image ``i`` and text ``j`` are a positive pair iff ``image_groups[i] == text_groups[j]``.
    By default ``image_groups = arange(num_images)`` and ``text_groups = arange(num_texts)``,
    i.e. sample ``i``'s image and text are the (only) positive pair -- this default needs the
    same number of images and texts.  To let several texts be positives for an image (e.g. all
    captions of the same drawing) pass ``text_groups[j]`` = index (or id) of text ``j``'s
    drawing, leaving ``image_groups`` at its default or giving drawing ids too.

    * ``image_to_text_R@K`` = fraction of images for which at least one positive text is among
      the K texts most similar to the image.
    * ``text_to_image_R@K`` = fraction of texts for which at least one positive image is among
      the K images most similar to the text.

    **Identical texts** (``text_ids``: equal ids for identical captions, with sample ``i``'s image and
    text the pair): an evaluation set often holds the same caption for several drawings, and
    identical texts have bit-identical features, so with one text per sample the rank of a
    drawing's own copy among them, hence R@K, would depend on the order of the samples. With
    ``text_ids`` they are one text: the gallery of image->text holds each distinct text once, and
    its positives for an image are that image's caption; text->image has one query per distinct
    text, whose positives are all the drawings it describes. ``text_to_image_R@K`` is then a
    fraction of the distinct texts. The result does not depend on the order of the samples.

    Similarity = dot product (features assumed L2-normalised); ties broken by index.  An image
    (text) that has no positive text (image) at all is left out of the fraction.  Same code
    path as :func:`retrieval_metrics` (its ``HitRate@K``), chunked the same way.
    """
    ks = cutoffs(ks)
    img = feature_matrix(image_features, "image_features")
    dev = img.device
    txt = feature_matrix(text_features, "text_features", dev).to(img.dtype)
    if text_ids is not None:
        if image_groups is not None or text_groups is not None:
            raise ValueError("text_ids pairs image i with text i: give it without image_groups/text_groups")
        if img.shape[0] != txt.shape[0]:
            raise ValueError(f"{img.shape[0]} images vs {txt.shape[0]} texts: text_ids needs one text per image")
        txt, image_groups = merge_identical_texts(txt, text_ids)
        text_groups = torch.arange(txt.shape[0], device=dev)
    n_i, n_t = img.shape[0], txt.shape[0]
    ig = torch.arange(n_i, device=dev) if image_groups is None else vector(image_groups, n_i, "image_groups", dev)
    tg = torch.arange(n_t, device=dev) if text_groups is None else vector(text_groups, n_t, "text_groups", dev)
    if image_groups is None and text_groups is None and n_i != n_t:
        raise ValueError(f"{n_i} images vs {n_t} texts: pass image_groups/text_groups to pair them")
    out: Dict[str, float] = {}
    i2t = retrieval_metrics(img, txt, ig, tg, ks=ks, mrr_k=1, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes)
    t2i = retrieval_metrics(txt, img, tg, ig, ks=ks, mrr_k=1, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes)
    for k in ks:
        out[f"image_to_text_R@{k}"] = i2t[f"HitRate@{k}"]
    for k in ks:
        out[f"text_to_image_R@{k}"] = t2i[f"HitRate@{k}"]
    return out


