"""Issue: the streaming patent pipeline. Class-aware sampling statistics, multi-view pairs, augmentation
determinism, exact mid-epoch resume of the loader, and streaming from a real S3 server (with an outage)."""
import math
import random

import pytest
import torch

import conftest
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.registry import DATASETS
from patentclip.plugins.samplers import ClassAwareSampler, repeat_distance, spread_repeats, uniform01

load_builtin_plugins()


def data_args(train, **kw):
    return conftest.data_args(train, **{"shuffle_group_shards": 2, **kw})


@pytest.fixture(scope="module")
def parts():
    import open_clip

    from patentclip.plugins.augment import add_augmentations
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    _, preprocess, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    aug = add_augmentations(preprocess, hflip=0.5, gridmask=0.5,
                                                                   random_erasing=0.3)
    return aug, open_clip.get_tokenizer("patentclip-tiny")


@pytest.fixture(scope="module")
def parts_uint8(parts):
    """Flip and GridMask without random erasing: a preprocess the uint8 image transport takes."""
    import open_clip

    from patentclip.plugins.augment import add_augmentations

    _, preprocess, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    return add_augmentations(preprocess, hflip=0.5, gridmask=0.5), parts[1]


def loader(args, parts, table, epoch=0):
    return DATASETS.get("patent-wds")(args, parts[0], True, epoch=epoch, tokenizer=parts[1], class_table=table)


# ---------------------------------------------------------------------------------------------------------
# class-aware sampling

@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 1.2])
def test_sampled_class_frequencies_match_target(beta):
    """Simulate the stream sampler on a long-tailed population of keys: the sampled class shares match
    q_c ∝ n_c f_c^-beta within a binomial 4.5-sigma band, and the epoch length is preserved."""
    counts = torch.tensor([4000.0, 1500.0, 600.0, 250.0, 100.0, 40.0], dtype=torch.float64)
    sampler = ClassAwareSampler(counts, beta)
    target = (counts * (counts / counts.sum()).pow(-beta))
    target = target / target.sum()
    assert torch.allclose(sampler.target_distribution(counts), target, atol=1e-12)
    got = torch.zeros(len(counts), dtype=torch.float64)
    for c, n in enumerate(counts.int().tolist()):
        for i in range(n):
            got[c] += sampler.multiplicity(7, 3, f"k{c}_{i}", c)
    total = got.sum()
    assert abs(float(total) - float(counts.sum())) < 5 * math.sqrt(float(counts.sum()))  # epoch length kept
    share = got / total
    sigma = torch.sqrt(target * (1 - target) / total)
    assert torch.all((share - target).abs() < 4.5 * sigma + 1e-3), (share, target)
    if beta == 1.0:
        assert torch.allclose(target, torch.full_like(target, 1 / len(counts)), atol=1e-12)


def test_sampler_draws_are_pure_functions():
    s = ClassAwareSampler(torch.tensor([10.0, 1.0]), 1.0)
    draws = [s.multiplicity(0, 0, f"k{i}", 0) for i in range(200)]
    assert draws == [s.multiplicity(0, 0, f"k{i}", 0) for i in range(200)]
    assert draws != [s.multiplicity(0, 1, f"k{i}", 0) for i in range(200)]
    assert 0.0 <= uniform01("x") < 1.0


def test_class_aware_sampler_in_the_pipeline_balances_classes(synthetic_shards, parts):
    table = load_class_table(synthetic_shards["train"])
    counts = table.counts()

    def shares(**kw):
        info = loader(data_args(synthetic_shards["train"], train_num_samples=4000, dataset_resampled=True, **kw),
                      parts, table)
        got = torch.zeros(len(table))
        for b in info.dataloader:
            got += torch.bincount(b["class_id"], minlength=len(table)).float()
        return got / got.sum()

    natural, balanced = shares(), shares(sampler="class_aware", sampler_beta=1.0)
    freq = counts / counts.sum()
    present = counts > 0
    # natural keeps the long tail; beta = 1 flattens it towards uniform over the present classes
    assert float(natural[present].max() / natural[present].min()) > 2.5
    assert float((balanced[present] - 1 / int(present.sum())).abs().max()) < 0.06
    assert float((natural[present] - freq[present].float()).abs().max()) < 0.06


