"""Loss plugins against brute-force references written independently here (loops over pairs), values and
gradients; the classification head against a hand-written attention; learned uncertainty weights; the
feature-cache accumulation of PatentTrainModule; edge cases."""
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from patentclip.launch.args import default_args
from patentclip.plugins.classes import ClassInfo, ClassTable
from patentclip.plugins.heads import AttentionFusionHead, build_head, load_head
from patentclip.plugins.losses import (LossSet, class_balance_weights, class_categories, parse_loss_spec)
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.registry import LOSSES

load_builtin_plugins()

ALL_LOSSES = ["clip", "class_aware_contrastive", "multiview_contrastive", "class_aware_classification",
              "class_contrastive", "category_contrastive"]
CLASS_LOSSES = ALL_LOSSES[1:]
D = 8


def table(counts):
    return ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", c) for i, c in enumerate(counts)])


def args(**kw):
    base = dict(world_size=1, rank=0, local_loss=False, gather_with_grad=False, loss_beta=1.0, embed_dim=D,
                head_num_heads=2, head_text_dropout=0.0)
    base.update(kw)
    return default_args(**base)


def features(n=6, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    img2 = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor([10.0], requires_grad=True)
    return {"image_features": img, "text_features": txt, "image2_features": img2, "logit_scale": scale}


def leaves(f):
    return [f["image_features"], f["text_features"], f["image2_features"], f["logit_scale"]]


def ref_weights(counts, beta):
    """w_c = f_c^-beta normalised so that sum_c f_c w_c = 1 (absent classes: the largest weight)."""
    total = sum(counts)
    raw = [(c / total) ** -beta if c else None for c in counts]
    z = sum((c / total) * r for c, r in zip(counts, raw) if r is not None)
    w = [r / z if r is not None else None for r in raw]
    top = max(x for x in w if x is not None)
    return [top if x is None else x for x in w]


def dot(a, b):
    return sum(a[k] * b[k] for k in range(a.shape[0]))


def row_nll(a, bs, scale, positives):
    """-1/|P| sum_{j in P} log( exp(s a.b_j) / sum_k exp(s a.b_k) ), by loops."""
    logits = [scale[0] * dot(a, b) for b in bs]
    lse = torch.logsumexp(torch.stack(logits), 0)
    return -sum(logits[j] - lse for j in positives) / len(positives)


def brute_infonce_terms(img, txt, scale):
    """Per-sample (image->text + text->image)/2 cross entropy, by explicit loops."""
    n = img.shape[0]
    return [(row_nll(img[i], txt, scale, [i]) + row_nll(txt[i], img, scale, [i])) / 2 for i in range(n)]


def brute_group_contrastive(img, txt, scale, groups):
    """LLM-informed eq. 2 (mean over rows, halved): positives are the columns of the same group."""
    n = img.shape[0]
    total = 0
    for i in range(n):
        pos = [j for j in range(n) if groups[j] == groups[i]]
        total = total + (row_nll(img[i], txt, scale, pos) + row_nll(txt[i], img, scale, pos)) / 2
    return total / n


def check_grads(got, ref, params, atol=1e-5):
    g1 = torch.autograd.grad(got, params, allow_unused=True, retain_graph=True)
    g2 = torch.autograd.grad(ref, params, allow_unused=True, retain_graph=True)
    for a, b in zip(g1, g2):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        assert torch.allclose(a, b, atol=atol, rtol=1e-4), (a, b)


def test_registry_names():
    assert set(ALL_LOSSES) <= set(LOSSES.names())
    with pytest.raises(KeyError, match="unknown loss 'nope'.*registered loss names: "):
        LOSSES.get("nope")


def test_clip_matches_brute_force_and_open_clip():
    f = features()
    cls = torch.tensor([0, 1, 1, 2, 0, 1])
    loss = LOSSES.build("clip", args(), table([5, 3, 2]))
    got = loss(f, {"class_id": cls})["clip"]
    ref = torch.stack(brute_infonce_terms(f["image_features"], f["text_features"], f["logit_scale"])).mean()
    assert torch.allclose(got, ref, atol=1e-6)
    check_grads(got, ref, leaves(f), atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.2])
