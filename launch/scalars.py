"""Where a run's scalars go: tensorboard and/or Weights & Biases (``--report-to``), the same tags and values in each.

open_clip's ``--report-to`` takes ``tensorboard``, ``wandb``, ``all`` or a comma list. ``ScalarLog`` has the one
method the loop and the evaluation call, ``add_scalar(tag, value, step)`` (tensorboard's), and writes every
scalar to each selected backend:

* tensorboard: ``<logs>/<name>/tensorboard/`` (``train/*`` and ``data/*`` against the global step, ``val/*``
  against the epoch, as open_clip does);
* wandb: a run named and identified by ``--name`` (so ``--resume latest`` continues the same wandb run), in
  ``--wandb-project-name``, with ``--wandb-notes`` and the run's arguments as its config, its files under
  ``<logs>/<name>/wandb``. wandb needs one step axis that only grows, so the scalars are logged with their x
  value beside them: ``train/*`` and ``data/*`` with ``step`` and ``val/*`` with ``epoch``, declared as their
  x axes (``wandb.define_metric``). Scalars of one x value are sent in one ``wandb.log`` call.

Offline (``WANDB_MODE=offline``, what the tests use) wandb writes the run to disk only; ``wandb sync`` uploads it.
Only rank 0 logs scalars.
"""
from __future__ import annotations

import argparse
import os
from typing import Dict, Optional, Tuple

from torch.utils.tensorboard import SummaryWriter

from patentclip.launch.args import args_as_json

try:
    import wandb
except ImportError:  # optional: only --report-to wandb needs it
    wandb = None

BACKENDS = ("tensorboard", "wandb")
#: tag prefix -> the x axis its scalars are logged against
X_AXIS = {"val": "epoch"}
DEFAULT_X = "step"


def report_backends(report_to: str) -> Tuple[str, ...]:
    """``--report-to`` -> the selected backends; an unknown name is an error that lists the known ones."""
    names = {n.strip() for n in str(report_to or "").split(",") if n.strip() and n.strip() != "none"}
    if "all" in names:
        names = (names - {"all"}) | set(BACKENDS)
    unknown = sorted(names - set(BACKENDS))
    if unknown:
        raise SystemExit(f"--report-to {report_to!r}: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(BACKENDS)}, all (or a comma list)")
    if "wandb" in names and wandb is None:
        raise SystemExit("--report-to wandb needs the wandb package: pip install wandb")
    return tuple(b for b in BACKENDS if b in names)


def _x_axis(tag: str) -> str:
    return X_AXIS.get(tag.split("/", 1)[0], DEFAULT_X)


class ScalarLog:
    """Fans ``add_scalar`` out to tensorboard and wandb (module docstring)."""

    def __init__(self, tensorboard_dir: Optional[str] = None, wandb_run=None):
        self.writer = SummaryWriter(tensorboard_dir) if tensorboard_dir else None
        self.wandb_run = wandb_run
        self._pending: Dict[str, float] = {}
        self._pending_x: Optional[Tuple[str, int]] = None

    @classmethod
    def open(cls, args: argparse.Namespace) -> Optional["ScalarLog"]:
        """The run's scalar log (rank 0 with logs), or None when nothing is to be written."""
        if not args.save_logs:
            return None
        backends = report_backends(args.report_to)
        tb = args.tensorboard_path if "tensorboard" in backends else None
        run = None
        if "wandb" in backends:
            folder = os.path.join(args.logs, args.name)
            run = wandb.init(project=args.wandb_project_name, name=args.name, id=args.name, notes=args.wandb_notes,
                             resume="allow" if args.resume else None, config=args_as_json(args), dir=folder)
            for prefix, axis in {**X_AXIS, "train": DEFAULT_X, "data": DEFAULT_X}.items():
                run.define_metric(axis, hidden=True)
                run.define_metric(f"{prefix}/*", step_metric=axis)
        if tb is None and run is None:
            return None
        return cls(tb, run)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)
        if self.wandb_run is not None:
            x = (_x_axis(tag), int(step))
            if self._pending_x is not None and x != self._pending_x:
                self.flush()
            self._pending_x = x
            self._pending[tag] = float(value)

    def flush(self) -> None:
        """Send the scalars of the current x value to wandb (one ``wandb.log``)."""
        if self.wandb_run is not None and self._pending:
            axis, x = self._pending_x
            self.wandb_run.log({axis: x, **self._pending})
        self._pending, self._pending_x = {}, None
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        self.flush()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
