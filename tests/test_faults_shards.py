"""Bad input on the way into the shards (issue 15): a planned shard whose every drawing fails, a symlink out of the
data folder, a huge drawing, wrong object-store credentials, class names swapped in classes.json."""
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
from PIL import Image, ImageDraw

from conftest import run_cli
from patentclip.shards.build import build_shards, shard_pattern
from patentclip.shards.images import DEFAULT_MAX_SIDE, ImageOptions, _flatten, normalize_image
from patentclip.shards.inspect import inspect_shards
from patentclip.shards.manifest import write_manifest


def drawing(path, seed=0, size=(64, 48)):
    im = Image.new("L", size, 255)
    ImageDraw.Draw(im).line((seed % size[0], 0, size[0] - 1, size[1] - 1), fill=0, width=3)
    im.save(path)


def record(pid, paths, code="07-01", name="cups"):
    return {"patent_id": pid, "grant_date": "2020-01-07", "class": code, "class_name": name,
            "title": f"Ornamental design for {name}",
            "drawings": [{"path": p, "view": "front", "captions": [f"a drawing of {name}"]} for p in paths]}


def test_the_builder_never_writes_a_shard_without_samples(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    recs = []
    for i in range(3):
        drawing(data / f"d{i}.png", seed=i)
        recs.append(record(f"USD09000{i:02d}", [f"d{i}.png"]))
    (data / "d1.png").write_bytes(b"this is not a png")  # every drawing of one planned shard fails
    manifest = write_manifest(data / "manifest.jsonl", recs)
    out = tmp_path / "shards"
    rep = build_shards(manifest, out, samples_per_shard=1, splits=(("train", 1.0),), progress=False)
    tars = sorted(p.name for p in (out / "train").glob("*.tar"))
    assert len(tars) == 2 and rep["shards"]["train"] == tars
    for t in tars:
        with tarfile.open(out / "train" / t) as tf:
            assert tf.getmembers()
    sizes = json.loads((out / "train" / "sizes.json").read_text())
    assert sorted(sizes) == tars and all(n == 1 for n in sizes.values())
    note = [p for p in rep["notes"] if p["kind"] == "empty_shard"]
    assert len(note) == 1 and "none of its 1 planned drawings could be written" in note[0]["reason"]
    # the pattern covers exactly the shards that exist, gap or not; inspect finds nothing wrong
    pattern = shard_pattern(out / "train")
    from braceexpand import braceexpand

    assert sorted(os.path.basename(u) for u in braceexpand(pattern)) == tars
    assert inspect_shards(str(out))["problems"] == []
    # a rerun finds the build complete (the empty shard included) and writes nothing
    again = build_shards(manifest, out, samples_per_shard=1, splits=(("train", 1.0),), progress=False)
    assert again["shards_written"] == 0 and again["shards_reused"] == 3
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == tars


def test_an_image_reached_through_a_symlink_out_of_the_data_folder_is_refused(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    drawing(outside / "secret.png", seed=5, size=(80, 80))
    data = tmp_path / "data"
    data.mkdir()
    drawing(data / "ok.png")
    (data / "innocent.png").symlink_to(outside / "secret.png")
    manifest = write_manifest(data / "manifest.jsonl", [record("USD0900001", ["ok.png", "innocent.png"])])
    out = tmp_path / "shards"
    rep = build_shards(manifest, out, samples_per_shard=10, splits=(("train", 1.0),), progress=False)
    refused = [p for p in rep["drawings_skipped"] if p["kind"] == "outside_root"]
    assert len(refused) == 1 and str(outside / "secret.png") in refused[0]["reason"]
    assert rep["drawings_written"]["train"] == 1
    with tarfile.open(out / "train" / rep["shards"]["train"][0]) as tf:
        sizes = [json.loads(tf.extractfile(m).read())["orig_size"] for m in tf.getmembers() if m.name.endswith("json")]
    assert sizes == [[64, 48]]  # only ok.png was packed
    # the importers refuse the same link, and --allow-root admits the folder
    (data / "list.csv").write_text("full_path,cat\nUSD0900002/ok.png,07-01\nUSD0900002/innocent.png,07-01\n")
    (data / "USD0900002").mkdir()
    shutil.copy(data / "ok.png", data / "USD0900002" / "ok.png")
    (data / "USD0900002" / "innocent.png").symlink_to(outside / "secret.png")
    r = run_cli("patentclip.shards.cli", "build", "--format", "csv", "--manifest", data / "list.csv", "--out",
                tmp_path / "csv", "--split", "train=1", "--workers", "1", "--no-progress", "--default-date",
                "2020-01-07", timeout=120)
    report = json.loads((tmp_path / "csv" / "build_report.json").read_text())
    assert r.returncode == 0, r.stderr
    assert [p["kind"] for p in report["drawings_skipped"]] == ["outside_root"]
    allowed = build_shards(manifest, tmp_path / "allowed", samples_per_shard=10, splits=(("train", 1.0),),
                           progress=False, import_options=__import__(
                               "patentclip.shards.importers", fromlist=["ImportOptions"]).ImportOptions(
                               allowed_roots=(str(outside),)))
    assert allowed["drawings_written"]["train"] == 2


PEAK = """
import resource, sys
from patentclip.shards.images import ImageOptions, normalize_image
data = open(sys.argv[1], "rb").read()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out, orig, size = normalize_image(data, ImageOptions())
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024, orig[0], orig[1], size[0], size[1])
"""


def test_a_huge_drawing_is_decoded_in_bounded_memory(tmp_path):
    """6000 x 6000 RGBA (a 144 MB decode): the worker's peak stays near the decoded source; flattening the whole
    image first (the previous path) peaked at four times that."""
    n = 6000
    im = Image.new("RGBA", (n, n), (255, 255, 255, 0))
    d = ImageDraw.Draw(im)
    for i in range(0, n, 150):
        d.line((i, 0, n - i, n), fill=(0, 0, 0, 255), width=9)
    im.save(tmp_path / "big.png", compress_level=1)
    del im, d
    r = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "big.png")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    peak, w, h, ow, oh = map(int, r.stdout.split())
    decoded = n * n * 4
    assert (w, h, ow, oh) == (n, n, DEFAULT_MAX_SIDE, DEFAULT_MAX_SIDE)
    assert peak < 1.25 * decoded, f"peak {peak / 2**20:.0f} MiB for a {decoded / 2**20:.0f} MiB decode"


@pytest.mark.parametrize("mode", ["RGBA", "P", "1", "I;16"])
def test_strip_decoding_gives_the_pixels_of_the_whole_image_path(mode):
    """Flattened and reduced a strip at a time: bit for bit the whole-image flatten + reducing_gap resize."""
    size = (3001, 1777)
    if mode == "I;16":
        import numpy as np

        im = Image.fromarray(np.random.RandomState(0).randint(0, 60000, (size[1], size[0])).astype("uint16"))
    else:
        im = Image.new(mode, size, {"RGBA": (255, 255, 255, 0), "P": 0, "1": 1}[mode])
        d = ImageDraw.Draw(im)
        for i in range(0, 3000, 37):
            d.line((i, 0, 3000 - i, 1776), fill={"RGBA": (i % 256, 0, 0, 200), "P": i % 256, "1": 0}[mode], width=5)
        if mode == "P":
            im.putpalette([i % 256 for i in range(768)])
            im.info["transparency"] = 0
    buf = io.BytesIO()
    im.save(buf, "PNG" if mode != "1" else "TIFF")
    for opts in (ImageOptions(max_side=512), ImageOptions(max_side=0), ImageOptions(mode="RGB", max_side=700)):
        got = Image.open(io.BytesIO(normalize_image(buf.getvalue(), opts)[0]))
        with Image.open(io.BytesIO(buf.getvalue())) as src:
            src.load()
            ref = _flatten(src, opts.mode)
            if opts.max_side:
                s = opts.max_side / max(ref.size)
                ref = ref.resize((round(ref.size[0] * s), round(ref.size[1] * s)), Image.LANCZOS, reducing_gap=3.0)
        assert got.tobytes() == ref.tobytes()


def test_wrong_object_store_credentials_are_named_without_the_secret(s3_server, tmp_path):
    s3_server.make_bucket("creds")
    data = tmp_path / "data"
    data.mkdir()
    drawing(data / "d.png")
    manifest = write_manifest(data / "manifest.jsonl", [record("USD0900001", ["d.png"])])
    env = {**s3_server.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret-42"}
    r = run_cli("patentclip.shards.cli", "build", "--manifest", manifest, "--out", "s3://creds/run", "--workers", "1",
                "--no-progress", env=env, timeout=120)
    assert r.returncode == 2
    err = r.stderr
    assert "Traceback" not in err and "the object store refused the request" in err
    assert f"endpoint {s3_server.endpoint}" in err and "bucket creds" in err
    assert f"access key id {env['AWS_ACCESS_KEY_ID']}" in err and "Nothing was written" in err
    assert "not-the-secret-42" not in err and env["AWS_SECRET_ACCESS_KEY"] not in r.stdout


def test_inspect_reports_class_names_swapped_in_classes_json(synthetic_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(synthetic_shards["root"] / "shards", shards)
    path = shards / "train" / "classes.json"
    classes = json.loads(path.read_text())
    classes[0]["name"], classes[1]["name"] = classes[1]["name"], classes[0]["name"]
    path.write_text(json.dumps(classes))
    problems = inspect_shards(str(shards / "train"), workers=1)["problems"]
    swapped = [p for p in problems if "is named" in p]
    assert swapped and f"is named {classes[0]['name']!r} in classes.json but {classes[1]['name']!r}" in swapped[0]
