"""Helpers shared by the benchmark scripts (a private module: ``run_all.py`` does not run it).

The summary contract: every benchmark's JSON has a top-level ``"summary"``, a list of rows

    {"figure": str, "value": float, "unit": str, "target": str or None, "met": bool or None}

``unit`` is "x" for a ratio, "%" for a percentage, or a rate/size ("samples/s", "drawings/s", "s", "MB", ...);
``target`` is a human-readable bound such as ">= 0.95x" (None when the figure has none) and ``met`` whether the
value meets it (None without a target). ``run_all.py`` collects the rows of every benchmark into one table.
"""
from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Iterable, List, Optional

UNITS_HINT = ("x", "%", "samples/s", "drawings/s", "s", "ms", "MB", "ns/pair")


def row(figure: str, value: float, unit: str, target: Optional[str] = None, met: Optional[bool] = None) -> dict:
    """One summary row. ``value`` is stored as a float (NaN/inf are kept as such: JSON writes them as
    NaN/Infinity, and ``run_all`` reports them as not finite)."""
    return {"figure": str(figure), "value": float(value), "unit": str(unit), "target": target,
            "met": None if met is None else bool(met)}


def at_least(figure: str, value: float, bound: float, unit: str = "x") -> dict:
    """A row with the target ``value >= bound``."""
    return row(figure, value, unit, f">= {bound:g}{_u(unit)}", value >= bound)


def at_most(figure: str, value: float, bound: float, unit: str = "x") -> dict:
    """A row with the target ``value <= bound``."""
    return row(figure, value, unit, f"<= {bound:g}{_u(unit)}", value <= bound)


def below(figure: str, value: float, bound: float, unit: str = "%") -> dict:
    """A row with the target ``value < bound`` (for a percentage: written with its sign, e.g. "< +5%")."""
    text = f"< {bound:+g}{_u(unit)}" if unit == "%" else f"< {bound:g}{_u(unit)}"
    return row(figure, value, unit, text, value < bound)


def _u(unit: str) -> str:
    return unit if unit in ("x", "%", "") else f" {unit}"


def validate_summary(rows: Iterable[dict]) -> List[str]:
    """Problems with a summary list (empty list = valid). Used by run_all and the tests."""
    problems = []
    if not isinstance(rows, list):
        return [f"summary is a {type(rows).__name__}, not a list"]
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            problems.append(f"row {i}: not an object")
            continue
        for key in ("figure", "value", "unit", "target", "met"):
            if key not in r:
                problems.append(f"row {i}: no {key!r}")
        if not isinstance(r.get("figure"), str) or not r.get("figure"):
            problems.append(f"row {i}: figure must be a non-empty string")
        v = r.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            problems.append(f"row {i} ({r.get('figure')}): value {v!r} is not a finite number")
        if r.get("target") is not None and not isinstance(r.get("target"), str):
            problems.append(f"row {i}: target must be a string or null")
        if r.get("met") is not None and not isinstance(r.get("met"), bool):
            problems.append(f"row {i}: met must be a bool or null")
    return problems


def write_json(path, data: dict) -> None:
    """Write a benchmark's JSON (creating the folder); ``data`` should carry ``"summary"``."""
    p = Path(path)
    if p.parent and not p.parent.exists():
        p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=str))


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so that ``finally`` blocks run (e.g. a SeaweedFS server the benchmark
    started is stopped when run_all stops the benchmark on a timeout)."""

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cpu_count() -> int:
    return os.cpu_count() or 1


def parse_args(parser, argv, quick_defaults: dict):
    """Parse ``argv``; with ``--quick``, ``quick_defaults`` replace the defaults (flags given explicitly still
    win). The parser must have a ``--quick`` flag."""
    a = parser.parse_args(argv)
    if getattr(a, "quick", False):
        parser.set_defaults(**quick_defaults)
        a = parser.parse_args(argv)
    return a


def temporary_dir(prefix: str) -> Path:
    """A temporary folder removed when the process exits (normally, by an exception or by SystemExit)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc; 0 when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu() -> dict:
    """The machine's CPU seconds so far from /proc/stat: ``busy`` (every state but idle and iowait, steal
    included), ``steal`` (time the hypervisor gave to other guests) and ``iowait`` (idle with disk I/O pending);
    zeros when unavailable."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {"busy": 0.0, "steal": 0.0, "iowait": 0.0}
    tick = os.sysconf("SC_CLK_TCK")
    iowait = fields[4] if len(fields) > 4 else 0
    idle = fields[3] + iowait
    steal = fields[7] if len(fields) > 7 else 0
    busy = sum(fields[:8]) - idle   # guest time is already counted in user
    return {"busy": busy / tick, "steal": steal / tick, "iowait": iowait / tick}


def descendants(pid: int) -> List[int]:
    """Process ids of the children of ``pid``, their children and so on (from /proc; [] when unavailable)."""
    out: List[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(x) for x in (t / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def tree_cpu(pid: int, exclude: Iterable[int] = ()) -> float:
    """CPU seconds of ``pid`` and its descendants, leaving out the trees rooted at ``exclude``."""
    skip = set(exclude)
    for e in list(skip):
        skip.update(descendants(e))
    return sum(proc_cpu(p) for p in [pid, *descendants(pid)] if p not in skip)
