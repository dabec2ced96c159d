"""Damaged training input (issue 15), with real shard files: a shard that is not a tar or is empty, one truncated
inside a member, a garbage json member, a stream that yields nothing, class names swapped in classes.json. Each is
skipped and counted with the shard URL and member named, or ends the run with a clear error within seconds."""
import io
import json
import logging
import shutil
import tarfile
import time

import pytest

import conftest
from conftest import read_jsonl, run_cli
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.classes import ClassMismatch, load_class_table
from patentclip.plugins.data.stream import EmptyStream
from patentclip.plugins.data.tars import UnreadableShards
from patentclip.plugins.registry import DATASETS

load_builtin_plugins()


@pytest.fixture(scope="module")
def parts():
    import open_clip

    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    _, preprocess, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    return preprocess, open_clip.get_tokenizer("patentclip-tiny")


@pytest.fixture()
def shards(synthetic_shards, tmp_path):
    """A copy of the synthetic training shards to damage: (folder, pattern, {name: samples})."""
    out = tmp_path / "train"
    shutil.copytree(synthetic_shards["train_dir"], out)
    sizes = json.loads((out / "sizes.json").read_text())
    return out, conftest.shard_pattern(out), sizes


def rewrite(path, edit):
    """Rewrite a shard member by member: ``edit(name, data)`` returns the new bytes."""
    with tarfile.open(path) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in members:
            data = edit(name, data)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def read_all(pattern, parts, samples, **kw):
    """Every batch of one epoch of the training loader (batch 4, no workers) and the loader."""
    table = load_class_table(pattern)
    args = conftest.data_args(pattern, batch_size=4, train_num_samples=samples, **kw)
    ld = DATASETS.get("patent-wds")(args, parts[0], True, epoch=0, tokenizer=parts[1], class_table=table).dataloader
    return [k for b in ld for k in b["key"]], ld


def test_a_shard_that_is_not_a_tar_or_is_empty_is_skipped_and_named(shards, parts, caplog):
    folder, pattern, sizes = shards
    names = sorted(sizes)
    (folder / names[1]).write_bytes(b"<html>503 Service Unavailable</html>" * 20)
    total = sum(sizes.values())  # more than the readable shards hold: the whole pass is read
    with caplog.at_level(logging.WARNING):
        keys, ld = read_all(pattern, parts, total)
    assert len(keys) == total and ld.skipped >= 1
    assert f"skipped unreadable shard {folder / names[1]}: ReadError" in caplog.text
    # a second unreadable shard (0 bytes) is more than 5% of 6 shards: the run ends naming both
    (folder / names[2]).write_bytes(b"")
    with pytest.raises(UnreadableShards, match=r"2 unreadable shards, more than --max-unreadable-shards 0.05") as e:
        read_all(pattern, parts, total)
    assert str(folder / names[1]) in str(e.value) and str(folder / names[2]) in str(e.value)
    keys, ld = read_all(pattern, parts, total, max_unreadable_shards=0.5)  # a looser limit lets the run go on
    assert len(keys) == total


