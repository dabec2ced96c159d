"""The prior-art index's faiss kinds: build time, recall against exact search, and query time, in one run.

    python benchmarks/search_index.py                      # 100K drawings, 512 dims (minutes: the hnsw build)
    python benchmarks/search_index.py --quick --json o.json

Vectors: ``--drawings`` L2-normalised float16-stored vectors of ``--dim`` dims, drawn around 2,000 "designs" with 4
views each (clustered like embeddings of patent drawings, so that nearest neighbours mean something), with grant
dates over 30 years. For each kind (flat = exact ``IndexFlatIP``; ivf = ``IndexIVFFlat`` with the default nlist and
nprobe; hnsw = ``IndexHNSWFlat`` with the default M and efSearch) it writes a real index folder through
:func:`patentclip.evaluation.index.commit_faiss` (which measures the approximate kinds' recall@1/10/100 against
exact search on 1,000 indexed drawings as queries), then times :meth:`PriorArtIndex.search` for 50 queries grouped
by patent, with and without a prior-art date that leaves half the drawings, and checks the flat results against a
brute-force ranking. Ratios are against flat, in the same run.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time

import numpy as np

from _common import at_least, parse_args, row, write_json

RECALL_TARGET = 0.95


def corpus(n: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    designs = max(1, n // 4)
    centres = rng.normal(size=(min(2000, designs), dim)).astype(np.float32)
    which = rng.integers(0, len(centres), designs)
    patent = np.repeat(np.arange(designs), 4)[:n]
    v = centres[which][patent] + 0.9 * rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    day = rng.integers(8000, 19000, designs)[patent]
    meta = {"key": [f"P{p}_{i % 4}" for i, p in enumerate(patent)], "patent_id": [f"P{p}" for p in patent],
            "view": [("front", "side", "top", "perspective")[i % 4] for i in range(n)], "title": [""] * n,
            "class_id": list(rng.integers(0, 32, designs)[patent]), "grant_day": list(day), "shard": ["s"] * n,
            "member": [""] * n, "offset": [0] * n, "size": [0] * n}
    return meta, v


def build(folder, meta, v, kind, parts=8, recall_queries=1000):
    from patentclip.evaluation import index as X

    spec = X.FaissSpec(kind=kind)
    m = X.new_manifest({"source": "bench", "name": "bench", "fingerprint": "0", "embed_dim": v.shape[1]},
                       [{"id": i, "code": f"{i:02d}-00", "name": str(i)} for i in range(32)], spec, "float16")
    n = len(v)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    recs = [X.write_part(folder, f"p{i}", {k: vals[a:b] for k, vals in meta.items()}, v[a:b], {"shard": f"p{i}"})
            for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    t0 = time.perf_counter()
    m = X.commit_faiss(folder, m, recs, recall_queries=recall_queries, log=print)
    return X.PriorArtIndex.open(folder), time.perf_counter() - t0, m


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--drawings", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--json", default=None, help="Write the rows and a \"summary\" list as JSON here.")
    p.add_argument("--quick", action="store_true", help="5,000 drawings of 64 dims: seconds, for checking the script.")
    args = parse_args(p, argv, dict(drawings=5000, dim=64, queries=10))
    from patentclip.evaluation import index as X

    meta, v = corpus(args.drawings, args.dim)
    vs = v.astype(np.float16).astype(np.float32)
    rng = np.random.default_rng(1)
    qrows = rng.choice(len(v), args.queries, replace=False)
    queries = vs[qrows] + 0.05 * rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    half = int(np.median(meta["grant_day"]))
    rows = {}
    work = tempfile.mkdtemp(prefix="bench-index-")
    print(f"{args.drawings} drawings x {args.dim} dims (float16 stored), {args.queries} queries, top 10 patents")
    try:
        flat_results = None
        for kind in ("flat", "ivf", "hnsw"):
            idx, build_s, m = build(f"{work}/{kind}", meta, v, kind)
            r = {"build_s": build_s, "recall": (m["faiss"].get("recall") or {}).get("recall", {})}
            idx.search(queries[:1], top=10)  # warm-up: an ivf index loads its row-ordered vectors on first use
            for label, f in (("no filter", None), ("before the median date", X.Filters(before=half))):
                t0 = time.perf_counter()
                res = [idx.search(q[None], top=10, filters=f) for q in queries]
                r[f"ms_per_query ({label})"] = 1e3 * (time.perf_counter() - t0) / len(queries)
                if kind == "flat" and f is None:
                    flat_results = res
                    # exact: the brute-force ranking over the stored vectors (best drawing per patent)
                    for q, got in zip(queries[:5], res[:5]):
                        s = vs @ q
                        order = np.lexsort((np.arange(len(s)), -s))
                        seen, exp = set(), []
                        for j in order:
                            if meta["patent_id"][j] not in seen:
                                seen.add(meta["patent_id"][j])
                                exp.append(int(j))
                            if len(exp) == 10:
                                break
                        assert [x["best"]["row"] for x in got["results"]] == exp
                if kind != "flat" and f is None:
                    agree = [len({x["patent_id"] for x in a["results"]} & {x["patent_id"] for x in b["results"]}) / 10
                             for a, b in zip(res, flat_results)]
                    r["patent_recall@10 vs flat"] = float(np.mean(agree))
            rows[kind] = r
            shown = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items())
            print(f"{kind:>5}: {shown}", flush=True)
            shutil.rmtree(f"{work}/{kind}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    flat_ms = rows["flat"]["ms_per_query (no filter)"]
    summary = []
    for kind in ("ivf", "hnsw"):
        summary.append(at_least(f"{kind} recall@10 against exact search", rows[kind]["recall"].get("10", float("nan")),
                                RECALL_TARGET, unit=""))
        summary.append(row(f"{kind} query time / flat ({args.drawings} drawings)",
                           rows[kind]["ms_per_query (no filter)"] / flat_ms, "x"))
    summary.append(row(f"flat query time, {args.drawings} drawings", flat_ms, "ms"))
    if args.json:
        write_json(args.json, {"summary": summary, "rows": rows, "drawings": args.drawings, "dim": args.dim,
                               "queries": args.queries, "quick": args.quick})
    return 0


if __name__ == "__main__":
    sys.exit(main())
