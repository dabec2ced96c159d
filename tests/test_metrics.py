"""Tests for patentclip.evaluation.metrics (hand-worked cases + independent oracles)."""
import math
from fractions import Fraction as F

import numpy as np
import pytest
import torch

from patentclip.evaluation import metrics
from patentclip.plugins.classes import head_class_mask

sklearn_metrics = pytest.importorskip("sklearn.metrics")

EXACT = 1e-12  # "exact" up to float64 rounding


def feats_from_scores(scores):
    """Query/db features whose dot products are exactly ``scores`` (Q, N).

    query i = e_i, db item d = column d of the score matrix, so q_i . db_d = scores[i][d].
    (The metric functions take features as given -- they only compute dot products.)
    """
    s = torch.tensor(scores, dtype=torch.float64)
    if s.dim() == 1:
        s = s[None]
    return torch.eye(s.shape[0], dtype=torch.float64), s.T.contiguous()


def approx(x):
    return pytest.approx(float(x), abs=EXACT)


def assert_same(a, b):
    """Dicts equal, NaN == NaN, tensors compared elementwise."""
    assert a.keys() == b.keys()
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, dict):
            assert_same(va, vb)
        elif isinstance(va, torch.Tensor):
            assert torch.equal(va, vb), k
        elif isinstance(va, float) and math.isnan(va):
            assert isinstance(vb, float) and math.isnan(vb), k
        else:
            assert va == vb, k


# ---------------------------------------------------------------------------------------
# retrieval: hand-worked examples
# ---------------------------------------------------------------------------------------
def test_hand_rel_non_rel():
    # one query (label 0); db scores 0.9, 0.8, 0.7 with labels 0, 1, 0
    # ranking: [rel, non, rel]
    #   AP   = (P@1 + P@3) / 2 = (1/1 + 2/3) / 2 = 5/6
    #   HitRate@1 = 1 (hit at rank 1), HitRate@2 = 1, HitRate@3 = 1
    #   P@1  = 1/1, P@2 = 1/2, P@3 = 2/3
    #   R@1 = 1/2, R@2 = 1/2, R@3 = 2/2   (relevant in top K / all relevant: the paper's R@K)
    #   MRR  = 1/1
    q, db = feats_from_scores([0.9, 0.8, 0.7])
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), torch.tensor([0, 1, 0]), ks=(1, 2, 3))
    assert r["mAP"] == approx(F(5, 6))
    assert (r["HitRate@1"], r["HitRate@2"], r["HitRate@3"]) == (1.0, 1.0, 1.0)
    assert r["P@1"] == approx(1) and r["P@2"] == approx(F(1, 2)) and r["P@3"] == approx(F(2, 3))
    assert r["R@1"] == approx(F(1, 2)) and r["R@2"] == approx(F(1, 2)) and r["R@3"] == approx(1)
    assert r["MRR@10"] == approx(1)
    assert r["num_queries"] == 1 and r["num_valid_queries"] == 1
    assert r["num_queries_without_relevant"] == 0


def test_hand_two_queries_and_mrr_cutoff():
    # query A (label 0): scores .9 .8 .7 .6 over db labels 0 1 0 1 -> [rel, non, rel, non]
    #   AP_A = (1/1 + 2/3)/2 = 5/6, first relevant rank 1
    # query B (label 1): same scores -> [non, rel, non, rel]
    #   AP_B = (1/2 + 2/4)/2 = 1/2, first relevant rank 2
    # mAP = (5/6 + 1/2)/2 = 2/3
    # HitRate@1 = (1 + 0)/2 = 1/2 ; HitRate@2 = 1 ; P@1 = (1 + 0)/2 = 1/2 ; P@2 = (1/2 + 1/2)/2 = 1/2
    # R@1 = (1/2 + 0)/2 = 1/4 ; R@2 = (1/2 + 1/2)/2 = 1/2 ; R@4 = (2/2 + 2/2)/2 = 1
    # P@4 = (2/4 + 2/4)/2 = 1/2
    # MRR@10 = (1 + 1/2)/2 = 3/4 ; MRR@1 = (1 + 0)/2 = 1/2
    q, db = feats_from_scores([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    ql, dl = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    r = metrics.retrieval_metrics(q, db, ql, dl, ks=(1, 2, 4))
    assert r["mAP"] == approx(F(2, 3))
    assert r["HitRate@1"] == approx(F(1, 2)) and r["HitRate@2"] == 1.0 and r["HitRate@4"] == 1.0
    assert r["R@1"] == approx(F(1, 4)) and r["R@2"] == approx(F(1, 2)) and r["R@4"] == 1.0
    assert r["P@1"] == approx(F(1, 2)) and r["P@2"] == approx(F(1, 2)) and r["P@4"] == approx(F(1, 2))
    assert r["MRR@10"] == approx(F(3, 4))
    r1 = metrics.retrieval_metrics(q, db, ql, dl, ks=(1,), mrr_k=1)
    assert r1["MRR@1"] == approx(F(1, 2))
    # both labels have one query each -> macro mAP == mAP
    assert r["mAP_macro"] == approx(F(2, 3))


def test_default_keys():
    q, db = feats_from_scores([0.9, 0.8, 0.7])
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), torch.tensor([0, 1, 0]))
    for k in ["mAP", "R@5", "R@10", "HitRate@5", "HitRate@10", "P@5", "P@10", "MRR@10", "num_queries",
              "num_queries_without_relevant"]:
        assert k in r
    # P@K divides by K even with only 3 candidates: 2 relevant / 5
    assert r["P@5"] == approx(F(2, 5)) and r["P@10"] == approx(F(2, 10))