def test_a_shard_truncated_inside_a_member_keeps_what_precedes_and_names_the_member(shards, parts, caplog):
    folder, pattern, sizes = shards
    name = sorted(sizes)[0]
    path = folder / name
    with tarfile.open(path) as t:
        member = [m for m in t.getmembers() if m.name.endswith(".png")][5]
    path.write_bytes(path.read_bytes()[:member.offset_data + member.size // 2])
    with caplog.at_level(logging.WARNING):
        keys, ld = read_all(pattern, parts, sum(sizes.values()) - sizes[name])
    assert ld.skipped == 1
    assert f"skipped member {member.name} of {path} (the rest of this shard is unreadable): ReadError" in caplog.text
    damaged = member.name.split(".")[0]
    assert damaged not in keys and len(keys) == sum(sizes.values()) - sizes[name]


def test_a_garbage_json_member_skips_its_sample_named_by_url_and_member(shards, parts, caplog):
    folder, pattern, sizes = shards
    name = sorted(sizes)[0]
    with tarfile.open(folder / name) as t:
        victim = [m.name for m in t.getmembers() if m.name.endswith(".json")][3]
    rewrite(folder / name, lambda n, d: b"{not json" if n == victim else d)
    total = sum(sizes.values())
    with caplog.at_level(logging.WARNING):
        keys, ld = read_all(pattern, parts, total - 4, caption_choice="first")  # one pass, whole batches of 4
    key = victim[:-len(".json")]
    assert ld.skipped == 1 and key not in keys
    assert f"skipped sample {key!r} of {folder / name}: member {victim} does not decode: JSONDecodeError" in caplog.text


def test_a_stream_that_yields_nothing_ends_within_seconds(synthetic_shards, parts, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with tarfile.open(folder / "train-000000.tar", "w"):
        pass  # a valid tar without members: what the builder used to write when every drawing failed
    (folder / "sizes.json").write_text(json.dumps({"train-000000.tar": 0}))
    shutil.copy(synthetic_shards["train_dir"] / "classes.json", folder / "classes.json")
    t0 = time.time()
    with pytest.raises(EmptyStream, match=r"data-loader worker 0 of rank 0 read a whole pass over its shards "
                                          r"\(.*train-000000.tar\) and found no sample to train on"):
        read_all(str(folder / "train-000000.tar"), parts, 8)
    assert time.time() - t0 < 10


def test_class_names_swapped_in_classes_json_stop_the_run(shards, parts):
    folder, pattern, _ = shards
    classes = json.loads((folder / "classes.json").read_text())
    classes[0]["name"], classes[1]["name"] = classes[1]["name"], classes[0]["name"]
    (folder / "classes.json").write_text(json.dumps(classes))
    with pytest.raises(ClassMismatch, match=r"class id [01] is .* in the shard but .* in .*classes.json: were the "
                                            r"shards built with another classes.json"):
        read_all(pattern, parts, 40)


@pytest.mark.slow
def test_training_skips_damage_counts_it_in_tensorboard_and_an_empty_stream_ends_the_run(shards, synthetic_shards,
                                                                                        tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, pattern, sizes = shards
    names = sorted(sizes)
    with tarfile.open(folder / names[0]) as t:
        victim = [m.name for m in t.getmembers() if m.name.endswith(".json")][0]
    rewrite(folder / names[0], lambda n, d: b"\xff\xfe garbage" if n == victim else d)
    path = folder / names[3]
    path.write_bytes(path.read_bytes()[:3000])  # truncated inside its first members
    base = ["--model", "patentclip-tiny", "--batch-size", "8", "--epochs", "1", "--workers", "1", "--val-frequency",
            "0", "--logs", tmp_path, "--seed", "0", "--log-every-n-steps", "1",
            "--shuffle-group-shards", "6"]  # one group of all six shards: both damaged shards are read
    r = run_cli("patentclip.launch.train", "--train-data", pattern, "--train-num-samples", "32", "--name", "damaged",
                *base)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "damaged" / "out.log").read_text()
    assert f"member {victim} does not decode" in log and str(folder / names[0]) in log
    assert "(the rest of this shard is unreadable)" in log and str(path) in log
    acc = EventAccumulator(str(tmp_path / "damaged" / "tensorboard"))
    acc.Reload()
    assert acc.Scalars("data/skipped_samples")[-1].value >= 2
    assert len(read_jsonl(tmp_path / "damaged" / "train_steps.jsonl")) == 4

    # the only shard an empty tar: a clear error within seconds of the first batch, not a spin deaf to SIGTERM
    empty = tmp_path / "empty"
    empty.mkdir()
    with tarfile.open(empty / "train-000000.tar", "w"):
        pass
    (empty / "sizes.json").write_text(json.dumps({"train-000000.tar": 0}))
    shutil.copy(synthetic_shards["train_dir"] / "classes.json", empty / "classes.json")
    t0 = time.time()
    r = run_cli("patentclip.launch.train", "--train-data", empty / "train-000000.tar", "--train-num-samples", "8",
                "--name", "empty", *base, timeout=300)
    assert r.returncode == 1 and "found no sample to train on" in r.stderr, r.stderr[-3000:]
    assert time.time() - t0 < 120


def test_a_resume_at_the_end_of_a_group_is_not_an_empty_pass():
    """A worker whose one shard group is its whole pass, resumed at the end of that group, rolls over into its next
    pass: the group it entered part-way yielded nothing, but that is no evidence of empty shards (it raised
    EmptyStream and ended the resumed run). A whole pass read from its first example still does."""
    from patentclip.plugins.data.stream import Cursor, progressing

    def pass_items(group, n):  # (group, offset after, item) of one group of n usable examples, then its end
        return [(group, j + 1, {"x": j}) for j in range(n)] + [(group + 1, 0, None)]

    resumed = [(1, 0, None)] + pass_items(1, 3)  # at the end of group 0, then group 1 (the next pass)
    out = list(progressing(iter(resumed), 1, "w", ["a.tar"], start=Cursor(group=0, offset=8)))
    assert [item for _, _, item in out if item] == [{"x": 0}, {"x": 1}, {"x": 2}]
    with pytest.raises(EmptyStream):
        list(progressing(iter([(1, 0, None), (2, 0, None)]), 1, "w", ["a.tar"], start=Cursor(group=0, offset=8)))
    with pytest.raises(EmptyStream):  # without a resume position the empty group counts
        list(progressing(iter([(1, 0, None)]), 1, "w", ["a.tar"]))


def test_a_first_shard_that_is_not_a_tar_does_not_stop_the_start(shards, parts, caplog):
    """The start-of-training probe of the stored drawing size reads the first shard: damage there is the stream's
    to skip, count and name, not a crash of the probe."""
    folder, pattern, sizes = shards
    names = sorted(sizes)
    (folder / names[0]).write_bytes(b"not a tar at all" * 64)
    with caplog.at_level(logging.WARNING):
        keys, ld = read_all(pattern, parts, sum(sizes.values()), max_unreadable_shards=0.2)
    assert len(keys) == sum(sizes.values()) and f"skipped unreadable shard {folder / names[0]}" in caplog.text