def min_repeat_distance(keys):
    last, best = {}, math.inf
    for i, k in enumerate(keys):
        if k in last:
            best = min(best, i - last[k])
        last[k] = i
    return best


@pytest.mark.parametrize("seed", range(5))
def test_spread_repeats_keeps_copies_a_batch_apart(seed):
    rng = random.Random(seed)
    items = [f"k{i}" for i in range(300)] + [f"k{i}" for i in range(40)] * 3  # 40 keys used 4 times
    rng.shuffle(items)
    assert min_repeat_distance(items) < 16  # the plain shuffle puts copies close together
    out = spread_repeats(items, lambda x: x, 16)
    assert sorted(out) == sorted(items)  # a permutation: nothing dropped or duplicated
    assert min_repeat_distance(out) >= 16
    assert out == spread_repeats(items, lambda x: x, 16)  # deterministic
    unique = [f"u{i}" for i in range(50)]
    assert spread_repeats(unique, lambda x: x, 16) == unique  # nothing to spread: order unchanged
    # tight but possible: 10 keys x 8 copies in 80 items at distance 8 (every gap exactly 8), and a key with as
    # many copies as the list has batches
    tight = [f"t{i}" for i in range(10)] * 8
    rng.shuffle(tight)
    assert min_repeat_distance(spread_repeats(tight, lambda x: x, 8)) == 8
    edge = ["a"] * 5 + [f"s{i}" for i in range(60)]
    rng.shuffle(edge)
    assert min_repeat_distance(spread_repeats(edge, lambda x: x, 16)) >= 16  # 4 x 16 + 1 = 65 items: fits


def test_spread_repeats_is_optimal_against_brute_force():
    """On every small list (exhaustive search over its orders) spread_repeats reaches the largest possible
    distance between copies, capped at the batch size, and repeat_distance's formula ((M-1) d + c_M <= n) names
    it exactly."""
    import itertools

    rng = random.Random(0)
    for _ in range(400):
        n = rng.randint(2, 7)
        seq = [rng.randrange(rng.randint(1, n)) for _ in range(n)]
        distance = rng.randint(2, 5)
        best = max(min(min_repeat_distance(p), distance) for p in set(itertools.permutations(seq)))
        out = spread_repeats(seq, lambda x: x, distance)
        assert sorted(out) == sorted(seq)
        assert min(min_repeat_distance(out), distance) == best, (seq, distance, out)
        counts = [seq.count(k) for k in set(seq)]
        assert repeat_distance(counts, n, distance) == best


@pytest.fixture(scope="module")
def tail_1_to_100(tmp_path_factory):
    """Two classes of 100 and 1 patents (4 views each) in one training split, 50 drawings per shard."""
    from conftest import shard_pattern
    from patentclip.shards.build import build_shards
    from patentclip.shards.synth import generate_synthetic_patents

    root = tmp_path_factory.mktemp("tail100")
    m = generate_synthetic_patents(root / "p", num_patents=101, num_classes=2, image_size=32, seed=3,
                                   zipf_exponent=30.0, min_patents_per_class=1)
    build_shards(m, root / "s", samples_per_shard=50, splits=(("train", 1.0),), progress=False)
    pattern = shard_pattern(root / "s" / "train")
    table = load_class_table(pattern)
    assert sorted(table.counts().tolist()) == [4, 400]
    return pattern, table


