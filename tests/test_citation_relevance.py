"""``patentclip-eval --relevance citation``: the drawings of the patents the examiner cited are the relevant ones,
with the prior-art filter. A hand-worked example, scikit-learn's average precision as an independent oracle on
random sets, the citations read from shards, and the command line on a synthetic set with citations. (The
parsing of the citations from real grant XML is tested in tests/test_uspto.py.)"""
import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from conftest import run_cli, shard_pattern
from patentclip.evaluation import citations as C
from patentclip.evaluation import cli as ECLI
from patentclip.evaluation import metrics as M
from patentclip.evaluation import retrieval as ERT
from patentclip.evaluation import settings as ES
from patentclip.shards.build import build_shards
from patentclip.shards.synth import generate_synthetic_patents

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def unit_features(sims):
    """Database features whose dot products with the query feature [1, 0] are exactly ``sims``."""
    s = torch.tensor(sims, dtype=torch.float64)
    return torch.stack([s, torch.sqrt(1 - s * s)], dim=1)


def feats(features, patents, days, class_id=None, citations=None, key_prefix="k"):
    n = len(patents)
    d = {"image_features": features, "text_features": features,
         "class_id": torch.as_tensor(class_id or [0] * n), "grant_day": torch.as_tensor(days),
         "patent_id": list(patents), "key": [f"{key_prefix}{i}" for i in range(n)], "view": ["front"] * n}
    if citations is not None:
        d["citations"] = citations
    return d


def test_hand_worked_example():
    # database: index: patent, grant day, similarity to query q
    #   0: USD0000001 day 50  .90      1: USD0000002 day 60 .80      2: USD0000001 day 50 .70
    #   3: USD0000003 day 120 .60      4: USD0000004 day 40 .50      5: USD0000009 (q's own) day 100 .95
    # query q: patent USD0000009, day 100; its examiner cited D1 and D3 (spelled as the XML spells them), a
    # publication and a foreign design: neither matches a database patent.
    # query r: patent USD0000008, day 30, cites D1 (granted day 50: after r, not prior art)
    db = feats(unit_features([0.9, 0.8, 0.7, 0.6, 0.5, 0.95]),
               ["USD0000001", "USD0000002", "USD0000001", "USD0000003", "USD0000004", "USD0000009"],
               [50, 60, 50, 120, 40, 100], key_prefix="d")
    q_feats = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    cites = {"USD0000009": C.cited_numbers([{"number": "D1", "country": "US"}, {"number": "D0000003"},
                                           {"number": "2011/0232101", "country": "US"},
                                           {"number": "D1227036", "country": "JP"}]),
             "USD0000008": ["D1"]}
    assert cites["USD0000009"] == ["D1", "D3"]
    q = feats(q_feats, ["USD0000009", "USD0000008"], [100, 30], citations=cites, key_prefix="q")
    settings = ES.EvalSettings(relevance="citation", ks=(1, 2))
    assert settings.use_prior_art  # on by default, as for class relevance
    on = ERT.retrieval_from_features(q, db, settings, None)
    m, pq = on["metrics"], on["per_query"]
    # q: candidates granted before day 100 and not its own patent: 0, 1, 2, 4 (3 is later, 5 is its own)
    #    relevant: the drawings of D1 among them, 0 and 2 (D3's drawing is later); ranked 0 (rel) 1 2 (rel) 4
    #    -> AP = (1/1 + 2/3) / 2 = 5/6, R@1 = 1/2, R@2 = 1/2, MRR = 1
    # r: candidates before day 30: none -> not valid
    assert pq["num_candidates"].tolist() == [4, 0] and pq["num_relevant"].tolist() == [2, 0]
    assert m["i2i_num_valid_queries"] == 1 and m["i2i_num_queries_without_relevant"] == 1
    assert m["i2i_mAP"] == pytest.approx(5 / 6, abs=1e-12)
    assert (m["i2i_R@1"], m["i2i_R@2"], m["i2i_MRR@10"], m["i2i_P@2"]) == (0.5, 0.5, 1.0, 0.5)
    # without the prior-art filter D3's drawing (rank 4 of 0 1 2 3 4) is relevant too:
    #   ranked 0 (rel) 1 2 (rel) 3 (rel) 4 -> AP = (1 + 2/3 + 3/4) / 3 = 29/36; r's own patent is not in the
    #   database, so all six are its candidates: 5 (.95) 0 (rel) 1 2 (rel) 3 4 -> AP = (1/2 + 2/4) / 2 = 1/2
    r = ERT.retrieval_from_features(q, db, ES.EvalSettings(relevance="citation", prior_art="off"), None)
    assert r["per_query"]["num_relevant"].tolist() == [3, 2] and r["per_query"]["num_candidates"].tolist() == [5, 6]
    assert r["metrics"]["i2i_mAP"] == pytest.approx(float((Fraction(29, 36) + Fraction(1, 2)) / 2), abs=1e-12)
    # the examples for the report mark the cited patents' drawings as hits
    ex = ERT.retrieval_examples(q, db, settings, pq, on["qidx"], None, n=1, k=3)
    assert [x["patent_id"] for x in ex[0]["results"]] == ["USD0000001", "USD0000002", "USD0000001"]
    assert [x["hit"] for x in ex[0]["results"]] == [True, False, True]


