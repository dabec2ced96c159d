"""A full disk, said plainly: free space, atomic small files, and a log file that stops failing loudly.

When the disk under a run fills up, three things went wrong before: torch's writer failed with "unexpected pos"
(no word of the disk), a file rewritten in place (``params.txt``) was left truncated to 0 bytes, and every log
line raised a "--- Logging error ---" traceback on stderr. Here:

* :func:`free_bytes` and :func:`human` for messages that name the folder and the space needed;
* :func:`is_disk_full` recognises the failure (ENOSPC/EDQUOT anywhere in the exception chain, or a writer error
  while the folder has less free space than the write needed);
* :func:`write_atomic` writes a file under a name only this process uses and renames it over the old one, so
  a failed write leaves the old file whole (and removes its own temporary);
* :func:`quiet_failing_log_files` makes a log file handler that cannot write say so once and leave the console
  handler to carry on, instead of one traceback per log line.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
import sys
import uuid
from typing import Optional

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def free_bytes(folder: str) -> int:
    """Free bytes for an unprivileged writer on the filesystem of ``folder`` (or its nearest existing parent)."""
    path = os.path.abspath(folder)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def is_disk_full(exc: BaseException, folder: Optional[str] = None, needed: int = 0) -> bool:
    """Whether ``exc`` is a write that failed because the filesystem of ``folder`` is full."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(e) or "Disk quota exceeded" in str(e):
            return True
        e = e.__cause__ or e.__context__
    if folder is None:
        return False
    free = free_bytes(folder)
    return free < 64 << 20 and (needed == 0 or free < needed)


class DiskFullError(OSError):
    """A write failed because the disk is full; the message names the folder and the space needed."""

    def __init__(self, what: str, folder: str, needed: int, free: Optional[int] = None):
        free = free_bytes(folder) if free is None else free
        self.folder, self.needed, self.free = folder, needed, free
        super().__init__(errno.ENOSPC, f"{what}: the disk holding {folder} is full ({human(free)} free, "
                                       f"about {human(needed)} needed)")


def temp_name(path: str) -> str:
    """A temporary name beside ``path`` that no other process uses, on this host or another sharing the folder
    (host, pid and a random part: a fixed name such as ``latest.tmp`` made one of two racing writers crash)."""
    return f"{path}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def write_atomic(path: str, data: bytes | str) -> None:
    """Write ``path`` as a whole or not at all: a temporary of this process's own (:func:`temp_name`), fsync,
    rename over ``path``. On a full disk raises :class:`DiskFullError` and leaves the old file as it was."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if is_disk_full(exc):
            raise DiskFullError(f"cannot write {path}", os.path.dirname(path) or ".", len(raw)) from exc
        raise


def quiet_failing_log_files(logger: Optional[logging.Logger] = None) -> None:
    """Make every file handler of ``logger`` (default: the root logger) report its first write error once and
    then remove itself, so a full disk gives one line on stderr instead of a traceback per log record."""
    logger = logger or logging.getLogger()
    for handler in list(logger.handlers):
        if isinstance(handler, logging.FileHandler):
            handler.handleError = _dropper(logger, handler)


def _dropper(logger: logging.Logger, handler: logging.FileHandler):
    def handle_error(record):
        exc = sys.exc_info()[1]
        logger.removeHandler(handler)
        try:
            handler.close()
        except Exception:
            pass
        reason = "the disk is full" if exc is not None and is_disk_full(exc) else f"{type(exc).__name__}: {exc}"
        print(f"patentclip: cannot write the log file {handler.baseFilename} ({reason}); logging to the console "
              f"only from here on", file=sys.stderr, flush=True)

    return handle_error
