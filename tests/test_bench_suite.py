"""The benchmark suite runner (benchmarks/run_all.py, ``make bench``): it runs the benchmark scripts, collects
their "summary" rows and writes bench.json / bench.md with the machine described. Behaviour only, never speed."""
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402
from _common import row, validate_summary  # noqa: E402

MACHINE_KEYS = ("cpu", "cores", "ram_gb", "os", "python", "versions", "gpu", "date")


def test_quick_suite_writes_json_and_markdown(tmp_path):
    """The two quickest real benchmarks in quick mode: each one's summary rows end up in bench.json and bench.md,
    with the machine, wall time, peak memory and exit code."""
    out = tmp_path / "bench"
    names = ["data_throughput", "eval_scaling"]
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--only", ",".join(names),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[bench]" in proc.stderr  # progress lines on stderr

    report = json.loads((out / "bench.json").read_text())
    machine = report["machine"]
    for key in MACHINE_KEYS:
        assert machine.get(key) not in (None, ""), key
    assert machine["cores"] >= 1 and machine["ram_gb"] > 0
    for lib in ("torch", "open_clip", "deepspeed", "webdataset"):
        assert machine["versions"][lib], lib
    assert "wait4" in report["memory_measure"]
    assert report["failed"] == []
    assert list(report["benchmarks"]) == names

    md = (out / "bench.md").read_text()
    assert "## Machine" in md and machine["cpu"] in md and f"| GPU | {machine['gpu']} |" in md
    for name in names:
        rec = report["benchmarks"][name]
        assert rec["status"] == "ok" and rec["exit_code"] == 0
        assert rec["wall_s"] > 0 and rec["peak_rss_mb"] > 0 and rec["peak_tree_pss_mb"] >= 0
        assert (out / f"{name}.log").stat().st_size > 0
        # the benchmark's own JSON, in full, with a valid summary
        own = json.loads((out / f"{name}.json").read_text())
        assert rec["result"] == own
        rows = own["summary"]
        assert rows and validate_summary(rows) == []
        for r in rows:
            assert math.isfinite(r["value"])
            assert {**r, "benchmark": name} in report["summary"]
            assert f"| {name} | {r['figure']} | " in md
        assert f"| {name} | ok | 0 | " in md
    # each script's targeted headline figure is there
    figures = {(r["benchmark"], r["figure"]) for r in report["summary"] if r["target"]}
    assert ("data_throughput", "patentclip / open_clip pipeline (views off)") in figures
    assert any(b == "eval_scaling" and "exponent" in f for b, f in figures)
    assert "All benchmarks ran." in md


def _record(name, status_json, exit_code=0, wall=1.5, rss=100.0, tmp=None):
    """A hand-made run record, classified as run_all does after a run."""
    path = None
    if tmp is not None:
        path = tmp / f"{name}.json"
        if status_json is not None:
            path.write_text(json.dumps(status_json) if not isinstance(status_json, str) else status_json)
    rec = {"name": name, "command": f"python benchmarks/{name}.py", "exit_code": exit_code, "wall_s": wall,
           "peak_rss_mb": rss, "peak_tree_pss_mb": rss * 1.5, "timed_out": False, "log": f"/x/{name}.log",
           "json": str(path), "result": None, "error": None}
    return run_all.classify(rec, path)