def test_class_aware_contrastive_matches_brute_force(beta):
    counts = [50, 10, 2]
    f = features(seed=1)
    cls = torch.tensor([0, 1, 1, 2, 0, 1])
    loss = LOSSES.build("class_aware_contrastive", args(loss_beta=beta), table(counts))
    got = loss(f, {"class_id": cls})["class_aware_contrastive"]
    w = ref_weights(counts, beta)
    terms = brute_infonce_terms(f["image_features"], f["text_features"], f["logit_scale"])
    ref = sum(w[int(c)] * t for c, t in zip(cls, terms)) / len(terms)
    assert torch.allclose(got, ref, atol=1e-6)
    check_grads(got, ref, leaves(f), atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 1.2])
@pytest.mark.parametrize("single", ["keep", "drop"])
def test_multiview_contrastive_matches_brute_force(beta, single):
    counts = [40, 7, 3]
    f = features(seed=2)
    cls = torch.tensor([0, 2, 1, 0, 0, 1])
    has2 = torch.tensor([1, 0, 1, 1, 0, 1])
    loss = LOSSES.build("multiview_contrastive", args(loss_beta=beta, multiview_single=single), table(counts))
    assert loss.needs_second_view
    got = loss(f, {"class_id": cls, "has_view2": has2})["multiview_contrastive"]
    v, v2, s = f["image_features"], f["image2_features"], f["logit_scale"]
    w = ref_weights(counts, beta)
    n = len(cls)
    ref = 0
    for i in range(n):
        if single == "drop" and has2[i] == 0:
            continue
        ref = ref + w[int(cls[i])] * (row_nll(v[i], v2, s, [i]) + row_nll(v2[i], v, s, [i])) / 2
    ref = ref / n
    assert torch.allclose(got, ref, atol=1e-6)
    check_grads(got, ref, leaves(f), atol=1e-6)
    # the text embeddings play no part
    assert torch.autograd.grad(got, f["text_features"], allow_unused=True)[0] is None


def test_multiview_needs_the_second_view():
    f = features(seed=3)
    del f["image2_features"]
    loss = LOSSES.build("multiview_contrastive", args(), table([3, 3]))
    with pytest.raises(KeyError, match="multi-view mode"):
        loss(f, {"class_id": torch.zeros(6, dtype=torch.long)})
    s = LossSet("clip,multiview_contrastive=0.2", args(), table([3, 3]))
    assert s.needs_second_view and not LossSet("clip,class_contrastive", args(), table([3, 3])).needs_second_view
    with pytest.raises(ValueError, match="multiview-single"):
        LOSSES.build("multiview_contrastive", args(multiview_single="maybe"), table([3, 3]))


def test_class_contrastive_matches_brute_force():
    f = features(n=7, seed=4)
    cls = torch.tensor([0, 1, 1, 2, 0, 1, 3])
    loss = LOSSES.build("class_contrastive", args(), table([5, 3, 2, 1]))
    got = loss(f, {"class_id": cls})["class_contrastive"]
    ref = brute_group_contrastive(f["image_features"], f["text_features"], f["logit_scale"], cls.tolist())
    assert torch.allclose(got, ref, atol=1e-6)
    check_grads(got, ref, leaves(f), atol=1e-6)


def test_category_contrastive_matches_brute_force():
    counts = [90, 50, 20, 8, 5, 2, 1]  # 7 classes: ceil(0.4 * 7) = 3 head (ids 0, 1, 2), 4 tail
    f = features(n=8, seed=5)
    cls = torch.tensor([0, 6, 1, 3, 2, 5, 4, 0])
    loss = LOSSES.build("category_contrastive", args(), table(counts))
    got = loss(f, {"class_id": cls})["category_contrastive"]
    cat = ["head" if c in (0, 1, 2) else "tail" for c in cls.tolist()]
    ref = brute_group_contrastive(f["image_features"], f["text_features"], f["logit_scale"], cat)
    assert torch.allclose(got, ref, atol=1e-6)
    check_grads(got, ref, leaves(f), atol=1e-6)


def test_group_contrastive_with_distinct_classes_is_clip():
    f = features(seed=6)
    cls = torch.arange(6)
    t = table([1] * 6)
    a = LOSSES.build("clip", args(), t)(f, {"class_id": cls})["clip"]
    b = LOSSES.build("class_contrastive", args(), t)(f, {"class_id": cls})["class_contrastive"]
    assert torch.allclose(a, b, atol=1e-6)


