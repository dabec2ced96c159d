"""The prior-art index: every drawing of a shard set embedded once and searchable by cosine similarity.

This is the query phase of "Large Language Model Informed Patent Image Retrieval" (its Figure 2e): each patent
drawing is turned into an embedding by the image tower and stored in a vector database; a query drawing retrieves
the closest drawings by cosine similarity, among patents granted before it. ``patentclip-index`` builds the index
(:mod:`patentclip.evaluation.index_build`), ``patentclip-search`` and its web page query it
(:mod:`patentclip.evaluation.search`, :mod:`patentclip.evaluation.serve`). This module is the search itself
and the index's one import (``__all__``); the folder format below is :mod:`.index_store`, the faiss side
:mod:`.index_faiss`.

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

import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from patentclip.evaluation.index_faiss import (KINDS, FaissSpec, default_nlist, exact_topk, faiss_search,
                                               measure_recall, new_faiss, search_params)
from patentclip.evaluation.index_store import (FORMAT, MANIFEST, META_COLUMNS, PARTS_DIR, VECTOR_DTYPES, VERSION,
                                               commit_faiss, date_to_day, day_to_date, eval_features, iter_vectors,
                                               model_fingerprint, new_manifest, part_name, part_paths,
                                               read_manifest, read_part_meta, read_part_record, read_part_vectors,
                                               write_json, write_part)

#: The index's public names: the search (here), the faiss side (:mod:`.index_faiss`) and the folder format
#: (:mod:`.index_store`), one import for the commands, the page and the benchmarks.
__all__ = ["EXACT_SUBSET_MAX", "Filters", "Ranked", "PriorArtIndex",
           "KINDS", "FaissSpec", "default_nlist", "exact_topk", "faiss_search", "measure_recall", "new_faiss",
           "search_params",
           "FORMAT", "MANIFEST", "META_COLUMNS", "PARTS_DIR", "VECTOR_DTYPES", "VERSION", "commit_faiss",
           "date_to_day", "day_to_date", "eval_features", "iter_vectors", "model_fingerprint", "new_manifest",
           "part_name", "part_paths", "read_manifest", "read_part_meta", "read_part_record", "read_part_vectors",
           "write_json", "write_part"]

#: an approximate index scores the allowed drawings exactly when the filters leave at most this many
EXACT_SUBSET_MAX = 20_000


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
