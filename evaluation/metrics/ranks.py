"""Exact rankings of a chunk of queries against a database without sorting whole rows.

Rule (the one every patentclip ranking follows): a query's candidates rank by decreasing score; of two candidates
with exactly the same score, the one with the smaller database index ranks first. Ranks are 1-based and count
candidates only.

Sorting every row (what the evaluation did first) costs ``O(N log N)`` per query and, measured, three quarters of the
evaluation's time. The metrics need much less:

* the **top K** of each row (R@K, HitRate@K, P@K, MRR@K, retrieval examples): :func:`top_k`, ``torch.topk``
  (linear in N), then the rule applied where ``topk`` is free to choose: the K results are put in rule order,
  and in the rows where candidates tie at the K-th score across the cut the tied ones are chosen by index.
* the **rank of every relevant item** (average precision over the full ranking): :func:`relevant_ranks`, by
  counting. The rank of a relevant item r is one plus the number of candidates ranked above it. Each row's score
  range is cut into G equal cells (``CELLS_PER_RELEVANT`` per relevant item of the row, at most
  ``MAX_CELLS_PER_ITEM`` per database item); a candidate's cell is a monotone function of its score, so a
  candidate in a higher cell scores strictly higher and one in a lower cell strictly lower. Candidates in cells
  that hold no relevant item are only counted (a histogram and a running sum); the few that share a cell with a
  relevant item are ranked exactly among themselves (a sort of that subset, by score, then index). Rank of r =
  (its position among the subset of its row) + (candidates of cells without relevant items above r's cell).
  Exact for any scores (ties included), linear in N plus the sort of the subset: the relevant items themselves
  (with 32 long-tailed classes about a tenth of the candidates on average) and a few percent more.

Both work on any device (CPU or CUDA) and take float32 or float64 scores; they are what
``patentclip.evaluation.metrics.retrieval_metrics`` computes its metrics from (tests/test_ranking.py checks them against
full stable sorts, bit for bit).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

#: cells per relevant item of a row (more cells: fewer candidates share a cell with a relevant item)
CELLS_PER_RELEVANT = 64
#: at most this many cells per database item of the row (bounds the histogram: 8 bytes per cell)
MAX_CELLS_PER_ITEM = 1
#: at least this many cells per row
MIN_CELLS = 64
#: below this many database items a full sort of the rows is cheaper than counting (measured by
#: benchmarks/eval_scaling.py: equal at 16K, counting 1.1-1.3x faster from 32K) and method 'count' sorts instead
COUNT_MIN_DB = 20_000
#: how chunk_statistics ranks: 'count' (default), 'topk' (top-K metrics only), 'sort' (the reference)
METHODS = ("count", "topk", "sort")


def _rule_order(rows: torch.Tensor, cols: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Permutation putting (row, col, score) entries given in row-major order (col ascending within a row) into
    (row ascending, score descending, col ascending) order: float32 scores with one stable sort of 64-bit keys
    (row, then the score's bits turned into an order-preserving integer), others with two stable sorts."""
    if scores.dtype == torch.float32 and rows.numel() and int(rows.max()) < 2 ** 30:
        b = scores.view(torch.int32).to(torch.int64)
        ordered = torch.where(b < 0, b ^ 0x7FFFFFFF, b)           # same order as the floats, in [-2^31, 2^31)
        key = rows.to(torch.int64) * (1 << 32) + ((1 << 31) - 1 - ordered)  # row ascending, score descending
        return torch.sort(key, stable=True).indices
    o = torch.sort(scores, descending=True, stable=True).indices  # ties keep the column order
    return o[torch.sort(rows[o], stable=True).indices]


def top_k(scores: torch.Tensor, cand: torch.Tensor, k: int) -> torch.Tensor:
    """``(c, k)`` int64 database indices of each row's ``k`` best candidates in rank order, -1 where a row has fewer.

    ``scores`` (c, N) float, ``cand`` (c, N) bool."""
    c, n = scores.shape
    dev = scores.device
    out = torch.full((c, k), -1, dtype=torch.int64, device=dev)
    if c == 0 or n == 0 or k == 0:
        return out
    kk = min(k, n)
    masked = scores.masked_fill(~cand, float("-inf"))
    vals, idx = torch.topk(masked, kk, dim=1, largest=True, sorted=True)
    kth = vals[:, -1:]
    n_cand = torch.count_nonzero(cand, dim=1)
    # rows where candidates tie with the k-th score beyond the cut: topk chose among them arbitrarily
    n_ge = torch.count_nonzero(masked >= kth, dim=1)
    fix = (n_ge > kk) & (n_cand > kk)
    # the rule's order within the k (ties by index): sort by index, then stably by score
    o = torch.sort(idx, dim=1).indices
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    o = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx, vals = idx.gather(1, o), vals.gather(1, o)
    if bool(fix.any()):
        for r in fix.nonzero().flatten().tolist():  # rare: a full rule-order sort of these rows only
            row = masked[r]
            order = torch.sort(row, descending=True, stable=True).indices[:kk]
            idx[r], vals[r] = order, row[order]
    idx = torch.where(torch.isneginf(vals), torch.full_like(idx, -1), idx)
    out[:, :kk] = idx
    return out