def test_ties_broken_by_db_index():
    # all scores equal -> ranking is db index order
    # labels 1 0 1 for query label 0 -> [non, rel, non]: AP = 1/2, MRR = 1/2, R@1 = 0
    q, db = feats_from_scores([0.5, 0.5, 0.5])
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), torch.tensor([1, 0, 1]), ks=(1, 2))
    assert r["mAP"] == approx(F(1, 2)) and r["MRR@10"] == approx(F(1, 2))
    assert r["R@1"] == 0.0 and r["R@2"] == 1.0  # one relevant item: R@K == HitRate@K
    assert r["HitRate@1"] == 0.0 and r["HitRate@2"] == 1.0
    # labels 0 1 0 -> [rel, non, rel]: AP = (1 + 2/3)/2
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), torch.tensor([0, 1, 0]), ks=(1, 2))
    assert r["mAP"] == approx(F(5, 6))


def test_prior_art_filter_hand():
    # db: scores .9 .8 .7 .6 ; labels 0 0 1 0 ; grant times 12 10 5 3
    # query A: label 0, granted at t=10
    #   candidates = db_time < 10 strictly -> idx 2 (t=5, non), idx 3 (t=3, rel)
    #   idx 0 (t=12, relevant, best score) is a LATER patent and must be ignored,
    #   idx 1 (t=10, same day) is not strictly earlier -> ignored too.
    #   ranking [non, rel]: AP = 1/2, first rank 2, MRR = 1/2, R@1 = 0, R@2 = 1
    #   (without the filter: [rel, rel, non, rel] -> AP = (1 + 1 + 3/4)/3 = 11/12)
    # query B: label 1, granted at t=5
    #   candidates: idx 3 only (t=3, label 0); idx 2 (label 1) has t=5, not < 5
    #   -> no relevant candidate -> counted in num_queries_without_relevant
    q, db = feats_from_scores([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    ql, dl = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 0])
    qt, dt = torch.tensor([10, 5]), torch.tensor([12, 10, 5, 3])
    r = metrics.retrieval_metrics(q, db, ql, dl, ks=(1, 2), query_times=qt, db_times=dt,
                                  return_per_query=True)
    assert r["mAP"] == approx(F(1, 2))
    assert r["MRR@10"] == approx(F(1, 2))
    assert r["R@1"] == 0.0 and r["R@2"] == 1.0
    assert r["num_queries"] == 2 and r["num_valid_queries"] == 1
    assert r["num_queries_without_relevant"] == 1
    assert r["per_query"]["num_candidates"].tolist() == [2, 1]
    assert r["per_query"]["first_relevant_rank"].tolist() == [2, 0]
    # no filter
    r0 = metrics.retrieval_metrics(q[:1], db, ql[:1], dl, ks=(1, 2))
    assert r0["mAP"] == approx(F(11, 12)) and r0["MRR@10"] == 1.0


def test_all_queries_without_relevant_gives_nan():
    q, db = feats_from_scores([0.9, 0.8])
    r = metrics.retrieval_metrics(q, db, torch.tensor([5]), torch.tensor([0, 1]))
    assert math.isnan(r["mAP"]) and math.isnan(r["R@5"]) and math.isnan(r["MRR@10"])
    assert r["num_queries_without_relevant"] == 1 and r["num_queries"] == 1


def test_exclude_self_hand():
    # query set == database, 3 items, labels 0 0 1.
    # Gram matrix (chosen): item0 closest to item2, then item1; item1 closest to item0; ...
    s = [[1.0, 0.3, 0.6],
         [0.3, 1.0, 0.2],
         [0.6, 0.2, 1.0]]
    # without exclude every query finds itself at rank 1: HitRate@1 = MRR = 1; mAP = 1 for q2,
    # q0: [self rel, 2 non, 1 rel] -> AP = (1 + 2/3)/2 ; q1: [self, 0 rel, 2 non] -> AP = 1
    # R@1: q0 1/2 (2 relevant), q1 1/2, q2 1/1 -> 2/3
    q, db = feats_from_scores(s)
    lab = torch.tensor([0, 0, 1])
    r = metrics.retrieval_metrics(q, db, lab, lab, ks=(1,))
    assert r["HitRate@1"] == 1.0 and r["MRR@10"] == 1.0
    assert r["R@1"] == approx(F(2, 3))
    assert r["mAP"] == approx((F(5, 6) + 1 + 1) / 3)
    # excluding self:
    #   q0: candidates [2 (0.6, non), 1 (0.3, rel)] -> AP = 1/2, first rank 2
    #   q1: candidates [0 (0.3, rel), 2 (0.2, non)] -> AP = 1, first rank 1
    #   q2: label 1 has no other item -> without relevant
    r = metrics.retrieval_metrics(q, db, lab, lab, ks=(1,), exclude=torch.arange(3))
    assert r["num_queries_without_relevant"] == 1
    assert r["mAP"] == approx(F(3, 4))
    assert r["R@1"] == approx(F(1, 2))
    assert r["MRR@10"] == approx(F(3, 4))
    # -1 = exclude nothing for that query
    r = metrics.retrieval_metrics(q, db, lab, lab, ks=(1,), exclude=torch.tensor([-1, 1, 2]))
    assert r["num_queries_without_relevant"] == 1
    assert r["mAP"] == approx((F(5, 6) + 1) / 2)
    # 2-D exclude, padded with -1: q0 drops 0 and 2 -> [1 rel] -> AP 1
    r = metrics.retrieval_metrics(q, db, lab, lab, ks=(1,),
                                  exclude=torch.tensor([[0, 2], [1, -1], [2, -1]]))
    assert r["mAP"] == approx(1)


