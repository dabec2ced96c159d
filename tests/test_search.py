"""The prior-art index and search (patentclip.evaluation.index): results against a brute-force ranking over the same
stored embeddings with the same filters, grouping by patent, several views, approximate kinds and their recall,
appending parts without a rebuild, and a faiss file that does not match its manifest."""
import json
import os

import numpy as np
import pytest

from patentclip.evaluation import index as X

DIM = 16


def random_corpus(n_patents=120, seed=0, dup=False):
    """Metadata and unit vectors of ``n_patents`` patents of 1-6 drawings: classes 0-4, views, dates over 10
    years; ``dup``: some drawings copied exactly (exact ties)."""
    rng = np.random.default_rng(seed)
    meta = {k: [] for k in X.META_COLUMNS}
    vecs = []
    views = ["front", "side", "top", "perspective"]
    for p in range(n_patents):
        pid = f"USD{900000 + p}"
        day = int(rng.integers(15000, 18650))
        cls = int(rng.integers(0, 5))
        centre = rng.normal(size=DIM)
        for d in range(int(rng.integers(1, 7))):
            meta["key"].append(f"{pid}_{d:02d}")
            meta["patent_id"].append(pid)
            meta["view"].append(views[d % 4])
            meta["title"].append(f"Ornamental design {p}")
            meta["class_id"].append(cls)
            meta["grant_day"].append(day if p % 17 else -1)  # some patents without a grant date
            meta["shard"].append(f"shard-{p // 40}.tar")
            meta["member"].append(f"{pid}_{d:02d}.png")
            meta["offset"].append(512 * len(vecs))
            meta["size"].append(100)
            vecs.append(centre + 0.8 * rng.normal(size=DIM))
    v = np.asarray(vecs)
    if dup:
        v[5] = v[40]
        v[77] = v[40]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    return meta, v


def split_parts(meta, v, n_parts):
    n = len(meta["key"])
    bounds = np.linspace(0, n, n_parts + 1).astype(int)
    for i in range(n_parts):
        a, b = bounds[i], bounds[i + 1]
        yield f"p{i}", {k: vals[a:b] for k, vals in meta.items()}, v[a:b]


def make_index(folder, meta, v, kind="flat", n_parts=3, vector_dtype="float16", **spec):
    classes = [{"id": i, "code": f"0{i + 1}-01", "name": f"class {i}", "count": 1} for i in range(5)]
    m = X.new_manifest({"source": "random", "name": "none", "fingerprint": "0", "embed_dim": DIM}, classes,
                       X.FaissSpec(kind=kind, **spec), vector_dtype)
    recs = [X.write_part(str(folder), name, pm, pv, {"shard": name}, vector_dtype)
            for name, pm, pv in split_parts(meta, v, n_parts)]
    X.commit_faiss(str(folder), m, recs, recall_queries=200, log=lambda *_: None)
    return X.PriorArtIndex.open(str(folder))


def stored(v, vector_dtype="float16"):
    """The vectors as the index stores them, widened to float64 for the oracle."""
    return v.astype(X.VECTOR_DTYPES[vector_dtype]).astype(np.float64)


def brute_force(vs, meta, queries, filters=None, top=10, combine="max", group=True):
    """The ranking rules of patentclip.evaluation.index written as plain loops over every drawing (float64)."""
    f = filters or X.Filters()
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    if combine == "mean":
        q = q.mean(0, keepdims=True)
        q = q / np.linalg.norm(q)
    allowed = []
    for r in range(len(meta["key"])):
        day = meta["grant_day"][r]
        if f.before is not None and not (day >= 0 and day < f.before):
            continue
        if f.after is not None and not day >= f.after:
            continue
        if f.classes is not None and meta["class_id"][r] not in f.classes:
            continue
        if f.views is not None and meta["view"][r] not in f.views:
            continue
        if meta["patent_id"][r] in f.exclude_patents:
            continue
        allowed.append(r)
    score = {r: max(float(qv @ vs[r]) for qv in q) for r in allowed}
    ranking = sorted(allowed, key=lambda r: (-score[r], r))
    if group:
        seen, out = set(), []
        for r in ranking:
            if meta["patent_id"][r] not in seen:
                seen.add(meta["patent_id"][r])
                out.append(r)
        ranking = out
    return [(r, score[r]) for r in ranking[:top]]


