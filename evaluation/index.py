"""The prior-art index: every drawing of a shard set embedded once and searchable by cosine similarity.

This is the query phase of "Large Language Model Informed Patent Image Retrieval" (its Figure 2e): each patent
drawing is turned into an embedding by the image tower and stored in a vector database; a query drawing retrieves
the closest drawings by cosine similarity, among patents granted before it. ``patentclip-index`` builds the index
(:mod:`patentclip.evaluation.index_build`), ``patentclip-search`` and its web page query it
(:mod:`patentclip.evaluation.search`, :mod:`patentclip.evaluation.serve`). This module is the format and the
search itself.

Folder layout (a local folder, or one on a shared filesystem; the shards it indexes may be anywhere)
-----------------------------------------------------------------------------------------------------
::

    INDEX/index.json               what the index holds: format version, the model (source, name, fingerprint of
                                   its weights, embedding size), the class table, the parts in row order, the faiss
                                   file with its kind, parameters and (approximate kinds) measured recall
    INDEX/parts/<part>.parquet     one part per shard, one row per drawing (columns below)
    INDEX/parts/<part>.json        the part's record (shard, rows, model fingerprint, problems); written after the
                                   Parquet file, so a part is complete iff its .json exists
    INDEX/faiss-<rows>.index       the faiss index over all rows of index.json's parts, in order

Columns of a part: ``key``, ``patent_id``, ``view``, ``title`` (strings), ``class_id``, ``grant_day`` (int32,
days since 1970-01-01, -1 unknown), ``shard`` (the shard's URL), ``member``, ``offset``, ``size`` (the image's tar
member and its bytes in the uncompressed tar, so a page can show the drawing with one ranged read; offset -1 for
compressed shards), ``vector`` (fixed-size list of float16, or float32 with ``--vector-dtype float32``: the
L2-normalised image embedding, cast after normalising).

Row ids are positions in the concatenation of index.json's parts, in order. Parts are only ever appended (a new
week of grants is new parts), so a row id never changes.

Ranking rules (documented once, here; the evaluation follows the same tie rule)
-------------------------------------------------------------------------------
* score = inner product of L2-normalised vectors = cosine similarity, computed in float32 from the stored vectors.
* drawings rank by decreasing score; equal scores: the smaller row id first.
* several query vectors (views of one design): a drawing's score is its best score over the views (``max``), or
  the views' embeddings are averaged and renormalised into one query (``mean``).
* grouped by patent: a patent's score is the score of its best drawing; patents rank by that score, equal scores
  by the row of the best drawing (i.e. in the order of their best drawings in the drawing ranking).
* filters: ``before`` keeps drawings granted strictly before the day (the prior-art filter of patentclip-eval;
  a drawing without a grant date never passes it), ``after`` those granted on or after it, ``classes`` and
  ``views`` those with one of the given class ids / view names, ``exclude_patents`` drops whole patents.

Exactness
---------
The default faiss kind ``flat`` (``IndexFlatIP``) scores every allowed drawing: results are exact. faiss returns
the best ``k`` allowed drawings of each view; :meth:`PriorArtIndex.search` asks for more (``k`` times 4) until the
answer is certain: every view's list is complete (fewer than ``k`` allowed drawings) or its last score is strictly
below the score of the last result returned, so no drawing outside the lists can change the result, ties
included. The approximate kinds ``ivf`` (``IndexIVFFlat``: ``nprobe`` of ``nlist`` lists searched) and ``hnsw``
(``IndexHNSWFlat``: graph search with ``ef_search`` candidates) trade that for speed; their recall@K against exact
search is measured when the index is built or extended and stored in index.json. When the filters leave at most
:data:`EXACT_SUBSET_MAX` drawings, an approximate index scores those exactly instead (a restrictive filter is
where graph and inverted-file searches lose most, and few drawings are cheap to score).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from patentclip.evaluation import faiss_compat

FORMAT = "patentclip-index"
VERSION = 1
MANIFEST = "index.json"
PARTS_DIR = "parts"
KINDS = ("flat", "ivf", "hnsw")
VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}
META_COLUMNS = ("key", "patent_id", "view", "title", "class_id", "grant_day", "shard", "member", "offset", "size")
#: an approximate index scores the allowed drawings exactly when the filters leave at most this many
EXACT_SUBSET_MAX = 20_000
_EPOCH0 = _dt.date(1970, 1, 1)


def day_to_date(day: int) -> Optional[str]:
    """Days since 1970-01-01 -> ISO date ('YYYY-MM-DD'); None for -1 (unknown)."""
    return None if day is None or int(day) < 0 else (_EPOCH0 + _dt.timedelta(days=int(day))).isoformat()


def date_to_day(date: str, what: str = "date") -> int:
    """ISO date -> days since 1970-01-01, or a ValueError that names ``what``."""
    try:
        return (_dt.date.fromisoformat(str(date).strip()[:10]) - _EPOCH0).days
    except ValueError:
        raise ValueError(f"{what}: {date!r} is not a date (YYYY-MM-DD)") from None


def _atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    """Write JSON atomically (a temporary file renamed over ``path``)."""
    _atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def part_name(shard_url: str) -> str:
    """The part of a shard: a readable stem plus a hash of the full URL (the same shard name in two folders or
    buckets gives two parts)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", shard_url.rstrip("/").rsplit("/", 1)[-1])
    base = re.sub(r"\.(tar|tgz|tar\.gz)$", "", base)[:60]
    return f"{base}-{hashlib.sha1(shard_url.encode()).hexdigest()[:12]}"