def test_against_sklearn_average_precision_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(5):
        n_db, n_q, n_pat = 60, 12, 15
        patents = [f"USD{p:07d}" for p in rng.integers(1, n_pat + 1, n_db)]
        days = {f"USD{p:07d}": int(rng.integers(0, 100)) for p in range(1, n_pat + 1)}
        dbf = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(n_db, 8))), dim=1)
        qf = torch.nn.functional.normalize(torch.tensor(rng.normal(size=(n_q, 8))), dim=1)
        q_pat = [f"USD{p:07d}" for p in rng.integers(1, n_pat + 1, n_q)]
        cites = {p: [f"D{int(c)}" for c in rng.choice(np.arange(1, n_pat + 1), 4, replace=False)] for p in set(q_pat)}
        db = feats(dbf, patents, [days[p] for p in patents], key_prefix="d")
        q = feats(qf, q_pat, [days[p] for p in q_pat], citations=cites, key_prefix="q")
        for prior in ("on", "off"):
            r = ERT.retrieval_from_features(q, db, ES.EvalSettings(relevance="citation", prior_art=prior), None)
            aps = []
            for i in range(n_q):
                cited = {f"USD{int(c[1:]):07d}" for c in cites[q_pat[i]]}
                cand = [d for d in range(n_db) if patents[d] != q_pat[i]
                        and (prior == "off" or days[patents[d]] < days[q_pat[i]])]
                y = [patents[d] in cited for d in cand]
                if any(y):
                    s = (dbf[cand] @ qf[i]).numpy()
                    aps.append(sklearn_metrics.average_precision_score(y, s))
            assert r["metrics"]["i2i_num_valid_queries"] == len(aps), (trial, prior)
            if aps:
                assert r["metrics"]["i2i_mAP"] == pytest.approx(float(np.mean(aps)), abs=1e-9), (trial, prior)


def test_relevant_indices_and_bad_input():
    rel = C.relevant_indices(["USD0000009", "X"], ["USD0633254", "USD0000002", "D633254"], {"USD0000009": ["D633,254"]})
    assert rel.tolist() == [[0, 2], [-1, -1]]
    with pytest.raises(ValueError, match="relevant must be"):
        M.retrieval_metrics(torch.eye(2), torch.eye(2), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long),
                            relevant=torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="no examiner citations.*--format uspto"):
        C.require({}, "x")


@pytest.fixture(scope="module")
def cited_shards(tmp_path_factory):
    """A synthetic set whose patents cite earlier patents of the set (and a foreign one), as --format uspto
    shards carry them, plus the expected number of valid queries under the prior-art filter."""
    root = tmp_path_factory.mktemp("cited")
    manifest = generate_synthetic_patents(root / "p", num_patents=24, num_classes=3, image_size=48, seed=3)
    recs = [json.loads(line) for line in manifest.read_text().splitlines()]
    rng = np.random.default_rng(1)
    ids = [r["patent_id"] for r in recs]
    for r in recs:
        chosen = rng.choice(len(ids), 3, replace=False)
        r["citations_examiner"] = [{"number": ids[c].replace("USD0", "D"), "country": "US", "kind": "S"}
                                   for c in chosen if ids[c] != r["patent_id"]]
        r["citations_examiner"].append({"number": "DM/081655", "country": "WO"})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in recs))
    build_shards(manifest, root / "s", samples_per_shard=64, splits=(("test", 1.0),), progress=False)
    date = {r["patent_id"]: r["grant_date"] for r in recs}
    n_draw = {r["patent_id"]: len(r["drawings"]) for r in recs}
    valid = sum(n_draw[r["patent_id"]] for r in recs
                if any(date[c["number"].replace("D", "USD0")] < r["grant_date"]
                       for c in r["citations_examiner"] if c["country"] == "US"))
    return {"pattern": shard_pattern(root / "s" / "test"), "recs": recs, "valid": valid, "root": root}


def test_citations_read_from_shards(cited_shards):
    got = C.load_citations(cited_shards["pattern"])
    assert len(got) == 24
    r = cited_shards["recs"][0]
    assert got[r["patent_id"]] == [c["number"] for c in r["citations_examiner"] if c["country"] == "US"]


def test_cli_relevance_citation(cited_shards, tmp_path, capsys):
    out = tmp_path / "m.json"
    r = run_cli("patentclip.evaluation.cli", "--val-data", cited_shards["pattern"], "--model", "patentclip-tiny",
                "--checkpoint", "untrained", "--relevance", "citation", "--linear-probe", "off", "--workers", "0",
                "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = json.loads(out.read_text())
    assert m["settings"]["relevance"] == "citation" and m["settings"]["prior_art_filter"] is True
    assert m["settings"]["citations"]["query_patents_with_citations"] == 24
    assert m["i2i_num_valid_queries"] == cited_shards["valid"] > 0
    assert 0.0 < m["i2i_mAP"] <= 1.0
    # shards without citations are refused with the reason
    plain = generate_synthetic_patents(tmp_path / "p", num_patents=12, num_classes=2, image_size=32, seed=0)
    build_shards(plain, tmp_path / "s", splits=(("test", 1.0),), progress=False)
    capsys.readouterr()
    assert ECLI.main(["--val-data", shard_pattern(tmp_path / "s" / "test"), "--model", "patentclip-tiny",
                   "--checkpoint", "untrained", "--relevance", "citation", "--workers", "0"]) == 2
    assert "no examiner citations" in capsys.readouterr().err
