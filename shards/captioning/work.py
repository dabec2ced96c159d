"""Splitting the drawings across processes, ranks and SLURM array tasks; committing parts; resuming.

**Plan.** The drawings are numbered in input order (:func:`~.prompts.drawing_tasks`) and cut into **parts** of
``part_size`` consecutive drawings: part ``p`` is the range ``[p * part_size, min((p + 1) * part_size, N))``.
``OUT/plan.json`` records the number of drawings, a digest of their keys, the part size and every setting that
decides what is written (models, engines, instructions, seed, sampling, cleaning). The first worker writes it; every
later worker, and every rerun, must find the same plan, otherwise it stops and names the settings that differ (a
changed model or instruction never mixes into an output).

**Workers.** Worker ``i`` of ``n`` (:func:`worker_identity`: ``--task-index/--num-tasks``, else the SLURM array
task and the SLURM task within it, else ``RANK``/``WORLD_SIZE``, else one worker) takes the parts ``p`` with
``p % n == i`` first, then, unless ``--no-steal``, any other part that is neither done nor held: a straggler's or a
dead task's parts are finished by the others. A part is held with an exclusive ``flock`` on ``parts/part-P.lock``
(released by the kernel when the holder dies, also on a SIGKILL), so two workers never caption the same part.

**Journal and commit.** While a part is worked on, each finished batch is appended to ``parts/part-P.journal``
(one JSON line per drawing) and flushed to disk (``fsync``) before the next batch starts: a killed worker loses at
most the batch it was generating. A line torn by the kill is cut off when the part is next opened. When every
drawing of the part is in the journal, the part is committed: ``part-P.stats.json`` and then ``part-P.jsonl``
(the captions-file lines, in input order) are written under temporary names, flushed and renamed; the journal is
removed last. A part is done exactly when ``part-P.jsonl`` exists and its stats carry the plan's fingerprint: a
rerun skips it. Drawings whose generation failed (an endpoint down, a server error after all retries) are not
journaled: their part stays open and the next run generates them. Drawings that cannot be captioned at all (an
unreadable image) are journaled as failed, reported, and do not hold the part open.

**Output.** When all parts are done, the worker that notices writes ``OUT/captions.jsonl`` (the parts in order:
exactly the format ``patentclip-shards build --captions`` joins) and ``caption_report.json`` / ``.txt``, each
under a temporary name and renamed, so several workers finishing together write the same files harmlessly.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from patentclip.plugins import fault_points

PLAN_FILE = "plan.json"
PARTS_DIR = "parts"
RUNS_DIR = "runs"
CAPTIONS_FILE = "captions.jsonl"
PLAN_VERSION = 1


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Plan:
    """The parts of a run (module docstring)."""

    total: int
    part_size: int
    keys_sha256: str
    settings: Dict[str, Any]

    @property
    def num_parts(self) -> int:
        return (self.total + self.part_size - 1) // self.part_size

    @property
    def fingerprint(self) -> str:
        return _sha([PLAN_VERSION, self.total, self.part_size, self.keys_sha256, self.settings])

    def part_range(self, p: int) -> Tuple[int, int]:
        return p * self.part_size, min(self.total, (p + 1) * self.part_size)

    def to_dict(self) -> Dict[str, Any]:
        return {"version": PLAN_VERSION, "fingerprint": self.fingerprint, "drawings": self.total,
                "part_size": self.part_size, "parts": self.num_parts, "keys_sha256": self.keys_sha256,
                "settings": self.settings}


def make_plan(keys: Sequence[str], part_size: int, settings: Dict[str, Any]) -> Plan:
    if part_size < 1:
        raise ValueError("--part-size must be at least 1")
    h = hashlib.sha256()
    for k in keys:
        h.update(k.encode("utf-8") + b"\n")
    return Plan(len(keys), int(part_size), h.hexdigest(), json.loads(json.dumps(settings)))


def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def plan_differences(old: Dict[str, Any], new: Plan) -> List[str]:
    """Readable differences between a stored plan (``plan.json``) and ``new``."""
    diffs = []
    for name, a, b in (("drawings", old.get("drawings"), new.total), ("part_size", old.get("part_size"),
                                                                      new.part_size),
                       ("input keys (sha256)", old.get("keys_sha256"), new.keys_sha256)):
        if a != b:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    fa, fb = _flat(old.get("settings") or {}), _flat(new.settings)
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k) != fb.get(k):
            diffs.append(f"{k}: {fa.get(k)!r} -> {fb.get(k)!r}")
    return diffs


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` under a temporary name in the same folder, flush it to disk, rename it."""
    tmp = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def worker_identity(task_index: Optional[int] = None, num_tasks: Optional[int] = None,
                    env: Optional[Dict[str, str]] = None) -> Tuple[int, int, str]:
    """``(index, count, where from)`` of this worker (module docstring)."""
    env = os.environ if env is None else env
    if task_index is not None or num_tasks is not None:
        n = int(num_tasks if num_tasks is not None else 1)
        i = int(task_index or 0)
        src = "--task-index/--num-tasks"
    elif env.get("SLURM_ARRAY_TASK_ID") not in (None, ""):
        step = int(env.get("SLURM_ARRAY_TASK_STEP") or 1)
        first = int(env.get("SLURM_ARRAY_TASK_MIN") or 0)
        a = (int(env["SLURM_ARRAY_TASK_ID"]) - first) // step
        count = int(env.get("SLURM_ARRAY_TASK_COUNT") or 0)
        if not count:
            count = (int(env.get("SLURM_ARRAY_TASK_MAX") or env["SLURM_ARRAY_TASK_ID"]) - first) // step + 1
        procs, proc = int(env.get("SLURM_NTASKS") or 1), int(env.get("SLURM_PROCID") or 0)
        i, n, src = a * procs + proc, count * procs, "SLURM array"
    elif env.get("RANK") not in (None, "") and env.get("WORLD_SIZE") not in (None, ""):
        i, n, src = int(env["RANK"]), int(env["WORLD_SIZE"]), "RANK/WORLD_SIZE"
    elif env.get("SLURM_PROCID") not in (None, "") and env.get("SLURM_NTASKS") not in (None, ""):
        i, n, src = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), "SLURM tasks"
    else:
        i, n, src = 0, 1, "single worker"
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"worker index {i} of {n} ({src}) is out of range")
    return i, n, src