def test_aggregation_and_markdown_on_hand_made_results(tmp_path):
    good = {"summary": [row("a / b", 1.02, "x", "<= 1.10x", True),
                        row("terms", 3.0, "%", "< +5%", True),
                        row("pipeline", 1234.5, "samples/s"),
                        row("miss", 0.5, "x", ">= 0.95x", False)],
            "extra": {"kept": [1, 2, 3]}}
    records = [
        _record("good", good, tmp=tmp_path),
        _record("crashed", None, exit_code=1, tmp=tmp_path),  # no JSON, exit 1
        _record("nan_value", {"summary": [{"figure": "f", "value": float("nan"), "unit": "x", "target": None,
                                           "met": None}]}, tmp=tmp_path),
        _record("no_summary", {"figures": {"a": 1}}, tmp=tmp_path),
        _record("partial", {"summary": [row("before the crash", 2.0, "s")]}, exit_code=3, tmp=tmp_path),
        _record("no_gpu", {"skipped": "no CUDA device", "summary": []}, tmp=tmp_path),
    ]
    status = {r["name"]: r["status"] for r in records}
    assert status == {"good": "ok", "crashed": "failed", "nan_value": "failed", "no_summary": "failed",
                      "partial": "failed", "no_gpu": "skipped"}
    assert "exit code 1" in records[1]["error"] and "no JSON" not in records[1]["error"]
    assert "not a finite number" in records[2]["error"]
    assert "summary" in records[3]["error"]

    machine = {"cpu": "Test CPU 9000", "cores": 2, "cores_usable": 2, "ram_gb": 8.0, "os": "Linux-test",
               "python": "CPython 3.11.0", "versions": {"torch": "2.0", "open_clip": "3.0", "deepspeed": "0.1",
                                                        "webdataset": "1.0"},
               "gpu": "none", "date": "2026-01-01T00:00:00+00:00", "load_average_1min_at_start": 0.1}
    report = run_all.aggregate(records, machine, {"command": "python benchmarks/run_all.py", "quick": False})
    assert report["failed"] == ["crashed", "nan_value", "no_summary", "partial"]
    assert report["skipped"] == ["no_gpu"]
    assert report["benchmarks"]["good"]["result"] == good  # the full JSON, extra keys included
    assert [r["figure"] for r in report["summary"] if r["benchmark"] == "good"] == ["a / b", "terms", "pipeline",
                                                                                   "miss"]
    assert {"benchmark": "partial", **row("before the crash", 2.0, "s")} in report["summary"]

    run_all.write_report(report, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["failed"] == report["failed"]
    md = (tmp_path / "out" / "bench.md").read_text()
    assert md == run_all.render_markdown(report)
    assert "| CPU | Test CPU 9000 |" in md and "| GPU | none |" in md and "torch 2.0" in md
    assert "| good | a / b | 1.020x | <= 1.10x | yes |" in md
    assert "| good | terms | 3.0% | < +5% | yes |" in md
    assert "| good | pipeline | 1234 samples/s |  |  |" in md
    assert "| good | miss | 0.500x | >= 0.95x | NO |" in md
    assert "| crashed | **FAILED**: exit code 1 | | | |" in md
    assert "| partial | before the crash | 2 s |  |  |" in md and "| partial | **FAILED**: exit code 3" in md
    assert "| no_gpu | skipped: no CUDA device |" in md
    assert "| good | ok | 0 | 1.5 | 100 | 150 | good.log |" in md
    assert "| crashed | **FAILED** | 1 | 1.5 | 100 | 150 | crashed.log |" in md
    failed_line = next(line for line in md.splitlines() if line.startswith("**Failed:**"))
    for name in ("crashed", "nan_value", "no_summary", "partial"):
        assert name in failed_line
    assert "All benchmarks ran." not in md


@pytest.fixture()
def fake_benchmarks(tmp_path):
    """A folder of tiny stand-in benchmark scripts: one good, one crashing after printing, one hanging; plus a
    private helper module and a run_all.py that must not be run."""
    folder = tmp_path / "fake"
    folder.mkdir()
    head = "import json, sys\nout = sys.argv[sys.argv.index('--json') + 1]\n"
    (folder / "alpha.py").write_text(head + textwrap.dedent("""
        quick = '--quick' in sys.argv
        buf = bytearray(30 * 2 ** 20)  # some memory to measure
        print('alpha running, quick' if quick else 'alpha running')
        json.dump({"summary": [{"figure": "alpha / ref", "value": 1.25, "unit": "x", "target": ">= 1x",
                                "met": True}], "quick": quick}, open(out, "w"))
    """))
    (folder / "beta.py").write_text(head + "print('beta starts')\nraise RuntimeError('beta broke')\n")
    (folder / "gamma.py").write_text("import time\nprint('gamma hangs', flush=True)\ntime.sleep(120)\n")
    (folder / "_helper.py").write_text("raise SystemExit('a private module must not be run')\n")
    (folder / "run_all.py").write_text("raise SystemExit('run_all must not run itself')\n")
    return folder


def test_failures_do_not_stop_the_others_and_exit_non_zero(fake_benchmarks, tmp_path, capsys):
    assert run_all.discover(fake_benchmarks) == ["alpha", "beta", "gamma"]
    out = tmp_path / "out"
    rc = run_all.main(["--benchmarks-dir", str(fake_benchmarks), "--out", str(out), "--quick", "--timeout", "3",
                       "--sample-s", "0.05"])
    assert rc == 1
    assert "[bench] 3/3 gamma" in capsys.readouterr().err
    report = json.loads((out / "bench.json").read_text())
    recs = report["benchmarks"]
    assert list(recs) == ["alpha", "beta", "gamma"]
    assert recs["alpha"]["status"] == "ok" and recs["alpha"]["result"]["quick"] is True
    assert recs["alpha"]["peak_rss_mb"] > 30 and recs["alpha"]["wall_s"] > 0
    assert recs["beta"]["status"] == "failed" and recs["beta"]["exit_code"] == 1
    assert "beta broke" in (out / "beta.log").read_text() and "beta starts" in (out / "beta.log").read_text()
    assert recs["gamma"]["status"] == "failed" and recs["gamma"]["timed_out"]
    assert "timed out" in recs["gamma"]["error"] and recs["gamma"]["wall_s"] < 60
    assert report["failed"] == ["beta", "gamma"]
    assert "alpha running, quick" in (out / "alpha.log").read_text()
    md = (out / "bench.md").read_text()
    assert "| alpha | alpha / ref | 1.250x | >= 1x | yes |" in md
    assert "**Failed:** beta (" in md and "gamma (" in md

    # --only / --skip select by name; an unknown name is refused
    rc = run_all.main(["--benchmarks-dir", str(fake_benchmarks), "--out", str(tmp_path / "o2"), "--only",
                       "alpha,beta", "--skip", "beta"])
    assert rc == 0
    assert list(json.loads((tmp_path / "o2" / "bench.json").read_text())["benchmarks"]) == ["alpha"]
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run_all.main(["--benchmarks-dir", str(fake_benchmarks), "--out", str(tmp_path / "o3"), "--only", "delta"])


def test_every_real_benchmark_has_json_and_quick_flags():
    """run_all passes --json PATH (and --quick) to every script under benchmarks/: each one accepts them."""
    names = run_all.discover()
    assert {"data_throughput", "step_overhead", "shard_build", "eval_scaling", "s3_streaming"} <= set(names)
    for name in names:
        help_text = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], capture_output=True,
                                   text=True, timeout=120).stdout
        assert "--json" in help_text and "--quick" in help_text, name
