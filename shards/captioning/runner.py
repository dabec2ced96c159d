"""One worker of a caption run: take parts (:mod:`.work`), caption them in batches (:mod:`.pipeline`), journal,
commit, and merge when everything is done (:mod:`.report`).

Batches are prepared ahead: while the models generate a batch, a background thread decodes the next batch's
drawings and has the captioner's engine encode its requests (tokenising, image preprocessing or data URLs), so the
models do not wait for the disk or the tokeniser. The progress bar counts drawings (drawings/s and the ETA of this
worker's parts) and shows the captions kept per drawing and the re-asks; when the output is not a terminal (a
SLURM log) the same figures are logged as a line a minute.

**Stopping.** SIGTERM, SIGUSR1 (SLURM's warning signal, ``#SBATCH --signal``) and SIGINT make the worker finish
the batch it is generating, journal it, and stop (``stopped`` names the signal; the CLI exits with 3 so that
``slurm/caption.sh`` requeues the task, 130 for Ctrl-C; a second Ctrl-C stops at once, losing the batch). A
SIGKILL loses that batch only. When the engine fails
``max_failed_batches`` whole batches in a row (an endpoint down, not one bad drawing), the worker stops instead of
burning through the input: the drawings stay open for the next run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from tqdm import tqdm

from .pipeline import Captioner
from .prompts import DrawingTask
from .report import merge, part_stats
from .work import RUNS_DIR, PartStore, Plan, atomic_write, part_order


@dataclass
class StopFlag:
    """Set by the signal handlers of :func:`install_stop_handlers` (or by a caller); checked between batches."""

    signal: Optional[str] = None
    previous: Dict[int, Any] = field(default_factory=dict)

    def install(self) -> "StopFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.signal == "SIGINT":
            raise KeyboardInterrupt("a second Ctrl-C: stopped without finishing the batch")
        self.signal = name

    def restore(self) -> None:
        for sig, h in self.previous.items():
            signal.signal(sig, h)
        self.previous.clear()


class LogProgress:
    """Progress for a log file (a SLURM job's output): one line every ``every`` seconds with drawings done, the rate
    and the ETA, instead of a terminal progress bar's carriage returns. Mirrors the part of tqdm's API used here."""

    def __init__(self, total: int, desc: str, every: float = 60.0):
        self.total, self.desc, self.every = total, desc, every
        self.n, self.t0, self.last, self.postfix = 0, time.perf_counter(), time.perf_counter(), ""

    def update(self, n: int) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self.last >= self.every:
            self.last = now
            rate = self.n / max(1e-9, now - self.t0)
            eta = (self.total - self.n) / rate if rate > 0 else float("inf")
            print(f"[{self.desc}] {self.n}/{self.total} drawings, {rate:.2f} drawings/s, ETA {eta / 60:.1f} min"
                  + (f", {self.postfix}" if self.postfix else ""), file=sys.stderr, flush=True)

    def set_postfix_str(self, s: str, refresh: bool = False) -> None:
        self.postfix = s

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, progress: bool):
    if progress and not sys.stderr.isatty():
        return LogProgress(total, desc)
    return tqdm(total=total, desc=desc, unit="drawing", disable=not progress, smoothing=0.1, dynamic_ncols=True)


def _batches(tasks: List[DrawingTask], size: int, captioner: Captioner):
    """The batches of ``tasks``, each prepared (:meth:`Captioner.prepare`: drawings decoded, captioner requests
    encoded) in a background thread while the previous one generates."""
    chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patentclip-read-ahead") as pool:
        ahead = pool.submit(captioner.prepare, chunks[0])
        for k in range(len(chunks)):
            prepared = ahead.result()
            if k + 1 < len(chunks):
                ahead = pool.submit(captioner.prepare, chunks[k + 1])
            yield chunks[k], prepared


def run_worker(tasks: List[DrawingTask], plan: Plan, out_dir, captioner: Captioner, *, batch_size: int = 32,
               worker: int = 0, workers: int = 1, steal: bool = True, progress: bool = True,
               stop: Optional[StopFlag] = None, max_failed_batches: int = 3) -> Dict[str, Any]:
    """Work on the run's parts until none is left for this worker (module docstring); returns the run's report."""
    stop = stop or StopFlag()
    store = PartStore(out_dir)
    store.check_plan(plan)
    fp = plan.fingerprint
    t0, started = time.perf_counter(), time.strftime("%Y-%m-%dT%H:%M:%S%z")
    order = part_order(plan.num_parts, worker, workers, steal)
    own = set(part_order(plan.num_parts, worker, workers, False))
    bar = _progress(sum(plan.part_range(p)[1] - plan.part_range(p)[0] for p in own if not store.is_done(p, fp)),
                    f"captions {worker + 1}/{workers}", progress)
    generated = committed = failed_batches = kept = answers = reasked = 0
    open_errors: List[Dict[str, str]] = []
    busy: List[int] = []
    fatal = None
    try:
        for p in order:
            if stop.signal or fatal:
                break
            start, end = plan.part_range(p)
            if store.is_done(p, fp):
                store.drop_stale_journal(p)
                continue
            with store.hold(p) as held:
                if not held:
                    busy.append(p)
                    continue
                if store.is_done(p, fp):
                    continue
                part = tasks[start:end]
                journal, _ = store.read_journal(p, [t.key for t in part])
                todo = [t for t in part if t.key not in journal]
                if p in own:
                    bar.total -= len(part) - len(todo)
                else:
                    bar.total += len(todo)
                bar.refresh()
                for batch, prepared in _batches(todo, batch_size, captioner):
                    entries, errors = captioner.caption_batch(prepared)
                    store.append(p, entries)
                    for e in entries:
                        journal[e["key"]] = e
                        kept += e["n"].get("kept", 0)
                        answers += e["n"].get("llm_answers", 0)
                        reasked += e["n"].get("llm_answers", 0) > 1
                    generated += len(entries)
                    open_errors.extend({"key": t.key, "error": err} for t, err in errors[:5])
                    failed_batches = failed_batches + 1 if errors and len(errors) == len(batch) else 0
                    bar.update(len(batch))
                    bar.set_postfix_str(f"captions/drawing {kept / max(1, generated):.1f}, re-asked {reasked}"
                                        + (f", open {len(open_errors)}" if open_errors else ""), refresh=False)
                    if failed_batches >= max_failed_batches:
                        fatal = (f"the engine failed {failed_batches} batches in a row; last error: "
                                 f"{errors[-1][1]}")
                        break
                    if stop.signal:
                        break
                if all(t.key in journal for t in part):
                    entries = [journal[t.key] for t in part]
                    store.commit(p, [e["out"] for e in entries if e.get("out")], part_stats(p, plan, entries))
                    committed += 1
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    engines = {e.name + ("" if len(captioner.engines()) == 1 else f":{e.model}"): e.stats.to_dict()
               for e in captioner.engines()}
    gen_s = sum(e.stats.generate_seconds for e in captioner.engines())
    run = {"worker": f"{worker}/{workers}", "host": socket.gethostname(), "pid": os.getpid(), "started": started,
           "wall_seconds": round(wall, 3), "generate_seconds": round(gen_s, 3),
           "plumbing_share": round((wall - gen_s) / gen_s, 4) if gen_s else None,
           "drawings_generated": generated, "drawings_per_s": round(generated / wall, 3) if wall else 0.0,
           "parts_committed": committed, "parts_busy_elsewhere": busy, "stopped": stop.signal, "fatal": fatal,
           "open_errors": len(open_errors), "open_error_examples": open_errors[:20], "engines": engines}
    atomic_write(store.out / RUNS_DIR / f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.json",
                 json.dumps(run, indent=1, ensure_ascii=False).encode("utf-8"))
    run["done"] = all(store.is_done(p, fp) for p in range(plan.num_parts))
    if run["done"]:
        run["report"] = merge(out_dir, plan)
    return run
