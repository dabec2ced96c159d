"""Worker-process pools of the shard build (the encoding jobs, the USPTO sheet segmentation).

Pool workers ignore Ctrl-C (SIGINT): the main process gets it, stops the pool and reports how far the work got,
instead of every worker printing a traceback.
"""
from __future__ import annotations

import signal


def ignore_sigint() -> None:
    """Pool initializer: this worker leaves Ctrl-C to the main process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
