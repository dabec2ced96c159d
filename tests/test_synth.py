"""Synthetic design patents: seeded, long-tailed, line drawings, views that differ, classes a classifier can
tell apart, and a manifest the builder's schema accepts."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from patentclip.shards.manifest import read_manifest
from patentclip.shards.synth import DESIGN_CLASSES, generate_synthetic_patents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    m = generate_synthetic_patents(root / "a", num_patents=160, num_classes=8, image_size=64, seed=3)
    return m, [json.loads(line) for line in m.read_text().splitlines()]


def digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_seeded_and_deterministic(tmp_path, corpus):
    m, _ = corpus
    again = generate_synthetic_patents(tmp_path / "b", num_patents=160, num_classes=8, image_size=64, seed=3)
    assert digest(m.parent) == digest(again.parent)
    other = generate_synthetic_patents(tmp_path / "c", num_patents=160, num_classes=8, image_size=64, seed=4)
    assert digest(other.parent) != digest(m.parent)


def test_long_tailed_named_like_locarno_and_dated(corpus):
    _, recs = corpus
    counts = sorted((sum(r["class"] == c for r in recs) for c in {r["class"] for r in recs}), reverse=True)
    assert len(counts) == 8 and counts[0] >= 4 * counts[-1] and min(counts) >= 4
    for r in recs:
        assert r["patent_id"].startswith("USD") and r["title"].startswith("Ornamental design for")
        assert len(r["class"]) == 5 and r["class"][2] == "-" and r["class_name"]
        assert "2012-01-01" <= r["grant_date"] <= "2022-12-31"
        views = [d["view"] for d in r["drawings"]]
        assert views == ["front", "side", "top", "perspective"]
        for d in r["drawings"]:
            assert len(d["captions"]) >= 3
            assert all(r["object"] in c or r["class_name"] in c for c in d["captions"])
    years = {r["grant_date"][:4] for r in recs}
    assert len(years) >= 6
    assert len({r["patent_id"] for r in recs}) == len(recs)
    assert len(DESIGN_CLASSES) >= 24


def test_manifest_passes_the_builders_validation(corpus):
    m, recs = corpus
    records, problems = read_manifest(m)
    assert problems == [] and len(records) == len(recs)


def load(m, rec, k, size=32):
    return np.asarray(Image.open(m.parent / rec["drawings"][k]["path"]).convert("L").resize((size, size)),
                      dtype=np.float32) / 255.0


def test_black_lines_on_white_and_views_differ(corpus):
    m, recs = corpus
    for r in recs[:20]:
        imgs = [np.asarray(Image.open(m.parent / d["path"]).convert("L"), dtype=np.float32) / 255 for d in r["drawings"]]
        for im in imgs:
            assert (im > 0.9).mean() > 0.6  # mostly white background
            assert (im < 0.3).mean() > 0.01  # with black lines
        for i in range(len(imgs)):
            for j in range(i + 1, len(imgs)):
                assert np.abs(imgs[i] - imgs[j]).mean() > 0.005, (r["patent_id"], i, j)


def test_classes_are_learnable_by_a_simple_classifier(corpus):
    """Nearest class centroid on 32 px pixels of held-out patents beats chance by a wide margin."""
    m, recs = corpus
    classes = sorted({r["class"] for r in recs})
    train, test = recs[::2], recs[1::2]
    feats = lambda rs: np.stack([np.concatenate([load(m, r, k).ravel() for k in range(4)]) for r in rs])  # noqa: E731
    xtr, xte = feats(train), feats(test)
    ytr = np.array([classes.index(r["class"]) for r in train])
    yte = np.array([classes.index(r["class"]) for r in test])
    present = sorted(set(ytr))
    centroids = np.stack([xtr[ytr == c].mean(0) for c in present])
    pred = np.array(present)[((xte[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)]
    acc = float((pred == yte).mean())
    majority = float(np.bincount(yte).max() / len(yte))
    assert acc > max(0.5, majority + 0.15), (acc, majority)


def test_captions_describe_each_patents_own_design(corpus):
    """Captions carry the shape words of each patent's drawn parameters (the family's Traits, read again from the
    same per-patent generator), so patents of one class get different captions: the image-text metrics measure
    the model, not ties between identical captions."""
    from patentclip.shards.synth.geometry import _Model

    m, recs = corpus
    by_class = {}
    for i, r in enumerate(recs):
        dc = next(c for c in DESIGN_CLASSES if c.code == r["class"])
        traits = dc.builder(_Model(), np.random.default_rng([3, i, 0xD35]))  # the corpus's seed 3, patent i
        assert traits.adjectives or traits.features
        text = " ".join(c for d in r["drawings"] for c in d["captions"])
        for word in traits.adjectives:
            assert word in text, (r["patent_id"], word, text)
        assert any(f in text for f in traits.features), (r["patent_id"], traits.features)
        by_class.setdefault(r["class"], []).append(tuple(sorted(set(c for d in r["drawings"] for c in d["captions"]))))
    for code, caption_sets in by_class.items():
        assert len(set(caption_sets)) == len(caption_sets), code  # no two patents share their captions
    front = [d["captions"] for r in recs for d in r["drawings"] if d["view"] == "front"]
    flat = [c for cs in front for c in cs]
    assert len(set(flat)) > 0.9 * len(flat)  # front-view captions are nearly all distinct across the corpus
