"""The shard builder: layout, determinism across workers, resume, temporal splits, images, captions, bad input."""
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from patentclip.shards.build import build_shards, shard_pattern
from patentclip.shards.images import ImageError, ImageOptions, normalize_image
from patentclip.shards.manifest import write_manifest
from patentclip.shards.synth import generate_synthetic_patents


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return generate_synthetic_patents(root / "patents", num_patents=36, num_classes=4, image_size=64, seed=3)


def tar_members(path):
    with tarfile.open(path) as t:
        return [(m.name, t.extractfile(m).read()) for m in t.getmembers()]


def digest_tree(folder: Path):
    """sha256 of every shard, sizes.json and classes.json under a build folder (not the report: it has timings)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".build" not in p.parts and not p.name.startswith("build_report"):
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_layout_metadata_and_report(corpus, tmp_path):
    rep = build_shards(corpus, tmp_path / "s", samples_per_shard=24, seed=0, progress=False)
    train = tmp_path / "s" / "train"
    sizes = json.loads((train / "sizes.json").read_text())
    assert sorted(sizes) == sorted(p.name for p in train.glob("*.tar")) and all(v <= 24 for v in sizes.values())
    members = tar_members(train / "train-000000.tar")
    names = [n for n, _ in members]
    key = names[0].split(".")[0]
    assert names[:4] == [f"{key}.cls", f"{key}.json", f"{key}.png", f"{key}.txt"]
    meta = json.loads(dict(members)[f"{key}.json"])
    for f in ("patent_id", "drawing_index", "num_drawings", "view", "class_id", "class_code", "class_name", "category",
              "grant_date", "title", "captions", "orig_size", "size", "object"):
        assert f in meta, f
    assert key == f"{meta['patent_id']}_{meta['drawing_index']:02d}"
    assert dict(members)[f"{key}.txt"].decode() == meta["captions"][0]
    assert dict(members)[f"{key}.cls"].decode() == str(meta["class_id"])
    assert all(m.mtime == 1262304000 for m in tarfile.open(train / "train-000000.tar").getmembers())
    classes = json.loads((tmp_path / "s" / "classes.json").read_text())
    assert [c["id"] for c in classes] == list(range(len(classes)))
    assert {c["category"] for c in classes} == {"head", "tail"}
    assert sum(c["count"] for c in classes) == rep["drawings_written_total"] == 36 * 4
    on_disk = json.loads((tmp_path / "s" / "build_report.json").read_text())
    assert on_disk["records_read"] == on_disk["records_written"] == 36 and on_disk["skipped_by_reason"] == {}
    assert on_disk["bytes_written"] == sum(p.stat().st_size for p in (tmp_path / "s").rglob("*.tar"))
    assert sum(on_disk["class_histogram"].values()) == 144
    text = (tmp_path / "s" / "build_report.txt").read_text()
    assert "records written: 36 of 36 read" in text and "classes: 4" in text
    assert shard_pattern(train).endswith("train-{000000..%06d}.tar" % (len(sizes) - 1))
    assert not list((tmp_path / "s").rglob("*.partial")) and not list((tmp_path / "s").rglob("*.tmp*"))


def test_two_workers_write_the_same_bytes_as_one(corpus, tmp_path):
    a = build_shards(corpus, tmp_path / "w1", samples_per_shard=16, workers=1, progress=False)
    b = build_shards(corpus, tmp_path / "w2", samples_per_shard=16, workers=2, progress=False)
    assert a["shards"] == b["shards"] and len(a["shards"]["train"]) >= 4
    da, db = digest_tree(tmp_path / "w1"), digest_tree(tmp_path / "w2")
    assert da == db and len(da) > 8


def test_rerun_skips_complete_shards_and_rewrites_damaged_ones(corpus, tmp_path):
    out = tmp_path / "s"
    first = build_shards(corpus, out, samples_per_shard=16, progress=False)
    clean = digest_tree(out)
    n = sum(len(v) for v in first["shards"].values())
    train = out / "train"
    # a crash mid-shard: a half-written temp file, a shard whose sidecar was never written, a truncated shard
    (train / ".train-000001.tar.partial").write_bytes(b"half a tar")
    (out / ".build" / "train" / "train-000002.tar.json").unlink()
    data = (train / "train-000003.tar").read_bytes()
    (train / "train-000003.tar").write_bytes(data[: len(data) // 2])
    again = build_shards(corpus, out, samples_per_shard=16, progress=False)
    assert again["shards_written"] == 2 and again["shards_reused"] == n - 2
    assert digest_tree(out) == clean
    assert not list(train.glob(".*partial*"))
    # the report of the resumed build is complete (it comes from the sidecars)
    for k in ("drawings_written", "class_histogram", "bytes_written", "records_written"):
        assert again[k] == first[k], k
    # other flags -> another plan: every shard is rebuilt
    third = build_shards(corpus, out, samples_per_shard=16, progress=False, image_format="jpg")
    assert third["shards_reused"] == 0 and third["image_format"] == "jpg"
    # fewer shards than before: the stale ones are removed
    fourth = build_shards(corpus, out, samples_per_shard=1000, progress=False)
    assert fourth["stale_shards_removed"] and sorted(p.name for p in train.glob("*.tar")) == ["train-000000.tar"]


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_then_rerun_resumes(tmp_path, workers):
    manifest = generate_synthetic_patents(tmp_path / "p", num_patents=60, num_classes=3, image_size=160, seed=1)
    out = tmp_path / "s"
    cmd = [sys.executable, "-m", "patentclip.shards.cli", "build", "--manifest", str(manifest), "--out", str(out),
           "--samples-per-shard", "4", "--workers", str(workers), "--no-progress", "--split", "train=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    sidecars = out / ".build" / "train"
    while time.time() < deadline and len(list(sidecars.glob("*.json")) if sidecars.exists() else []) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.fail("the build finished before it could be interrupted; make the corpus larger")
    assert proc.returncode == 130 and "run the same command again to resume" in err
    done_before = len(list(sidecars.glob("*.json")))
    assert 2 <= done_before < 60
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    rep = json.loads((out / "build_report.json").read_text())
    assert rep["shards_reused"] >= 2 and rep["shards_reused"] + rep["shards_written"] == len(rep["shards"]["train"])
    assert not list(out.rglob("*.partial"))
    build_shards(manifest, tmp_path / "clean", samples_per_shard=4, splits=(("train", 1.0),), progress=False)
    assert digest_tree(out) == digest_tree(tmp_path / "clean")


def test_temporal_split(corpus, tmp_path):
    rep = build_shards(corpus, tmp_path / "t", samples_per_shard=50, splits=(("train", 0.9), ("val", 0.1)),
                       split_date="2019-01-01", progress=False)
    assert set(rep["shards"]) == {"train", "val", "query"}
    for split in ("train", "val", "query"):
        for tar in (tmp_path / "t" / split).glob("*.tar"):
            for name, data in tar_members(tar):
                if name.endswith(".json"):
                    d = json.loads(data)["grant_date"]
                    assert (d >= "2019-01-01") == (split == "query"), (split, d)
    assert rep["drawings_written"]["query"] > 0 and rep["split_rule"]["type"] == "temporal"
    with pytest.raises(ValueError, match="not an ISO date"):
        build_shards(corpus, tmp_path / "x", split_date="2019-13-01", progress=False)


def _png(img, **kw):
    b = io.BytesIO()
    img.save(b, format="PNG", **kw)
    return b.getvalue()


def test_image_normalisation():
    # transparent line drawing: flattened onto white, not black
    rgba = Image.new("RGBA", (1200, 600), (0, 0, 0, 0))
    for x in range(100, 1100):
        rgba.putpixel((x, 300), (0, 0, 0, 255))
    assert ImageOptions().mode == "L"
    data, orig, size = normalize_image(_png(rgba), ImageOptions(max_side=300, mode="RGB"))
    im = Image.open(io.BytesIO(data))
    assert orig == (1200, 600) and size == (300, 150) and im.size == (300, 150) and im.mode == "RGB"
    assert im.getpixel((5, 5)) == (255, 255, 255) and min(im.getpixel((150, 75))) < 230
    # 16-bit grey, palette, 1-bit: all to the chosen mode
    g16 = Image.new("I;16", (40, 30), 65535)
    assert Image.open(io.BytesIO(normalize_image(_png(g16), ImageOptions(mode="L"))[0])).getpixel((1, 1)) == 255
    pal = Image.new("P", (20, 20), 3)
    assert Image.open(io.BytesIO(normalize_image(_png(pal), ImageOptions(mode="RGB"))[0])).mode == "RGB"
    assert Image.open(io.BytesIO(normalize_image(_png(pal), ImageOptions())[0])).mode == "L"
    bw = Image.new("1", (20, 20), 1)
    assert Image.open(io.BytesIO(normalize_image(_png(bw), ImageOptions(mode="L"))[0])).mode == "L"
    # never enlarged; max_side 0 keeps the size
    assert normalize_image(_png(bw), ImageOptions(max_side=512))[2] == (20, 20)
    assert normalize_image(_png(rgba), ImageOptions(max_side=0))[2] == (1200, 600)
    # lossy formats with a quality flag
    big = Image.effect_noise((256, 256), 60).convert("RGB")
    j95 = normalize_image(_png(big), ImageOptions(image_format="jpg", quality=95))[0]
    j30 = normalize_image(_png(big), ImageOptions(image_format="jpg", quality=30))[0]
    assert j95[:3] == b"\xff\xd8\xff" and len(j30) < len(j95)
    w = normalize_image(_png(big), ImageOptions(image_format="webp", quality=80))[0]
    assert w[:4] == b"RIFF" and w[8:12] == b"WEBP"
    # bad files
    for bad, kind in ((b"", "empty_image"), (b"not an image at all", "unreadable_image"),
                      (_png(big)[:400], "unreadable_image")):
        with pytest.raises(ImageError) as e:
            normalize_image(bad, ImageOptions())
        assert e.value.kind == kind
    with pytest.raises(ValueError):
        ImageOptions(image_format="gif")
    with pytest.raises(ValueError):
        ImageOptions(quality=0)


def test_images_flags_reach_the_shards(corpus, tmp_path):
    rep = build_shards(corpus, tmp_path / "w", samples_per_shard=500, image_format="webp", quality=70, max_side=32,
                       image_mode="L", splits=(("train", 1.0),), progress=False)
    members = dict(tar_members(tmp_path / "w" / "train" / "train-000000.tar"))
    key = next(iter(members)).split(".")[0]
    im = Image.open(io.BytesIO(members[f"{key}.webp"]))
    meta = json.loads(members[f"{key}.json"])
    assert max(im.size) == 32 and meta["orig_size"] == [64, 64] and meta["size"] == list(im.size)
    assert rep["image"] == {"image_format": "webp", "mode": "L", "max_side": 32, "quality": 70}


def _bad_corpus(tmp_path):
    """A hand-made manifest with one of every bad-input case, plus good records."""
    root = tmp_path / "bad"
    root.mkdir()
    good = Image.new("RGB", (48, 48), "white")
    for x in range(5, 40):
        good.putpixel((x, 20), (0, 0, 0))
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    png = buf.getvalue()
    (root / "ok1.png").write_bytes(png)
    (root / "ok2.png").write_bytes(png)
    (root / "ok3.png").write_bytes(png)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "empty.png").write_bytes(b"")

    def rec(pid, paths, cls="07-01", name="cups and mugs", caps=None, date="2019-01-01", **kw):
        return {"patent_id": pid, "grant_date": date, "class": cls, "class_name": name, "title": f"Design {pid}",
                "drawings": [{"path": p, "view": "front", "captions": caps or [f"a cup {pid}"]} for p in paths], **kw}

    lines = [
        json.dumps(rec("GOOD1", ["ok1.png", "corrupt.png", "truncated.png", "empty.png", "missing.png"])),  # 1
        '{"patent_id": "BROKEN", "grant_date": ',  # 2 invalid JSON
        json.dumps(rec("DUP", ["ok2.png"])),  # 3
        json.dumps(rec("DUP", ["ok3.png"])),  # 4 duplicate id
        json.dumps({k: v for k, v in rec("NOCLASS", ["ok2.png"]).items() if k != "class"}),  # 5 missing class
        json.dumps(rec("BADCLS", ["ok2.png"], cls="cups")),  # 6 unknown class code
        json.dumps(rec("LONG", ["ok2.png"], caps=["word " * 600, "fine\x00 caption\x07"])),  # 7 repaired
        "",  # 8 blank
        json.dumps(rec("ALLBAD", ["corrupt.png", "empty.png"])),  # 9 nothing readable
        json.dumps(rec("BADDATE", ["ok2.png"], date="2019-02-30")),  # 10
        json.dumps(rec("OTHERNAME", ["ok2.png"], name="mugs")),  # 11 class name conflict
    ]
    raw = ("\n".join(lines) + "\n").encode()
    # 12: a caption with a byte that is not UTF-8 -> repaired (U+FFFD), record kept
    raw += json.dumps(rec("LATIN1", ["ok3.png"], caps=["caf\u00e9 cup"])).encode().replace(b"\\u00e9", b"\xe9") + b"\n"
    # 13: a patent id with a bad byte -> the id check fails, record skipped
    raw += json.dumps(rec("BADIDX", ["ok3.png"])).encode().replace(b"BADIDX", b"BAD\xffID") + b"\n"
    # 14: the same drawing twice in one record
    raw += json.dumps(rec("DUPDRAW", ["ok2.png", "ok2.png"])).encode() + b"\n"
    (root / "manifest.jsonl").write_bytes(raw)
    return root / "manifest.jsonl"


def test_bad_input_is_skipped_or_repaired_and_reported(tmp_path):
    manifest = _bad_corpus(tmp_path)
    rep = build_shards(manifest, tmp_path / "s", splits=(("train", 1.0),), samples_per_shard=100, progress=False)
    by = rep["skipped_by_reason"]
    assert by == {"duplicate_id": 1, "invalid_json": 1, "schema": 3, "bad_date": 1, "class_name_conflict": 1,
                  "missing_file": 1, "unreadable_image": 3, "empty_image": 2, "no_drawings": 1,
                  "duplicate_drawing": 1}, by
    assert rep["repaired_by_reason"] == {"invalid_utf8": 2, "caption_truncated": 1, "caption_control_chars": 1}
    reasons = [p["reason"] for p in rep["records_skipped"] + rep["drawings_skipped"] + rep["repairs"]]
    for needle in ("line 1: drawing 2 'corrupt.png': unreadable image", "line 1: drawing 3 'truncated.png': unreadable",
                   "line 1: drawing 4 'empty.png': empty image", "line 1: drawing 5 'missing.png': file not found",
                   "line 2: invalid JSON", "line 4: duplicate patent_id 'DUP'", "line 5: schema violation",
                   "line 9: patent ALLBAD: no drawing could be written", "line 12: not valid UTF-8",
                   "line 7: drawing 1 'ok2.png': caption 1: 2999 characters cut to",
                   "line 14: drawing 2 'ok2.png': listed twice", "line 13: schema violation"):
        assert any(needle in r for r in reasons), (needle, reasons)
    # every record is accounted for: written or skipped, nothing silently dropped
    written = {json.loads(d)["patent_id"] for t in (tmp_path / "s" / "train").glob("*.tar")
               for n, d in tar_members(t) if n.endswith(".json")}
    assert written == {"GOOD1", "DUP", "LONG", "LATIN1", "DUPDRAW"}
    assert rep["records_written"] == 5 and len(rep["records_skipped"]) == 8
    assert rep["records_read"] == 13
    # the repaired ones
    members = {n: d for t in (tmp_path / "s" / "train").glob("*.tar") for n, d in tar_members(t)}
    assert json.loads(members["LATIN1_00.json"])["captions"] == ["caf\ufffd cup"]
    long_caps = json.loads(members["LONG_00.json"])["captions"]
    assert len(long_caps[0]) <= 1000 and long_caps[1] == "fine caption"
    assert json.loads(members["GOOD1_00.json"])["num_drawings"] == 1
    text = (tmp_path / "s" / "build_report.txt").read_text()
    assert "skipped: 8 records" in text and "repaired and kept" in text


def test_captions_file_and_templates(tmp_path, corpus):
    caps = tmp_path / "caps.jsonl"
    first = json.loads(corpus.read_text().splitlines()[0])
    pid = first["patent_id"]
    lines = [json.dumps({"key": f"{pid}_00", "captions": ["LLM caption one.", "LLM caption two."]}),
             json.dumps({"key": first["drawings"][1]["path"], "captions": ["by path"]}),
             json.dumps({"key": f"{pid}_00", "captions": ["again"]}),  # duplicate key
             "{not json",
             json.dumps({"key": "NOPE_00", "captions": ["nobody"]}),  # unmatched
             json.dumps({"key": f"{pid}_02", "captions": ["\x00  "]})]  # nothing usable -> own captions kept
    caps.write_bytes(("\n".join(lines) + "\n").encode() + b'{"key": "' + pid.encode() + b'_03", "captions": ["na\xefve"]}\n')
    for mode in ("replace", "prepend", "append"):
        rep = build_shards(corpus, tmp_path / mode, captions=caps, captions_join=mode, splits=(("train", 1.0),),
                           samples_per_shard=1000, progress=False)
        m = dict(tar_members(tmp_path / mode / "train" / "train-000000.tar"))
        c0 = json.loads(m[f"{pid}_00.json"])["captions"]
        own = first["drawings"][0]["captions"]
        assert c0 == {"replace": ["LLM caption one.", "LLM caption two."],
                      "prepend": ["LLM caption one.", "LLM caption two."] + own,
                      "append": own + ["LLM caption one.", "LLM caption two."]}[mode]
        assert m[f"{pid}_00.txt"].decode() == c0[0]
        assert "by path" in json.loads(m[f"{pid}_01.json"])["captions"]
    assert rep["captions"]["drawings_matched"] == 4 and rep["captions"]["keys_unmatched"] == 1
    assert rep["captions"]["unmatched_keys"] == ["NOPE_00"]
    kinds = sorted(p["kind"] for p in rep["notes"])
    assert kinds == ["duplicate_key", "invalid_json", "invalid_utf8"], kinds
    m = dict(tar_members(tmp_path / "replace" / "train" / "train-000000.tar"))
    assert json.loads(m[f"{pid}_02.json"])["captions"] == first["drawings"][2]["captions"]
    assert json.loads(m[f"{pid}_03.json"])["captions"] == ["na\ufffdve"]


def test_templates_for_drawings_without_captions(tmp_path):
    from patentclip.shards.captions import parse_templates, render_templates, template_fields

    f = template_fields(title="Cup", obj="egg cup", view="front", class_name="cups", class_code="07-01")
    caps = render_templates(parse_templates(["A {view} view of {a_object}.", "{title} ({class_code})",
                                             "{caption} only"]), f)
    assert caps == ["A front view of an egg cup.", "Cup (07-01)"]
    with pytest.raises(ValueError, match="unknown field"):
        parse_templates(["{colour} cup"])
    tfile = tmp_path / "t.txt"
    tfile.write_text("# my templates\n{title}: {view} view\n")
    from patentclip.shards.captions import load_templates

    assert load_templates(tfile) == ("{title}: {view} view",)


def test_cli_build_and_errors(corpus, tmp_path):
    r = subprocess.run([sys.executable, "-m", "patentclip.shards.cli", "build", "--manifest", str(corpus), "--out",
                        str(tmp_path / "c"), "--samples-per-shard", "40", "--workers", "2", "--no-progress",
                        "--split", "train=0.75", "--split", "val=0.25", "--image-format", "jpg", "--quality", "80",
                        "--train-image-size", "42"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "train: " + str(tmp_path / "c" / "train" / "train-{000000..") in r.stdout
    assert (tmp_path / "c" / "build_report.txt").exists()
    # the storage size follows the training size: 42 px * 8/7 = 48 px (the 64-px drawings shrunk)
    assert json.loads((tmp_path / "c" / "build_report.json").read_text())["image"]["max_side"] == 48
    name, data = next((n, d) for n, d in tar_members(next((tmp_path / "c" / "train").glob("*.tar")))
                      if n.endswith(".jpg"))
    assert max(Image.open(io.BytesIO(data)).size) == 48, name
    r = subprocess.run([sys.executable, "-m", "patentclip.shards.cli", "build", "--manifest", str(corpus), "--out",
                        str(tmp_path / "d"), "--split-date", "2020-02-31", "--no-progress"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not an ISO date" in r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{}\n")
    r = subprocess.run([sys.executable, "-m", "patentclip.shards.cli", "build", "--manifest", str(empty), "--out",
                        str(tmp_path / "e"), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "nothing was written" in r.stderr and "line 1: schema violation" in r.stdout


def test_manifest_records_written_back(tmp_path, corpus):
    """write_manifest/read_manifest keep the records, so a manifest rewritten by a tool builds the same shards."""
    from patentclip.shards.manifest import read_manifest

    recs, probs = read_manifest(corpus)
    assert not probs
    copy = write_manifest(Path(corpus).with_name("copy.jsonl"), recs)
    a = build_shards(corpus, tmp_path / "a", samples_per_shard=30, progress=False)
    b = build_shards(copy, tmp_path / "b", samples_per_shard=30, progress=False)
    assert a["shards"] == b["shards"] and digest_tree(tmp_path / "a") == digest_tree(tmp_path / "b")


def test_fast_schema_check_never_accepts_what_the_schema_rejects():
    """read_manifest checks records with a fast path that must agree with manifest.schema.json."""
    import copy

    from patentclip.shards import manifest as M

    base = {"patent_id": "USD1", "grant_date": "2019-01-01", "class": "07-01", "class_name": "cups", "title": "Cup",
            "object": "cup", "drawings": [{"path": "a/b.png", "view": "front", "captions": ["x"]}]}
    variants = [base, [], "x", None]
    for k, vals in {"patent_id": ["", "A.B", "a" * 65, "a" * 64, "ab\n", 5, None, "-a", "a b"],
                    "grant_date": ["2019-1-01", "2019-01-01\n", 1], "class": ["7-01", "07-01\n", "0701", None],
                    "class_name": ["", " ", "\t", 3, "x"], "title": ["", " a ", None], "object": ["", 1, "c"]}.items():
        for v in vals:
            o = copy.deepcopy(base)
            o[k] = v
            variants.append(o)
        o = copy.deepcopy(base)
        o.pop(k)
        variants.append(o)
    for p in ("/abs", "a/../b", "..", "a..b", "C:x", "\\x", "a\nb", "", "a/..", "..a/b", "a\n"):
        variants.append({**base, "drawings": [{"path": p, "captions": ["x"]}]})
    for caps in ([], [" "], ["x", 1], ["\n"], "x"):
        variants.append({**base, "drawings": [{"path": "a", "captions": caps}]})
    for d in ([], [{}], "x", [1], [{"path": "a", "captions": ["x"], "view": ""}]):
        variants.append({**base, "drawings": d})
    for v in variants:
        full = not list(M._validator().iter_errors(v))
        assert M._quick_valid(v) == full, v
    assert M.validate_record({**base, "patent_id": "ab\n"})  # a trailing newline is not a valid id