def test_exclude_same_patent_hand():
    # one query (label 0, patent 7); db scores .9 .8 .7, labels 0 1 0, patents 7 8 9
    # without exclusion: [rel, non, rel] -> AP = 5/6
    # excluding patent 7: candidates [non(idx1), rel(idx2)] -> AP = 1/2, MRR = 1/2
    q, db = feats_from_scores([0.9, 0.8, 0.7])
    ql, dl = torch.tensor([0]), torch.tensor([0, 1, 0])
    r = metrics.retrieval_metrics(q, db, ql, dl)
    assert r["mAP"] == approx(F(5, 6))
    r = metrics.retrieval_metrics(q, db, ql, dl, query_patent_ids=torch.tensor([7]),
                                  db_patent_ids=torch.tensor([7, 8, 9]), return_per_query=True)
    assert r["mAP"] == approx(F(1, 2)) and r["MRR@10"] == approx(F(1, 2))
    assert r["per_query"]["num_candidates"].tolist() == [2]


def test_label_groups_hand_and_subset_equivalence():
    # same two queries as test_hand_two_queries_and_mrr_cutoff: AP_A = 5/6, AP_B = 1/2
    q, db = feats_from_scores([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]])
    ql, dl = torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1])
    groups = {"head": torch.tensor([True, False]), "tail": torch.tensor([False, True])}
    r = metrics.retrieval_metrics(q, db, ql, dl, ks=(1, 2), label_groups=groups)
    assert r["mAP"] == approx(F(2, 3))
    assert r["head/mAP"] == approx(F(5, 6)) and r["tail/mAP"] == approx(F(1, 2))
    assert r["head/HitRate@1"] == 1.0 and r["tail/HitRate@1"] == 0.0
    assert r["head/R@1"] == approx(F(1, 2)) and r["tail/R@1"] == 0.0
    assert r["head/MRR@10"] == 1.0 and r["tail/MRR@10"] == approx(F(1, 2))
    assert r["head/num_queries"] == 1 and r["tail/num_queries"] == 1

    # random: group metrics == metrics on the subset of queries
    g = torch.Generator().manual_seed(3)
    qf = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=1)
    qlab = torch.randint(0, 4, (30,), generator=g)
    dlab = torch.randint(0, 4, (50,), generator=g)
    head = qlab < 2
    r = metrics.retrieval_metrics(qf, dbf, qlab, dlab, label_groups={"head": head, "tail": ~head})
    for name, m in (("head", head), ("tail", ~head)):
        sub = metrics.retrieval_metrics(qf[m], dbf, qlab[m], dlab)
        for k, v in sub.items():
            assert r[f"{name}/{k}"] == pytest.approx(v, abs=1e-12), (name, k)


def test_paper_recall_allows_mrr_above_recall():
    # The paper's Table 1 has M@10 > R@10: possible with R@K = relevant-in-top-K / all relevant.
    # One query, 20 relevant items in a database of 40; ranking: rel at ranks 1..5, then 5 non,
    # then the other 15 relevant, then 15 non.
    #   MRR@10 = 1 ; R@10 = 5/20 = 1/4 ; HitRate@10 = 1 ; P@10 = 5/10
    labels = [0] * 5 + [1] * 5 + [0] * 15 + [1] * 15
    scores = [1.0 - i / 100 for i in range(40)]
    q, db = feats_from_scores(scores)
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), torch.tensor(labels), ks=(5, 10))
    assert r["MRR@10"] == 1.0 and r["HitRate@10"] == 1.0
    assert r["R@10"] == approx(F(1, 4)) and r["R@5"] == approx(F(5, 20)) and r["P@10"] == approx(F(1, 2))
    assert r["MRR@10"] > r["R@10"]
    # ... while a hit rate can never be below MRR (1/rank <= 1 only for queries with a hit)
    g = torch.Generator().manual_seed(4)
    qf = torch.nn.functional.normalize(torch.randn(60, 8, generator=g), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(200, 8, generator=g), dim=1)
    r = metrics.retrieval_metrics(qf, dbf, torch.randint(0, 6, (60,), generator=g),
                                  torch.randint(0, 6, (200,), generator=g), ks=(10,))
    assert r["HitRate@10"] >= r["MRR@10"] and r["HitRate@10"] >= r["R@10"]