@pytest.mark.parametrize("batch_size", [4, 16])
def test_repeats_of_a_1_to_100_tail_at_beta_1_2(tail_1_to_100, parts, batch_size, caplog, monkeypatch):
    """beta 1.2 on a 1:100 tail: each of the 4 tail drawings is used ~72 times in an epoch of ~400 examples (one
    shard group), so the tail is ~70% of the stream. With batches of 4 all copies fit a batch apart ((72 - 1) x 4
    + 4 <= 400): no window of 4 consecutive examples, hence no batch, holds a drawing twice. With batches of 16
    they cannot (a batch of 16 needs ~11 tail examples from 4 drawings): the copies are kept repeat_distance
    apart, the most any order allows, a batch holds at most ceil(16 / d) copies, and the loader warns with the
    numbers. The plain shuffle does worse in both cases."""
    from patentclip.plugins import samplers
    from patentclip.plugins.data import patents

    pattern, table = tail_1_to_100
    # the group's copies, from the sampler (a pure function of seed, epoch, key)
    natural = [(k, int(c)) for b in loader(data_args(pattern, batch_size=1), parts, table).dataloader
               for k, c in zip(b["key"], b["class_id"])]
    sampler = ClassAwareSampler(table.counts(), 1.2)
    copies = {k: sampler.multiplicity(0, 0, k, c) for k, c in natural}
    n = sum(copies.values())
    tail = [k for k, m in copies.items() if m > 1]
    assert len(tail) == 4 and all(65 <= copies[k] <= 80 for k in tail) and 380 <= n <= 430, (copies, n)
    d = repeat_distance([m for m in copies.values() if m], n, batch_size)
    monkeypatch.setattr(samplers, "_warned_tight_group", False)
    # one shard group holding every copy, and an epoch of n examples: no second pass over the shards
    args = data_args(pattern, sampler="class_aware", sampler_beta=1.2, batch_size=batch_size,
                     shuffle_group_shards=100, train_num_samples=n)
    with caplog.at_level("WARNING", logger="patentclip.plugins.samplers"):
        batches = list(loader(args, parts, table).dataloader)
    keys = [k for b in batches for k in b["key"]]
    assert n - batch_size < len(keys) <= n
    assert min_repeat_distance(keys) >= d
    worst = max(max(b["key"].count(k) for k in set(b["key"])) for b in batches)
    if batch_size == 4:
        assert d == 4 and worst == 1 and "cannot keep" not in caplog.text
    else:
        assert d < 16 and 1 < worst <= math.ceil(16 / d)
        assert "cannot keep every drawing's copies a batch (16) apart" in caplog.text
        assert f"copies are kept {d} apart" in caplog.text and "lower --sampler-beta" in caplog.text
    monkeypatch.setattr(patents, "spread_repeats", lambda items, key, distance: list(items))
    plain = [k for b in loader(args, parts, table).dataloader for k in b["key"]]
    assert min_repeat_distance(plain) < d


@pytest.mark.parametrize("workers,kw", [(0, {"train_num_samples": 176}), (2, {"train_num_samples": 128})])
def test_no_batch_holds_a_drawing_twice(synthetic_shards, parts, workers, kw, monkeypatch):
    """With beta 1.2 tail drawings are repeated within the epoch; the repeats never meet in one batch (they
    would be each other's negatives), while the plain group shuffle does put some in one batch. (The epoch is
    shortened so that no worker rolls over into a second pass of its shards, where a drawing can meet its copy
    from the first pass at a group boundary: documented in samplers.py.)"""
    from patentclip.plugins.data import patents

    table = load_class_table(synthetic_shards["train"])
    args = data_args(synthetic_shards["train"], sampler="class_aware", sampler_beta=1.2, workers=workers,
                     batch_size=16, **kw)
    batches = list(loader(args, parts, table).dataloader)
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) > len(set(keys))  # the sampler did repeat drawings
    assert all(len(set(b["key"])) == len(b["key"]) for b in batches)
    monkeypatch.setattr(patents, "spread_repeats", lambda items, key, distance: list(items))
    plain = list(loader(args, parts, table).dataloader)
    assert len(plain) == len(batches)
    assert any(len(set(b["key"])) < len(b["key"]) for b in plain)


# ---------------------------------------------------------------------------------------------------------
# multi-view pairs and augmentation

def test_multiview_pairs_are_other_views_of_the_same_patent(synthetic_shards, parts):
    table = load_class_table(synthetic_shards["train"])
    info = loader(data_args(synthetic_shards["train"], multiview=True), parts, table)
    n = 0
    for b in info.dataloader:
        assert b["image2"].shape == b["image"].shape
        for v, v2, has in zip(b["view"], b["view2"], b["has_view2"].tolist()):
            assert has == 1 and v != v2  # synthetic patents have 4 distinct views
        n += len(b["key"])
    assert n > 0