def result_rows(res, group=True):
    return [(it["best"]["row"] if group else it["row"], it["score"]) for it in res["results"]]


def assert_same(got, expected, tol=2e-6):
    assert [r for r, _ in got] == [r for r, _ in expected]
    for (_, a), (_, b) in zip(got, expected):
        assert a == pytest.approx(b, abs=tol)


@pytest.fixture(scope="module")
def corpus():
    return random_corpus()


@pytest.fixture(scope="module")
def flat(corpus, tmp_path_factory):
    meta, v = corpus
    return make_index(tmp_path_factory.mktemp("flat"), meta, v)


def test_index_stores_what_was_written(flat, corpus):
    meta, v = corpus
    assert flat.rows == len(meta["key"]) and flat.key.tolist() == meta["key"]
    assert flat.grant_day.tolist() == meta["grant_day"] and flat.view.tolist() == meta["view"]
    # float16 storage, widened exactly: the vectors faiss holds are the stored ones
    np.testing.assert_array_equal(flat.vectors(np.arange(flat.rows)), v.astype(np.float16).astype(np.float32))
    rows = flat.rows_of_patent(meta["patent_id"][10])
    assert rows.tolist() == [r for r, p in enumerate(meta["patent_id"]) if p == meta["patent_id"][10]]
    assert flat.class_id_of("03-01") == 2 and flat.class_id_of("class 4") == 4 and flat.class_id_of("1") == 1
    with pytest.raises(ValueError, match="unknown class 'nope'.*01-01"):
        flat.class_id_of("nope")


FILTERS = [
    None,
    X.Filters(before=17000),                                   # the prior-art filter
    X.Filters(before=17500, after=16000, classes=[1, 3]),
    X.Filters(views=["front", "top"], exclude_patents=("USD900003", "USD900004")),
    X.Filters(before=15100),                                   # very few drawings left
]


@pytest.mark.parametrize("fi", range(len(FILTERS)))
def test_search_equals_brute_force(flat, corpus, fi):
    meta, v = corpus
    vs = stored(v)
    rng = np.random.default_rng(fi)
    for trial in range(4):
        views = 1 + trial % 3
        q = rng.normal(size=(views, DIM)) + v[rng.integers(0, len(v))]
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        for group in (True, False):
            for combine in ("max", "mean"):
                top = 7 if group else 12
                got = flat.search(q, top=top, filters=FILTERS[fi], group=group, combine=combine)
                exp = brute_force(vs, meta, q, FILTERS[fi], top, combine, group)
                assert_same(result_rows(got, group), exp)
                assert got["searched"]["exact"] is True