def test_top_k_indices_hand():
    # db scores .9 .8 .7 .6 .5 ; times 12 10 5 3 1 ; query granted at t=10 -> candidates 2, 3, 4
    # (idx 0 later, idx 1 same day). top-2 = [2, 3]; top-4 = [2, 3, 4, -1]
    q, db = feats_from_scores([0.9, 0.8, 0.7, 0.6, 0.5])
    dl = torch.tensor([0, 0, 1, 0, 0])
    kw = dict(query_times=torch.tensor([10]), db_times=torch.tensor([12, 10, 5, 3, 1]))
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), dl, return_top_k=2, **kw)
    assert r["top_indices"].tolist() == [[2, 3]]
    r = metrics.retrieval_metrics(q, db, torch.tensor([0]), dl, return_top_k=4, **kw)
    assert r["top_indices"].tolist() == [[2, 3, 4, -1]]
    # ties: equal scores rank by database index
    q, db = feats_from_scores([[0.5, 0.5, 0.9], [0.1, 0.1, 0.1]])
    r = metrics.retrieval_metrics(q, db, torch.tensor([0, 0]), torch.tensor([0, 0, 0]), return_top_k=3,
                                  chunk_size=1)
    assert r["top_indices"].tolist() == [[2, 0, 1], [0, 1, 2]]
    # random: top indices == stable argsort of the masked scores
    g = torch.Generator().manual_seed(9)
    qf = torch.nn.functional.normalize(torch.randn(15, 6, generator=g, dtype=torch.float64), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(40, 6, generator=g, dtype=torch.float64), dim=1)
    qt, dt = torch.randint(0, 10, (15,), generator=g), torch.randint(0, 10, (40,), generator=g)
    r = metrics.retrieval_metrics(qf, dbf, torch.zeros(15, dtype=torch.long), torch.zeros(40, dtype=torch.long),
                                  query_times=qt, db_times=dt, return_top_k=5, chunk_size=4)
    for i in range(15):
        cands = [d for d in range(40) if dt[d] < qt[i]]
        ranked = sorted(cands, key=lambda d: (-float(qf[i] @ dbf[d]), d))[:5]
        assert r["top_indices"][i].tolist() == ranked + [-1] * (5 - len(ranked))


def test_auto_chunk_size_and_memory_budget():
    assert metrics.auto_chunk_size(1000, metrics.BYTES_PER_SCORE * 1000 * 7) == 7
    assert metrics.auto_chunk_size(10 ** 9, 1) == 1
    # 250K queries x 800K database in 1 GiB chunks: 27 queries per chunk, about 9300 chunks
    assert metrics.auto_chunk_size(800_000) == (1 << 30) // (metrics.BYTES_PER_SCORE * 800_000)
    g = torch.Generator().manual_seed(1)
    qf = torch.nn.functional.normalize(torch.randn(30, 8, generator=g), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(70, 8, generator=g), dim=1)
    ql, dl = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (70,), generator=g)
    small = metrics.retrieval_metrics(qf, dbf, ql, dl, max_chunk_bytes=metrics.BYTES_PER_SCORE * 70 * 4,
                                      return_per_query=True, return_top_k=3)
    big = metrics.retrieval_metrics(qf, dbf, ql, dl, return_per_query=True, return_top_k=3)
    assert_same(small, big)


def test_auto_chunk_size_bounds_work_per_chunk(monkeypatch):
    """The chunk loop really works on ceil(Q / chunk) chunks of at most `chunk` queries each."""
    from patentclip.evaluation.metrics import ranks

    seen = []
    real = ranks.chunk_statistics

    def spy(scores, cand, rel, ks, top=0, method="count"):
        seen.append(tuple(scores.shape))
        return real(scores, cand, rel, ks, top, method)

    monkeypatch.setattr(ranks, "chunk_statistics", spy)
    qf = torch.nn.functional.normalize(torch.randn(50, 4), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(30, 4), dim=1)
    lab_q, lab_db = torch.zeros(50, dtype=torch.long), torch.zeros(30, dtype=torch.long)
    metrics.retrieval_metrics(qf, dbf, lab_q, lab_db, max_chunk_bytes=metrics.BYTES_PER_SCORE * 30 * 8)
    assert seen == [(8, 30)] * 6 + [(2, 30)]


def test_head_class_mask_rule():
    # counts 5 50 10 0 20 : C = 5, ceil(0.4 * 5) = 2 head classes -> the two most frequent: 1 (50), 4 (20)
    assert head_class_mask([5, 50, 10, 0, 20]).tolist() == [False, True, False, False, True]
    # C = 3: ceil(1.2) = 2 ; equal counts -> smaller class id first
    assert head_class_mask([3, 3, 3]).tolist() == [True, True, False]
    # C = 10: exactly 4 head classes
    m = head_class_mask(list(range(10, 0, -1)))
    assert m.tolist() == [True] * 4 + [False] * 6
    # classes without training samples are tail even when they would fall in the top 40%
    assert head_class_mask([4, 0, 0, 0, 0]).tolist() == [True, False, False, False, False]
    # explicit categories (classes.json "category") win over counts
    assert head_class_mask([1, 100, 1], ["head", "tail", "Tail"]).tolist() == [True, False, False]
    # no categories at all -> the frequency rule (2 head classes: 100, then the tie 1/1 goes to class 0)
    assert head_class_mask([1, 100, 1], [None, "", None]).tolist() == [True, True, False]
    # some classes with a category and some without, or an unknown category: an error, not a silent mix
    with pytest.raises(ValueError, match="some classes"):
        head_class_mask([1, 100, 1], ["head", None, "tail"])
    with pytest.raises(ValueError, match="head.*tail"):
        head_class_mask([1, 100, 1], ["head", "middle", "tail"])
    assert head_class_mask([1, 2], head_fraction=1.0).tolist() == [True, True]
    with pytest.raises(ValueError):
        head_class_mask([1, 2], ["head"])


