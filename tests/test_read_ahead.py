"""Issue 21: shard groups read ahead across epochs (plugins/data/read_ahead.py). The next epoch's first group is
read while the current epoch's last group is consumed and taken by the next epoch, with the same batches (keys and
tensors) as a loader without read-ahead, nothing read beyond that one group, a wrong prediction dropped, and a
group judged final wrongly still read (late) in order."""
import itertools
import os

import pytest
import torch

import conftest
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.data import read_ahead, tars
from patentclip.plugins.registry import DATASETS

load_builtin_plugins()


@pytest.fixture(scope="module")
def parts():
    import open_clip

    from patentclip.plugins.augment import add_augmentations
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    _, preprocess, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    return add_augmentations(preprocess, hflip=0.5), open_clip.get_tokenizer("patentclip-tiny")


def make(shards, parts, epoch, **kw):
    args = conftest.data_args(shards["train"], **{"shuffle_group_shards": 2, "sampler": "class_aware", **kw})
    return DATASETS.get("patent-wds")(args, parts[0], True, epoch=epoch, tokenizer=parts[1],
                                      class_table=load_class_table(shards["train"]))


def same(xs, ys):
    assert [x["key"] for x in xs] == [y["key"] for y in ys]
    for x, y in zip(xs, ys):
        for name in ("image", "text", "class_id"):
            assert torch.equal(x[name], y[name]), name


def test_next_epochs_first_group_is_read_during_the_last_group_and_taken(synthetic_shards, parts, monkeypatch):
    fresh = {2: list(make(synthetic_shards, parts, 2).dataloader)}
    reads, seen = [], [0]
    real = read_ahead.read_shard
    monkeypatch.setattr(read_ahead, "read_shard", lambda url: (reads.append((url, seen[0])), real(url))[1])
    info = make(synthetic_shards, parts, 1)
    ds = info.dataloader.dataset
    assert not ds.read_ahead_next_epoch            # no persistent workers (workers=0): nothing held
    ds.read_ahead_next_epoch = True                # what the loader sets for persistent workers
    held_at = []
    real_hold = ds.reader.hold
    ds.reader.hold = lambda urls: (held_at.append(seen[0]), real_hold(urls))[1]
    epoch1 = []
    for b in info.dataloader:
        epoch1.append(b)
        seen[0] += 1
    want = tuple(ds.next_epoch_group(1, 0, 1))
    assert ds.reader.held == want
    # the hold was started before the epoch's last batch was made (while its last group was consumed) ...
    assert held_at and held_at[0] < len(epoch1)
    # ... and instead of another group of this epoch: every shard read in epoch 1 was consumed, or is held
    pos = info.dataloader.state_dict()["workers"]["0"]
    consumed = [u for g in itertools.islice(ds.plan.groups(1, 0, 1), pos["group"] + 1) for u in g]
    assert sorted(u for u, _ in reads) == sorted(consumed + list(want))

    reads.clear()
    info.set_epoch(2)
    epoch2 = list(info.dataloader)
    same(epoch2, fresh[2])                         # the same batches as a loader that read nothing ahead
    assert ds.reader.hits == 1
    assert not set(want) & {u for u, _ in reads[:len(want)]}   # the held shards were not read again

    held = ds.reader.held                          # epoch 3's first group
    assert held == tuple(ds.next_epoch_group(2, 0, 1))
    other = next(e for e in range(4, 40) if tuple(ds.next_epoch_group(e - 1, 0, 1)) != held)
    info.set_epoch(other)                          # not the epoch the hold was made for: dropped, read anew
    same(list(info.dataloader), list(make(synthetic_shards, parts, other).dataloader))
    assert ds.reader.hits == 1


def test_persistent_workers_take_their_held_group(synthetic_shards, parts, tmp_path, monkeypatch):
    """Two persistent worker processes: each takes its next epoch's first group from its hold; batches equal a
    fresh loader's."""
    log = tmp_path / "hits"
    real = read_ahead.GroupReader.submit

    def submit(self, urls):  # runs in the forked workers
        before = self.hits
        out = real(self, urls)
        if self.hits > before:
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\n")
        return out

    monkeypatch.setattr(read_ahead.GroupReader, "submit", submit)
    fresh = list(make(synthetic_shards, parts, 2, workers=2).dataloader)
    info = make(synthetic_shards, parts, 1, workers=2)
    assert info.dataloader.persistent_workers and info.dataloader.dataset.read_ahead_next_epoch
    list(info.dataloader)
    assert not log.exists()
    info.set_epoch(2)
    same(list(info.dataloader), fresh)
    assert len(set(log.read_text().split())) == 2  # both workers took their group from the hold


def test_a_group_judged_final_wrongly_is_still_read_in_order(synthetic_shards):
    """``final`` says every group completes the stream: the next groups are read late, in the same order, and the
    next iteration's group is held."""
    urls = sorted(str(p) for p in synthetic_shards["train_dir"].glob("*.tar"))
    groups = [(i, urls[i:i + 2]) for i in range(0, len(urls), 2)]

    def keys(items):
        return [(g, [s["__key__"] for s in raw]) for g, _, raw in items]

    plain = keys(read_ahead.prefetched(iter(groups), tars.SkipCounter()))
    reader = read_ahead.GroupReader()
    late = keys(read_ahead.prefetched(iter(groups), tars.SkipCounter(), reader, then=urls[:2],
                                      final=lambda *a: True))
    assert late == plain and len(plain) == len(groups) >= 3
    assert reader.held == tuple(urls[:2]) and reader.hits == 0
    got = reader.submit(urls[:2])
    assert reader.hits == 1 and reader.held is None
    assert [s["__key__"] for f in got for s in f.result()[0]] == plain[0][1]
    reader.hold(urls[2:4])
    reader.hold(urls[:2])                          # another group: the first hold is dropped
    assert reader.held == tuple(urls[:2])
    reader.close()


def test_a_reader_does_not_travel_to_a_spawned_worker():
    import pickle

    reader = read_ahead.GroupReader(threads=3)
    reader._executor()
    copy = pickle.loads(pickle.dumps(reader))
    assert copy.threads == 3 and copy.held is None and copy._pool is None
    reader.close()
