"""patentclip-index / patentclip-search / the search page end to end, on the demo's model (patentclip-tiny, exported
by patentclip-export's code) and synthetic shards on local disk and in a real S3 server (SeaweedFS): every drawing
embedded as patentclip-eval embeds it, search against brute force over the stored vectors, resuming after a crash,
adding a week without a rebuild, two ranks, bad shards, and the page in headless Chromium."""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from cdp import Browser
from conftest import data_args, run_cli
from test_search import brute_force

from patentclip.evaluation import cli as ECLI
from patentclip.evaluation import features as EF
from patentclip.evaluation import index as X
from patentclip.evaluation import index_build as B
from patentclip.evaluation import loading as EL
from patentclip.evaluation import search as S
from patentclip.evaluation.export import export
from patentclip.evaluation.serve import DrawingReader
from patentclip.launch.checkpoint_format import Checkpoint
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.classes import load_class_table
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.registry import DATASETS


def fresh_tiny_model(out, classes_json, seed):
    """patentclip-tiny (the demo's model) initialised with ``seed``, written as patentclip-export writes a model
    folder; returns the folder."""
    register_model_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("patentclip-tiny", precision="fp32")
    export(Checkpoint(state_dict=model.state_dict(), model_name="patentclip-tiny",
                      classes=json.loads(classes_json.read_text()), source=f"seed {seed}", kind="open_clip"), str(out))
    return str(out)


@pytest.fixture(scope="module")
def tiny_model(synthetic_shards, tmp_path_factory):
    return fresh_tiny_model(tmp_path_factory.mktemp("model") / "patentclip-tiny-seed0",
                            synthetic_shards["train_dir"] / "classes.json", 0)


def shards(synthetic_shards, split, names=None):
    d = synthetic_shards[f"{split}_dir"]
    files = sorted(p.name for p in d.glob("*.tar")) if names is None else names
    return [str(d / n) for n in files]


def all_shards(synthetic_shards):
    return shards(synthetic_shards, "train") + shards(synthetic_shards, "val")


