"""patentclip-eval --report: the HTML page and its PNG figures, opened in headless Chromium (every image must load),
and the numbers on the page against --out's JSON."""
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_evaluate import trained_run

from patentclip.evaluation import classification as EC
from patentclip.evaluation import cli as ECLI
from patentclip.evaluation import retrieval as ERT
from patentclip.evaluation import run as ERUN
from patentclip.evaluation import settings as ES
from patentclip.evaluation import report as R
from patentclip.plugins.classes import ClassInfo, ClassTable

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var r = Array.prototype.map.call(document.images, function (i) {
    return {src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight};
  });
  var pre = document.createElement('pre');
  pre.id = 'imgcheck';
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str:
    for cand in (os.environ.get("CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser")):
        if cand and os.path.exists(cand):
            return cand
    pytest.fail("headless Chromium is needed to check the report: run tests/install_chromium.sh "
                "(apt-get install chromium) or set $CHROMIUM")


def images_in_browser(page: Path):
    """Open ``page`` (a copy with a checking script, beside it so relative paths hold) in headless Chromium without
    network; returns [{src, ok, w, h}] for every <img> once the page has loaded."""
    src = page.read_text(encoding="utf-8")
    assert "</body>" in src
    check = page.parent / "_imgcheck.html"
    check.write_text(src.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        r = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--dump-dom",
                            check.as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        check.unlink()
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', r.stdout, re.S)
    assert m, f"the page did not finish loading in Chromium (rc {r.returncode}): {r.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def assert_page_ok(page: Path, expected_images):
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # self-contained, nothing from the network
    got = images_in_browser(page)
    assert sorted(i["src"] for i in got) == sorted(expected_images)
    bad = [i for i in got if not i["ok"]]
    assert not bad, f"images that did not load: {bad}"
    for i in got:  # real figures, not 1-pixel placeholders; the browser saw the PNG's own size
        with Image.open(page.parent / i["src"]) as im:
            assert im.format == "PNG" and (i["w"], i["h"]) == im.size and min(im.size) >= 200


def synthetic_result(n=240, n_cls=7, seed=0):
    """An EvalResult of made-up features (clustered by class), with examples, as run_evaluation returns it."""
    g = torch.Generator().manual_seed(seed)
    ct = ClassTable([ClassInfo(i, f"{i + 1:02d}-01", f"design class {i}", int(300 / (i + 1))) for i in range(n_cls)])
    y = torch.randint(0, n_cls, (n,), generator=g)
    x = torch.nn.functional.normalize(torch.randn(n_cls, 32, generator=g)[y] + torch.randn(n, 32, generator=g), dim=1)
    f = {"image_features": x, "text_features": x, "class_id": y, "grant_day": torch.randint(15000, 19000, (n,), generator=g),
         "patent_id": [f"P{i // 4}" for i in range(n)], "key": [f"k{i}" for i in range(n)], "view": ["front"] * n}
    s = ES.EvalSettings(linear_probe="off")
    is_head = ct.head_mask()
    ret = ERT.retrieval_from_features(f, None, s, is_head)
    cls_m, pc, info = EC.classification_from_features(f, n_cls, s, zs_classifier=torch.eye(32)[:, :n_cls], is_head=is_head)
    per_class = [{"id": c.id, "code": c.code, "name": c.name, "train_count": c.count, "eval_count": int((y == c.id).sum()),
                  "is_head": bool(is_head[c.id]), "i2i_mAP": 0.5, "linear_probe_top1": 0.5 + 0.05 * (c.id % 5),
                  **{k: v[c.id] for k, v in pc.items()}} for c in ct.classes]
    ex = ERT.retrieval_examples(f, None, s, ret["per_query"], ret["qidx"], is_head, n=4, k=5)
    settings = {**asdict(s), "prior_art_filter": True, **info, "head_classes": is_head.nonzero().flatten().tolist(),
                "retrieval_database": "evaluation split"}
    return ERUN.EvalResult({**ret["metrics"], **cls_m, "num_samples": float(n)}, per_class, settings, f, None, ex), ct


def test_report_page_loads_every_image(tmp_path):
    res, ct = synthetic_result()
    base, _ = synthetic_result(seed=1)
    base.features = None
    images = {}
    for k in [res.examples[0]["key"]] + [r["key"] for e in res.examples for r in e["results"]][:7]:
        a = np.full((48, 48, 3), 255, np.uint8)
        a[10:38, 20:28] = 0
        images[k] = a  # the other drawings are missing: drawn as "n/a" placeholders
    page = R.write_report(str(tmp_path), res, ct, baseline=base, images=images, title="synthetic",
                          model_label="model A", baseline_label="model B")
    expected = ["metrics.png", "per_class.png", "retrieval_examples.png", "embedding_map.png"]
    assert_page_ok(Path(page), expected)
    text = Path(page).read_text()
    assert "model A" in text and "model B" in text and "Head classes" in text and "Tail classes" in text
    # the check can fail: a page whose figure is missing or broken is caught
    (tmp_path / "per_class.png").write_bytes(b"not a png")
    os.remove(tmp_path / "embedding_map.png")
    got = {i["src"]: i["ok"] for i in images_in_browser(Path(page))}
    assert got == {"metrics.png": True, "per_class.png": False, "retrieval_examples.png": True,
                   "embedding_map.png": False}


def test_figures_with_many_classes(tmp_path):
    """30 classes: no legend (class codes at the clusters), per-class axis without tick labels; t-SNE map."""
    pytest.importorskip("sklearn")  # the dev extra has it
    res, ct = synthetic_result(n=240, n_cls=30, seed=2)
    R.per_class_figure(str(tmp_path / "per_class.png"), res.per_class, res.per_class)
    R.embedding_figure(str(tmp_path / "map.png"), res.features["image_features"], res.features["class_id"],
                       res.per_class, max_points=150)
    for fn in ("per_class.png", "map.png"):
        with Image.open(tmp_path / fn) as im:
            assert im.format == "PNG" and min(im.size) >= 200
    xy = R.embedding_2d(res.features["image_features"][:80], "tsne")
    assert xy.shape == (80, 2) and np.isfinite(xy).all()


@pytest.fixture(scope="module")
def run_dir(synthetic_shards, tmp_path_factory):
    return trained_run(tmp_path_factory, synthetic_shards)


def test_eval_cli_report_with_baseline(run_dir, synthetic_shards, tmp_path):
    out, report = tmp_path / "m.json", tmp_path / "report"
    # patentclip-eval's main, in this process (the command line itself is run by test_evaluate.py)
    assert ECLI.main(["--val-data", synthetic_shards["val"], "--checkpoint", str(run_dir / "checkpoints" / "epoch_1.pt"),
                   "--baseline", "untrained", "--model", "patentclip-tiny", "--workers", "0", "--out", str(out),
                   "--report", str(report), "--report-examples", "4", "--report-top-k", "4"]) == 0
    page = report / "index.html"
    assert_page_ok(page, ["metrics.png", "per_class.png", "retrieval_examples.png", "embedding_map.png"])
    m = json.loads(out.read_text())
    text = page.read_text()
    # the Table 1 layout: this model's row then the baseline's, numbers as in the JSON (percent, 1 decimal)
    cells = re.findall(r"<td data-key='([^']+)'>([^<]*)</td>", text)
    by_key = {}
    for key, val in cells:
        by_key.setdefault(html.unescape(key), []).append(val)
    for key in ("i2i_head/mAP", "i2i_tail/R@5", "i2i_R@10", "i2i_MRR@10", "zeroshot_top1", "classifier_top1",
                "image_to_text_R@5"):
        assert by_key[key][0] == f"{100 * m[key]:.1f}", key
        if key in m["baseline"]["metrics"]:
            assert by_key[key][1] == f"{100 * m['baseline']['metrics'][key]:.1f}", key
    assert "classifier_top1" not in m["baseline"]["metrics"]  # an untrained model has no head
    assert m["baseline"]["metrics"]["zeroshot_top1"] != m["zeroshot_top1"]
    # retrieval examples really show drawings: the figure is not mostly blank
    with Image.open(report / "retrieval_examples.png") as im:
        a = np.asarray(im.convert("L"))
    assert (a < 100).mean() > 0.01
