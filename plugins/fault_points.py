"""Fault points: places where a fault test holds a real process, acts on it, and lets it go, with no timing window.

Why: a fault test must act (SIGKILL a rank, stop the object store) while a real process is *between* two things,
e.g. after a checkpoint file was uploaded and before the checkpoint is committed. Polling for the first thing and
then acting within a fixed delay is a race on a loaded machine: three tests of this project lost it in CI runs
(the poll saw the upload only after the delay had run out). A fault point turns the window into a wait.

Protocol (one environment variable, :data:`HOLD_ENV` = ``PATENTCLIP_FAULT_HOLD``, naming a file the test owns):

1. The test writes that file, one line ``<point> <suffix>`` (e.g. ``upload step_12/mp_rank_00_model_states.pt``),
   and starts the process with the variable set. Suffixes match at the end of the name: arm ``deepspeed/step_8``,
   not ``step_8``, which ``step_18`` ends with too.
2. A process that calls :func:`hold` ``(point, name)`` with that point and a name ending in the suffix logs the
   name, creates the empty file ``<file>.reached`` and waits, polling every 50 ms, while the file exists; after
   :data:`MAX_HOLD` seconds it logs that it gives up and goes on, so a test that died never leaves a run hanging.
3. The test waits for ``<file>.reached`` (:func:`wait_reached`), acts, and deletes the file to let the process go
   (or it has killed the process).

Points (each after the thing is complete and durable, before what follows it):

* ``upload``: a checkpoint file was uploaded and its size checked (``launch/checkpoint.py``); name: its URL.
* ``commit``: a checkpoint was named ``latest`` in the object store and locally (``launch/checkpoint.py``); name:
  its local folder (``.../deepspeed/step_8``).
* ``shard``: a shard and its stats sidecar were committed (``shards/shard_writer.py``); name: ``<split>/<shard>``.
* ``caption-batch``: a caption batch was journaled and flushed (``shards/captioning/work.py``); name: the
  journal's path.

With the variable unset (every real run) a point costs one environment lookup. Standard library only, so that
``shards/`` can use it without torch.
"""
from __future__ import annotations

import logging
import os
import time

HOLD_ENV = "PATENTCLIP_FAULT_HOLD"
MAX_HOLD = 600.0
POLL = 0.05


def _target(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            point, _, suffix = f.readline().strip().partition(" ")
    except FileNotFoundError:  # not written yet, or already let go
        return None
    return point, suffix


def hold(point: str, name: str) -> None:
    """Wait here while the test's hold file names this point and a suffix of ``name`` (module docstring)."""
    path = os.environ.get(HOLD_ENV)
    if not path:
        return
    target = _target(path)
    if target is None or target[0] != point or not name.endswith(target[1]):
        return
    logging.warning("fault point %s reached at %s: holding while %s exists (%s)", point, name, path, HOLD_ENV)
    open(f"{path}.reached", "w").close()
    deadline = time.monotonic() + MAX_HOLD
    while os.path.exists(path):
        if time.monotonic() > deadline:
            logging.warning("fault point %s: %s still exists after %.0f s; going on", point, path, MAX_HOLD)
            return
        time.sleep(POLL)


def arm(path, point: str, suffix: str) -> dict:
    """For tests: write the hold file for ``point``/``suffix`` and return the environment entry that arms it."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{point} {suffix}\n")
    return {HOLD_ENV: str(path)}


def reached(path) -> bool:
    """For tests: whether a process holds (or held) at the point armed in ``path``."""
    return os.path.exists(f"{path}.reached")


def wait_reached(path, timeout: float, alive=lambda: True) -> None:
    """For tests: wait until a process holds at the point armed in ``path``.

    Raises ``TimeoutError`` after ``timeout`` seconds, or ``RuntimeError`` as soon as ``alive()`` is false (the
    process ended without reaching the point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reached(path):
            return
        if not alive():
            raise RuntimeError(f"the process ended before the fault point armed in {path}")
        time.sleep(POLL)
    raise TimeoutError(f"no process reached the fault point armed in {path} within {timeout:.0f} s")