def part_order(num_parts: int, index: int, count: int, steal: bool = True) -> List[int]:
    """The parts worker ``index`` of ``count`` works on, in order: its own (``p % count == index``), then the
    others starting after its own (so that thieves spread out), when ``steal``."""
    own = [p for p in range(num_parts) if p % count == index]
    if not steal:
        return own
    others = [p for p in range(num_parts) if p % count != index]
    start = next((k for k, p in enumerate(others) if p > (own[0] if own else -1)), 0)
    return own + others[start:] + others[:start]


class PartStore:
    """The files of the parts in ``OUT/parts`` (module docstring)."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.dir = self.out / PARTS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.out / RUNS_DIR).mkdir(exist_ok=True)

    def path(self, p: int, suffix: str) -> Path:
        return self.dir / f"part-{p:06d}{suffix}"

    # ---- plan ----------------------------------------------------------------------------------------------------
    def check_plan(self, plan: Plan) -> None:
        """Write ``plan.json``, or check that the one there is the same plan (module docstring)."""
        f = self.out / PLAN_FILE
        if f.exists():
            old = json.loads(f.read_text(encoding="utf-8"))
            if old.get("fingerprint") != plan.fingerprint:
                diffs = plan_differences(old, plan)
                raise ValueError(f"{self.out} holds a caption run with other settings; differences (was -> now): "
                                 + "; ".join(diffs[:12]) + (f"; ... {len(diffs) - 12} more" if len(diffs) > 12 else "")
                                 + ". Give another --out, or run with the settings of plan.json")
            return
        atomic_write(f, json.dumps(plan.to_dict(), indent=1, ensure_ascii=False).encode("utf-8"))

    # ---- state ---------------------------------------------------------------------------------------------------
    def stats(self, p: int) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.path(p, ".stats.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def is_done(self, p: int, fingerprint: str) -> bool:
        if not self.path(p, ".jsonl").exists():
            return False
        st = self.stats(p)
        return bool(st) and st.get("fingerprint") == fingerprint

    @contextmanager
    def hold(self, p: int) -> Iterator[bool]:
        """Hold part ``p`` (an exclusive, non-blocking flock): yields False when another worker holds it."""
        fd = os.open(self.path(p, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ---- journal -------------------------------------------------------------------------------------------------
    def read_journal(self, p: int, keys: Sequence[str]) -> Tuple[Dict[str, Dict], int]:
        """The journal's entries of part ``p`` by key (only keys of the part, the first entry of a key), and the
        number of bytes of a torn last line cut off (held parts only)."""
        f = self.path(p, ".journal")
        if not f.exists():
            return {}, 0
        wanted = set(keys)
        entries: Dict[str, Dict] = {}
        good = 0
        with open(f, "rb") as fh:
            data = fh.read()
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                e = json.loads(raw)
            except ValueError:
                break
            good += len(raw)
            if isinstance(e, dict) and e.get("key") in wanted:
                entries.setdefault(e["key"], e)
        cut = len(data) - good
        if cut:
            with open(f, "r+b") as fh:
                fh.truncate(good)
                fh.flush()
                os.fsync(fh.fileno())
        return entries, cut

    def append(self, p: int, entries: List[Dict]) -> None:
        """Append a batch's entries to the journal and flush them to disk."""
        if not entries:
            return
        data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
        with open(self.path(p, ".journal"), "ab") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_points.hold("caption-batch", str(self.path(p, ".journal")))  # the kill-mid-part test acts here

    def commit(self, p: int, lines: List[Dict], stats: Dict[str, Any]) -> None:
        """Commit part ``p``: stats, then the captions lines, then drop the journal (module docstring)."""
        atomic_write(self.path(p, ".stats.json"), json.dumps(stats, indent=1, ensure_ascii=False).encode("utf-8"))
        atomic_write(self.path(p, ".jsonl"),
                     "".join(json.dumps(ln, ensure_ascii=False) + "\n" for ln in lines).encode("utf-8"))
        self.path(p, ".journal").unlink(missing_ok=True)

    def drop_stale_journal(self, p: int) -> None:
        """A committed part's journal left by a worker killed between commit and clean-up."""
        self.path(p, ".journal").unlink(missing_ok=True)