def test_single_drawing_patent_is_flagged_not_a_crash(tmp_path, parts):
    """A patent with one drawing: image2 is a second augmentation of the same drawing, has_view2 = 0."""
    from patentclip.shards.build import build_shards
    from patentclip.shards.synth import generate_synthetic_patents

    m = generate_synthetic_patents(tmp_path / "p", num_patents=12, num_classes=3, image_size=48, seed=1,
                                   views=("front",))
    build_shards(m, tmp_path / "s", samples_per_shard=100, splits=(("train", 1.0),), progress=False)
    from conftest import shard_pattern
    pattern = shard_pattern(tmp_path / "s" / "train")
    table = load_class_table(pattern)
    info = loader(data_args(pattern, multiview=True, batch_size=4), parts, table)
    batches = list(info.dataloader)
    assert batches and all(int(b["has_view2"].sum()) == 0 for b in batches)
    assert all(v == v2 for b in batches for v, v2 in zip(b["view"], b["view2"]))


def test_augmentations_are_deterministic_per_seed_epoch_key(synthetic_shards, parts):
    table = load_class_table(synthetic_shards["train"])
    first = lambda epoch, seed=0: next(iter(loader(data_args(synthetic_shards["train"], seed=seed), parts, table,  # noqa: E731
                                                     epoch=epoch).dataloader))
    a, b = first(0), first(0)
    assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
    c = first(0, seed=5)
    assert not torch.equal(a["image"], c["image"])


def test_augmentation_of_a_drawing_does_not_depend_on_workers_or_position(synthetic_shards):
    """open_clip's colour jitter and grey-scale draw from Python's `random`, torchvision from torch's generator:
    both are seeded per example, so a drawing gets the same tensor with 0 or 2 workers (other positions)."""
    import open_clip

    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    _, pre, _ = open_clip.create_model_and_transforms(
        "patentclip-tiny", aug_cfg=dict(color_jitter=(0.4, 0.4, 0.4, 0.1), color_jitter_prob=0.5,
                                        gray_scale_prob=0.5))
    assert any(type(t).__name__ == "color_jitter" for t in pre.transforms)
    tok = open_clip.get_tokenizer("patentclip-tiny")
    table = load_class_table(synthetic_shards["train"])
    by_key = []
    for workers in (0, 2):
        info = DATASETS.get("patent-wds")(data_args(synthetic_shards["train"], workers=workers), pre, True,
                                          epoch=1, tokenizer=tok, class_table=table)
        got = {}
        for b in info.dataloader:
            for k, img in zip(b["key"], b["image"]):
                got.setdefault(k, img)
        by_key.append(got)
    common = set(by_key[0]) & set(by_key[1])
    assert len(common) > 20
    for k in common:
        assert torch.equal(by_key[0][k], by_key[1][k]), k


# ---------------------------------------------------------------------------------------------------------
# exact resume

@pytest.mark.parametrize("workers,k,kw", [(0, 3, {"image_transport": "float"}),
                                          (2, 5, {"multiview": True, "sampler": "class_aware"}),
                                          (2, 0, {}), (1, 7, {"dataset_resampled": True,
                                                              "train_num_samples": 200}),
                                          (2, 4, {"multiview": True, "sampler": "class_aware", "uint8": True})])
def test_loader_resume_continues_exactly(synthetic_shards, parts, parts_uint8, workers, k, kw):
    """Take k batches, checkpoint the loader, build a fresh loader from the state: the following batches have
    the same sample keys and identical tensors as an uninterrupted loader (uint8 transport with flip, GridMask
    and deferred random erasing, or without erasing; and the float transport)."""
    kw = dict(kw)
    if kw.pop("uint8", False):
        parts = parts_uint8
    table = load_class_table(synthetic_shards["train"])
    args = data_args(synthetic_shards["train"], workers=workers, **kw)
    full = list(loader(args, parts, table, epoch=1).dataloader)
    assert len(full) > k
    partial = loader(args, parts, table, epoch=1).dataloader
    it = iter(partial)
    for _ in range(k):
        next(it)
    state = partial.state_dict()
    assert state["batches"] == k and state["epoch"] == 1
    fresh = loader(args, parts, table, epoch=1).dataloader
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(rest) == len(full) - k
    for x, y in zip(full[k:], rest):
        assert x["key"] == y["key"]
        names = ("image", "text", "class_id") + (("image2",) if kw.get("multiview") else ())
        names += tuple(n + "_erase" for n in names if n + "_erase" in x)
        for name in names:
            assert torch.equal(x[name], y[name]), name


