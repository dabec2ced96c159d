#!/usr/bin/env python
"""Run every benchmark under ``benchmarks/`` and write one JSON and one markdown table (``make bench``).

    python benchmarks/run_all.py                                  # every benchmark, full size -> bench-results/
    python benchmarks/run_all.py --quick                          # tiny sizes: checks the scripts, in minutes
    python benchmarks/run_all.py --only data_throughput,s3_streaming --out /tmp/bench
    python benchmarks/run_all.py --skip gpu_throughput

Each ``benchmarks/*.py`` other than this script and private ``_*.py`` modules is run, one after the other, as a
subprocess ``python benchmarks/NAME.py --json OUT/NAME.json`` (plus ``--quick`` with ``--quick``), its console
output kept in ``OUT/NAME.log``. Each benchmark measures its own ratios within its one run (the pipeline against
open_clip's on the same shards, the trainer against vanilla open_clip on the same model and batch, S3 against local
disk, ...) and writes them as the ``"summary"`` rows of its JSON (benchmarks/_common.py):
``{"figure", "value", "unit", "target", "met"}``.

Recorded per benchmark: wall time, exit code and two memory figures:

* ``peak_rss_mb``: ``ru_maxrss`` of ``os.wait4`` on the benchmark process: the largest peak resident set size of
  the benchmark process and of each of its descendants it waited for (DataLoader workers, shard-build workers, a
  SeaweedFS server). The maximum over these processes, not their sum; exact (the kernel's own peak).
* ``peak_tree_pss_mb``: the sum of the proportional set size (PSS; shared pages divided between the processes
  sharing them) over the benchmark's whole process tree, sampled every ``--sample-s`` seconds (default 0.5): what
  the benchmark occupied at once, but a sampled value that can miss a short spike.

A benchmark fails when it exits non-zero, times out (``--timeout``), writes no JSON or a JSON without a valid
``"summary"``; the others still run, the markdown lists the failures and this script exits 1 at the end. A
benchmark that cannot run on this machine (e.g. no GPU) may exit 0 with ``"skipped": "<reason>"`` in its JSON:
it is then reported as skipped, not failed.

Written to ``OUT`` (default ``bench-results/`` in the repository; ignored by git): ``bench.json`` (the machine:
CPU model, cores, RAM, OS, Python, torch/open_clip/deepspeed/webdataset versions, GPU or "none", date; then per
benchmark its full JSON, status, wall s, peak memory, exit code) and ``bench.md`` (the machine, one table of
every summary row, then wall time and peak memory per benchmark). Progress lines go to stderr (``-v`` also
echoes each benchmark's output). The machine's description is ``benchmarks/_machine.py``, the process tree's
memory ``benchmarks/_memory.py``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import validate_summary  # noqa: E402
from _machine import machine_info  # noqa: E402
from _memory import TreeSampler  # noqa: E402

MEMORY_NOTE = ("peak_rss_mb: ru_maxrss from os.wait4 on the benchmark process = the largest peak RSS of the "
               "benchmark process and of each descendant it waited for (max over processes, not a sum); "
               "peak_tree_pss_mb: sum of PSS over the benchmark's process tree, sampled every {s:g} s")


# ---------------------------------------------------------------------------------------------------------
# running one benchmark

def discover(folder: Path = HERE) -> List[str]:
    """The benchmark names: every ``*.py`` in ``folder`` except this script and private ``_*.py`` modules."""
    me = Path(__file__).name
    return sorted(p.stem for p in folder.glob("*.py") if p.name != me and not p.name.startswith("_"))


def select(names: List[str], only: Optional[str], skip: Optional[str]) -> List[str]:
    def parse(s):
        return [x.strip().removesuffix(".py") for x in s.split(",") if x.strip()] if s else []

    only_l, skip_l = parse(only), parse(skip)
    unknown = [x for x in only_l + skip_l if x not in names]
    if unknown:
        raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; there are: {', '.join(names)}")
    chosen = [n for n in names if n in only_l] if only_l else list(names)
    return [n for n in chosen if n not in skip_l]


def run_benchmark(name: str, out: Path, quick: bool, timeout: float, python: str = sys.executable,
                  echo: bool = False, sample_s: float = 0.5, folder: Path = HERE) -> dict:
    """Run ``folder/name.py --json out/name.json [--quick]``; returns its record for bench.json."""
    json_path, log_path = out / f"{name}.json", out / f"{name}.log"
    for p in (json_path, log_path):
        if p.exists():
            p.unlink()
    cmd = [python, str(folder / f"{name}.py"), "--json", str(json_path)] + (["--quick"] if quick else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    timed_out = False
    with open(log_path, "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                start_new_session=True, text=True, errors="replace", bufsize=1)
        sampler = TreeSampler(proc.pid, sample_s)
        sampler.start()

        def pump():
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if echo:
                    sys.stderr.write(f"  {name} | {line}")
                    sys.stderr.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        status, usage = None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline and not timed_out:
                timed_out = True
                log.write(f"\n[run_all] timeout after {timeout:g} s: SIGTERM to the benchmark's process group\n")
                _signal_group(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 30  # then SIGKILL
            elif timed_out and time.monotonic() > deadline:
                _signal_group(proc.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        reader.join(timeout=30)
    rec = {"name": name, "command": shlex.join(cmd), "exit_code": proc.returncode, "wall_s": round(wall, 3),
           "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
           "peak_tree_pss_mb": round(sampler.peak, 1), "timed_out": timed_out, "log": str(log_path),
           "json": str(json_path), "result": None, "error": None}
    return classify(rec, json_path)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the benchmark was started in its own session: pgid == pid
    except (ProcessLookupError, PermissionError):
        pass


def classify(rec: dict, json_path: Optional[Path]) -> dict:
    """Read the benchmark's JSON into ``rec`` and set ``status`` (ok / skipped / failed) and ``error``."""
    errors = []
    if rec.get("timed_out"):
        errors.append("timed out")
    if rec["exit_code"] != 0:
        errors.append(f"exit code {rec['exit_code']}")
    if json_path is not None:
        if json_path.exists():
            try:
                rec["result"] = json.loads(json_path.read_text())
            except ValueError as exc:
                errors.append(f"unreadable JSON: {exc}")
        elif rec["exit_code"] == 0:
            errors.append("wrote no JSON")
    res = rec.get("result")
    skipped = isinstance(res, dict) and res.get("skipped")
    if res is not None and not skipped:
        if not isinstance(res, dict) or "summary" not in res:
            errors.append('no top-level "summary" in its JSON')
        else:
            problems = validate_summary(res["summary"])
            if problems:
                errors.append("invalid summary: " + "; ".join(problems[:5]))
    if errors:
        rec["status"], rec["error"] = "failed", "; ".join(errors)
    elif skipped:
        rec["status"], rec["error"] = "skipped", str(res.get("skipped"))
    else:
        rec["status"] = "ok"
    return rec


