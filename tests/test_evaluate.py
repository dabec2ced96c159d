"""patentclip-eval: retrieval protocol (prior-art filter, exclusions, relevance), head/tail classes, linear probe
(against scikit-learn), classification-head accuracy, and the command line on a trained checkpoint, plus the
in-training evaluation (tensorboard / results.jsonl)."""
import json
import shutil
from fractions import Fraction

import numpy as np
import pytest
import torch

import conftest
from conftest import read_jsonl, run_cli
from patentclip.evaluation import classification as EC
from patentclip.evaluation import cli as ECLI
from patentclip.evaluation import features as EF
from patentclip.evaluation import loading as EL
from patentclip.evaluation import retrieval as ERT
from patentclip.evaluation import run as ERUN
from patentclip.evaluation import settings as ES
from patentclip.evaluation import linear_probe as LP
from patentclip.evaluation import report as R
from patentclip.evaluation import metrics as M
from patentclip.plugins.classes import ClassInfo, ClassTable, head_class_mask

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def table(counts, categories=None):
    classes = [ClassInfo(i, f"{i:02d}-01", f"class {i}", int(c)) for i, c in enumerate(counts)]
    t = ClassTable(classes)
    if categories is not None:  # the shard builder's optional field, as ClassInfo may carry it
        for c, cat in zip(t.classes, categories):
            object.__setattr__(c, "category", cat)
    return t


def feats_dict(image_features, class_id, grant_day, patent_id, key=None):
    n = len(class_id)
    return {"image_features": torch.as_tensor(image_features, dtype=torch.float64),
            "text_features": torch.as_tensor(image_features, dtype=torch.float64),
            "class_id": torch.as_tensor(class_id), "grant_day": torch.as_tensor(grant_day),
            "patent_id": list(patent_id), "key": list(key or [f"k{i}" for i in range(n)]), "view": ["front"] * n}


# ---------------------------------------------------------------------------------------------------------------
# retrieval protocol
# ---------------------------------------------------------------------------------------------------------------
def gram_features(s):
    """Features whose Gram matrix is ``s`` (symmetric positive definite): rows of its Cholesky factor."""
    return torch.linalg.cholesky(torch.tensor(s, dtype=torch.float64))