# ---------------------------------------------------------------------------------------
# retrieval: independent oracle (scikit-learn AP + brute-force python loops)
# ---------------------------------------------------------------------------------------
def brute_force(qf, dbf, ql, dl, ks, mrr_k, qt=None, dt=None, exclude=None, qp=None, dp=None):
    qf, dbf = qf.numpy().astype(np.float64), dbf.numpy().astype(np.float64)
    scores = qf @ dbf.T
    aps, mrr, n_without = [], [], 0
    r_at, hr_at, p_at = ({k: [] for k in ks} for _ in range(3))
    for i in range(qf.shape[0]):
        cands = []
        for d in range(dbf.shape[0]):
            if qt is not None and not (int(dt[d]) < int(qt[i])):
                continue
            if exclude is not None and int(exclude[i]) == d:
                continue
            if qp is not None and int(dp[d]) == int(qp[i]):
                continue
            cands.append(d)
        y = np.array([int(dl[d]) == int(ql[i]) for d in cands], dtype=bool)
        if not y.any():
            n_without += 1
            continue
        s = scores[i, cands]
        aps.append(sklearn_metrics.average_precision_score(y, s))
        ranked = sorted(range(len(cands)), key=lambda j: (-s[j], cands[j]))
        rel_ranked = [bool(y[j]) for j in ranked]
        first = rel_ranked.index(True) + 1
        mrr.append(1.0 / first if first <= mrr_k else 0.0)
        for k in ks:
            n_hit = sum(rel_ranked[:k])
            hr_at[k].append(1.0 if n_hit > 0 else 0.0)
            r_at[k].append(n_hit / int(y.sum()))
            p_at[k].append(n_hit / k)
    out = {"mAP": np.mean(aps), f"MRR@{mrr_k}": np.mean(mrr), "num_queries_without_relevant": n_without,
           "per_query_ap": aps}
    for k in ks:
        out[f"R@{k}"] = np.mean(r_at[k])
        out[f"HitRate@{k}"] = np.mean(hr_at[k])
        out[f"P@{k}"] = np.mean(p_at[k])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["plain", "filters"])
def test_against_sklearn_and_brute_force(seed, mode):
    g = torch.Generator().manual_seed(seed)
    nq, ndb, dim, ncls = 40, 120, 16, 5 + seed
    # float64 so the oracle (numpy float64 dot products) sees exactly the same ordering
    qf = torch.nn.functional.normalize(torch.randn(nq, dim, generator=g, dtype=torch.float64), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(ndb, dim, generator=g, dtype=torch.float64), dim=1)
    ql = torch.randint(0, ncls, (nq,), generator=g)
    dl = torch.randint(0, ncls, (ndb,), generator=g)
    kw = {}
    if mode == "filters":
        kw = dict(query_times=torch.randint(0, 60, (nq,), generator=g),
                  db_times=torch.randint(0, 60, (ndb,), generator=g),
                  exclude=torch.where(torch.rand(nq, generator=g) < 0.5,
                                      torch.randint(0, ndb, (nq,), generator=g), torch.tensor(-1)),
                  query_patent_ids=torch.randint(0, 30, (nq,), generator=g),
                  db_patent_ids=torch.randint(0, 30, (ndb,), generator=g))
    ks, mrr_k = (1, 5, 10), 10
    ours = metrics.retrieval_metrics(qf, dbf, ql, dl, ks=ks, mrr_k=mrr_k, chunk_size=7,
                                     return_per_query=True, **kw)
    ref = brute_force(qf, dbf, ql, dl, ks, mrr_k, kw.get("query_times"), kw.get("db_times"),
                      kw.get("exclude"), kw.get("query_patent_ids"), kw.get("db_patent_ids"))
    assert ours["num_queries_without_relevant"] == ref["num_queries_without_relevant"]
    pq = ours["per_query"]
    if mode == "filters":  # the filters actually bite (about half the database is later)
        assert int(pq["num_candidates"].sum()) < 0.7 * nq * ndb
    assert ours["mAP"] == pytest.approx(ref["mAP"], abs=1e-6)
    valid = pq["num_relevant"] > 0
    np.testing.assert_allclose(pq["ap"][valid].numpy(), ref["per_query_ap"], atol=1e-9)
    for k in ks:
        assert ours[f"R@{k}"] == pytest.approx(ref[f"R@{k}"], abs=1e-12)
        assert ours[f"HitRate@{k}"] == pytest.approx(ref[f"HitRate@{k}"], abs=1e-12)
        assert ours[f"P@{k}"] == pytest.approx(ref[f"P@{k}"], abs=1e-12)
    assert ours["MRR@10"] == pytest.approx(ref["MRR@10"], abs=1e-12)