# ---------------------------------------------------------------------------------------------------------
# aggregation

def aggregate(records: List[dict], machine: dict, meta: Optional[dict] = None, sample_s: float = 0.5) -> dict:
    """bench.json's content: the machine, how memory was measured, every benchmark's record (its full JSON under
    "result"), all summary rows in one list, and the failed benchmarks."""
    rows = []
    for rec in records:
        res = rec.get("result")
        if isinstance(res, dict) and isinstance(res.get("summary"), list):
            for r in res["summary"]:
                if isinstance(r, dict):
                    rows.append({"benchmark": rec["name"], **r})
    return {"machine": machine, **(meta or {}), "memory_measure": MEMORY_NOTE.format(s=sample_s),
            "benchmarks": {rec["name"]: rec for rec in records}, "summary": rows,
            "failed": [rec["name"] for rec in records if rec.get("status") == "failed"],
            "skipped": [rec["name"] for rec in records if rec.get("status") == "skipped"]}


def fmt_value(value, unit: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r}"
    if not math.isfinite(value):
        return f"{value} {unit}".strip()
    if unit == "x":
        return f"{value:.3f}x"
    if unit == "%":
        return f"{value:.1f}%"
    a = abs(value)
    text = f"{value:.0f}" if a >= 100 else f"{value:.1f}" if a >= 10 else f"{value:.3g}"
    return f"{text} {unit}".strip()


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict) -> str:
    m = report["machine"]
    v = m.get("versions", {})
    lines = ["# patentclip benchmarks", ""]
    mode = "quick mode: tiny sizes that check the scripts, the figures mean little" if report.get("quick") \
        else "full sizes"
    cmd = f"`{report['command']}`, " if report.get("command") else ""
    lines.append(f"{cmd}{mode}; {m.get('date')}.")
    lines += ["", "Every ratio is measured within one benchmark's run (both sides interleaved on this machine).", "",
              "## Machine", "", "| | |", "|---|---|",
              f"| CPU | {_cell(m.get('cpu'))} |",
              f"| cores | {m.get('cores')} ({m.get('cores_usable')} usable) |",
              f"| RAM | {m.get('ram_gb')} GB |",
              f"| GPU | {_cell(m.get('gpu'))} |",
              f"| OS | {_cell(m.get('os'))} |",
              f"| Python | {_cell(m.get('python'))} |",
              "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + " |",
              f"| load average (1 min) | {m.get('load_average_1min_at_start')} at start"
              + (f", {report['load_average_1min_at_end']} at end" if "load_average_1min_at_end" in report else "")
              + " |"]
    if m.get("git_commit"):
        lines.append(f"| commit | {m['git_commit']} |")
    lines += ["", "## Figures", "", "| benchmark | figure | value | target | met |", "|---|---|---:|---|---|"]
    benches = report["benchmarks"]
    for name, rec in benches.items():
        res = rec.get("result")
        rows = res.get("summary") if isinstance(res, dict) else None
        if rec.get("status") == "failed" and not rows:
            lines.append(f"| {name} | **FAILED**: {_cell(rec.get('error'))} | | | |")
            continue
        if rec.get("status") == "skipped":
            lines.append(f"| {name} | skipped: {_cell(rec.get('error'))} | | | |")
            continue
        for r in rows or []:
            if not isinstance(r, dict):
                continue
            met = r.get("met")
            lines.append(f"| {name} | {_cell(r.get('figure'))} | {fmt_value(r.get('value'), r.get('unit', ''))} | "
                         f"{_cell(r.get('target') or '')} | {'yes' if met is True else 'NO' if met is False else ''} |")
        if rec.get("status") == "failed":
            lines.append(f"| {name} | **FAILED**: {_cell(rec.get('error'))} | | | |")
    lines += ["", "## Runs", "", "| benchmark | status | exit code | wall s | peak RSS MB | peak tree PSS MB | log |",
              "|---|---|---:|---:|---:|---:|---|"]
    for name, rec in benches.items():
        status = "**FAILED**" if rec.get("status") == "failed" else rec.get("status")
        lines.append(f"| {name} | {status} | {rec.get('exit_code')} | {rec.get('wall_s', 0):.1f} | "
                     f"{rec.get('peak_rss_mb', 0):.0f} | {rec.get('peak_tree_pss_mb', 0):.0f} | "
                     f"{_cell(Path(rec['log']).name) if rec.get('log') else ''} |")
    lines += ["", f"Memory: {report.get('memory_measure', '')}.", ""]
    if report.get("failed"):
        lines.append("**Failed:** " + ", ".join(
            f"{n} ({_cell(benches[n].get('error'))})" for n in report["failed"]) + " -- see their logs.")
    else:
        lines.append("All benchmarks ran.")
    if report.get("skipped"):
        lines.append("Skipped: " + ", ".join(f"{n} ({_cell(benches[n].get('error'))})" for n in report["skipped"]))
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "bench.md").write_text(render_markdown(report))