def test_prior_art_protocol_hand():
    # 5 drawings, query set == database. Gram matrix (similarities; the diagonal only makes it positive
    # definite -- a query is never its own candidate):
    S = [[4.0, 0.9, 0.8, 0.7, 0.6],
         [0.9, 4.0, 0.5, 0.4, 0.3],
         [0.8, 0.5, 4.0, 0.2, 0.1],
         [0.7, 0.4, 0.2, 4.0, 0.05],
         [0.6, 0.3, 0.1, 0.05, 4.0]]
    # classes 0 0 0 1 0 ; patents A A B C D ; grant days 100 100 50 20 -1 (unknown)
    f = feats_dict(gram_features(S), [0, 0, 0, 1, 0], [100, 100, 50, 20, -1], ["A", "A", "B", "C", "D"])
    r = ERT.retrieval_from_features(f, None, ES.EvalSettings(ks=(1, 2)), None)
    m, pq = r["metrics"], r["per_query"]
    # drawing 4 has no grant date: not a query (counted), and never a candidate
    assert m["i2i_num_queries_unknown_date"] == 1 and m["i2i_num_queries"] == 4
    assert r["qidx"].tolist() == [0, 1, 2, 3]
    # q0 (A, day 100): candidates granted before 100 and not patent A: 2 (day 50, class 0, s .8), 3 (day 20,
    #   class 1, s .7) -> [rel, non]: AP 1, R@1 = 1/1 ; drawing 1 is the same patent (and the same day)
    # q1 (A, day 100): same candidates 2 (s .5 rel), 3 (s .4 non) -> AP 1
    # q2 (B, day 50): candidates: 3 (day 20, class 1) -> no relevant candidate
    # q3 (C, day 20): no earlier drawing -> no candidate
    assert pq["num_candidates"].tolist() == [2, 2, 1, 0]
    assert pq["num_relevant"].tolist() == [1, 1, 0, 0]
    assert m["i2i_num_valid_queries"] == 2 and m["i2i_num_queries_without_relevant"] == 2
    assert m["i2i_mAP"] == 1.0 and m["i2i_MRR@10"] == 1.0 and m["i2i_R@1"] == 1.0

    # prior-art filter off: q0 candidates 2 (.8 rel), 3 (.7 non), 4 (.6 rel) (patent A excluded)
    #   -> AP = (1 + 2/3)/2 = 5/6, R@1 = 1/2, R@2 = 1/2
    # q1: 2 (.5 rel), 3 (.4 non), 4 (.3 rel) -> 5/6 ; q2 (B): 0 (.8 rel), 1 (.5 rel), 3, 4 (.1 rel) -> ranks
    #   0 .8, 1 .5, 3 .2, 4 .1 -> [rel, rel, non, rel] -> (1 + 1 + 3/4)/3 = 11/12 ; q3 (class 1): no relevant
    # q4 (D, now a query): 0 .6, 1 .3, 2 .1, 3 .05 -> [rel, rel, rel, non] -> 1
    r = ERT.retrieval_from_features(f, None, ES.EvalSettings(ks=(1, 2), prior_art="off"), None)
    m = r["metrics"]
    assert m["i2i_num_queries"] == 5 and m["i2i_num_queries_unknown_date"] == 0
    assert m["i2i_mAP"] == pytest.approx(float((Fraction(5, 6) * 2 + Fraction(11, 12) + 1) / 4), abs=1e-12)

    # relevance by patent: the other drawing of the same patent is the only relevant one, the query itself is
    # excluded, no prior-art filter: q0 -> drawing 1 at rank 1 (s .9) ; q1 -> drawing 0 at rank 1
    r = ERT.retrieval_from_features(f, None, ES.EvalSettings(ks=(1,), relevance="patent"), None)
    m = r["metrics"]
    assert m["i2i_num_valid_queries"] == 2 and m["i2i_mAP"] == 1.0 and m["i2i_R@1"] == 1.0
    with pytest.raises(ValueError, match="prior-art"):
        ES.EvalSettings(relevance="patent", prior_art="on")


def test_retrieval_against_brute_force_with_separate_database_and_groups():
    g = torch.Generator().manual_seed(0)
    nq, ndb = 30, 80
    qf = torch.nn.functional.normalize(torch.randn(nq, 8, generator=g, dtype=torch.float64), dim=1)
    dbf = torch.nn.functional.normalize(torch.randn(ndb, 8, generator=g, dtype=torch.float64), dim=1)
    qc, dc = torch.randint(0, 4, (nq,), generator=g), torch.randint(0, 4, (ndb,), generator=g)
    qd, dd = torch.randint(-1, 40, (nq,), generator=g), torch.randint(-1, 40, (ndb,), generator=g)
    qp = [f"P{int(x)}" for x in torch.randint(0, 20, (nq,), generator=g)]
    dp = [f"P{int(x)}" for x in torch.randint(0, 20, (ndb,), generator=g)]
    dkeys = [f"d{i}" for i in range(ndb)]
    qkeys = [dkeys[i] if i % 3 == 0 else f"q{i}" for i in range(nq)]  # some queries also sit in the database
    q = feats_dict(qf, qc, qd, qp, qkeys)
    db = feats_dict(dbf, dc, dd, dp, dkeys)
    is_head = torch.tensor([True, True, False, False])
    r = ERT.retrieval_from_features(q, db, ES.EvalSettings(ks=(1, 5)), is_head)
    # brute force: per query, candidates = db granted strictly before (known dates), other patent, not itself
    aps, heads = [], []
    for i in range(nq):
        if qd[i] < 0:
            continue
        cands = [d for d in range(ndb) if dd[d] >= 0 and dd[d] < qd[i] and dp[d] != qp[i] and dkeys[d] != qkeys[i]]
        y = np.array([int(dc[d]) == int(qc[i]) for d in cands])
        if not y.any():
            continue
        s = np.array([float(qf[i] @ dbf[d]) for d in cands])
        from sklearn.metrics import average_precision_score

        aps.append(average_precision_score(y, s))
        heads.append(bool(is_head[qc[i]]))
    aps, heads = np.array(aps), np.array(heads)
    m = r["metrics"]
    assert m["i2i_num_valid_queries"] == len(aps)
    assert m["i2i_mAP"] == pytest.approx(aps.mean(), abs=1e-9)
    assert m["i2i_head/mAP"] == pytest.approx(aps[heads].mean(), abs=1e-9)
    assert m["i2i_tail/mAP"] == pytest.approx(aps[~heads].mean(), abs=1e-9)