def test_persistent_workers_across_epochs_and_a_mid_epoch_resume(synthetic_shards, parts, tmp_path, monkeypatch):
    """Workers are started once and kept across epochs; every epoch is the one a fresh loader gives (keys and
    tensors), a loader resumed mid-epoch on persistent workers continues exactly and its next epoch does not
    re-apply the resume state."""
    import os

    from patentclip.plugins.data import patents

    pids = tmp_path / "pids"
    real = patents.group_examples

    def recording(*a, **kw):  # runs in the (forked) workers
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*a, **kw)

    monkeypatch.setattr(patents, "group_examples", recording)

    def worker_pids():
        out = set(pids.read_text().split()) if pids.exists() else set()
        pids.unlink(missing_ok=True)
        return out

    def same(xs, ys):
        assert [x["key"] for x in xs] == [y["key"] for y in ys]
        for x, y in zip(xs, ys):
            for name in ("image", "text", "class_id"):
                assert torch.equal(x[name], y[name]), name

    table = load_class_table(synthetic_shards["train"])
    args = data_args(synthetic_shards["train"], workers=2, sampler="class_aware")
    fresh = {e: list(loader(args, parts, table, epoch=e).dataloader) for e in (1, 2)}
    worker_pids()
    info = loader(args, parts, table, epoch=1)
    assert info.dataloader.persistent_workers
    same(list(info.dataloader), fresh[1])
    first = worker_pids()
    info.set_epoch(2)
    same(list(info.dataloader), fresh[2])
    assert worker_pids() == first and len(first) == 2          # the same two processes in both epochs

    k = 3
    part = loader(args, parts, table, epoch=1)
    it = iter(part.dataloader)
    for _ in range(k):
        next(it)
    state = part.dataloader.state_dict()
    del it, part
    worker_pids()
    resumed = loader(args, parts, table, epoch=1)
    resumed.dataloader.load_state_dict(state)
    same(list(resumed.dataloader), fresh[1][k:])
    after_resume = worker_pids()
    resumed.set_epoch(2)
    same(list(resumed.dataloader), fresh[2])                  # the epoch-1 resume state is not applied again
    assert worker_pids() == after_resume and len(after_resume) == 2   # and the workers were kept


def test_resume_does_not_reread_consumed_shard_groups(synthetic_shards, parts, monkeypatch):
    """After resuming late in the epoch, only the current shard group (and later ones) are read."""
    from patentclip.plugins.data import tars

    table = load_class_table(synthetic_shards["train"])
    args = data_args(synthetic_shards["train"], shuffle_group_shards=1)
    full_loader = loader(args, parts, table).dataloader
    it = iter(full_loader)
    full = list(it)
    k = len(full) - 2
    part = loader(args, parts, table).dataloader
    it = iter(part)
    for _ in range(k):
        next(it)
    state = part.state_dict()
    fresh = loader(args, parts, table).dataloader  # (its start reads the first drawings' sizes: not counted here)
    fresh.load_state_dict(state)
    opened = []
    real = tars.tar_samples
    monkeypatch.setattr(tars, "tar_samples", lambda url, skips: (opened.append(url), real(url, skips))[1])
    rest = list(fresh)
    n_shards = len(list(synthetic_shards["train_dir"].glob("*.tar")))
    assert [b["key"] for b in rest] == [b["key"] for b in full[k:]]
    assert len(opened) < n_shards and len(opened) <= 2