# -- head/tail categories ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ClassWithCategory(ClassInfo):
    category: str = ""


def test_class_categories_rule_and_given_field():
    # top 40% by count are head; ties broken by id; a class with no samples is tail
    t = table([5, 30, 30, 1, 0])  # ceil(0.4 * 5) = 2 head: ids 1 and 2
    assert class_categories(t).tolist() == [1, 0, 0, 1, 1]
    t10 = table([10 - i for i in range(10)])
    assert class_categories(t10).tolist() == [0] * 4 + [1] * 6
    given = ClassTable([ClassWithCategory(0, "a", "a", 1, "tail"), ClassWithCategory(1, "b", "b", 100, "head")])
    assert class_categories(given).tolist() == [1, 0]
    partial = ClassTable([ClassWithCategory(0, "a", "a", 1, "tail"), ClassWithCategory(1, "b", "b", 100, "")])
    with pytest.raises(ValueError, match="some classes have a 'category'"):
        class_categories(partial)
    bad = ClassTable([ClassWithCategory(0, "a", "a", 1, "middle")])
    with pytest.raises(ValueError, match="'head' or 'tail'"):
        class_categories(bad)


def test_class_weights_normalised_and_tail_heavier():
    w = class_balance_weights(torch.tensor([100.0, 10.0, 1.0, 0.0]), 1.0)
    freq = torch.tensor([100.0, 10.0, 1.0]) / 111
    assert math.isclose(float((freq * w[:3]).sum()), 1.0, rel_tol=1e-6)
    assert w[0] < w[1] < w[2]
    assert w[3] == w[2]  # absent class: largest present weight
    with pytest.raises(ValueError, match="all zero"):
        class_balance_weights(torch.zeros(3), 1.0)


# -- classification head -------------------------------------------------------------------------------------

def manual_layer_norm(x, ln):
    mean = sum(x[k] for k in range(x.shape[0])) / x.shape[0]
    var = sum((x[k] - mean) ** 2 for k in range(x.shape[0])) / x.shape[0]
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def manual_head(head, v, t=None):
    """AttentionFusionHead by hand: per sample, per token, per attention head (no nn.MultiheadAttention)."""
    d = head.embed_dim
    nh = head.num_heads
    dh = d // nh
    wq, wk, wv = head.qkv.weight.split(d)
    bq, bk, bv = head.qkv.bias.split(d)
    out = []
    for b in range(v.shape[0]):
        toks = [v[b] + head.modality[0]] + ([t[b] + head.modality[1]] if t is not None else [])
        normed = [manual_layer_norm(x, head.ln_attn) for x in toks]
        q = [wq @ x + bq for x in normed]
        k = [wk @ x + bk for x in normed]
        val = [wv @ x + bv for x in normed]
        new = []
        for i in range(len(toks)):
            heads_out = []
            for h in range(nh):
                sl = slice(h * dh, (h + 1) * dh)
                scores = torch.stack([dot(q[i][sl], k[j][sl]) / math.sqrt(dh) for j in range(len(toks))])
                a = torch.softmax(scores, 0)
                heads_out.append(sum(a[j] * val[j][sl] for j in range(len(toks))))
            attn = head.proj.weight @ torch.cat(heads_out) + head.proj.bias
            x = toks[i] + attn
            if head.mlp is not None:
                hid = head.mlp[0].weight @ manual_layer_norm(x, head.ln_mlp) + head.mlp[0].bias
                hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))
                x = x + head.mlp[3].weight @ hid + head.mlp[3].bias
            new.append(x)
        pooled = sum(new) / len(new)
        out.append(head.classifier.weight @ manual_layer_norm(pooled, head.ln_out) + head.classifier.bias)
    return torch.stack(out)


