"""The faiss side of the prior-art index: which kind of faiss index holds the vectors (:class:`FaissSpec`:
exact ``flat``, approximate ``ivf`` and ``hnsw``), making one, searching it, exact top-k by brute force, and the
recall@K of an approximate kind against exact search (the rules: :mod:`patentclip.evaluation.index`, "Exactness")."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import faiss
import numpy as np

KINDS = ("flat", "ivf", "hnsw")


@dataclass
class FaissSpec:
    """Which faiss index holds the vectors (see the module docstring)."""

    kind: str = "flat"
    nlist: Optional[int] = None       # ivf: inverted lists (default about 4 sqrt(rows), at least 39 rows per list)
    nprobe: int = 32                  # ivf: lists searched per query
    m: int = 32                       # hnsw: graph degree
    ef_construction: int = 200        # hnsw: candidates while building
    ef_search: int = 128              # hnsw: candidates while searching (at least k)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown faiss index kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        for name in ("nprobe", "m", "ef_construction", "ef_search"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.nlist is not None and int(self.nlist) < 1:
            raise ValueError("nlist must be >= 1")

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def describe(self) -> str:
        if self.kind == "flat":
            return "flat (IndexFlatIP, exact)"
        if self.kind == "ivf":
            return f"ivf (IndexIVFFlat, nlist={self.nlist}, nprobe={self.nprobe})"
        return f"hnsw (IndexHNSWFlat, M={self.m}, efConstruction={self.ef_construction}, efSearch={self.ef_search})"


def default_nlist(rows: int) -> int:
    """About 4 sqrt(rows) lists, with at least 39 training rows per list (faiss's minimum for k-means)."""
    return max(1, min(int(4 * math.sqrt(max(rows, 1))), rows // 39))


def new_faiss(spec: FaissSpec, dim: int, vectors: np.ndarray, seed: int = 0):
    """An empty-or-trained faiss index of ``spec``'s kind for ``dim``-d vectors (IVF: trained on ``vectors``,
    at most 256 rows per list sampled with ``seed``). The vectors are not added."""
    if spec.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if spec.kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(spec.m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(spec.ef_construction)
        return index
    if spec.nlist is None:
        spec.nlist = default_nlist(len(vectors))
    if len(vectors) < spec.nlist:
        raise ValueError(f"an ivf index with nlist={spec.nlist} needs at least {spec.nlist} drawings to train on, "
                         f"got {len(vectors)}; use --nlist or the flat kind")
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, int(spec.nlist), faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = int(seed)
    rng = np.random.default_rng(seed)
    n_train = min(len(vectors), 256 * int(spec.nlist))
    sample = vectors if n_train == len(vectors) else vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index  # faiss's Python constructor keeps a reference to the quantizer


def search_params(spec: FaissSpec, k: int, selector=None):
    """The faiss ``SearchParameters`` of ``spec`` for ``k`` results, with an optional ``IDSelector``."""
    kw = {"sel": selector} if selector is not None else {}
    if spec.kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(spec.nprobe), **kw)
    if spec.kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(spec.ef_search), int(k)), **kw)
    return faiss.SearchParameters(**kw) if kw else None


def faiss_search(index, spec: FaissSpec, queries: np.ndarray, k: int, selector=None) -> Tuple[np.ndarray, np.ndarray]:
    """faiss search, results re-sorted by the ranking rule (score descending, row ascending), -1 padding last."""
    params = search_params(spec, k, selector)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    d, i = index.search(q, int(k), params=params) if params is not None else index.search(q, int(k))
    # faiss keeps the smallest ids among equal scores but lists them in reverse; rank by the documented rule
    key_d = np.where(i < 0, -np.inf, d)
    key_i = np.where(i < 0, np.iinfo(np.int64).max, i)
    order = np.lexsort((key_i, -key_d), axis=1)
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)


def exact_topk(queries: np.ndarray, chunks: Iterable[Tuple[int, np.ndarray]], k: int,
               exclude: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows by the ranking rule over vectors given as ``(first row, (n, dim) float32)`` chunks in
    row order; ``exclude[i]`` = a row never returned for query i (-1: none). Returns ``(scores, rows)`` of shape
    ``(queries, k)``, padded with -inf / -1. Memory: one chunk's scores and ``k`` results per query."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    nq = q.shape[0]
    best_s = [np.zeros(0, np.float32) for _ in range(nq)]
    best_r = [np.zeros(0, np.int64) for _ in range(nq)]
    for start, v in chunks:
        n = v.shape[0]
        if n == 0:
            continue
        s = q @ v.T
        if exclude is not None:
            loc = np.asarray(exclude, dtype=np.int64) - start
            hit = np.flatnonzero((loc >= 0) & (loc < n))
            s[hit, loc[hit]] = -np.inf
        # the k-th best score of each row: everything at or above it (ties included) is a candidate
        thr = np.partition(s, n - k, axis=1)[:, n - k] if n > k else np.full(nq, -np.inf, np.float32)
        for i in range(nq):
            j = np.flatnonzero((s[i] >= thr[i]) & (s[i] > -np.inf))
            cs = np.concatenate([best_s[i], s[i, j]])
            cr = np.concatenate([best_r[i], start + j])
            o = np.lexsort((cr, -cs))[:k]
            best_s[i], best_r[i] = cs[o], cr[o]
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_r = np.full((nq, k), -1, dtype=np.int64)
    for i in range(nq):
        out_s[i, :len(best_s[i])] = best_s[i]
        out_r[i, :len(best_r[i])] = best_r[i]
    return out_s, out_r


def measure_recall(index, spec: FaissSpec, chunks_fn, rows: int, queries: int = 1000, ks: Sequence[int] = (1, 10, 100),
                   seed: int = 0) -> Dict:
    """Recall@K of an approximate index against exact search: ``queries`` indexed drawings (sampled with
    ``seed``) as queries, each one's own row excluded; recall@K = |approximate top K & exact top K| / K, averaged.
    ``chunks_fn()`` yields the vectors in row order, as :func:`exact_topk` takes them."""
    ks = sorted({int(k) for k in ks if 1 <= int(k) < rows})
    if not ks or rows < 2:
        return {"queries": 0, "recall": {}}
    nq = min(int(queries), rows)
    qrows = np.sort(np.random.default_rng(seed).choice(rows, nq, replace=False))
    qvec = np.concatenate([v[qrows[(qrows >= s) & (qrows < s + len(v))] - s] for s, v in chunks_fn()])
    kmax = max(ks)
    _, exact = exact_topk(qvec, chunks_fn(), kmax, exclude=qrows)
    _, approx = faiss_search(index, spec, qvec, kmax + 1)
    approx = np.array([[r for r in row if r != qr][:kmax] for row, qr in zip(approx, qrows)], dtype=np.int64)
    out = {}
    for k in ks:
        hits = [len(set(a[:k][a[:k] >= 0]) & set(e[:k][e[:k] >= 0])) / k for a, e in zip(approx, exact)]
        out[str(k)] = float(np.mean(hits))
    return {"queries": int(nq), "recall": out, "seed": seed}