def test_grouping_and_drawings_on_request(flat, corpus):
    meta, v = corpus
    q = v[30:32].astype(np.float32)
    f = X.Filters(before=18000)
    res = flat.search(q, top=10, filters=f, with_drawings=True)
    pids = [r["patent_id"] for r in res["results"]]
    assert len(set(pids)) == len(pids) == 10
    scores = [r["score"] for r in res["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in res["results"]:
        rows = [d["row"] for d in r["drawings"]]
        assert rows == [i for i, p in enumerate(meta["patent_id"]) if p == r["patent_id"]]
        # the best drawing is the best-scoring allowed drawing of the patent
        best = max((d for d in r["drawings"] if d["allowed"]), key=lambda d: (d["score"], -d["row"]))
        assert best["row"] == r["best"]["row"] and best["score"] == pytest.approx(r["score"], abs=1e-6)
        assert r["grant_date"] < "2019-03-21" and r["class"]["code"] == f"0{r['class']['id'] + 1}-01"
    # the query drawing's own patent is found first when nothing excludes it, and is gone when excluded
    own = meta["patent_id"][30]
    assert flat.search(q, top=1)["results"][0]["patent_id"] == own
    assert own not in [r["patent_id"] for r in flat.search(q, top=50, filters=X.Filters(exclude_patents=(own,)))["results"]]


def test_exact_ties_break_by_row(tmp_path):
    meta, v = random_corpus(n_patents=60, seed=3, dup=True)
    idx = make_index(tmp_path, meta, v, n_parts=2)
    q = v[40:41].astype(np.float32)
    # rows 5, 40 and 77 hold the same vector: equal scores, ranked by row
    f = X.Filters(exclude_patents=("nothing",))  # a filter: faiss scores each allowed drawing on its own
    got = result_rows(idx.search(q, top=3, group=False, filters=f), group=False)
    assert [r for r, _ in got] == [5, 40, 77] and got[0][1] == got[1][1] == got[2][1]
    assert_same(got, brute_force(stored(v), meta, q, None, 3, group=False))


def test_nothing_allowed_and_bad_queries(flat):
    assert flat.search(np.ones((1, DIM), np.float32) / 4, filters=X.Filters(before=0))["results"] == []
    with pytest.raises(ValueError, match="query vectors must be"):
        flat.search(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="combine"):
        flat.search(np.ones((1, DIM), np.float32), combine="sum")


@pytest.mark.parametrize("kind,spec", [("ivf", {"nlist": 8, "nprobe": 8}), ("hnsw", {"m": 16})])
def test_approximate_kinds_report_recall_and_search(corpus, tmp_path, kind, spec):
    meta, v = corpus
    idx = make_index(tmp_path, meta, v, kind=kind, **spec)
    rec = idx.manifest["faiss"]["recall"]
    assert rec["queries"] == 200 and set(rec["recall"]) == {"1", "10", "100"}
    assert all(0.0 <= r <= 1.0 for r in rec["recall"].values())
    if kind == "ivf":  # every list probed: as good as exact
        assert rec["recall"]["10"] == 1.0
    assert rec["recall"]["10"] >= 0.9
    vs = stored(v)
    q = v[11:12].astype(np.float32)
    # a filter that leaves few drawings: scored exactly
    f = X.Filters(before=16000)
    got = idx.search(q, top=5, filters=f)
    assert got["searched"]["exact"] is True
    assert_same(result_rows(got), brute_force(vs, meta, q, f, 5))
    assert_same(result_rows(idx.search(q, top=5, exact=True)), brute_force(vs, meta, q, None, 5))


def test_recall_measurement_is_an_honest_oracle(corpus, tmp_path):
    """A deliberately poor ivf (one list probed of 16) must show recall below 1, and measure_recall against the
    flat index itself is exactly 1."""
    meta, v = corpus
    idx = make_index(tmp_path / "poor", meta, v, kind="ivf", nlist=16, nprobe=1)
    assert idx.manifest["faiss"]["recall"]["recall"]["10"] < 0.95
    flat_idx = make_index(tmp_path / "flat", meta, v)
    r = X.measure_recall(flat_idx.faiss, flat_idx.spec, lambda: flat_idx.iter_chunks(), flat_idx.rows, 100)
    assert r["recall"] == {"1": 1.0, "10": 1.0, "100": 1.0}


def test_appending_parts_equals_building_at_once(corpus, tmp_path):
    meta, v = corpus
    whole = make_index(tmp_path / "whole", meta, v, n_parts=4)
    folder = str(tmp_path / "grown")
    parts = list(split_parts(meta, v, 4))
    m = X.new_manifest(whole.manifest["model"], whole.manifest["classes"], X.FaissSpec(), "float16")
    recs = [X.write_part(folder, n, pm, pv, {"shard": n}) for n, pm, pv in parts[:3]]
    m = X.commit_faiss(folder, m, recs)
    first_file = m["faiss"]["file"]
    rec = X.write_part(folder, *parts[3][:3], {"shard": parts[3][0]})
    m = X.commit_faiss(folder, m, [rec])  # a new week: appended, not rebuilt
    assert not os.path.exists(os.path.join(folder, first_file)) and m["rows"] == whole.rows
    grown = X.PriorArtIndex.open(folder)
    np.testing.assert_array_equal(grown.vectors(np.arange(grown.rows)), whole.vectors(np.arange(whole.rows)))
    q = v[3:4].astype(np.float32)
    assert result_rows(grown.search(q, top=20)) == result_rows(whole.search(q, top=20))


def test_manifest_and_faiss_file_that_disagree_are_refused(corpus, tmp_path):
    meta, v = corpus
    idx = make_index(tmp_path, meta, v)
    m = json.loads((tmp_path / "index.json").read_text())
    m["parts"] = m["parts"][:2]
    m["rows"] = sum(p["rows"] for p in m["parts"])
    (tmp_path / "index.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="patentclip-index rebuild"):
        X.PriorArtIndex.open(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a patentclip index"):
        X.PriorArtIndex.open(str(tmp_path / "parts"))
    assert idx.rows > m["rows"]