def test_retrieval_examples_follow_the_protocol():
    g = torch.Generator().manual_seed(1)
    n = 40
    f = feats_dict(torch.nn.functional.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1),
                   torch.randint(0, 3, (n,), generator=g), torch.randint(0, 30, (n,), generator=g),
                   [f"P{i // 2}" for i in range(n)])
    s = ES.EvalSettings()
    is_head = torch.tensor([True, False, False])
    r = ERT.retrieval_from_features(f, None, s, is_head)
    ex = ERT.retrieval_examples(f, None, s, r["per_query"], r["qidx"], is_head, n=4, k=3)
    assert len(ex) == 4 and [e["is_head"] for e in ex][:2] == [True, False]  # alternately head and tail
    keys = f["key"]
    for e in ex:
        qi = keys.index(e["key"])
        for res in e["results"]:
            di = keys.index(res["key"])
            assert f["grant_day"][di] < f["grant_day"][qi] and f["patent_id"][di] != f["patent_id"][qi]
            assert res["hit"] == (int(f["class_id"][di]) == int(f["class_id"][qi]))
        scores = [float(f["image_features"][qi] @ f["image_features"][keys.index(x["key"])]) for x in e["results"]]
        assert scores == sorted(scores, reverse=True)


# ---------------------------------------------------------------------------------------------------------------
# head / tail classes
# ---------------------------------------------------------------------------------------------------------------
def test_head_classes_rule_and_sources():
    t = table([10, 500, 60, 0, 70])
    # top ceil(0.4 * 5) = 2 by training frequency: class 1 (500) and 4 (70)
    assert t.head_mask().tolist() == [False, True, False, False, True]
    # explicit training counts (e.g. from the checkpoint) override the evaluation table's
    assert t.head_mask(train_counts=[9, 1, 8, 0, 0]).tolist() == [True, False, True, False, False]
    classes = [{"id": i, "code": "x", "name": "y", "count": c} for i, c in enumerate([1, 2, 3, 4, 5])]
    assert t.head_mask(ClassTable.from_dicts(classes).counts()).tolist() == [False, False, False, True, True]
    # classes.json categories win
    tc = table([10, 500, 60, 0, 70], ["tail", "tail", "head", "tail", "tail"])
    assert tc.categories() == ["tail", "tail", "head", "tail", "tail"]
    assert tc.head_mask().tolist() == [False, False, True, False, False]


def test_head_tail_rule_agrees_with_the_loss_plugins():
    """plugins/losses.py splits head/tail for L_cat by the class table's rule: both must give the same classes."""
    losses = pytest.importorskip("patentclip.plugins.losses")
    if not hasattr(losses, "class_categories"):
        pytest.fail("patentclip.plugins.losses.class_categories is gone: update this cross-check")
    g = torch.Generator().manual_seed(0)
    for trial in range(50):
        n = int(torch.randint(1, 40, (1,), generator=g))
        counts = torch.randint(0, 6, (n,), generator=g) ** 3  # many ties and zeros
        t = table(counts.tolist())
        ours = t.head_mask()
        theirs = losses.class_categories(t) == 0  # 0 = head
        assert ours.tolist() == theirs.tolist(), counts.tolist()
    t = table([1, 2, 3], ["head", "tail", "head"])
    assert t.head_mask().tolist() == (losses.class_categories(t) == 0).tolist()


# ---------------------------------------------------------------------------------------------------------------
# linear probe
# ---------------------------------------------------------------------------------------------------------------
def blobs(n, d, c, seed, noise=1.2):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.nn.functional.normalize(centers[y] + noise * torch.randn(n, d, generator=g), dim=1)
    return x, y


