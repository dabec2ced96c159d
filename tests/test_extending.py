"""docs/extending.md's worked examples are complete and work: each code block is saved as a module of a
temporary package, imported the way the doc says (``--plugins``), and used through the real entry points."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from conftest import run_cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_blocks():
    """{module name: source} for every python block of the doc (its first line names the file)."""
    out = {}
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        first = block.splitlines()[0]
        m = re.match(r"# (?:\S+/)?(\w+)\.py\b", first)
        assert m, f"a code block of {DOC.name} does not start with its file name: {first!r}"
        out[m.group(1)] = block
    return out


@pytest.fixture(scope="module")
def doc_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("extending")
    pkg = root / "docpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, src in doc_blocks().items():
        (pkg / f"{name}.py").write_text(src)
    from patentclip.evaluation.extra_metrics import METRICS
    from patentclip.plugins.registry import DATASETS, LOSSES, SAMPLERS
    from patentclip.shards.importers.registry import IMPORTERS

    registries = (DATASETS, SAMPLERS, LOSSES, IMPORTERS, METRICS)
    before = [dict(r._entries) for r in registries]
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    # the examples' registrations end with this module: later tests see the built-in registries (the resume test
    # checks that it covers every registered loss)
    for r, entries in zip(registries, before):
        r._entries.clear()
        r._entries.update(entries)
    for name in [m for m in sys.modules if m == "docpkg" or m.startswith("docpkg.")]:
        del sys.modules[name]


def test_every_extension_point_has_an_example():
    assert set(doc_blocks()) == {"center_pull", "tail_only", "tsv_pairs", "centroid_accuracy"}


def test_loss_example_trains_in_a_loss_set(doc_package):
    from patentclip.launch.args import default_args
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.classes import ClassInfo, ClassTable
    from patentclip.plugins.losses import LossSet
    from patentclip.plugins.registry import LOSSES, import_plugin_modules

    load_builtin_plugins()
    import_plugin_modules(["docpkg.center_pull"])
    assert "center_pull" in LOSSES
    table = ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", 5) for i in range(3)])
    losses = LossSet("clip=1,center_pull=0.1", default_args(model="patentclip-tiny"), table)
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(6, 64, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(6, 64, generator=g), dim=-1)
    total, terms = losses({"image_features": v, "text_features": t, "logit_scale": torch.tensor(10.0)},
                          {"class_id": torch.tensor([0, 1, 2, 0, 1, 2])})
    total.backward()
    assert set(terms) == {"clip", "center_pull"}
    assert torch.allclose(terms["center_pull"], (v ** 2).sum(-1).mean())  # centres start at zero
    assert losses.losses["center_pull"].centres.grad is not None  # the centres are trained


def test_sampler_example_is_a_pure_multiplicity(doc_package):
    from patentclip.launch.args import default_args
    from patentclip.plugins.classes import ClassInfo, ClassTable
    from patentclip.plugins.registry import SAMPLERS, import_plugin_modules

    import_plugin_modules(["docpkg.tail_only"])
    table = ClassTable([ClassInfo(i, f"{i:02d}-01", f"class {i}", n) for i, n in enumerate([50, 20, 3, 1])])
    sampler = SAMPLERS.build("tail_only", default_args(sampler="tail_only"), table)
    assert [sampler.multiplicity(0, 0, "k", c) for c in range(4)] == [1, 1, 2, 2]


def test_input_format_example_builds_shards_through_the_cli(doc_package, tmp_path):
    rows = []
    for p, (cls, date) in enumerate([("07-03", "2021-01-05"), ("21-01", "2020-06-30"), ("07-03", "2019-02-12")]):
        for v in range(2):
            img = Image.new("L", (48, 48), 255)
            img.paste(0, (8 + 4 * v, 8, 30 + 3 * p, 40))
            name = f"D90000{p}-{v}.png"
            img.save(tmp_path / name)
            rows.append(f"USD090000{p}\t{cls}\t{date}\t{name}")
    rows.append("a line with too few fields")
    (tmp_path / "pairs.tsv").write_text("\n".join(rows) + "\n")
    env = {"PYTHONPATH": str(doc_package)}
    out = tmp_path / "shards"
    r = run_cli("patentclip.shards.cli", "build", "--format", "tsv-pairs", "--plugins", "docpkg.tsv_pairs",
                "--manifest", tmp_path / "pairs.tsv", "--out", out, "--split", "train=1.0", "--no-progress", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = (out / "build_report.txt").read_text()
    assert "bad_line" in report  # the bad row is reported with its line, not dropped silently
    r = run_cli("patentclip.shards.cli", "inspect", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "[train] 6 drawings, 3 patents, 1 shards, granted 2019-02-12 .. 2021-01-05" in r.stdout
    assert "OK: no problems" in r.stdout


def test_metric_example_through_patentclip_eval(doc_package, synthetic_shards, tmp_path):
    """The doc's metric, registered by --plugins and asked for by --metrics, is in patentclip-eval's results with
    the value a plain nearest-centroid classifier gives on the same features; an unknown name stops at start."""
    from patentclip.evaluation.features import extract_features
    from patentclip.evaluation.loading import load_for_eval
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.registry import DATASETS

    env = {"PYTHONPATH": str(doc_package)}
    out = tmp_path / "metrics.json"
    r = run_cli("patentclip.evaluation.cli", "--val-data", synthetic_shards["val"], "--model", "patentclip-tiny",
                "--checkpoint", "untrained", "--linear-probe", "off", "--plugins", "docpkg.centroid_accuracy",
                "--metrics", "centroid_top1", "--out", out, "--workers", "0", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(out.read_text())
    got = got.get("metrics", got)
    # the same features, and nearest centroid written independently (numpy, per class mean, cosine argmax)
    load_builtin_plugins()
    torch.manual_seed(0)
    loaded = load_for_eval("untrained", "patentclip-tiny", None, "cpu")
    ct = load_class_table(synthetic_shards["val"])
    data_args = conftest.data_args(val=synthetic_shards["val"], batch_size=64)
    loader = DATASETS.get("patent-wds")(data_args, loaded.preprocess, False, tokenizer=loaded.tokenizer,
                                        class_table=ct).dataloader
    f = extract_features(loaded.model, loader, "cpu")
    v, y = f["image_features"].numpy().astype("float64"), f["class_id"].numpy()
    cents = np.zeros((len(ct), v.shape[1]))
    for c in range(len(ct)):
        if (y == c).any():
            cents[c] = v[y == c].sum(0)
            cents[c] /= np.linalg.norm(cents[c])
    expected = float(((v @ cents.T).argmax(1) == y).mean())
    assert got["centroid_top1"] == pytest.approx(expected, abs=1e-6)

    r = run_cli("patentclip.evaluation.cli", "--val-data", synthetic_shards["val"], "--model", "patentclip-tiny",
                "--checkpoint", "untrained", "--metrics", "no_such_metric", env=env)
    assert r.returncode == 2 and "unknown metric 'no_such_metric'; registered metric names" in r.stderr
