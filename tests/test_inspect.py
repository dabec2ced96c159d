"""``patentclip-shards inspect``: valid shards pass; every kind of damage is found and named; exit status."""
import io
import json
import shutil
import tarfile

import pytest

from patentclip.shards.build import build_shards
from patentclip.shards.cli import main
from patentclip.shards.inspect import inspect_shards
from patentclip.shards.synth import generate_synthetic_patents


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    manifest = generate_synthetic_patents(root / "p", num_patents=24, num_classes=3, image_size=48, seed=5)
    build_shards(manifest, root / "s", samples_per_shard=16, seed=0, progress=False, split_date="2019-01-01",
                 splits=(("train", 0.8), ("val", 0.2)))
    return root / "s"


def read(tar):
    with tarfile.open(tar) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


def write(tar, members):
    with tarfile.open(tar, "w") as t:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))


@pytest.fixture()
def copy(built, tmp_path):
    dst = tmp_path / "s"
    shutil.copytree(built, dst)
    return dst


def problems_of(path, **kw):
    return inspect_shards(str(path), **kw)["problems"]


def test_valid_shards_pass_and_are_described(built, capsys):
    f = inspect_shards(str(built), workers=2)
    assert f["problems"] == []
    assert set(f["splits"]) == {"train", "val", "query"}
    report = json.loads((built / "build_report.json").read_text())
    for split, s in f["splits"].items():
        assert s["samples"] == report["drawings_written"][split]
        assert set(s["views"]) == {"front", "side", "top", "perspective"}
    assert f["splits"]["query"]["dates"]["min"] >= "2019-01-01" > f["splits"]["train"]["dates"]["max"]
    assert sum(f["class_histogram"].values()) == report["drawings_written_total"]
    assert main(["inspect", str(built), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "OK: no problems" in out and "[train]" in out and "years:" in out and "[head]" in out
    # a split folder and a brace pattern work too
    assert problems_of(built / "train") == []
    pattern = json.loads((built / "train" / "sizes.json").read_text())
    first, last = min(pattern)[6:12], max(pattern)[6:12]
    assert problems_of(f"{built}/train/train-{{{first}..{last}}}.tar") == []


def test_corrupt_image_and_bad_members(copy, capsys):
    tar = copy / "train" / "train-000000.tar"
    m = read(tar)
    img = next(i for i, (n, _) in enumerate(m) if n.endswith(".png"))
    m[img] = (m[img][0], m[img][1][:60])  # truncated PNG
    cls = next(i for i, (n, _) in enumerate(m) if n.endswith(".cls") and i > img + 4)
    m[cls] = (m[cls][0], b"2" if m[cls][1] != b"2" else b"1")  # cls disagrees with json
    txt = [i for i, (n, _) in enumerate(m) if n.endswith(".txt")][-1]
    del m[txt]  # a sample without caption
    write(tar, m)
    probs = problems_of(copy)
    text = "\n".join(probs)
    assert "does not decode" in text and "but json class_id" in text and "no .txt member" in text
    assert main(["inspect", str(copy), "--workers", "1"]) == 1
    assert "PROBLEMS:" in capsys.readouterr().out


def test_split_patent_duplicate_key_and_counts(copy):
    a, b = copy / "train" / "train-000000.tar", copy / "train" / "train-000001.tar"
    ma, mb = read(a), read(b)
    moved = ma[-4:]  # the last sample of shard 0 (4 members) moves to shard 1: its patent is now split
    write(a, ma[:-4])
    write(b, moved + mb + mb[:4])  # ... and shard 1 gets a sample twice (duplicate key)
    sizes = json.loads((copy / "train" / "sizes.json").read_text())
    text = "\n".join(problems_of(copy))
    pid = json.loads(moved[1][1])["patent_id"]
    assert f"patent {pid} is split" in text
    assert "appears twice" in text
    assert f"train-000000.tar: {sizes['train-000000.tar'] - 1} samples but sizes.json says" in text
    assert "has 1 drawings here but num_drawings" in text


def test_truncated_extra_and_missing_shards(copy):
    tar = copy / "train" / "train-000001.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 3])
    shutil.copy(copy / "train" / "train-000000.tar", copy / "train" / "train-000099.tar")
    (copy / "val" / "val-000000.tar").unlink()
    text = "\n".join(problems_of(copy))
    assert "train/train-000001.tar: unreadable tar" in text or "train-000001.tar:" in text
    assert "train/train-000099.tar: a shard not listed in sizes.json" in text
    assert "val/val-000000.tar: file not found" in text


def test_classes_json_mismatch_and_patent_in_two_splits(copy):
    classes = json.loads((copy / "val" / "classes.json").read_text())
    classes[0]["count"] += 5
    (copy / "val" / "classes.json").write_text(json.dumps(classes))
    shutil.copy(copy / "train" / "train-000000.tar", copy / "query" / "query-000000.tar")
    text = "\n".join(problems_of(copy))
    assert f"val: class {classes[0]['code']} has" in text and "classes.json says" in text
    assert ("is split: in query/query-000000.tar and train/train-000000.tar" in text
            or "is split: in train/train-000000.tar and query/query-000000.tar" in text)


def test_nothing_there(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no shards found" in capsys.readouterr().out
