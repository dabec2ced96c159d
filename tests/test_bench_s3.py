"""benchmarks/s3_streaming.py (issue 21): a rerun with the same --work-dir works and reuses the built shards; a
slow pass is decomposed into the loader's CPU cost and its share of the machine. Behaviour only, never speed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import s3_streaming  # noqa: E402


def _load(loader_s3, loader_local, others_s3=0.5, others_local=0.5):
    return {"s3": {"loader_cpu_s": loader_s3, "others_share": others_s3, "steal_s": 0.0, "iowait_s": 0.0},
            "local": {"loader_cpu_s": loader_local, "others_share": others_local, "steal_s": 0.0, "iowait_s": 0.0}}


def test_a_slow_pass_is_decomposed_into_cpu_cost_and_share():
    # pass 3: the loader used the same CPU on S3 as on local disk but got half the machine's share: contention
    paired = [1.0, 0.98, 0.5, 1.02]
    passes = [_load(10, 10), _load(10, 9.8), _load(10, 10, 0.9, 0.5), _load(10, 10.2)]
    load = {n: [p[n] for p in passes] for n in ("s3", "local")}
    parts = s3_streaming.decomposed(paired, load)
    assert [round(d["cpu_ratio"], 3) for d in parts] == [1.0, 0.98, 1.0, 1.02]
    assert parts[2]["share_ratio"] == pytest.approx(0.5)
    for d in parts:
        assert d["cpu_ratio"] * d["share_ratio"] == pytest.approx(d["ratio"])
    slow = s3_streaming.outliers(paired, load)
    assert [i for i, _ in slow] == [2]
    assert "loader CPU cost ratio 1.000 x share ratio 0.500" in slow[0][1] and "90% of the machine" in slow[0][1]
    assert s3_streaming.outliers(paired[:2], {n: v[:2] for n, v in load.items()}) == []   # too few to judge


@pytest.mark.slow
def test_rerun_with_the_same_work_dir(tmp_path):
    work = tmp_path / "work"
    outs = []
    for i in range(2):
        out = tmp_path / f"run{i}.json"
        proc = subprocess.run([sys.executable, str(BENCH / "s3_streaming.py"), "--quick", "--shard-mb", "0.05",
                               "--work-dir", str(work), "--json", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outs.append(json.loads(out.read_text()))
        if i == 0:
            built = {p: p.stat().st_mtime_ns for p in work.glob("sized-*/*.tar")}
            assert built
    assert {p: p.stat().st_mtime_ns for p in work.glob("sized-*/*.tar")} == built   # the shards were reused
    for res in outs:
        (size,) = res["sizes"]
        assert size["samples"] > 0 and size["ratio"] > 0 and size["cpu_cost_ratio"] > 0
        assert any(r["figure"].startswith("S3 / local disk") for r in res["summary"])