@pytest.mark.parametrize("mlp_ratio", [0.0, 2.0])
def test_head_matches_hand_written_attention_fusion(mlp_ratio):
    torch.manual_seed(0)
    head = AttentionFusionHead(D, 5, num_heads=2, mlp_ratio=mlp_ratio)
    assert (head.mlp is None) == (mlp_ratio == 0)
    f = features(n=4, seed=7)
    v, t = f["image_features"], f["text_features"]
    assert torch.allclose(head(v, t), manual_head(head, v, t), atol=1e-5)
    assert torch.allclose(head.classify_image(v), manual_head(head, v), atol=1e-5)
    with pytest.raises(ValueError, match="must divide"):
        AttentionFusionHead(D, 5, num_heads=3)
    with pytest.raises(ValueError, match=r"\(B, 8\)"):
        head(v[:, :4], t[:, :4])


def test_head_config_round_trip_and_load():
    torch.manual_seed(1)
    head = AttentionFusionHead(D, 3, num_heads=4, mlp_ratio=3.0, text_dropout=0.1)
    rebuilt = build_head(head.config())
    assert rebuilt.config() == head.config()
    loaded = load_head({"config": head.config(), "state_dict": head.state_dict()}).eval()
    v = F.normalize(torch.randn(5, D), dim=-1)
    assert torch.equal(loaded.classify_image(v), head.eval().classify_image(v))
    with pytest.raises(ValueError, match="unknown classification head type"):
        build_head({**head.config(), "type": "Other"})
    with pytest.raises(ValueError, match="not a patentclip classification head"):
        load_head({"state_dict": {}})


def test_head_text_dropout_shows_the_image_alone():
    torch.manual_seed(2)
    head = AttentionFusionHead(D, 4, num_heads=2, text_dropout=0.5)
    f = features(n=64, seed=8)
    v, t = f["image_features"].detach(), f["text_features"].detach()
    image_only = head.classify_image(v)
    fused = head.eval()(v, t)
    mixed = head.train()(v, t)
    is_img = torch.isclose(mixed, image_only, atol=1e-5).all(1)
    is_fused = torch.isclose(mixed, fused, atol=1e-5).all(1)
    assert (is_img | is_fused).all() and 10 < int(is_img.sum()) < 54


def train_toy_head(text_dropout, steps=150):
    """Class-clustered image and caption embeddings; returns (image-only accuracy, nearest-centre accuracy)."""
    torch.manual_seed(3)
    centers, text_centers = F.normalize(torch.randn(4, D), dim=-1), F.normalize(torch.randn(4, D), dim=-1)

    def sample(n):
        y = torch.randint(0, 4, (n,))
        v = F.normalize(centers[y] + 0.3 * torch.randn(n, D), dim=-1)
        return v, F.normalize(text_centers[y] + 0.3 * torch.randn(n, D), dim=-1), y

    loss = LOSSES.build("class_aware_classification", args(head_text_dropout=text_dropout), table([10] * 4))
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    for _ in range(steps):
        v, t, y = sample(64)
        out = loss({"image_features": v, "text_features": t, "logit_scale": torch.tensor([1.0])}, {"class_id": y})
        opt.zero_grad()
        out["class_aware_classification"].backward()
        opt.step()
    v, _, y = sample(2000)
    acc = (loss.head.eval().classify_image(v).argmax(1) == y).float().mean().item()
    return acc, ((v @ centers.T).argmax(1) == y).float().mean().item()


def test_head_trained_with_text_dropout_classifies_images_alone():
    """Image-only evaluation is a trained mode with --head-text-dropout: close to the best possible accuracy,
    while a head trained on fused inputs only leans on the caption and fails without it."""
    acc, best = train_toy_head(0.25)
    assert acc > 0.8 and acc > best - 0.1, (acc, best)
    acc_fused_only, _ = train_toy_head(0.0)
    assert acc_fused_only < acc - 0.2, (acc_fused_only, acc)