def relevant_ranks(scores: torch.Tensor, cand: torch.Tensor, rel: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rank of every relevant candidate, by counting (see the module docstring).

    ``scores`` (c, N) float; ``cand``, ``rel`` (c, N) bool with ``rel`` within ``cand``. Returns ``(rows, ranks,
    num_relevant, num_candidates)``: for each relevant candidate its row and 1-based rank among the row's
    candidates, grouped by row (ascending) and in rank order within a row; and per row the number of relevant
    items and of candidates (int64)."""
    c, n = scores.shape
    dev = scores.device
    rel_rows, rel_cols = rel.nonzero(as_tuple=True)
    num_rel = torch.bincount(rel_rows, minlength=c)
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    if c == 0 or n == 0 or rel_rows.numel() == 0:
        return empty, empty, num_rel, torch.count_nonzero(cand, dim=1)
    # each row's score range (of all its entries: a wider range than the candidates' changes nothing but cell sizes)
    lo, hi = torch.aminmax(scores, dim=1)
    # cells per row: CELLS_PER_RELEVANT per relevant item, at least MIN_CELLS, at most MAX_CELLS_PER_ITEM
    # per database item (rows without relevant items get one cell: they are not looked at)
    cells = (num_rel * CELLS_PER_RELEVANT).clamp(min=MIN_CELLS)
    cells = cells.clamp(max=max(1, n * MAX_CELLS_PER_ITEM))
    cells = torch.where(num_rel > 0, cells, torch.ones_like(cells))
    span = hi - lo
    scale = torch.where(span > 0, cells.to(scores.dtype) / torch.where(span > 0, span, torch.ones_like(span)),
                        torch.zeros_like(span))
    # cell of each score: trunc(s * scale - lo * scale) (>= 0 up to rounding, so trunc = floor), a non-decreasing
    # function of s: every step rounds monotonically; then clamped into the row's cells
    start = torch.cumsum(cells, 0) - cells            # each row's first cell in one flat array of cells
    total = int(cells.sum())
    # int64 cell indices: what bincount and indexing take without converting (int32 would be converted twice)
    flat = torch.addcmul((-lo * scale)[:, None], scores, scale[:, None]).to(torch.int64)
    flat.clamp_(min=torch.zeros_like(cells)[:, None], max=(cells - 1)[:, None])
    flat.add_(start[:, None])
    flat.masked_fill_(~cand, total)  # non-candidates: one bin past the end (in place: no second int64 array)
    hist = torch.bincount(flat.view(-1), minlength=total + 1)
    num_cand = torch.zeros(c, dtype=torch.int64, device=dev).index_add_(
        0, torch.repeat_interleave(torch.arange(c, device=dev), cells), hist[:total])
    occupied = torch.zeros(total + 1, dtype=torch.bool, device=dev)
    occupied[flat[rel_rows, rel_cols]] = True
    # candidates sharing a cell with a relevant item (the relevant items among them): ranked exactly
    subset = occupied[flat]
    hist.masked_fill_(occupied, 0)                     # counted through the subset instead
    hist[total] = 0                                    # non-candidates
    csum = torch.cumsum(hist, 0)
    row_end = csum[start + cells - 1]                  # csum at each row's last cell
    rs, cs = subset.nonzero(as_tuple=True)
    del subset
    o = _rule_order(rs, cs, scores[rs, cs])
    rs, cs = rs[o], cs[o]
    in_row = torch.bincount(rs, minlength=c)
    pos = torch.arange(rs.numel(), device=dev) - (torch.cumsum(in_row, 0) - in_row)[rs]
    is_rel = rel[rs, cs]
    rows = rs[is_rel]
    f = flat[rows, cs[is_rel]]
    # rank = 1 + subset items above it in its row + candidates of cells without relevant items above its cell
    ranks = pos[is_rel] + 1 + (row_end[rows] - csum[f])
    return rows, ranks, num_rel, num_cand


def sorted_relevant_ranks(scores: torch.Tensor, cand: torch.Tensor, rel: torch.Tensor, top: int = 0):
    """What :func:`relevant_ranks` returns, by a full stable sort of every row (the reference, and the evaluation's
    first method), plus the ``top`` best candidates of each row (-1 padded) when ``top`` > 0."""
    c, n = scores.shape
    dev = scores.device
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # ties: smaller index first
    cand_s = cand.gather(1, order)
    rel_s = rel.gather(1, order)
    # rank of each position among the candidates (non-candidates may sit anywhere; they are not counted)
    cand_rank = torch.cumsum(cand_s, dim=1, dtype=torch.int32)
    best = None
    if top > 0:
        best = torch.full((c, top), -1, dtype=torch.int64, device=dev)
        tr, tc = (cand_s & (cand_rank <= top)).nonzero(as_tuple=True)
        best[tr, cand_rank[tr, tc].to(torch.int64) - 1] = order[tr, tc]
    rows, cols = rel_s.nonzero(as_tuple=True)  # row-major: the relevant items of a row in rank order
    ranks = cand_rank[rows, cols].to(torch.int64)
    num_cand = cand_rank[:, -1].to(torch.int64) if n else torch.zeros(c, dtype=torch.int64, device=dev)
    return rows, ranks, torch.bincount(rows, minlength=c), num_cand, best


def chunk_statistics(scores: torch.Tensor, cand: torch.Tensor, rel: torch.Tensor, ks: Sequence[int],
                     top: int = 0, method: str = "count") -> Dict[str, Optional[torch.Tensor]]:
    """Per-query statistics of a chunk of queries, from which every retrieval metric is computed.

    ``scores`` (c, N); ``cand`` / ``rel`` (c, N) bool masks of the candidates / relevant candidates. Returns
    ``ap`` (float64, 0 without relevant items; None with ``method='topk'``), ``first_relevant_rank`` (0 = no
    relevant candidate; with ``'topk'``: -1 when the first relevant candidate is below the top ``max(ks, top)``),
    ``num_relevant``, ``num_candidates``, ``hits@K`` (relevant candidates among the top K) for each K in ``ks``,
    and ``top`` ((c, top) int64 best candidates, -1 padded) when ``top`` > 0.

    Methods (identical results; tests/test_ranking.py): ``count`` ranks the relevant items by counting
    (:func:`relevant_ranks`; with fewer than :data:`COUNT_MIN_DB` database items, where sorting is cheaper, by
    sorting) and takes the top candidates from :func:`top_k`; ``sort`` sorts every row
    (:func:`sorted_relevant_ranks`); ``topk`` computes only what the top ``max(ks)`` decide (no AP: for R@K,
    HitRate@K, P@K and MRR@K alone).
    """
    if method not in METHODS:
        raise ValueError(f"unknown ranking method {method!r}; choose one of {', '.join(METHODS)}")
    c = scores.shape[0]
    dev = scores.device
    if method == "topk":
        kmax = max(max(ks), top)
        best = top_k(scores, cand, kmax)
        is_rel = rel.gather(1, best.clamp_min(0)) & (best >= 0)
        num_rel = torch.count_nonzero(rel, dim=1)
        pos = torch.arange(1, kmax + 1, device=dev)
        first_in_top = torch.where(is_rel, pos, torch.full_like(pos, kmax + 1)).amin(1) if kmax else \
            torch.full((c,), 1, dtype=torch.int64, device=dev)
        first = torch.where(num_rel == 0, torch.zeros_like(first_in_top),
                            torch.where(first_in_top > kmax, torch.full_like(first_in_top, -1), first_in_top))
        hits = {k: is_rel[:, :k].sum(1) for k in ks}
        return {"ap": None, "first_relevant_rank": first, "num_relevant": num_rel,
                "num_candidates": torch.count_nonzero(cand, dim=1), **{f"hits@{k}": hits[k] for k in ks},
                "top": best[:, :top] if top else None}
    if method == "sort" or scores.shape[1] < COUNT_MIN_DB:
        rows, ranks, num_rel, num_cand, best = sorted_relevant_ranks(scores, cand, rel, top)
    else:
        rows, ranks, num_rel, num_cand = relevant_ranks(scores, cand, rel)
        best = top_k(scores, cand, top) if top else None
    # average precision over the full ranking: the j-th relevant item of a row (1-based) at rank r adds j / r
    starts = torch.cumsum(num_rel, 0) - num_rel
    j = torch.arange(rows.numel(), device=dev) - starts[rows] + 1
    prec = j.double() / ranks.double()
    ap = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, rows, prec)
    ap = ap / num_rel.clamp_min(1).double()
    big = torch.iinfo(torch.int64).max
    first = torch.full((c,), big, dtype=torch.int64, device=dev).scatter_reduce(0, rows, ranks, reduce="amin",
                                                                               include_self=True)
    first = torch.where(first == big, torch.zeros_like(first), first)
    out = {"ap": ap, "first_relevant_rank": first, "num_relevant": num_rel.to(torch.int64),
           "num_candidates": num_cand.to(torch.int64), "top": best}
    for k in ks:
        out[f"hits@{k}"] = torch.zeros(c, dtype=torch.int64, device=dev).index_add_(0, rows, (ranks <= k).long())
    return out