@pytest.mark.parametrize("l2", [1e-2, 1e-4])
def test_logistic_regression_matches_sklearn(l2):
    x, y = blobs(240, 12, 4, seed=3)
    x = x.double()  # scikit-learn fits float32 input in float32
    w, b = LP.fit_logistic_regression(x, y, 4, l2=l2, tol=1e-10, max_iter=1000)
    sk = sklearn_linear.LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-12, max_iter=20000).fit(x.numpy(), y.numpy())
    p_ours = torch.softmax(x @ w + b, 1).numpy()
    np.testing.assert_allclose(p_ours, sk.predict_proba(x.numpy()), atol=1e-5)
    assert (p_ours.argmax(1) == sk.predict(x.numpy())).all()


def test_linear_probe_protocols():
    x, y = blobs(240, 8, 4, seed=4, noise=0.5)
    groups = torch.arange(240) // 4  # 4 drawings per "patent"
    tr = groups < 45
    out = LP.linear_probe_train_test(x[tr], y[tr], x[~tr], y[~tr], 4, train_groups=groups[tr])
    assert out["top1"] > 0.8 and out["l2"] in LP.L2_GRID and len(out["per_class_top1"]) == 4
    # the reported accuracy is the accuracy of the probe refitted on all (standardised) training data with the
    # chosen l2, the test features standardised with the training statistics
    mean, std = x[tr].double().mean(0), x[tr].double().std(0, unbiased=False)
    w, b = LP.fit_logistic_regression((x[tr] - mean) / std, y[tr], 4, out["l2"])
    pred = LP.probe_logits((x[~tr] - mean) / std, w, b).argmax(1)
    assert out["top1"] == pytest.approx(float((pred == y[~tr]).double().mean()))
    cv = LP.linear_probe_cross_validation(x, y, groups, 4, folds=2)
    assert cv["top1"] > 0.8 and cv["num_samples"] == 240
    # folds by patent: a group split never separates the drawings of one patent
    sel = LP._group_split(groups, 0.2, seed=0)
    for gid in groups.unique():
        assert sel[groups == gid].all() or not sel[groups == gid].any()
    assert 0.1 < sel.double().mean() < 0.3
    # random labels -> chance level (1/4), not memorised: every drawing is classified by a probe that never saw it
    yr = torch.randint(0, 4, (240,), generator=torch.Generator().manual_seed(0))
    assert LP.linear_probe_cross_validation(x, yr, groups, 4, grid=(1e-4,))["top1"] < 0.4


# ---------------------------------------------------------------------------------------------------------------
# classification blocks and the classification head
# ---------------------------------------------------------------------------------------------------------------
class StandInHead(torch.nn.Module):
    """The AttentionFusionHead interface (forward / classify_image / config) on a linear layer."""

    def __init__(self, embed_dim, num_classes):
        super().__init__()
        self.lin = torch.nn.Linear(embed_dim, num_classes)

    def forward(self, image_features, text_features):
        return self.lin(image_features + text_features)

    def classify_image(self, image_features):
        return self.lin(image_features)

    def config(self):
        return {"embed_dim": self.lin.in_features, "num_classes": self.lin.out_features}


def test_accuracy_block_head_tail_hand():
    # per-class top-1: class 0 (head) 2/4, class 1 (tail) 1/1, class 2 (tail) 0/3
    acc = {"top1": 3 / 8, "balanced_top1": 0.5, "per_class_top1": [0.5, 1.0, 0.0]}
    y = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])
    out = EC._accuracy_block("zeroshot", acc, y, torch.tensor([True, False, False]))
    assert out["zeroshot_top1_head"] == 0.5 and out["zeroshot_top1_tail"] == 0.25
    assert out["zeroshot_top1"] == 3 / 8 and "zeroshot_top5" not in out


