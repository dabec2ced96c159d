"""The prior-art index's folder format (layout and columns: :mod:`patentclip.evaluation.index`): grant days, the
Parquet parts and their records, ``index.json`` (the manifest), the model's fingerprint, the index read back as an
evaluation database, and the commit of the faiss file with the manifest."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from patentclip.evaluation import faiss_compat
from patentclip.evaluation.index_faiss import FaissSpec, default_nlist, measure_recall, new_faiss

FORMAT = "patentclip-index"
VERSION = 1
MANIFEST = "index.json"
PARTS_DIR = "parts"
VECTOR_DTYPES = {"float16": np.float16, "float32": np.float32}
META_COLUMNS = ("key", "patent_id", "view", "title", "class_id", "grant_day", "shard", "member", "offset", "size")
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