# ---------------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(REPO / "bench-results"), help="Output folder (default: bench-results/).")
    p.add_argument("--quick", action="store_true", help="Pass --quick to every benchmark (tiny sizes).")
    p.add_argument("--only", default=None, help="Comma-separated benchmark names to run (default: all).")
    p.add_argument("--skip", default=None, help="Comma-separated benchmark names not to run.")
    p.add_argument("--timeout", type=float, default=None,
                   help="Seconds per benchmark before it is stopped and counted failed (default: 3600; 600 quick).")
    p.add_argument("--sample-s", type=float, default=0.5, help="Interval of the process-tree memory sampling.")
    p.add_argument("--list", action="store_true", help="List the benchmarks and exit.")
    p.add_argument("-v", "--verbose", action="store_true", help="Echo each benchmark's output to stderr too.")
    p.add_argument("--benchmarks-dir", default=str(HERE), help=argparse.SUPPRESS)  # the tests' fake benchmarks
    a = p.parse_args(argv)
    folder = Path(a.benchmarks_dir)
    names = discover(folder)
    if a.list:
        print("\n".join(names))
        return 0
    chosen = select(names, a.only, a.skip)
    timeout = a.timeout or (600.0 if a.quick else 3600.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    meta = {"command": shlex.join([Path(sys.executable).name, "benchmarks/run_all.py", *(argv or sys.argv[1:])]),
            "quick": a.quick, "timeout_s": timeout}
    print(f"[bench] {len(chosen)} benchmark(s) -> {out}: {', '.join(chosen)}"
          f"{' (quick)' if a.quick else ''}; {machine['cpu']}, {machine['cores']} cores, GPU {machine['gpu']}",
          file=sys.stderr, flush=True)
    records = []
    for i, name in enumerate(chosen, 1):
        print(f"[bench] {i}/{len(chosen)} {name} ...", file=sys.stderr, flush=True)
        rec = run_benchmark(name, out, a.quick, timeout, echo=a.verbose, sample_s=a.sample_s, folder=folder)
        records.append(rec)
        print(f"[bench] {i}/{len(chosen)} {name}: {rec['status']}{': ' + rec['error'] if rec['error'] else ''}; "
              f"{rec['wall_s']:.1f} s, peak RSS {rec['peak_rss_mb']:.0f} MB, tree PSS {rec['peak_tree_pss_mb']:.0f} "
              f"MB", file=sys.stderr, flush=True)
        if rec["status"] == "failed":
            tail = Path(rec["log"]).read_text(errors="replace").splitlines()[-15:]
            print("\n".join(f"    {line}" for line in tail), file=sys.stderr, flush=True)
        meta["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
        write_report(aggregate(records, machine, meta, a.sample_s), out)  # after each: a partial report survives
    report = aggregate(records, machine, meta, a.sample_s)
    write_report(report, out)
    print(f"[bench] wrote {out / 'bench.json'} and {out / 'bench.md'}; "
          + (f"FAILED: {', '.join(report['failed'])}" if report["failed"] else "all ran"), file=sys.stderr, flush=True)
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