@pytest.mark.parametrize("real_head", [False, True])
def test_classification_head_accuracy(real_head):
    x, y = blobs(120, 16, 4, seed=5)
    feats = feats_dict(x.float(), y, torch.zeros(120, dtype=torch.long), [f"P{i // 3}" for i in range(120)])
    torch.manual_seed(0)
    if real_head:
        from patentclip.plugins.heads import build_head

        head = build_head({"embed_dim": 16, "num_classes": 4, "num_heads": 4})
    else:
        head = StandInHead(16, 4)
    head.train()
    m, pc, info = EC.classification_from_features(feats, 4, ES.EvalSettings(linear_probe="off"), head=head,
                                                 is_head=torch.tensor([True, True, False, False]))
    assert head.training  # evaluation leaves the head's mode as it was
    with torch.no_grad():
        head.eval()
        ref = M.classification_accuracy(head.classify_image(x.float()), y, num_classes=4)
    assert m["classifier_top1"] == ref["top1"] and pc["classifier_top1"] == ref["per_class_top1"]
    assert m["classifier_balanced_top1"] == ref["balanced_top1"]
    assert "zeroshot_top1" not in m and "linear_probe_top1" not in m
    # a module holding the head (as the LossSet does) is searched for it
    holder = torch.nn.ModuleDict({"loss": torch.nn.ModuleDict({"head": head})})
    assert EC.find_classification_head(holder) is head
    assert EC.find_classification_head(torch.nn.Linear(2, 2)) is None
    with pytest.raises(ValueError, match="outputs"):
        EC.classification_from_features(feats, 5, ES.EvalSettings(linear_probe="off"), head=head)


def test_format_table_and_nan():
    t = ERUN.format_table({"a": {"zeroshot_top1": 0.5, "i2i_mAP": float("nan")}, "b": {"i2i_R@10": 0.25}})
    lines = t.splitlines()
    assert "50.0%" in lines[2] and "25.0%" in lines[3] and "nan" not in t.lower()
    assert R.jsonable({"x": float("nan"), "y": [1.0, float("inf")]}) == {"x": None, "y": [1.0, None]}


