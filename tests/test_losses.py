"""Loss plugins against brute-force references written independently here (loops over pairs)."""
import argparse
import math

import pytest
import torch
import torch.nn.functional as F

from patentclip.plugins.classes import ClassInfo, ClassTable
from patentclip.plugins.losses import LossSet, class_balance_weights, parse_loss_spec
from patentclip.plugins.registry import LOSSES, load_builtin_plugins

load_builtin_plugins()


def table(counts):
    return ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", c) for i, c in enumerate(counts)])


def args(**kw):
    base = dict(world_size=1, rank=0, local_loss=False, gather_with_grad=False, loss_beta=1.0)
    base.update(kw)
    return argparse.Namespace(**base)


def features(n=6, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    txt = F.normalize(torch.randn(n, d, generator=g), dim=-1).requires_grad_()
    scale = torch.tensor([10.0], requires_grad=True)
    return {"image_features": img, "text_features": txt, "logit_scale": scale}


def brute_infonce_terms(img, txt, scale):
    """Per-sample (image->text + text->image)/2 cross entropy, by explicit loops."""
    n = img.shape[0]
    out = []
    for i in range(n):
        s_i = [scale[0] * torch.dot(img[i], txt[j]) for j in range(n)]
        li = -(s_i[i] - torch.logsumexp(torch.stack(s_i), 0))
        s_t = [scale[0] * torch.dot(txt[i], img[j]) for j in range(n)]
        lt = -(s_t[i] - torch.logsumexp(torch.stack(s_t), 0))
        out.append((li + lt) / 2)
    return out


def test_registry_names():
    assert {"clip", "class_aware_contrastive"} <= set(LOSSES.names())
    with pytest.raises(KeyError, match="unknown loss 'nope'.*registered loss names: "):
        LOSSES.get("nope")


def test_clip_matches_brute_force_and_open_clip():
    f = features()
    cls = torch.tensor([0, 1, 1, 2, 0, 1])
    loss = LOSSES.build("clip", args(), table([5, 3, 2]))
    got = loss(f, {"class_id": cls})["clip"]
    ref = torch.stack(brute_infonce_terms(f["image_features"], f["text_features"], f["logit_scale"])).mean()
    assert torch.allclose(got, ref, atol=1e-6)
    g1 = torch.autograd.grad(got, [f["image_features"], f["text_features"], f["logit_scale"]])
    g2 = torch.autograd.grad(ref, [f["image_features"], f["text_features"], f["logit_scale"]])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.2])
def test_class_aware_contrastive_matches_brute_force(beta):
    counts = [50, 10, 2]
    f = features(seed=1)
    cls = torch.tensor([0, 1, 1, 2, 0, 1])
    loss = LOSSES.build("class_aware_contrastive", args(loss_beta=beta), table(counts))
    got = loss(f, {"class_id": cls})["class_aware_contrastive"]
    # reference: weight 1/f_c^beta with f_c the class frequency, normalised so E_p[w] = 1
    total = sum(counts)
    freq = [c / total for c in counts]
    raw = [fc ** -beta for fc in freq]
    z = sum(p * r for p, r in zip(freq, raw))
    w = [r / z for r in raw]
    terms = brute_infonce_terms(f["image_features"], f["text_features"], f["logit_scale"])
    ref = sum(w[int(c)] * t for c, t in zip(cls, terms)) / len(terms)
    assert torch.allclose(got, ref, atol=1e-6)
    params = [f["image_features"], f["text_features"], f["logit_scale"]]
    for a, b in zip(torch.autograd.grad(got, params), torch.autograd.grad(ref, params)):
        assert torch.allclose(a, b, atol=1e-6)


def test_class_aware_at_beta_zero_is_clip():
    f = features(seed=2)
    cls = torch.tensor([0, 0, 0, 1, 1, 2])
    t = table([7, 3, 1])
    a = LOSSES.build("clip", args(), t)(f, {"class_id": cls})["clip"]
    b = LOSSES.build("class_aware_contrastive", args(loss_beta=0.0), t)(f, {"class_id": cls})["class_aware_contrastive"]
    assert torch.allclose(a, b, atol=1e-7)


def test_class_weights_normalised_and_tail_heavier():
    w = class_balance_weights(torch.tensor([100.0, 10.0, 1.0, 0.0]), 1.0)
    freq = torch.tensor([100.0, 10.0, 1.0]) / 111
    assert math.isclose(float((freq * w[:3]).sum()), 1.0, rel_tol=1e-6)
    assert w[0] < w[1] < w[2]
    assert w[3] == w[2]  # absent class: largest present weight
    with pytest.raises(ValueError, match="all zero"):
        class_balance_weights(torch.zeros(3), 1.0)


def test_edge_cases_same_class_single_sample_and_unknown_class():
    t = table([5, 5])
    loss = LOSSES.build("class_aware_contrastive", args(), t)
    f = features(n=4, seed=3)
    same = loss(f, {"class_id": torch.zeros(4, dtype=torch.long)})["class_aware_contrastive"]
    assert torch.isfinite(same)
    f1 = features(n=1, seed=4)
    single = loss(f1, {"class_id": torch.tensor([1])})["class_aware_contrastive"]
    assert torch.allclose(single, torch.zeros(()), atol=1e-6)  # one pair: log softmax over itself is 0
    with pytest.raises(ValueError, match="unknown class id 7"):
        t.check_id(7, "sample 'x'")


def test_loss_set_weighted_sum_and_spec():
    assert parse_loss_spec("clip") == [("clip", 1.0)]
    assert parse_loss_spec("class_aware_contrastive=0.1, clip=2") == [("class_aware_contrastive", 0.1), ("clip", 2.0)]
    for bad in ("", "clip=x", "clip,clip"):
        with pytest.raises(ValueError):
            parse_loss_spec(bad)
    t = table([4, 2, 1])
    f = features(seed=5)
    cls = torch.tensor([0, 1, 2, 0, 1, 2])
    s = LossSet("class_aware_contrastive=0.1,clip=2", args(), t)
    total, parts = s(f, {"class_id": cls})
    assert set(parts) == {"class_aware_contrastive", "clip"}
    assert torch.allclose(total, 0.1 * parts["class_aware_contrastive"] + 2 * parts["clip"])
    with pytest.raises(KeyError, match="unknown loss"):
        LossSet("no_such_loss", args(), t)