@pytest.mark.parametrize("beta", [0.0, 1.2])
def test_class_aware_classification_matches_brute_force(beta):
    counts = [30, 6, 2, 1]
    torch.manual_seed(4)
    loss = LOSSES.build("class_aware_classification", args(loss_beta=beta), table(counts))
    f = features(n=5, seed=9)
    cls = torch.tensor([0, 3, 1, 0, 2])
    got = loss(f, {"class_id": cls})["class_aware_classification"]
    w = ref_weights(counts, beta)
    logits = manual_head(loss.head, f["image_features"], f["text_features"])
    ref = 0
    for i in range(5):
        row = logits[i]
        ref = ref + w[int(cls[i])] * -(row[int(cls[i])] - torch.logsumexp(row, 0))
    ref = ref / 5
    assert torch.allclose(got, ref, atol=1e-5)
    check_grads(got, ref, leaves(f) + list(loss.head.parameters()), atol=1e-5)
    # the head's parameters are the loss module's: trained and checkpointed with the criterion
    names = {n for n, _ in LossSet("class_aware_classification", args(), table(counts)).named_parameters()}
    assert "losses.class_aware_classification.head.classifier.weight" in names


# -- weighting ----------------------------------------------------------------------------------------------

def test_loss_set_weighted_sum_and_spec():
    assert parse_loss_spec("clip") == [("clip", 1.0)]
    assert parse_loss_spec("class_aware_contrastive=0.1, clip=2") == [("class_aware_contrastive", 0.1), ("clip", 2.0)]
    for bad in ("", "clip=x", "clip,clip"):
        with pytest.raises(ValueError):
            parse_loss_spec(bad)
    t = table([4, 2, 1])
    f = features(seed=10)
    cls = torch.tensor([0, 1, 2, 0, 1, 2])
    s = LossSet("class_aware_contrastive=0.1,clip=2", args(), t)
    total, parts = s(f, {"class_id": cls})
    assert set(parts) == {"class_aware_contrastive", "clip"}
    assert torch.allclose(total, 0.1 * parts["class_aware_contrastive"] + 2 * parts["clip"])
    assert not list(s.parameters())
    with pytest.raises(KeyError, match="unknown loss"):
        LossSet("no_such_loss", args(), t)
    with pytest.raises(ValueError, match="loss-weighting"):
        LossSet("clip", args(loss_weighting="magic"), t)


def test_uncertainty_weighting_eq3_values_gradients_and_logging():
    t = table([5, 3, 2])
    f = features(seed=11)
    cls = torch.tensor([0, 1, 2, 0, 1, 1])
    s = LossSet("clip,class_contrastive,category_contrastive=2", args(loss_weighting="uncertainty"), t)
    with torch.no_grad():
        s.log_vars["clip"].fill_(0.3)
        s.log_vars["class_contrastive"].fill_(-0.2)
    total, parts = s(f, {"class_id": cls})
    assert {"s_clip", "s_class_contrastive", "s_category_contrastive"} <= set(parts)
    assert math.isclose(float(parts["s_clip"]), 0.3, rel_tol=1e-6)
    L = {k: parts[k].detach() for k in ("clip", "class_contrastive", "category_contrastive")}
    lam = {"clip": 1.0, "class_contrastive": 1.0, "category_contrastive": 2.0}
    sv = {"clip": 0.3, "class_contrastive": -0.2, "category_contrastive": 0.0}
    ref = sum(lam[k] * L[k] * math.exp(-sv[k]) + sv[k] for k in L)
    assert torch.allclose(total.detach(), ref, atol=1e-5)
    grads = torch.autograd.grad(total, [s.log_vars[k] for k in L])
    for k, g in zip(L, grads):
        assert torch.allclose(g, 1 - lam[k] * L[k] * math.exp(-sv[k]), atol=1e-5)
    assert {"log_vars.clip", "log_vars.class_contrastive"} <= set(s.state_dict())


# -- edge cases ---------------------------------------------------------------------------------------------

