"""Stopping a run cleanly on SLURM's warning signal, a preemption or Ctrl-C.

``StopSignal.install()`` makes SIGUSR1 (``#SBATCH --signal=USR1@<seconds>``: the time limit is near), SIGTERM
(preemption, ``scancel``) and SIGINT set a flag instead of killing the process. The training loop asks
``should_stop()`` at every step boundary; the answer is agreed across ranks (an all-reduce of the flag), so
every rank stops after the same step even when the signal reached only some of them. The trainer then writes
a checkpoint (with the data-loader position), and only after it is committed leaves the requeue marker
(:func:`mark_requeue`: ``<logs>/<name>/requeue``, then a barrier so no rank exits before it exists) and exits with
:data:`EXIT_REQUEUE`; ``slurm/*.sh`` requeue the job on the marker (srun's exit code is unreliable once it kills
ranks) and the requeued job resumes with ``--resume latest``.

``fail(reason)`` is the other way a run ends at a step boundary: something outside the loop (the run lock's
heartbeat thread, when another process has taken the run over) says this run must stop at once WITHOUT a
checkpoint; ``should_stop`` then raises :class:`RunAborted` on every rank. Both flags travel in one all-reduce.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import List, Optional, Sequence

import torch
import torch.distributed as dist

EXIT_REQUEUE = 3
SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")


class RunAborted(RuntimeError):
    """The run must end now, without a checkpoint (e.g. it no longer owns its run folder)."""


class StopSignal:
    def __init__(self):
        self.received: Optional[str] = None
        self.failure: Optional[str] = None
        self._previous = {}

    def fail(self, reason: str) -> None:
        """Ask every rank to abort at the next step boundary (callable from any thread)."""
        self.failure = reason

    def _handler(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is None:
            logging.warning("received %s: stopping at the next step boundary and writing a checkpoint", name)
        self.received = name

    def install(self) -> "StopSignal":
        for name in SIGNALS:
            sig = getattr(signal, name)
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def uninstall(self) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def should_stop(self, device=None) -> bool:
        """True on every rank once any rank got a stop signal; raises :class:`RunAborted` on every rank once any
        rank was told to :meth:`fail` (collective: call it on all ranks)."""
        stop, failed = agree_all([bool(self.received), bool(self.failure)], device)
        if failed:
            raise RunAborted(self.failure or "another rank aborted the run")
        return stop


def agree_all(flags: Sequence[bool], device=None) -> List[bool]:
    """Each flag true on every rank if it is true on any rank: one all-reduce (collective: call it on all ranks)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([1 if f else 0 for f in flags], dtype=torch.int32,
                         device=device if device is not None else "cpu")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]
    return [bool(f) for f in flags]


def agree(flag: bool, device=None) -> bool:
    """True on every rank if ``flag`` is true on any rank (collective: call it on all ranks)."""
    return agree_all([flag], device)[0]


def synchronized(batches, device=None):
    """Yield the batches of an iterator while EVERY rank still has one: when one rank's data runs out
    (a short or truncated shard), all ranks end the epoch at the same step instead of hanging in a collective."""
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            batch = None
        if agree(batch is None, device):
            if batch is not None:
                import logging

                logging.warning("another rank ran out of data: ending the epoch here on every rank")
            return
        yield batch


def requeue_marker(args) -> str:
    """File the trainer writes when it stopped on a signal after a committed checkpoint: run me again."""
    return os.path.join(args.logs, args.name, "requeue")


def mark_requeue(args, reason: str) -> None:
    """After the stop checkpoint is committed: leave the requeue marker (rank 0), then a barrier, so that no
    rank exits (and makes srun kill the others) before the marker exists."""
    if args.rank == 0:
        with open(requeue_marker(args), "w") as f:
            f.write(reason + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