def test_chunking_invariance():
    g = torch.Generator().manual_seed(7)
    qf = torch.nn.functional.normalize(torch.randn(25, 12, generator=g), dim=1)  # float32 path
    dbf = torch.nn.functional.normalize(torch.randn(90, 12, generator=g), dim=1)
    ql = torch.randint(0, 4, (25,), generator=g)
    dl = torch.randint(0, 4, (90,), generator=g)
    kw = dict(query_times=torch.randint(0, 20, (25,), generator=g),
              db_times=torch.randint(0, 20, (90,), generator=g),
              label_groups={"head": ql < 2, "tail": ql >= 2}, return_per_query=True)
    res = [metrics.retrieval_metrics(qf, dbf, ql, dl, chunk_size=c, **kw) for c in (1, 3, 1024)]
    assert_same(res[0], res[1])
    assert_same(res[0], res[2])


def test_half_precision_and_input_validation():
    g = torch.Generator().manual_seed(0)
    qf = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1)
    lab = torch.arange(6) % 2
    r = metrics.retrieval_metrics(qf.half(), qf, lab, lab, exclude=torch.arange(6))
    assert r["num_queries"] == 6
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(qf, qf, lab, lab, query_times=torch.zeros(6, dtype=torch.long))
    with pytest.raises(TypeError):
        metrics.retrieval_metrics(qf, qf, lab.float(), lab)
    with pytest.raises(ValueError):
        metrics.retrieval_metrics(qf, qf, lab, lab, exclude=torch.full((6,), 6))
    for bad in (float("nan"), float("inf")):  # a bad value in the database or the queries: a clear error
        broken = qf.clone()
        broken[3, 5] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            metrics.retrieval_metrics(qf, broken, lab, lab)
        with pytest.raises(ValueError, match="NaN or infinite"):
            metrics.retrieval_metrics(broken, qf, lab, lab)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(11)
    qf = torch.nn.functional.normalize(torch.randn(50, 16, generator=g, dtype=torch.float64), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(200, 16, generator=g, dtype=torch.float64), dim=1)
    ql, dl = torch.randint(0, 5, (50,), generator=g), torch.randint(0, 5, (200,), generator=g)
    qt, dt = torch.randint(0, 30, (50,), generator=g), torch.randint(0, 30, (200,), generator=g)
    cpu = metrics.retrieval_metrics(qf, dbf, ql, dl, query_times=qt, db_times=dt, chunk_size=16)
    gpu = metrics.retrieval_metrics(qf.cuda(), dbf.cuda(), ql.cuda(), dl.cuda(), query_times=qt.cuda(),
                                    db_times=dt.cuda(), chunk_size=16)
    for k, v in cpu.items():
        assert gpu[k] == pytest.approx(v, abs=1e-9), k
    logits = torch.randn(40, 7, generator=g)
    labels = torch.randint(0, 7, (40,), generator=g)
    assert metrics.classification_accuracy(logits.cuda(), labels.cuda()) == \
        metrics.classification_accuracy(logits, labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_peak_memory_is_bounded_by_the_chunk_budget():
    # 20K queries x 100K database with a 256 MiB chunk budget: the peak is the features plus about one
    # chunk, far below the 20K x 100K x 4 B = 8 GB a single score matrix would need.
    g = torch.Generator(device="cuda").manual_seed(0)
    qf = torch.nn.functional.normalize(torch.randn(20_000, 64, device="cuda", generator=g), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(100_000, 64, device="cuda", generator=g), dim=1)
    ql = torch.randint(0, 50, (20_000,), device="cuda", generator=g)
    dl = torch.randint(0, 50, (100_000,), device="cuda", generator=g)
    qt = torch.randint(0, 10_000, (20_000,), device="cuda", generator=g)
    dt = torch.randint(0, 10_000, (100_000,), device="cuda", generator=g)
    budget = 256 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    r = metrics.retrieval_metrics(qf, dbf, ql, dl, query_times=qt, db_times=dt, max_chunk_bytes=budget)
    peak = torch.cuda.max_memory_allocated() - base
    assert r["num_queries"] == 20_000 and 0 < r["mAP"] < 1
    assert peak <= budget, (peak, budget)


# ---------------------------------------------------------------------------------------
# image <-> text recall
# ---------------------------------------------------------------------------------------
def test_image_text_recall_perfect():
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1)
    r = metrics.image_text_recall(f, f.clone())
    assert set(r) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(v == 1.0 for v in r.values())


def test_image_text_recall_reversed():
    # texts in reversed order, orthonormal features: image i matches text N-1-i exactly (score 1),
    # its own text i scores 0 unless i == N-1-i.  N = 5: only i = 2 hits at rank 1 -> R@1 = 1/5.
    # The other 4 images rank their positive at >= 2 -> R@1 = 1/5; R@5 = 1 trivially.
    f = torch.eye(5)
    r = metrics.image_text_recall(f, f.flip(0), ks=(1, 5))
    assert r["image_to_text_R@1"] == approx(F(1, 5)) and r["text_to_image_R@1"] == approx(F(1, 5))
    assert r["image_to_text_R@5"] == 1.0 and r["text_to_image_R@5"] == 1.0