def batch_for(cls, n):
    return {"class_id": cls, "has_view2": torch.ones(n, dtype=torch.long)}


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_every_sample_of_one_class(name):
    f = features(n=5, seed=12)
    cls = torch.full((5,), 1, dtype=torch.long)
    out = LOSSES.build(name, args(), table([5, 5, 5]))(f, batch_for(cls, 5))
    (value,) = out.values()
    assert torch.isfinite(value)
    g = torch.autograd.grad(value, f["image_features"])[0]
    assert torch.isfinite(g).all()
    if name in ("class_contrastive", "category_contrastive"):
        # every pair is positive: -mean_j log p_ij >= log n, with equality at uniform rows
        assert float(value.detach()) >= math.log(5) - 1e-5
        ref = brute_group_contrastive(f["image_features"], f["text_features"], f["logit_scale"], [1] * 5)
        assert torch.allclose(value, ref, atol=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_class_absent_from_batch(name):
    f = features(n=4, seed=13)
    cls = torch.tensor([0, 2, 2, 0])  # class 1 (and 3) not in the batch
    (value,) = LOSSES.build(name, args(), table([4, 4, 4, 0]))(f, batch_for(cls, 4)).values()
    assert torch.isfinite(value)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_single_sample_batch(name):
    f = features(n=1, seed=14)
    (value,) = LOSSES.build(name, args(), table([5, 5]))(f, batch_for(torch.tensor([1]), 1)).values()
    assert torch.isfinite(value)
    if name != "class_aware_classification":
        assert torch.allclose(value, torch.zeros(()), atol=1e-6)  # one pair: log softmax over itself is 0


@pytest.mark.parametrize("name", CLASS_LOSSES)
def test_class_ids_outside_classes_json(name):
    f = features(n=3, seed=15)
    loss = LOSSES.build(name, args(), table([5, 5]))
    for bad in (torch.tensor([0, 7, 1]), torch.tensor([0, -1, 1])):
        with pytest.raises(ValueError, match=r"unknown class id\(s\) \[-?\d\].*defines 2 classes"):
            loss(f, batch_for(bad, 3))


def test_patent_without_second_view():
    """has_view2 = 0: image2 is another augmentation of the same drawing (here: nearly the same embedding)."""
    f = features(n=4, seed=16)
    v = f["image_features"].detach()
    f["image2_features"] = F.normalize(torch.cat([v[:1] + 0.01, f["image2_features"][1:].detach()]), dim=-1)
    cls = torch.tensor([0, 1, 0, 1])
    single = {"class_id": cls, "has_view2": torch.tensor([0, 1, 1, 1])}
    keep = LOSSES.build("multiview_contrastive", args(), table([3, 3]))(f, single)["multiview_contrastive"]
    drop = LOSSES.build("multiview_contrastive", args(multiview_single="drop"), table([3, 3]))(f, single)
    assert torch.isfinite(keep) and torch.isfinite(drop["multiview_contrastive"])
    assert not torch.allclose(keep, drop["multiview_contrastive"])
    alone = {"class_id": cls[:1], "has_view2": torch.tensor([0])}
    f1 = {k: (v[:1] if v.ndim == 2 else v) for k, v in f.items()}
    out = LOSSES.build("multiview_contrastive", args(multiview_single="drop"), table([3, 3]))(f1, alone)
    assert float(out["multiview_contrastive"]) == 0.0


# -- the train module: second view, head checkpoint, feature-cache accumulation -----------------------------

@pytest.fixture(scope="module")
def tiny_module_factory():
    import open_clip

    from patentclip.launch.model import PatentTrainModule, make_logit_scale_nonscalar
    from patentclip.plugins.models import register_model_configs

    register_model_configs()

    def make(spec, **kw):
        torch.manual_seed(0)
        clip = open_clip.create_model("patentclip-tiny", output_dict=True)
        make_logit_scale_nonscalar(clip)
        a = args(model="patentclip-tiny", embed_dim=None, **kw)
        return PatentTrainModule(clip, LossSet(spec, a, table([12, 6, 3, 2, 1])))

    return make


def tiny_batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(n, 3, 64, 64, generator=g), "text": torch.randint(1, 400, (n, 40), generator=g),
            "image2": torch.randn(n, 3, 64, 64, generator=g), "class_id": torch.randint(0, 5, (n,), generator=g),
            "has_view2": torch.tensor([1, 0] * (n // 2) + [1] * (n % 2)), "key": [f"k{i}" for i in range(n)],
            "view": ["front"] * n, "view2": ["side"] * n, "patent_id": [f"p{i}" for i in range(n)]}


def test_module_computes_second_view_and_exports_head(tiny_module_factory):
    from patentclip.launch.model import head_state, load_head_state

    m = tiny_module_factory("class_aware_classification,multiview_contrastive=0.2")
    b = tiny_batch(4)
    total, terms, feats = m(b["image"], b["text"], b)
    assert torch.allclose(feats["image2_features"], m.clip.encode_image(b["image2"], normalize=True), atol=1e-6)
    assert set(terms) == {"class_aware_classification", "multiview_contrastive"}
    state = head_state(m)
    assert state["config"]["embed_dim"] == 64 and state["config"]["num_classes"] == 5
    head = m.criterion.losses["class_aware_classification"].head
    assert all(torch.equal(state["state_dict"][k], v) for k, v in head.state_dict().items())
    fresh = tiny_module_factory("class_aware_classification")
    with torch.no_grad():
        for p in fresh.criterion.parameters():
            p.zero_()
    assert load_head_state(fresh, state)
    v = feats["image_features"].detach()
    assert torch.equal(fresh.criterion.losses["class_aware_classification"].head.eval().classify_image(v),
                       load_head(state).eval().classify_image(v))
    assert head_state(tiny_module_factory("clip")) is None
    # no second view in the batch: nothing computed for it
    b1 = {k: v for k, v in b.items() if k not in ("image2", "has_view2", "view2")}
    assert "image2_features" not in m.compute_features(b1["image"], b1["text"], b1)


def test_feature_cache_accumulation_equals_one_big_batch(tiny_module_factory):
    """k passes of PatentTrainModule(accum=...) sum to the gradient of one batch of k x B, every parameter
    (encoders, logit_scale, the head, the learned loss weights) included."""
    from patentclip.launch.model import merge_batches

    spec = ",".join(ALL_LOSSES)
    big = tiny_module_factory(spec, loss_weighting="uncertainty")
    acc = tiny_module_factory(spec, loss_weighting="uncertainty")
    acc.load_state_dict(big.state_dict())
    micro = [tiny_batch(3, seed=s) for s in range(3)]
    merged = merge_batches(micro)
    assert merged["image"].shape[0] == 9 and merged["key"][3] == "k0"
    total, terms, _ = big(merged["image"], merged["text"], merged)
    total.backward()
    with torch.no_grad():
        cached = [acc(b["image"], b["text"], b, features_only=True) for b in micro]
    cached = [{k: v for k, v in c.items() if k not in ("logit_scale", "logit_bias")} for c in cached]
    for j, b in enumerate(micro):
        t_j, terms_j, _ = acc(b["image"], b["text"], b, accum={"features": cached, "batch": merged, "index": j},
                              loss_param_grad=(j == 2))
        assert torch.allclose(t_j, total, atol=1e-5)
        t_j.backward()
    assert set(terms_j) == set(terms)
    big_grads = dict(big.named_parameters())
    checked = 0
    for n, p in acc.named_parameters():
        g_big = big_grads[n].grad
        if g_big is None:
            assert p.grad is None or not p.grad.any(), n
            continue
        # float32 sums in another order (three micro-batches vs one batch): compare against the tensor's scale,
        # not element-wise (an element near zero of a gradient whose entries reach ~30 differs by ~1e-5)
        err = (p.grad - g_big).abs().max().item()
        assert err <= 1e-6 + 2e-6 * g_big.abs().max().item(), (n, err, g_big.abs().max().item())
        checked += 1
    assert checked > 50


def test_loss_set_shares_logits_without_changing_any_number():
    """Inside a LossSet the plugins share logits and log-probabilities; each term is what the plugin computes on
    its own, and `clip` is bit for bit open_clip's ClipLoss."""
    from open_clip import ClipLoss

    t = table([9, 4, 2, 1])
    f = features(n=7, seed=17)
    b = {"class_id": torch.tensor([0, 1, 2, 3, 0, 0, 1]), "has_view2": torch.tensor([1, 1, 0, 1, 1, 1, 0])}
    torch.manual_seed(5)
    together = LossSet(",".join(ALL_LOSSES), args(multiview_single="drop"), t)
    _, parts = together(f, b)
    for name in ALL_LOSSES:
        alone = together.losses[name](f, b)[name]
        assert torch.allclose(parts[name], alone, atol=1e-6, rtol=1e-6), name
        check_grads(parts[name], alone, leaves(f), atol=1e-6)
    ref = ClipLoss()(f["image_features"], f["text_features"], f["logit_scale"])
    assert torch.equal(parts["clip"], ref)
    assert all(loss._shared is None for loss in together.losses.values())  # the cache does not outlive a step