@pytest.fixture(scope="module")
def full(synthetic_shards, tiny_model, tmp_path_factory):
    """Every train and val shard indexed by the patentclip-index command (a fresh process)."""
    out = tmp_path_factory.mktemp("idx") / "full"
    r = run_cli("patentclip.evaluation.index_build", "build", "--data",
                f"{synthetic_shards['train']}::{synthetic_shards['val']}", "--checkpoint", tiny_model, "--out", out,
                "--workers", "1", "--batch-size", "16", "--quiet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "index " in r.stdout and "drawings from 8 shards" in r.stdout
    return str(out)


def part_vectors(folder, shard):
    return X.read_part_vectors(folder, X.part_name(shard))


def build(argv):
    return B.main(["build", *map(str, argv), "--workers", "0", "--batch-size", "16", "--quiet"])


def stored_matrix(folder):
    idx = X.PriorArtIndex.open(folder)
    return idx, idx.vectors(np.arange(idx.rows)).astype(np.float64)


def meta_of(idx):
    return {"key": idx.key.tolist(), "patent_id": idx.patent_id.tolist(), "view": idx.view.tolist(),
            "class_id": idx.class_id.tolist(), "grant_day": idx.grant_day.tolist()}


def test_index_holds_every_drawing_as_eval_embeds_it(full, synthetic_shards, tiny_model):
    idx = X.PriorArtIndex.open(full)
    sizes = {**json.loads((synthetic_shards["train_dir"] / "sizes.json").read_text()),
             **json.loads((synthetic_shards["val_dir"] / "sizes.json").read_text())}
    assert idx.rows == sum(sizes.values()) and len(set(idx.key.tolist())) == idx.rows
    assert [p["shard"] for p in idx.manifest["parts"]] == all_shards(synthetic_shards)
    assert idx.manifest["faiss"]["kind"] == "flat" and idx.manifest["vector_dtype"] == "float16"
    assert idx.stored_max_side == 64  # the synthetic drawings' size: query drawings are shrunk to it
    # the same drawings, dates and classes as the evaluation pipeline reads, and the same embeddings (to float16)
    load_builtin_plugins()
    loaded = EL.load_for_eval(tiny_model, None, None, "cpu")
    data = f"{synthetic_shards['train']}::{synthetic_shards['val']}"
    loader = DATASETS.get("patent-wds")(data_args(val=data, batch_size=40), loaded.preprocess, False,
                                        tokenizer=loaded.tokenizer, class_table=load_class_table(data)).dataloader
    f = EF.extract_features(loaded.model, loader, "cpu", with_text=False)
    assert f["key"] == idx.key.tolist()
    assert f["grant_day"].tolist() == idx.grant_day.tolist() and f["class_id"].tolist() == idx.class_id.tolist()
    assert f["view"] == idx.view.tolist() and f["patent_id"] == idx.patent_id.tolist()
    np.testing.assert_allclose(idx.vectors(np.arange(idx.rows)), f["image_features"].numpy(), atol=1e-3, rtol=0)
    # every drawing can be read back from its shard by the offsets the index recorded
    reader = DrawingReader(idx)
    with tarfile.open(idx.shard[7]) as tar:
        assert reader.read(7)[0] == tar.extractfile(idx.member[7]).read()
    assert reader.read(7)[1] == "image/png"


def drawing_png(synthetic_shards, patent_index=3, view=0):
    root = synthetic_shards["manifest"].parent
    with open(synthetic_shards["manifest"]) as f:
        rec = [json.loads(line) for line in f][patent_index]
    return str(root / rec["drawings"][view]["path"]), rec


def cli_search(capsys, *argv):
    """patentclip-search's main in this process: (exit status, stdout, stderr). test_search_command_equals_brute_force
    runs the command itself once in a fresh process."""
    capsys.readouterr()
    rc = S.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_search_command_equals_brute_force(full, synthetic_shards, capsys):
    idx, vs = stored_matrix(full)
    meta = meta_of(idx)
    png, rec = drawing_png(synthetic_shards, 40)
    searcher = S.Searcher.open(full)
    q = searcher.embed_images([searcher.decode(open(png, "rb").read())])
    # the query drawing is in the index: it finds itself (no filter)
    rc, out, err = cli_search(capsys, "--index", full, "--image", png, "--json", "--top", "3", "--no-group")
    assert rc == 0, err[-3000:]
    doc = json.loads(out)
    assert doc["results"][0]["patent_id"] == rec["patent_id"] and doc["results"][0]["score"] > 0.999
    # prior-art date, class and view filters, grouped by patent: equal to the brute-force ranking (the command
    # in a fresh process, as users run it)
    f = searcher.filters(before="2019-06-01", classes=[rec["class"]], views=["front", "side"])
    r = run_cli("patentclip.evaluation.search", "--index", full, "--image", png, "--json", "--top", "6", "--before",
                "2019-06-01", "--class", rec["class"], "--view", "front", "--view", "side", "--drawings")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)
    exp = brute_force(vs, meta, q, f, 6)
    assert [x["best"]["row"] for x in doc["results"]] == [e[0] for e in exp]
    for x, (_, s) in zip(doc["results"], exp):
        assert x["score"] == pytest.approx(s, abs=1e-5)
        assert x["grant_date"] < "2019-06-01" and x["class"]["code"] == rec["class"]
        assert x["best"]["view"] in ("front", "side")
        assert [d["row"] for d in x["drawings"]] == idx.rows_of_patent(x["patent_id"]).tolist()
    assert doc["searched"]["exact"] is True and doc["filters"]["before"] == "2019-06-01"
    # two views of one design (best view wins) and the table output
    png2, _ = drawing_png(synthetic_shards, 40, view=2)
    rc, out, _ = cli_search(capsys, "--index", full, "--image", png, "--image", png2, "--top", "4")
    assert rc == 0 and "rank" in out and rec["patent_id"] in out
    q2 = searcher.embed_images([searcher.decode(open(p, "rb").read()) for p in (png, png2)])
    got = searcher.query(images=[open(png, "rb").read(), open(png2, "rb").read()], top=4)
    assert [x["best"]["row"] for x in got["results"]] == [e[0] for e in brute_force(vs, meta, q2, None, 4)]