# ---------------------------------------------------------------------------------------------------------------
# a trained checkpoint (shared with test_export.py and test_report.py), the in-training evaluation and the CLI
# ---------------------------------------------------------------------------------------------------------------
def trained_run(tmp_path_factory, shards):
    """One short real training run: 1 epoch on 48 drawings, CLIP loss + DesignCLIP's classification head, with the
    in-training evaluation on the val split. Trained once per session (cached in pytest's base temp folder), so
    the test files that need a checkpoint share it; returns the run folder."""
    root = tmp_path_factory.getbasetemp() / "patentclip-trained-run"
    if (root / "done").exists():
        return root / "run"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    r = run_cli("patentclip.launch.train", "--train-data", shards["train"], "--val-data", shards["val"],
                "--model", "patentclip-tiny", "--batch-size", "8", "--epochs", "1", "--train-num-samples", "48",
                "--lr", "1e-3", "--warmup", "2", "--workers", "1", "--logs", root, "--name", "run", "--seed", "0",
                "--loss", "clip=1,class_aware_classification=1", "--log-every-n-steps", "5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (root / "done").touch()
    return root / "run"


@pytest.fixture(scope="module")
def run_dir(synthetic_shards, tmp_path_factory):
    return trained_run(tmp_path_factory, synthetic_shards)


IN_TRAINING_KEYS = ("i2i_mAP", "i2i_R@5", "i2i_R@10", "i2i_MRR@10", "i2i_HitRate@10", "i2i_head/mAP", "i2i_tail/mAP",
                    "i2i_head/R@10", "i2i_tail/MRR@10", "image_to_text_R@1", "text_to_image_R@10", "zeroshot_top1",
                    "zeroshot_balanced_top1", "linear_probe_top1", "classifier_top1", "classifier_top1_tail")


def test_in_training_evaluation_to_tensorboard_and_results(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    row = read_jsonl(run_dir / "checkpoints" / "results.jsonl")[-1]
    assert row["epoch"] == 1
    for k in IN_TRAINING_KEYS:
        assert 0.0 <= row[k] <= 1.0, k
    assert row["i2i_num_queries"] + row["i2i_num_queries_unknown_date"] == row["num_samples"]
    # the prior-art filter bites: the oldest patents have no earlier drawing of their class
    assert row["i2i_num_queries_without_relevant"] > 0
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"val/" + k for k in IN_TRAINING_KEYS} <= tags


def _cli_metrics(tmp_path, *argv):
    out = tmp_path / f"m{len(list(tmp_path.iterdir()))}.json"
    r = run_cli("patentclip.evaluation.cli", *argv, "--workers", "0", "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(out.read_text()), r.stdout


def test_cli_matches_in_training_evaluation_and_deepspeed_folder(run_dir, synthetic_shards, tmp_path):
    ck = run_dir / "checkpoints"
    m, stdout = _cli_metrics(tmp_path, "--val-data", synthetic_shards["val"], "--checkpoint", ck / "epoch_1.pt")
    assert "i2i_mAP" in stdout.splitlines()[0]  # the table
    row = read_jsonl(ck / "results.jsonl")[-1]
    # same model, data and protocol as the evaluation during training: the same numbers
    for k, v in row.items():
        if k != "epoch":
            assert m[k] == pytest.approx(v, abs=1e-6), k
    classes = json.loads((synthetic_shards["val_dir"] / "classes.json").read_text())
    assert len(m["per_class"]) == len(classes)
    assert {"zeroshot_top1", "linear_probe_top1", "classifier_top1", "i2i_mAP", "is_head", "train_count"} <= \
        set(m["per_class"][0])
    # head classes: classes.json's categories when the shard builder wrote them, else the *training* counts
    # stored in the checkpoint (not the val split's)
    train_counts = [c["count"] for c in json.loads((synthetic_shards["train_dir"] / "classes.json").read_text())]
    assert [r["train_count"] for r in m["per_class"]] == train_counts
    cats = [c.get("category") for c in classes]
    expected = [c == "head" for c in cats] if all(cats) else head_class_mask(train_counts).tolist()
    assert [r["is_head"] for r in m["per_class"]] == expected
    assert m["settings"]["head_classes"] == [i for i, h in enumerate(expected) if h]
    assert m["settings"]["prior_art_filter"] is True and m["settings"]["classification_head"] is True
    # the DeepSpeed checkpoint folder (fp32 master weights, head under criterion.*) gives the same metrics
    assert ECLI.main(["--val-data", synthetic_shards["val"], "--checkpoint", str(ck / "deepspeed"), "--workers", "0",
                   "--linear-probe", "off", "--out", str(tmp_path / "ds.json")]) == 0
    m2 = json.loads((tmp_path / "ds.json").read_text())
    for k in ("i2i_mAP", "i2i_head/R@10", "zeroshot_top1", "classifier_top1", "image_to_text_R@5"):
        assert m2[k] == pytest.approx(m[k], abs=1e-6), k
    assert "linear_probe_top1" not in m2


def test_protocol_on_real_features_against_brute_force(run_dir, synthetic_shards, monkeypatch):
    """i2i metrics of the trained model recomputed from its features with plain Python loops + scikit-learn AP,
    in both relevance settings, with and without the prior-art filter."""
    from sklearn.metrics import average_precision_score

    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import DATASETS

    load_builtin_plugins()
    loaded = EL.load_for_eval(str(run_dir / "checkpoints" / "epoch_1.pt"), None, None, "cpu")
    assert loaded.name == "patentclip-tiny" and loaded.head is not None
    ct = load_class_table(synthetic_shards["val"])
    data_args = conftest.data_args(val=synthetic_shards["val"], batch_size=16)
    loader = DATASETS.get("patent-wds")(data_args, loaded.preprocess, False, tokenizer=loaded.tokenizer,
                                        class_table=ct).dataloader
    f = EF.extract_features(loaded.model, loader, "cpu")
    # the ranking methods give the same numbers, bit for bit, on the model's own (float32) features (counting
    # whatever the database size: small ones are otherwise sorted)
    from patentclip.evaluation.metrics import ranks

    monkeypatch.setattr(ranks, "COUNT_MIN_DB", 0)
    for relevance in ("class", "patent"):
        by = {m: ERT.retrieval_from_features(f, None, ES.EvalSettings(relevance=relevance, ranking=m)) for m in
              ("count", "sort", "topk")}
        assert by["count"]["metrics"] == by["sort"]["metrics"]
        assert {k: v for k, v in by["sort"]["metrics"].items() if "mAP" not in k} == by["topk"]["metrics"]
        for k, v in by["sort"]["per_query"].items():
            assert torch.equal(by["count"]["per_query"][k], v), k
    # float64 features on both sides, so that both see the same scores (and the same exact ties: two views of a
    # body of revolution are the same drawing)
    f["image_features"] = f["image_features"].double()
    x = f["image_features"]
    n = x.shape[0]
    scores = (x @ x.T).numpy()
    assert (f["grant_day"] >= 0).all()
    n_sklearn = 0
    for relevance, prior in (("class", "on"), ("class", "off"), ("patent", "off")):
        settings = ES.EvalSettings(relevance=relevance, prior_art=prior)
        got = ERT.retrieval_from_features(f, None, settings)["metrics"]
        aps, r10, mrr = [], [], []
        for i in range(n):
            cands = [d for d in range(n) if d != i
                     and (relevance == "patent" or f["patent_id"][d] != f["patent_id"][i])
                     and (prior == "off" or f["grant_day"][d] < f["grant_day"][i])]
            if relevance == "class":
                y = np.array([int(f["class_id"][d]) == int(f["class_id"][i]) for d in cands])
            else:
                y = np.array([f["patent_id"][d] == f["patent_id"][i] for d in cands])
            if not y.any():
                continue
            sc = scores[i, cands]
            order = sorted(range(len(cands)), key=lambda j: (-sc[j], cands[j]))  # ties: database index
            ranked = y[order]
            hits = np.cumsum(ranked)
            aps.append(float(np.mean([hits[j] / (j + 1) for j in range(len(ranked)) if ranked[j]])))
            if len(set(sc.tolist())) == len(sc):  # no ties: scikit-learn's AP is the same number
                assert aps[-1] == pytest.approx(average_precision_score(y, sc), abs=1e-9)
                n_sklearn += 1
            r10.append(ranked[:10].sum() / y.sum())
            first = int(np.argmax(ranked)) + 1
            mrr.append(1 / first if first <= 10 else 0.0)
        assert got["i2i_num_valid_queries"] == len(aps), (relevance, prior)
        assert got["i2i_mAP"] == pytest.approx(np.mean(aps), abs=1e-9), (relevance, prior)
        assert got["i2i_R@10"] == pytest.approx(np.mean(r10), abs=1e-9), (relevance, prior)
        assert got["i2i_MRR@10"] == pytest.approx(np.mean(mrr), abs=1e-9), (relevance, prior)
        if relevance == "patent":  # every drawing has other views of its patent
            assert len(aps) == n
    assert n_sklearn > 0


def test_cli_separate_database_and_probe_training_split(run_dir, synthetic_shards, tmp_path):
    """--retrieval-db naming the evaluation shards themselves must give exactly the default (same-set) retrieval
    results (the query is matched to its own copy by key and excluded); --probe-train-data fits the probe on the
    training split."""
    ck = str(run_dir / "checkpoints" / "epoch_1.pt")
    base = ["--val-data", synthetic_shards["val"], "--checkpoint", ck, "--workers", "0"]
    assert ECLI.main(base + ["--linear-probe", "off", "--out", str(tmp_path / "a.json")]) == 0
    assert ECLI.main(base + ["--retrieval-db", synthetic_shards["val"], "--probe-train-data", synthetic_shards["train"],
                          "--out", str(tmp_path / "b.json")]) == 0
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    for k, v in a.items():
        if k.startswith("i2i_"):
            assert b[k] == pytest.approx(v, abs=1e-12), k
    assert a["settings"]["retrieval_database"] == "evaluation split"
    assert b["settings"]["retrieval_database"] == "separate split"
    fit = b["settings"]["linear_probe_fit"]
    train_n = sum(json.loads((synthetic_shards["train_dir"] / "sizes.json").read_text()).values())
    assert fit["protocol"] == "train-split" and fit["train_samples"] == train_n
    assert 0.0 <= b["linear_probe_top1"] <= 1.0 and "linear_probe_top1" not in a
    assert ECLI.main(base + ["--relevance", "patent", "--prior-art", "on"]) == 2  # a contradiction is refused
    assert ECLI.main(["--val-data", synthetic_shards["val"], "--checkpoint", str(tmp_path / "missing.pt")]) == 2