def test_resume_with_other_worker_count_is_fraction_based_and_says_so(synthetic_shards, parts, caplog):
    table = load_class_table(synthetic_shards["train"])
    a = loader(data_args(synthetic_shards["train"], workers=0), parts, table).dataloader
    it = iter(a)
    n = len(a)
    for _ in range(n // 2):
        next(it)
    b = loader(data_args(synthetic_shards["train"], workers=2), parts, table).dataloader
    with caplog.at_level("WARNING"):
        b.load_state_dict(a.state_dict())
    assert "not sample-exact" in caplog.text
    assert 0 < len(list(b)) < n


def test_corrupt_member_is_skipped_and_counted(synthetic_shards, parts, tmp_path):
    """A drawing whose PNG bytes are garbage is skipped, counted in loader.skipped, the rest is read."""
    import io
    import json
    import tarfile

    src = sorted(synthetic_shards["train_dir"].glob("*.tar"))
    out = tmp_path / "shards"
    out.mkdir()
    sizes = {}
    for j, path in enumerate(src[:2]):
        dst = out / f"train-{j:06d}.tar"
        n = 0
        with tarfile.open(path) as tin, tarfile.open(dst, "w") as tout:
            for m in tin.getmembers():
                data = tin.extractfile(m).read()
                if j == 0 and m.name.endswith(".png") and n == 0:
                    data = b"\x89PNG garbage" + bytes(random.Random(0).randbytes(64))
                if m.name.endswith(".png"):
                    n += 1
                info = tarfile.TarInfo(m.name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))
        sizes[dst.name] = n
    (out / "sizes.json").write_text(json.dumps(sizes))
    (out / "classes.json").write_text((synthetic_shards["train_dir"] / "classes.json").read_text())
    pattern = str(out / "train-{000000..000001}.tar")
    table = load_class_table(pattern)
    ld = loader(data_args(pattern, batch_size=1, train_num_samples=sum(sizes.values()) - 1), parts, table).dataloader
    keys = [k for b in ld for k in b["key"]]
    assert ld.skipped == 1
    assert len(keys) == sum(sizes.values()) - 1


# ---------------------------------------------------------------------------------------------------------
# S3

@pytest.fixture()
def s3_shards(s3_server, synthetic_shards):
    fs = s3_server.filesystem()
    s3_server.make_bucket("patents")
    fs.put(str(synthetic_shards["train_dir"]), "patents/train", recursive=True)
    names = sorted(p.name for p in synthetic_shards["train_dir"].glob("*.tar"))
    last = names[-1].split("-")[1].split(".")[0]
    return f"s3://patents/train/train-{{000000..{last}}}.tar"


def test_streaming_from_s3_equals_local(s3_server, s3_shards, synthetic_shards, parts, monkeypatch):
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    table = load_class_table(s3_shards)
    assert len(table) == len(load_class_table(synthetic_shards["train"]))
    local = [b["key"] for b in loader(data_args(synthetic_shards["train"]), parts, table).dataloader]
    remote = [b["key"] for b in loader(data_args(s3_shards), parts, table).dataloader]
    assert local == remote


def test_s3_outage_mid_epoch_is_retried_and_the_stream_continues(s3_server, s3_shards, synthetic_shards, parts,
                                                                  monkeypatch):
    """Stop the S3 server mid-epoch, restart it 2 s later: the stream continues where it was, same batches."""
    import threading

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATENTCLIP_IO_BACKOFF", "0.5")
    table = load_class_table(s3_shards)
    args = data_args(s3_shards, shuffle_group_shards=1)
    expected = [b["key"] for b in loader(data_args(synthetic_shards["train"], shuffle_group_shards=1), parts,
                                         table).dataloader]
    got = []
    ld = loader(args, parts, table).dataloader
    for i, b in enumerate(ld):
        got.append(b["key"])
        if i == 1:
            s3_server.stop()
            t = threading.Timer(2.0, s3_server.start)
            t.start()
    t.join()
    assert got == expected


def test_s3_outage_beyond_retry_budget_fails_with_the_shard_url(s3_server, s3_shards, parts, monkeypatch):
    from patentclip.plugins.remote_io import ShardReadError

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PATENTCLIP_IO_RETRIES", "2")
    monkeypatch.setenv("PATENTCLIP_IO_BACKOFF", "0.1")
    table = load_class_table(s3_shards)
    ld = loader(data_args(s3_shards, shuffle_group_shards=1), parts, table).dataloader
    it = iter(ld)
    next(it)
    s3_server.stop()
    try:
        with pytest.raises(ShardReadError, match=r"s3://patents/train/train-\d+\.tar: .* after 2 retries"):
            for _ in it:
                pass
    finally:
        s3_server.start()