def test_patent_text_queries_and_errors(full, synthetic_shards, capsys):
    idx, vs = stored_matrix(full)
    meta = meta_of(idx)
    pid = idx.patent_id[100]
    rc, out, err = cli_search(capsys, "--index", full, "--patent", pid, "--json", "--top", "5")
    assert rc == 0, err[-3000:]
    doc = json.loads(out)
    rows = idx.rows_of_patent(pid)
    before = int(idx.grant_day[rows[0]])
    f = X.Filters(before=before, exclude_patents=(pid,))
    exp = brute_force(vs, meta, vs[rows], f, 5)
    assert [x["best"]["row"] for x in doc["results"]] == [e[0] for e in exp]
    assert all(x["grant_date"] < X.day_to_date(before) for x in doc["results"])
    searcher = S.Searcher.open(full)
    t = searcher.query(text="a patent drawing of a lamp", top=5, group=False)
    qt = searcher.embed_text("a patent drawing of a lamp")
    assert [x["row"] for x in t["results"]] == [e[0] for e in brute_force(vs, meta, qt, None, 5, group=False)]
    # errors say what was wrong
    rc, _, err = cli_search(capsys, "--index", full, "--patent", "USD0000000")
    assert rc == 2 and "not in the index" in err
    rc, _, err = cli_search(capsys, "--index", full, "--patent", pid, "--text", "a cup")
    assert rc == 2 and "exactly one query" in err
    rc, _, err = cli_search(capsys, "--index", full, "--text", "a cup", "--before", "2020-13-40")
    assert rc == 2 and "not a date" in err
    rc, _, err = cli_search(capsys, "--index", full, "--text", "a cup", "--class", "99-99")
    assert rc == 2 and "unknown class '99-99'" in err
    with pytest.raises(S.QueryError, match="not-an-image"):
        searcher.query(images=[b"GIF89a garbage"], image_names=["not-an-image.gif"])


def test_resume_after_a_crash_and_add_a_week(full, synthetic_shards, tiny_model, tmp_path):
    train = shards(synthetic_shards, "train")[:3]
    week = shards(synthetic_shards, "val")[:1]
    out = tmp_path / "idx"
    # a run that dies after its first committed part
    assert build(["--data", "::".join(train), "--checkpoint", tiny_model, "--out", out, "--stop-after-parts", "1"]) == 3
    done = sorted(p.name for p in (out / "parts").glob("*.json"))
    assert done == [X.part_name(train[0]) + ".json"] and not (out / "index.json").exists()
    first = (out / "parts" / (X.part_name(train[0]) + ".parquet")).stat()
    # the same command again: the committed part is kept, the rest embedded, the index written
    assert build(["--data", "::".join(train), "--checkpoint", tiny_model, "--out", out]) == 0
    again = (out / "parts" / (X.part_name(train[0]) + ".parquet")).stat()
    assert (again.st_mtime_ns, again.st_ino) == (first.st_mtime_ns, first.st_ino)
    for s in train:  # every part bit for bit the one the uninterrupted command-line build wrote
        np.testing.assert_array_equal(part_vectors(out, s), part_vectors(full, s))
    m1 = X.read_manifest(out)
    # a new week: embedded and appended; the faiss index extended, earlier rows unchanged
    assert B.main(["add", str(out), "--data", week[0], "--workers", "0", "--quiet"]) == 0
    m2 = X.read_manifest(out)
    assert [p["name"] for p in m2["parts"]] == [p["name"] for p in m1["parts"]] + [X.part_name(week[0])]
    assert m2["rows"] == m1["rows"] + m2["parts"][-1]["rows"] and m2["faiss"]["file"] != m1["faiss"]["file"]
    grown = X.PriorArtIndex.open(str(out))
    ref = X.PriorArtIndex.open(full)
    keys = ref.key.tolist()
    ref_rows = np.array([keys.index(k) for k in grown.key.tolist()])
    np.testing.assert_array_equal(grown.vectors(np.arange(grown.rows)), ref.vectors(ref_rows))
    # adding the same shards again is a no-op
    assert B.main(["add", str(out), "--data", week[0], "--workers", "0", "--quiet"]) == 0
    assert X.read_manifest(out)["rows"] == m2["rows"]
    # another model cannot add to this index
    other_model = fresh_tiny_model(tmp_path / "other-model", synthetic_shards["train_dir"] / "classes.json", 1)
    assert B.main(["add", str(out), "--data", shards(synthetic_shards, "val")[1], "--checkpoint", other_model,
                   "--workers", "0", "--quiet"]) == 2