# ----------------------------------------------------------------------------------------------------------------
# parts
# ----------------------------------------------------------------------------------------------------------------
def part_paths(folder: str, name: str) -> Tuple[str, str]:
    d = os.path.join(folder, PARTS_DIR)
    return os.path.join(d, name + ".parquet"), os.path.join(d, name + ".json")


def write_part(folder: str, name: str, meta: Dict[str, Sequence], vectors: np.ndarray, record: Dict,
               vector_dtype: str = "float16") -> Dict:
    """Commit one part: the Parquet file, then its record (the commit marker). Returns the record."""
    if vector_dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector dtype must be one of {sorted(VECTOR_DTYPES)}, got {vector_dtype!r}")
    n = len(meta["key"])
    vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).astype(VECTOR_DTYPES[vector_dtype]))
    if vectors.ndim != 2 or vectors.shape[0] != n:
        raise ValueError(f"part {name}: {n} rows but vectors of shape {vectors.shape}")
    dim = vectors.shape[1]
    arrow_type = pa.float16() if vector_dtype == "float16" else pa.float32()
    cols = {
        "key": pa.array(list(meta["key"]), pa.string()),
        "patent_id": pa.array(list(meta["patent_id"]), pa.string()),
        "view": pa.array(list(meta["view"]), pa.string()),
        "title": pa.array(list(meta["title"]), pa.string()),
        "class_id": pa.array(np.asarray(meta["class_id"], dtype=np.int32)),
        "grant_day": pa.array(np.asarray(meta["grant_day"], dtype=np.int32)),
        "shard": pa.array(list(meta["shard"]), pa.string()).dictionary_encode(),
        "member": pa.array(list(meta["member"]), pa.string()),
        "offset": pa.array(np.asarray(meta["offset"], dtype=np.int64)),
        "size": pa.array(np.asarray(meta["size"], dtype=np.int64)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), arrow_type), dim),
    }
    pq_path, json_path = part_paths(folder, name)
    os.makedirs(os.path.dirname(pq_path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=os.path.dirname(pq_path))
    os.close(fd)
    try:
        pq.write_table(pa.table(cols), tmp, compression="zstd")
        os.replace(tmp, pq_path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    record = {**record, "name": name, "rows": n, "dim": dim, "vector_dtype": vector_dtype}
    write_json(json_path, record)
    return record


def read_part_record(folder: str, name: str) -> Optional[Dict]:
    """The record of a complete part, or None when the part is missing or was never committed."""
    pq_path, json_path = part_paths(folder, name)
    if not (os.path.isfile(json_path) and os.path.isfile(pq_path)):
        return None
    with open(json_path) as f:
        return json.load(f)


def read_part_meta(folder: str, name: str, columns: Sequence[str] = META_COLUMNS) -> pa.Table:
    return pq.read_table(part_paths(folder, name)[0], columns=list(columns))


def read_part_vectors(folder: str, name: str) -> np.ndarray:
    """(rows, dim) float32 vectors of a part (float16 stored values, exactly widened)."""
    t = pq.read_table(part_paths(folder, name)[0], columns=["vector"])
    col = t.column("vector").combine_chunks()
    dim = col.type.list_size
    if len(col) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return col.values.to_numpy(zero_copy_only=False).reshape(-1, dim).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# faiss
# ----------------------------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------------------------
# the model and the evaluation
# ----------------------------------------------------------------------------------------------------------------
def model_fingerprint(model) -> str:
    """sha256 of a model's weights (names, shapes and float32 values), whatever file format they came from: an
    index only takes vectors of the model it was built with."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu")
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def eval_features(folder: str, model=None, class_codes: Optional[Sequence[str]] = None) -> Dict:
    """The index as a retrieval database for ``patentclip-eval`` (``--retrieval-index``): the dict
    ``extract_features`` returns (``image_features`` float32 (N, dim) as stored, ``class_id``, ``grant_day``,
    ``patent_id``, ``view``, ``key``), read part by part from the Parquet files. With ``model`` the index must have
    been built by it (fingerprint), with ``class_codes`` its class table must be the same."""
    import torch

    m = read_manifest(folder)
    if model is not None and model_fingerprint(model) != m["model"]["fingerprint"]:
        raise ValueError(f"{folder} was built with another model ({m['model']['source']}); its vectors cannot be "
                         f"compared with this model's: build an index with this checkpoint")
    if class_codes is not None and [c["code"] for c in m["classes"]] != list(class_codes):
        raise ValueError(f"{folder} has another class table than the evaluation shards ({len(m['classes'])} vs "
                         f"{len(class_codes)} classes, or other codes for the same ids)")
    if m.get("pending_shards"):
        raise ValueError(f"{folder}: {len(m['pending_shards'])} shards are not indexed yet; complete the index "
                         f"(rerun patentclip-index build) before evaluating against it")
    vecs = [v for _, v in iter_vectors(folder, m["parts"])]
    meta = pa.concat_tables([read_part_meta(folder, p["name"], ["key", "patent_id", "view", "class_id", "grant_day"])
                             for p in m["parts"]])
    return {"image_features": torch.from_numpy(np.concatenate(vecs) if vecs else np.zeros((0, 1), np.float32)),
            "class_id": torch.from_numpy(meta.column("class_id").to_numpy().astype(np.int64)),
            "grant_day": torch.from_numpy(meta.column("grant_day").to_numpy().astype(np.int64)),
            "patent_id": meta.column("patent_id").to_pylist(), "view": meta.column("view").to_pylist(),
            "key": meta.column("key").to_pylist(), "text_features": None, "index": folder}


# ----------------------------------------------------------------------------------------------------------------
# the manifest
# ----------------------------------------------------------------------------------------------------------------
def read_manifest(folder: str) -> Dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: not a patentclip index (no {MANIFEST}); build one with "
                                f"`patentclip-index build`")
    with open(path) as f:
        m = json.load(f)
    if m.get("format") != FORMAT:
        raise ValueError(f"{path}: not a patentclip index manifest (format {m.get('format')!r})")
    if int(m.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: index format version {m.get('version')} is newer than this patentclip "
                         f"understands ({VERSION}); upgrade patentclip")
    return m


def new_manifest(model: Dict, classes: List[Dict], spec: FaissSpec, vector_dtype: str) -> Dict:
    return {"format": FORMAT, "version": VERSION, "model": model, "classes": classes, "vector_dtype": vector_dtype,
            "faiss": {**asdict(spec), "file": None, "rows": 0, "faiss_version": faiss_compat.VERSION},
            "parts": [], "rows": 0, "pending_shards": []}


def iter_vectors(folder: str, parts: Sequence[Dict]) -> Iterator[Tuple[int, np.ndarray]]:
    """(first row, float32 vectors) of each part, in row order."""
    start = 0
    for p in parts:
        v = read_part_vectors(folder, p["name"])
        yield start, v
        start += v.shape[0]


def commit_faiss(folder: str, manifest: Dict, new_parts: Sequence[Dict], *, rebuild: bool = False,
                 recall_queries: int = 1000, seed: int = 0, log=print) -> Dict:
    """Add ``new_parts`` (complete parts not yet in the manifest) to the faiss index and the manifest, and commit
    both: the new faiss file first (under a new name), then index.json, then the old faiss file is removed. A
    crash in between leaves index.json pointing at the previous, complete faiss file.

    The existing faiss index is extended (vectors appended; an IVF index keeps its trained lists) unless there is
    none or ``rebuild``. For an approximate kind the recall against exact search is measured and stored."""
    spec = FaissSpec(**{k: v for k, v in manifest["faiss"].items() if k in FaissSpec.__dataclass_fields__})
    parts = list(manifest["parts"]) + list(new_parts)
    rows = sum(int(p["rows"]) for p in parts)
    dim = int(manifest["model"]["embed_dim"])
    old_file = manifest["faiss"].get("file")
    index = None
    if old_file and not rebuild and os.path.isfile(os.path.join(folder, old_file)):
        index = faiss.read_index(os.path.join(folder, old_file))
        if index.ntotal != int(manifest["faiss"]["rows"]):
            raise ValueError(f"{folder}/{old_file}: holds {index.ntotal} vectors, index.json says "
                             f"{manifest['faiss']['rows']}; rebuild it with `patentclip-index rebuild`")
        to_add = list(new_parts)
    else:
        if spec.kind == "ivf":
            spec.nlist = spec.nlist or default_nlist(rows)
            train = np.concatenate([v for _, v in iter_vectors(folder, parts)] or [np.zeros((0, dim), np.float32)])
            index = new_faiss(spec, dim, train, seed)
            del train
        else:
            index = new_faiss(spec, dim, np.zeros((0, dim), np.float32), seed)
        to_add = parts
    for _, v in iter_vectors(folder, to_add):
        if v.shape[0]:
            index.add(np.ascontiguousarray(v))
    if index.ntotal != rows:
        raise RuntimeError(f"faiss index holds {index.ntotal} vectors after adding, expected {rows}")
    recall = None
    if not spec.exact and rows > 1:
        recall = measure_recall(index, spec, lambda: iter_vectors(folder, parts), rows, recall_queries, seed=seed)
        shown = ", ".join(f"recall@{k} = {v:.4f}" for k, v in recall["recall"].items())
        log(f"{spec.describe()}: {shown} against exact search ({recall['queries']} indexed drawings as queries, "
            f"each one's own drawing excluded)")
    new_file = f"faiss-{rows:012d}-{spec.kind}.index"
    tmp = os.path.join(folder, ".tmp-" + new_file)
    faiss.write_index(index, tmp)
    os.replace(tmp, os.path.join(folder, new_file))
    manifest = {**manifest, "parts": [{k: p[k] for k in ("name", "shard", "rows", "max_side") if k in p} for p in parts],
                "rows": rows,
                "faiss": {**asdict(spec), "file": new_file, "rows": rows, "faiss_version": faiss_compat.VERSION,
                          "recall": recall}}
    write_json(os.path.join(folder, MANIFEST), manifest)
    if old_file and old_file != new_file and os.path.exists(os.path.join(folder, old_file)):
        os.remove(os.path.join(folder, old_file))
    return manifest


# ----------------------------------------------------------------------------------------------------------------
# searching
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Filters:
    """Which drawings a search may return (see the module docstring)."""

    before: Optional[int] = None          # grant day: strictly earlier only (the prior-art filter)
    after: Optional[int] = None           # grant day: on or after only
    classes: Optional[Sequence[int]] = None
    views: Optional[Sequence[str]] = None
    exclude_patents: Sequence[str] = field(default_factory=tuple)

    def to_json(self) -> Dict:
        return {"before": day_to_date(self.before) if self.before is not None else None,
                "after": day_to_date(self.after) if self.after is not None else None,
                "classes": list(self.classes) if self.classes is not None else None,
                "views": list(self.views) if self.views is not None else None,
                "exclude_patents": list(self.exclude_patents)}


@dataclass
class Ranked:
    """One view's faiss (or exact) result list: rows and scores in rank order; ``complete`` when it holds every
    allowed drawing the search can reach."""

    rows: np.ndarray
    scores: np.ndarray
    complete: bool


class PriorArtIndex:
    """A built index opened for searching: the metadata of every drawing in memory (numpy arrays), the vectors
    in faiss. ``PriorArtIndex.open(folder)``."""

    def __init__(self, folder: str, manifest: Dict, meta: pa.Table, index):
        self.folder = folder
        self.manifest = manifest
        self.spec = FaissSpec(**{k: v for k, v in manifest["faiss"].items() if k in FaissSpec.__dataclass_fields__})
        self.faiss = index
        self.rows = int(manifest["rows"])
        if meta.num_rows != self.rows or index.ntotal != self.rows:
            raise ValueError(f"{folder}: index.json lists {self.rows} drawings, the parts hold {meta.num_rows} and "
                             f"the faiss file {index.ntotal}; rebuild the faiss file with `patentclip-index rebuild`")
        self.key = meta.column("key").to_numpy(zero_copy_only=False)
        self.patent_id = meta.column("patent_id").to_numpy(zero_copy_only=False)
        self.view = meta.column("view").to_numpy(zero_copy_only=False)
        self.title = meta.column("title").to_numpy(zero_copy_only=False)
        self.class_id = meta.column("class_id").to_numpy().astype(np.int32)
        self.grant_day = meta.column("grant_day").to_numpy().astype(np.int32)
        self.shard = meta.column("shard").cast(pa.string()).to_numpy(zero_copy_only=False)
        self.member = meta.column("member").to_numpy(zero_copy_only=False)
        self.offset = meta.column("offset").to_numpy()
        self.size = meta.column("size").to_numpy()
        enc = pc.dictionary_encode(meta.column("patent_id")).combine_chunks()
        self.patent_code = enc.indices.to_numpy().astype(np.int64)
        self.patents = enc.dictionary.to_numpy(zero_copy_only=False)
        # rows of each patent: CSR over a stable sort by patent code (rows ascending within a patent)
        order = np.argsort(self.patent_code, kind="stable")
        self._patent_rows = order
        self._patent_start = np.searchsorted(self.patent_code[order], np.arange(len(self.patents) + 1))
        self._patent_of_id = {p: i for i, p in enumerate(self.patents.tolist())}
        self._key_row = None
        self._matrix = None
        self.classes = manifest.get("classes") or []

    @classmethod
    def open(cls, folder: str) -> "PriorArtIndex":
        manifest = read_manifest(folder)
        if not manifest.get("faiss", {}).get("file"):
            raise ValueError(f"{folder}: the index has no faiss file yet (the build did not finish); run "
                             f"`patentclip-index build` again to complete it")
        tables = [read_part_meta(folder, p["name"]) for p in manifest["parts"]]
        meta = pa.concat_tables(tables) if tables else pa.table({c: [] for c in META_COLUMNS})
        index = faiss.read_index(os.path.join(folder, manifest["faiss"]["file"]))
        return cls(folder, manifest, meta, index)

    # -- metadata -----------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    @property
    def stored_max_side(self) -> Optional[int]:
        """The longest side of the indexed drawings as the shards store them (the builder's ``--max-side``, when any
        drawing was larger), or None when the parts do not say."""
        sides = [int(p["max_side"]) for p in self.manifest["parts"] if p.get("max_side")]
        return max(sides) if sides else None

    @property
    def avg_drawings_per_patent(self) -> float:
        return self.rows / max(1, len(self.patents))

    def row_of_key(self, key: str) -> Optional[int]:
        if self._key_row is None:
            self._key_row = {k: i for i, k in enumerate(self.key.tolist())}
        return self._key_row.get(key)

    def rows_of_patent(self, patent_id: str) -> np.ndarray:
        code = self._patent_of_id.get(patent_id)
        if code is None:
            return np.zeros(0, dtype=np.int64)
        return self._patent_rows[self._patent_start[code]:self._patent_start[code + 1]]

    def class_info(self, class_id: int) -> Dict:
        if 0 <= int(class_id) < len(self.classes):
            c = self.classes[int(class_id)]
            return {"id": int(class_id), "code": c.get("code"), "name": c.get("name")}
        return {"id": int(class_id), "code": None, "name": None}

    def class_id_of(self, value: str) -> int:
        """A class given as its id, its Locarno code or its name (case-insensitive)."""
        v = str(value).strip()
        for c in self.classes:
            if v == str(c.get("id")) or v.lower() == str(c.get("code", "")).lower() \
                    or v.lower() == str(c.get("name", "")).lower():
                return int(c["id"])
        known = ", ".join(f"{c.get('code')} ({c.get('name')})" for c in self.classes[:40])
        raise ValueError(f"unknown class {value!r}; the index's classes are: {known}"
                         f"{' ...' if len(self.classes) > 40 else ''}")

    def drawing(self, row: int, score: Optional[float] = None) -> Dict:
        row = int(row)
        d = {"row": row, "key": self.key[row], "patent_id": self.patent_id[row], "view": self.view[row],
             "grant_date": day_to_date(self.grant_day[row]), "class": self.class_info(self.class_id[row])}
        if score is not None:
            d["score"] = float(score)
        return d

    def matrix(self) -> np.ndarray:
        """Every stored vector by row, ``(rows, dim)``: for flat and hnsw a view of the faiss storage (no copy), for
        ivf (whose lists keep vectors in list order) the parts' vectors loaded once as stored (float16)."""
        if self._matrix is None:
            if self.spec.kind == "ivf":
                vecs = [v.astype(VECTOR_DTYPES[self.manifest["vector_dtype"]]) for _, v in
                        iter_vectors(self.folder, self.manifest["parts"])]
                self._matrix = np.concatenate(vecs) if vecs else np.zeros((0, self.dim), np.float16)
            else:
                flat = self.faiss if self.spec.kind == "flat" else faiss.downcast_index(self.faiss.storage)
                self._matrix = faiss.rev_swig_ptr(flat.get_xb(), self.rows * self.dim).reshape(self.rows, self.dim)
        return self._matrix

    def vectors(self, rows) -> np.ndarray:
        """The stored vectors of ``rows`` as float32 (float16 storage widened exactly)."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self.matrix()[rows], dtype=np.float32)

    def iter_chunks(self, rows: Optional[np.ndarray] = None, chunk: int = 65536) -> Iterator[Tuple[int, np.ndarray]]:
        """Vectors in row order, all (``rows`` None) or of the given sorted rows, as ``(first, vectors)``: with
        ``rows`` given, ``first`` indexes into ``rows``."""
        n = self.rows if rows is None else len(rows)
        m = self.matrix()
        for s in range(0, n, chunk):
            v = m[s:s + chunk] if rows is None else m[rows[s:s + chunk]]
            yield s, np.ascontiguousarray(v, dtype=np.float32)

    # -- filters --------------------------------------------------------------------------------------------
    def allowed(self, filters: Optional[Filters]) -> Optional[np.ndarray]:
        """(rows,) bool mask of the drawings the filters allow; None when they allow everything."""
        if filters is None:
            return None
        m = np.ones(self.rows, dtype=bool)
        restricted = False
        if filters.before is not None:
            m &= (self.grant_day >= 0) & (self.grant_day < int(filters.before))
            restricted = True
        if filters.after is not None:
            m &= self.grant_day >= int(filters.after)
            restricted = True
        if filters.classes is not None:
            m &= np.isin(self.class_id, np.asarray(list(filters.classes), dtype=np.int32))
            restricted = True
        if filters.views is not None:
            m &= np.isin(self.view, np.asarray(list(filters.views), dtype=object))
            restricted = True
        for p in filters.exclude_patents:
            m[self.rows_of_patent(p)] = False
            restricted = True
        return m if restricted else None

    # -- search ---------------------------------------------------------------------------------------------
    def _ranked(self, q: np.ndarray, k: int, allowed: Optional[np.ndarray], allowed_rows: Optional[np.ndarray],
                exact_subset: bool) -> List[Ranked]:
        """Each query vector's best ``k`` allowed drawings."""
        if exact_subset:  # score the allowed drawings directly (a small subset, or --exact on an approximate kind)
            s, r = exact_topk(q, self.iter_chunks(allowed_rows), k)
            if allowed_rows is not None:  # positions among the allowed rows (ascending) -> rows
                r = np.where(r >= 0, allowed_rows[np.maximum(r, 0)], -1)
            n_allowed = self.rows if allowed_rows is None else len(allowed_rows)
            return [Ranked(r[i][r[i] >= 0], s[i][r[i] >= 0], k >= n_allowed) for i in range(len(q))]
        selector = None
        if allowed is not None:
            bitmap = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(self.rows, faiss.swig_ptr(bitmap))
        d, i = faiss_search(self.faiss, self.spec, q, k, selector)
        out = []
        for v in range(len(q)):
            ok = i[v] >= 0
            out.append(Ranked(i[v][ok].astype(np.int64), d[v][ok], int(ok.sum()) < k))
        if allowed is not None:
            del bitmap  # kept alive until the search returned
        return out

    def search(self, queries: np.ndarray, *, top: int = 10, filters: Optional[Filters] = None,
               combine: str = "max", group: bool = True, with_drawings: bool = False,
               exact: bool = False) -> Dict:
        """The best ``top`` patents (``group``) or drawings for the query vectors ``(V, dim)`` (L2-normalised),
        by the ranking rules of the module docstring. Returns ``{"results": [...], "searched": {...}}``.

        ``with_drawings``: every result patent also lists all its drawings with their scores (``drawings``; those
        the filters exclude are marked ``"allowed": false``). ``exact``: score every allowed drawing even with an
        approximate faiss kind."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be (views, {self.dim}), got {tuple(np.shape(queries))}")
        if combine not in ("max", "mean"):
            raise ValueError(f"combine must be 'max' or 'mean', got {combine!r}")
        if top < 1:
            raise ValueError("top must be >= 1")
        if combine == "mean" and q.shape[0] > 1:
            m = q.mean(0, keepdims=True)
            q = m / max(float(np.linalg.norm(m)), 1e-12)
        allowed = self.allowed(filters)
        allowed_rows = np.flatnonzero(allowed) if allowed is not None else None
        n_allowed = self.rows if allowed is None else len(allowed_rows)
        searched = {"drawings": self.rows, "allowed": int(n_allowed), "views": int(q.shape[0]),
                    "faiss": self.spec.kind}
        if n_allowed == 0:
            return {"results": [], "searched": {**searched, "k": 0, "exact": True}}
        exact_subset = not self.spec.exact and (exact or n_allowed <= EXACT_SUBSET_MAX)
        per = self.avg_drawings_per_patent if group else 1.0
        k = int(min(n_allowed, max(64, math.ceil(2 * top * per))))
        while True:
            lists = self._ranked(q, k, allowed, allowed_rows if exact_subset else None, exact_subset)
            rows, scores = _merge_max(lists)
            if group:
                ranked_rows = _first_of_each(self.patent_code[rows])
            else:
                ranked_rows = np.arange(len(rows))
            last = scores[ranked_rows[top - 1]] if len(ranked_rows) >= top else -np.inf
            certain = all(lst.complete or (len(lst.scores) and lst.scores[-1] < last) for lst in lists)
            if certain or k >= n_allowed:
                break
            k = int(min(n_allowed, 4 * k))
        results = []
        for rank, j in enumerate(ranked_rows[:top], start=1):
            row, score = int(rows[j]), float(scores[j])
            if group:
                item = {"rank": rank, "patent_id": self.patent_id[row], "score": score,
                        "grant_date": day_to_date(self.grant_day[row]), "class": self.class_info(self.class_id[row]),
                        "title": self.title[row], "best": self.drawing(row, score)}
                if with_drawings:
                    item["drawings"] = self.patent_drawings(self.patent_id[row], q, allowed)
            else:
                item = {"rank": rank, **self.drawing(row, score), "title": self.title[row]}
            results.append(item)
        exact_done = self.spec.exact or exact_subset
        return {"results": results, "searched": {**searched, "k": int(k), "exact": bool(exact_done)}}

    def patent_drawings(self, patent_id: str, queries: Optional[np.ndarray] = None,
                        allowed: Optional[np.ndarray] = None) -> List[Dict]:
        """All drawings of a patent in row order, with their scores (best over the query vectors) when given."""
        rows = self.rows_of_patent(patent_id)
        out = []
        scores = None
        if queries is not None and len(rows):
            scores = (np.atleast_2d(queries).astype(np.float32) @ self.vectors(rows).T).max(0)
        for i, r in enumerate(rows):
            d = self.drawing(r, None if scores is None else scores[i])
            if allowed is not None:
                d["allowed"] = bool(allowed[r])
            out.append(d)
        return out


def _merge_max(lists: Sequence[Ranked]) -> Tuple[np.ndarray, np.ndarray]:
    """Union of the views' lists, each row scored by its best view, in rank order (score desc, row asc)."""
    if len(lists) == 1:
        return lists[0].rows, lists[0].scores
    rows = np.concatenate([lst.rows for lst in lists])
    scores = np.concatenate([lst.scores for lst in lists])
    order = np.lexsort((rows, -scores))
    rows, scores = rows[order], scores[order]
    _, first = np.unique(rows, return_index=True)  # the first occurrence of a row is its best score
    keep = np.sort(first)
    return rows[keep], scores[keep]


def _first_of_each(groups: np.ndarray) -> np.ndarray:
    """Positions of each group's first entry (the entries are in rank order: its best drawing), in rank order."""
    _, first = np.unique(groups, return_index=True)
    return np.sort(first)
