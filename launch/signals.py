"""Stopping a run cleanly on SLURM's warning signal, a preemption or Ctrl-C.

``StopSignal.install()`` makes SIGUSR1 (``#SBATCH --signal=USR1@<seconds>``: the time limit is near), SIGTERM
(preemption, ``scancel``) and SIGINT set a flag instead of killing the process. The training loop asks
``should_stop()`` at every step boundary; the answer is agreed across ranks (an all-reduce of the flag), so
every rank stops after the same step even when the signal reached only some of them. The trainer then writes
a checkpoint (with the data-loader position) and exits with :data:`EXIT_REQUEUE`; ``slurm/*.sh`` requeue the
job on that code and the requeued job resumes with ``--resume latest``.
"""
from __future__ import annotations

import logging
import signal
from typing import Optional

import torch
import torch.distributed as dist

EXIT_REQUEUE = 3
SIGNALS = ("SIGUSR1", "SIGTERM", "SIGINT")


class StopSignal:
    def __init__(self):
        self.received: Optional[str] = None
        self._previous = {}

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
        """True on every rank once any rank got a stop signal (collective: call it on all ranks)."""
        flag = 1 if self.received else 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            t = torch.tensor([flag], dtype=torch.int32, device=device if device is not None else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = int(t.item())
        return bool(flag)
