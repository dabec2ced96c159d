"""Relevance by citation (``patentclip-eval --relevance citation``): for a query drawing, the database drawings of
the patents its examiner cited against the query's patent are the relevant ones -- the real prior art, which
none of the seed papers evaluates against (they use the Locarno class or the patent itself).

Conventions:

* The citations are the ``citations_examiner`` field of the query shards' metadata (shards/sample_format.py;
  ``patentclip-shards build --format uspto`` writes it from the grant XML's "cited by examiner" references).
  Only US patents count (a database holds US design patents); a cited number and a database patent id match in
  the canonical spelling of :func:`patentclip.shards.importers.common.canonical_patent_key`
  (``D633254`` = ``USD0633254``). Citations of publications (``2011/0232101``) and foreign documents match no
  database drawing and are ignored.
* Everything else is the retrieval protocol of docs/evaluation.md: the prior-art filter is on by default (only
  drawings granted strictly before the query's patent are searched; cited patents are prior art, but a cited
  *application* granted later is not in the searchable database at the query's date); the query's own patent is
  never a candidate; a query whose cited patents have no drawing among its candidates is not valid (counted in
  ``i2i_num_queries_without_relevant``, left out of the averages).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import torch

from patentclip.shards import sample_format as SF
from patentclip.shards.importers.common import canonical_patent_key

__all__ = ["cited_numbers", "cited_sets", "load_citations", "relevant_indices", "describe", "require",
           "canonical_patent_key"]


def cited_numbers(citations) -> List[str]:
    """The canonical numbers of the US patents in a ``citations_examiner`` list (module docstring)."""
    out: List[str] = []
    for c in citations or ():
        if not isinstance(c, Mapping):
            continue
        number, country = c.get("number"), (c.get("country") or "US")
        if not number or str(country).upper() != "US" or "/" in str(number):
            continue
        key = canonical_patent_key(number)
        if key not in out:
            out.append(key)
    return out


def cited_sets(citations: Mapping[str, Sequence[str]]) -> Dict[str, set]:
    """patent id -> the set of its cited numbers in canonical spelling."""
    return {pid: {canonical_patent_key(n) for n in nums} for pid, nums in citations.items()}


def load_citations(shards: str) -> Dict[str, List[str]]:
    """patent id -> canonical numbers of the patents its examiner cited, from the ``.json`` members of
    ``shards`` (a brace pattern or ``::``-separated patterns, local or fsspec URLs). Patents without the field
    are absent."""
    from open_clip_train.data import expand_urls

    from patentclip.plugins.data.tars import SkipCounter, tar_samples

    urls, _ = expand_urls(shards)
    out: Dict[str, List[str]] = {}
    skips = SkipCounter()
    for url in urls:
        for sample in tar_samples(url, skips):
            raw = sample.get(SF.JSON)
            if raw is None:
                continue
            meta = SF.decode_json(raw)
            pid = meta.get(SF.PATENT_ID) or SF.patent_of_key(sample["__key__"])
            if pid in out or SF.CITATIONS_EXAMINER not in meta:
                continue
            out[pid] = cited_numbers(meta[SF.CITATIONS_EXAMINER])
    return out


def relevant_indices(query_patent_ids: Sequence[str], db_patent_ids: Sequence[str],
                     citations: Mapping[str, Sequence[str]]) -> torch.Tensor:
    """``(Q, M)`` int64 tensor: for each query, the database indices of the drawings of the patents its patent
    cites (``citations``: patent id -> cited numbers, any spelling), padded with -1 (``M`` >= 1)."""
    by_patent: Dict[str, List[int]] = {}
    for i, pid in enumerate(db_patent_ids):
        by_patent.setdefault(canonical_patent_key(pid), []).append(i)
    cited = cited_sets(citations)
    rows: List[List[int]] = []
    for pid in query_patent_ids:
        idx: List[int] = []
        for n in cited.get(pid, ()):
            idx.extend(by_patent.get(n, ()))
        rows.append(sorted(set(idx)))
    width = max([len(r) for r in rows] + [1])
    out = torch.full((len(rows), width), -1, dtype=torch.int64)
    for q, r in enumerate(rows):
        if r:
            out[q, :len(r)] = torch.tensor(r, dtype=torch.int64)
    return out


def describe(citations: Mapping[str, Sequence[str]], query_patent_ids: Sequence[str],
             db_patent_ids: Sequence[str]) -> Dict[str, float]:
    """Counts for the evaluation's settings: query patents with citations, citations, and citations whose patent
    is in the database."""
    db = {canonical_patent_key(p) for p in db_patent_ids}
    qp = list(dict.fromkeys(query_patent_ids))
    with_c = [p for p in qp if citations.get(p)]
    n_c = sum(len(citations[p]) for p in with_c)
    in_db = sum(1 for p in with_c for n in citations[p] if canonical_patent_key(n) in db)
    return {"query_patents": len(qp), "query_patents_with_citations": len(with_c), "citations": n_c,
            "citations_in_database": in_db}


def require(citations: Optional[Mapping[str, Sequence[str]]], where: str) -> Mapping[str, Sequence[str]]:
    if not citations:
        raise ValueError(f"--relevance citation: no examiner citations in the metadata of {where} (the "
                         f"'{SF.CITATIONS_EXAMINER}' field: build the shards with --format uspto)")
    return citations