def test_image_text_recall_hand():
    # S[i][j] = image_i . text_j
    S = [[0.1, 0.9, 0.5],   # image0: text1 > text2 > text0  -> positive text0 at rank 3
         [0.2, 0.8, 0.3],   # image1: text1 first            -> rank 1
         [0.7, 0.6, 0.4]]   # image2: text0 > text1 > text2  -> rank 3
    # i2t ranks [3, 1, 3]: R@1 = 1/3, R@2 = 1/3, R@3 = 1
    # t2i (columns): text0 [.1 .2 .7] -> image0 rank 3; text1 [.9 .8 .6] -> image1 rank 2;
    #                text2 [.5 .3 .4] -> image2 rank 2 ; R@1 = 0, R@2 = 2/3, R@3 = 1
    img, txt = feats_from_scores(S)
    r = metrics.image_text_recall(img, txt, ks=(1, 2, 3))
    assert r["image_to_text_R@1"] == approx(F(1, 3)) and r["image_to_text_R@2"] == approx(F(1, 3))
    assert r["image_to_text_R@3"] == 1.0
    assert r["text_to_image_R@1"] == 0.0 and r["text_to_image_R@2"] == approx(F(2, 3))
    assert r["text_to_image_R@3"] == 1.0


def test_image_text_recall_groups():
    # 2 images, 4 captions; captions 0,1 describe image 0, captions 2,3 describe image 1
    S = [[0.1, 0.5, 0.9, 0.2],   # image0: caption2 (other image) > caption1 (own) -> rank 2
         [0.3, 0.2, 0.1, 0.4]]   # image1: caption3 (own) first -> rank 1
    # i2t: R@1 = 1/2, R@2 = 1
    # t2i: cap0 [.1 .3] -> own image0 rank 2; cap1 [.5 .2] -> rank 1;
    #      cap2 [.9 .1] -> own image1 rank 2; cap3 [.2 .4] -> rank 1   => R@1 = 1/2, R@2 = 1
    img, txt = feats_from_scores(S)
    r = metrics.image_text_recall(img, txt, ks=(1, 2), text_groups=torch.tensor([0, 0, 1, 1]))
    assert r == {"image_to_text_R@1": 0.5, "image_to_text_R@2": 1.0,
                 "text_to_image_R@1": 0.5, "text_to_image_R@2": 1.0}
    # any caption of the same drawing is a positive: with one caption per image the own
    # caption must be found; with groups a 'wrong index but same drawing' caption counts
    f = torch.eye(3)
    txt2 = torch.stack([f[0], f[0], f[1], f[2]])  # 4 captions, caption1 duplicates caption0
    r = metrics.image_text_recall(f, txt2, ks=(1,), text_groups=torch.tensor([0, 0, 1, 2]))
    assert r["image_to_text_R@1"] == 1.0 and r["text_to_image_R@1"] == 1.0
    with pytest.raises(ValueError):
        metrics.image_text_recall(f, txt2)  # 3 images vs 4 texts without groups


# ---------------------------------------------------------------------------------------
# classification / zero-shot
# ---------------------------------------------------------------------------------------
def test_zero_shot_hand():
    # classifier = identity (D = C = 3) so logits = image features
    logits = torch.tensor([
        [0.9, 0.1, 0.0],  # label 0: rank 1 (correct)
        [0.2, 0.7, 0.1],  # label 0: rank 2
        [0.1, 0.8, 0.1],  # label 1: rank 1 (correct)
        [0.5, 0.5, 0.0],  # label 1: tie with class 0 -> class 0 wins (smaller index) -> rank 2
        [0.0, 1.0, 0.0],  # label 1: rank 1 (correct)
    ])
    labels = torch.tensor([0, 0, 1, 1, 1])
    # top1 = 3/5 ; top2 = 5/5 ; top5 skipped (C = 3)
    # per class: class0 1/2, class1 2/3, class2 no samples -> None
    # balanced = (1/2 + 2/3)/2 = 7/12
    r = metrics.zero_shot_accuracy(logits, torch.eye(3), labels, topk=(1, 2, 5))
    assert r["top1"] == approx(F(3, 5)) and r["top2"] == 1.0 and "top5" not in r
    assert r["per_class_top1"][0] == approx(F(1, 2)) and r["per_class_top1"][1] == approx(F(2, 3))
    assert r["per_class_top1"][2] is None and len(r["per_class_top1"]) == 3
    assert r["balanced_top1"] == approx(F(7, 12))
    assert r["num_samples"] == 5
    assert metrics.classification_accuracy(logits, labels, topk=(1, 2, 5)) == r
    with pytest.raises(ValueError):
        metrics.zero_shot_accuracy(logits, torch.eye(3), labels, num_classes=4)