def test_duplicate_drawings_are_refused_with_the_part_that_holds_them(full, synthetic_shards, tiny_model, tmp_path,
                                                                      capsys):
    week = shards(synthetic_shards, "val")[:1]
    out = tmp_path / "idx"
    assert build(["--data", week[0], "--checkpoint", tiny_model, "--out", out]) == 0
    other = tmp_path / "copy"
    other.mkdir()
    for f in (week[0], os.path.join(os.path.dirname(week[0]), "classes.json")):
        shutil.copy(f, other)
    assert B.main(["add", str(out), "--data", str(other / os.path.basename(week[0])), "--workers", "0",
                   "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is already in the index" in err and X.part_name(week[0]) in err


def test_two_ranks_build_the_same_index(full, synthetic_shards, tiny_model, tmp_path):
    sel = shards(synthetic_shards, "train")[:4]
    out = tmp_path / "idx2"
    r = run_cli("patentclip.evaluation.index_build", "build", "--data", "::".join(sel), "--checkpoint", tiny_model,
                "--out", out, "--workers", "0", "--batch-size", "16", "--quiet", "--nproc", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads((out / "parts" / (X.part_name(s) + ".json")).read_text()) for s in sel]
    assert all(rec["rows"] > 0 for rec in recs)
    for s in sel:
        np.testing.assert_array_equal(part_vectors(out, s), part_vectors(full, s))
    assert [p["shard"] for p in X.read_manifest(out)["parts"]] == sel
    assert re.search(r"rank 1/2: 2 shards to embed", r.stderr) and re.search(r"rank 0/2: 2 shards", r.stderr)


def test_bad_shards_lose_nothing(full, synthetic_shards, tiny_model, tmp_path):
    src = shards(synthetic_shards, "train")[:4]
    d = tmp_path / "shards"
    d.mkdir()
    shutil.copy(os.path.join(os.path.dirname(src[0]), "classes.json"), d)
    sizes = json.loads((synthetic_shards["train_dir"] / "sizes.json").read_text())
    (d / "sizes.json").write_text(json.dumps({f"a-{i:06d}.tar": sizes[os.path.basename(s)]
                                              for i, s in enumerate(src)}))
    shutil.copy(src[0], d / "a-000000.tar")
    with tarfile.open(src[1]) as tar:  # cut in the middle of an image's bytes
        png = [m for m in tar.getmembers() if m.name.endswith(".png")][10]
    (d / "a-000001.tar").write_bytes(open(src[1], "rb").read()[:png.offset_data + png.size // 2])
    with tarfile.open(src[3]) as tar:  # cut exactly where a member starts: reads as an intact, shorter tar
        cut = [m.offset for m in tar.getmembers()][len(tar.getmembers()) // 2]
    (d / "a-000003.tar").write_bytes(open(src[3], "rb").read()[:cut])
    out = tmp_path / "idx"
    data = str(d / "a-{000000..000003}.tar")  # a-000002.tar does not exist (yet)
    assert build(["--data", data, "--checkpoint", tiny_model, "--out", out]) == 1
    m = X.read_manifest(out)
    assert m["pending_shards"] == [str(d / "a-000002.tar")] and len(m["parts"]) == 3
    for name, kind in (("a-000001.tar", "corrupt_tar"), ("a-000003.tar", "truncated_shard")):
        rec = X.read_part_record(str(out), X.part_name(str(d / name)))
        assert [p["kind"] for p in rec["problems"]] == [kind] and 0 < rec["rows"] < 40, name
        # the complete samples before the damage are indexed, identical to those of the intact shard
        intact = src[1] if name == "a-000001.tar" else src[3]
        np.testing.assert_array_equal(part_vectors(out, str(d / name)), part_vectors(full, intact)[:rec["rows"]])
    assert not X.read_part_record(str(out), X.part_name(str(d / "a-000000.tar")))["problems"]
    # the missing shard appears: the next run embeds only it
    shutil.copy(src[2], d / "a-000002.tar")
    assert build(["--data", data, "--checkpoint", tiny_model, "--out", out]) == 0
    m = X.read_manifest(out)
    assert m["pending_shards"] == [] and len(m["parts"]) == 4
    np.testing.assert_array_equal(part_vectors(out, str(d / "a-000002.tar")), part_vectors(full, src[2]))


def test_evaluation_through_an_index_equals_evaluation_from_shards(synthetic_shards, tiny_model, tmp_path, capsys):
    """patentclip-eval --retrieval-index (the database from an index) gives today's metrics: bit for bit with
    float32 vectors (the same embeddings, batch for batch); the default float16 vectors move them a little (most
    for this untrained model, whose cosines all lie within a few hundredths of 1: docs/search.md)."""
    val = synthetic_shards["val"]
    base = ["--val-data", val, "--checkpoint", tiny_model, "--workers", "0", "--batch-size", "8",
            "--linear-probe", "off"]
    got = {}
    for name, extra in (("shards", ["--retrieval-db", val]), ("f32", None), ("f16", None)):
        if extra is None:
            folder = tmp_path / name
            assert B.main(["build", "--data", val, "--checkpoint", tiny_model, "--out", str(folder), "--vector-dtype",
                           {"f32": "float32", "f16": "float16"}[name], "--batch-size", "8", "--workers", "0",
                           "--quiet"]) == 0
            extra = ["--retrieval-index", str(folder)]
        assert ECLI.main(base + extra + ["--out", str(tmp_path / f"{name}.json")]) == 0
        got[name] = {k: v for k, v in json.loads((tmp_path / f"{name}.json").read_text()).items() if k.startswith("i2i_")}
    assert got["shards"]["i2i_num_valid_queries"] > 0
    assert got["f32"] == got["shards"]
    for k, v in got["shards"].items():
        assert got["f16"][k] == pytest.approx(v, abs=1e-2), k
    # an index of another model, or together with a baseline: refused before anything is embedded
    other = fresh_tiny_model(tmp_path / "other", synthetic_shards["val_dir"] / "classes.json", 1)
    capsys.readouterr()
    assert ECLI.main(["--val-data", val, "--checkpoint", other, "--retrieval-index", str(tmp_path / "f32")]) == 2
    assert "built with another model" in capsys.readouterr().err
    assert ECLI.main(base + ["--retrieval-index", str(tmp_path / "f32"), "--baseline", "untrained"]) == 2


# ------------------------------------------------------------------------------------------------------------
# S3 and the page
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_index(s3_server, synthetic_shards, tiny_model, tmp_path_factory):
    """Three train shards and one val shard in the S3 server, indexed from there."""
    s3_server.make_bucket("grants")
    fs = s3_server.filesystem()
    names = shards(synthetic_shards, "train")[:3] + shards(synthetic_shards, "val")[:1]
    for s in names:
        split = os.path.basename(os.path.dirname(s))
        fs.put(s, f"grants/{split}/{os.path.basename(s)}")
        for side in ("classes.json", "sizes.json"):
            fs.put(os.path.join(os.path.dirname(s), side), f"grants/{split}/{side}")
    urls = [f"s3://grants/{os.path.basename(os.path.dirname(s))}/{os.path.basename(s)}" for s in names]
    out = tmp_path_factory.mktemp("s3idx") / "idx"
    old = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())
    try:
        assert build(["--data", "::".join(urls), "--checkpoint", tiny_model, "--out", out]) == 0
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"folder": str(out), "urls": urls, "local": names, "env": s3_server.env()}


def test_index_from_s3_equals_the_local_one(s3_index, full, monkeypatch):
    for k, v in s3_index["env"].items():
        monkeypatch.setenv(k, v)
    idx = X.PriorArtIndex.open(s3_index["folder"])
    assert set(idx.shard.tolist()) == set(s3_index["urls"])
    for url, local in zip(s3_index["urls"], s3_index["local"]):
        np.testing.assert_array_equal(part_vectors(s3_index["folder"], url), part_vectors(full, local))
    row = idx.rows - 3
    with tarfile.open(s3_index["local"][-1]) as tar:
        assert DrawingReader(idx).read(row)[0] == tar.extractfile(idx.member[row]).read()


@pytest.fixture()
def server(s3_index):
    """``patentclip-search serve`` as its own process, on a free port, reading drawings from S3."""
    env = {**os.environ, **s3_index["env"], "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "patentclip.evaluation.search", "serve", "--index",
                             s3_index["folder"], "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    url, lines = None, []
    deadline = time.time() + 240
    while time.time() < deadline and url is None:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"on (http://127\.0\.0\.1:\d+/)", line)
        url = m.group(1) if m else None
    assert url, "".join(lines[-50:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.mark.slow
def test_page_in_headless_chromium(server, s3_index, synthetic_shards, tmp_path):
    idx, vs = stored_matrix(s3_index["folder"])
    row = idx.rows - 5  # a drawing of the val shard: a late patent, so that its prior art spans years
    key = idx.key[row]
    png = tmp_path / f"{key}.png"
    with tarfile.open(s3_index["local"][-1]) as tar:
        png.write_bytes(tar.extractfile(idx.member[row]).read())
    with urllib.request.urlopen(server + "api/info") as r:
        info = json.load(r)
    assert info["drawings"] == idx.rows and len(info["classes"]) == len(idx.classes)
    with Browser() as b:
        b.goto(server)
        b.wait_for("document.body.dataset.ready === '1'", what="the page to load the index info")
        assert b.evaluate("document.querySelectorAll('#class option').length") == len(idx.classes) + 1
        b.evaluate("document.querySelector('#top').value = '12'")
        b.set_files("#files", [str(png)])  # choosing the file starts the search
        b.wait_for("document.body.dataset.searches === '1'", what="the first search")
        cards = b.evaluate("""Array.from(document.querySelectorAll('.card')).map(c => ({
            patent: c.dataset.patent, granted: c.dataset.granted, score: parseFloat(c.dataset.score)}))""")
        assert len(cards) == 12, b.evaluate("document.querySelector('#status').textContent")
        # the page shows what brute force ranks first (the query drawing itself is indexed)
        searcher_q = vs[row][None]
        exp = brute_force(vs, meta_of(idx), searcher_q, None, 12)
        assert cards[0]["patent"] == idx.patent_id[row] and cards[0]["score"] > 0.999
        assert [c["patent"] for c in cards] == [idx.patent_id[r] for r, _ in exp]
        b.wait_for("Array.from(document.images).every(i => i.complete)", what="the images")
        bad = b.evaluate("Array.from(document.querySelectorAll('.card img')).filter(i => !(i.naturalWidth > 0))"
                         ".map(i => i.src)")
        assert bad == []
        # the prior-art date: later patents go, earlier ones stay
        dates = sorted(c["granted"] for c in cards)
        cut = dates[len(dates) // 2]
        b.evaluate(f"""(() => {{ const e = document.querySelector('#before'); e.value = '{cut}';
                       e.dispatchEvent(new Event('change')); }})()""")
        b.wait_for("document.body.dataset.searches === '2'", what="the search with the date filter")
        after = b.evaluate("Array.from(document.querySelectorAll('.card')).map(c => c.dataset.granted)")
        assert after and all(d < cut for d in after)
        assert not set(d for d in after) & set(c["granted"] for c in cards if c["granted"] >= cut)
        b.wait_for("Array.from(document.images).every(i => i.complete)", what="the images")
        assert b.evaluate("Array.from(document.querySelectorAll('.card img')).every(i => i.naturalWidth > 0)")
        # open the first result: all its views, every one loaded
        b.evaluate("document.querySelector('.card').click()")
        b.wait_for("document.querySelector('#detail').open", what="the patent's views")
        pid = b.evaluate("document.querySelector('.card').dataset.patent")
        b.wait_for("Array.from(document.querySelectorAll('#detail-views img')).every(i => i.complete)")
        views = b.evaluate("Array.from(document.querySelectorAll('#detail-views img')).map(i => i.naturalWidth)")
        assert len(views) == len(idx.rows_of_patent(pid)) and all(w > 0 for w in views)
        b.screenshot(str(tmp_path / "search-page.png"))
    with Image.open(tmp_path / "search-page.png") as im:
        assert im.size[0] >= 1200 and np.asarray(im.convert("L")).std() > 10
    # an upload that is not an image is answered with an error, not a crash
    req = urllib.request.Request(server + "api/search", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"images": [base64.b64encode(b"no image").decode()]}).encode())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 400 and "image" in json.load(e.value)["error"]