def test_zero_shot_equals_classification_and_topk_oracle():
    g = torch.Generator().manual_seed(5)
    img = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=1)
    cls = torch.nn.functional.normalize(torch.randn(16, 10, generator=g), dim=0)
    labels = torch.randint(0, 10, (64,), generator=g)
    r = metrics.zero_shot_accuracy(img, cls, labels)
    assert r == metrics.classification_accuracy(img @ cls, labels)
    logits = (img @ cls).numpy()
    y = labels.numpy()
    top1 = np.mean(logits.argmax(1) == y)
    top5 = np.mean([y[i] in np.argsort(-logits[i], kind="stable")[:5] for i in range(64)])
    assert r["top1"] == pytest.approx(top1, abs=1e-12) and r["top5"] == pytest.approx(top5, abs=1e-12)
    sk_bal = sklearn_metrics.balanced_accuracy_score(y, logits.argmax(1))
    # sklearn's balanced accuracy averages recall over classes present in y_true -- same definition
    assert r["balanced_top1"] == pytest.approx(sk_bal, abs=1e-12)


# ---------------------------------------------------------------------------------------
# ranking methods: counting and topk against the full stable sort (bit for bit)
# ---------------------------------------------------------------------------------------
def method_case(seed):
    """Query/database features and retrieval_metrics arguments: filters, exclusions, groups, and (odd seeds)
    features on a coarse grid, so that many scores tie exactly, also across the top-K cut."""
    g = torch.Generator().manual_seed(100 + seed)
    dtype = torch.float64 if seed % 3 == 0 else torch.float32
    nq, ndb, dim = 37, 260, 8
    qf = torch.randn(nq, dim, generator=g, dtype=dtype)
    dbf = torch.randn(ndb, dim, generator=g, dtype=dtype)
    if seed % 2:
        qf, dbf = qf.round(), dbf.clamp(-1, 1).round()
    else:
        qf = torch.nn.functional.normalize(qf, dim=1)
        dbf = torch.nn.functional.normalize(dbf, dim=1)
    ql = torch.randint(0, 3 + seed, (nq,), generator=g)
    dl = torch.randint(0, 3 + seed, (ndb,), generator=g)
    kw = dict(query_times=torch.randint(0, 40, (nq,), generator=g), db_times=torch.randint(0, 40, (ndb,), generator=g),
              exclude=torch.stack([torch.randint(-1, ndb, (nq,), generator=g) for _ in range(2)], 1),
              query_patent_ids=torch.randint(0, 50, (nq,), generator=g),
              db_patent_ids=torch.randint(0, 50, (ndb,), generator=g),
              label_groups={"head": ql < 2, "tail": ql >= 2})
    if seed % 4 == 3:
        kw = {}
    return qf, dbf, ql, dl, kw


@pytest.fixture()
def count_small_databases(monkeypatch):
    """Rank by counting whatever the database size (small ones are otherwise sorted: cheaper there)."""
    from patentclip.evaluation.metrics import ranks

    monkeypatch.setattr(ranks, "COUNT_MIN_DB", 0)


@pytest.mark.parametrize("seed", range(8))
def test_counting_and_topk_equal_the_full_sort_bit_for_bit(seed, count_small_databases):
    qf, dbf, ql, dl, kw = method_case(seed)
    run = {m: metrics.retrieval_metrics(qf, dbf, ql, dl, ks=(1, 5, 10), mrr_k=10, chunk_size=6, method=m,
                                        return_per_query=True, return_top_k=7, **kw)
           for m in ("sort", "count", "topk")}
    assert_same(run["count"], run["sort"])  # every metric, per-query value and top index, bit for bit
    sort, topk = run["sort"], run["topk"]
    assert "mAP" not in topk and "head/mAP" not in topk and "ap" not in topk["per_query"]
    for k, v in sort.items():
        if "mAP" not in k and k != "per_query":
            assert_same({k: topk[k]}, {k: v})
    pq_s, pq_t = sort["per_query"], topk["per_query"]
    for k in ("num_relevant", "num_candidates", "hits@1", "hits@5", "hits@10"):
        assert torch.equal(pq_t[k], pq_s[k]), k
    first = pq_s["first_relevant_rank"]
    assert torch.equal(pq_t["first_relevant_rank"], torch.where(first > 10, torch.full_like(first, -1), first))
    if seed % 2:  # the grid really ties: many equal scores among the candidates of a query
        s = (qf @ dbf.T)[0]
        assert s.unique().numel() < s.numel() / 4


def test_counting_on_the_hand_worked_cases(count_small_databases):
    # the hand-worked examples above, through every method: the same numbers
    for scores, ql, dl in (([0.9, 0.8, 0.7], [0], [0, 1, 0]), ([0.5, 0.5, 0.5], [0], [1, 0, 1]),
                           ([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6]], [0, 1], [0, 1, 0, 1])):
        q, db = feats_from_scores(scores)
        res = [metrics.retrieval_metrics(q, db, torch.tensor(ql), torch.tensor(dl), ks=(1, 2), method=m)
               for m in ("sort", "count")]
        assert_same(res[0], res[1])
    with pytest.raises(ValueError, match="unknown ranking method 'radix'"):
        metrics.retrieval_metrics(q, db, torch.tensor(ql), torch.tensor(dl), method="radix")
