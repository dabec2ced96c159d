"""Object storage for every part of patentclip: what counts as remote, the one retry rule, and reading shards.

* :func:`is_remote`: a path is remote when it is a URL of a filesystem other than the local one (``s3://``,
  ``gs://``, ``memory://``, ...): it has ``://`` and is not a ``file://`` URL. Local paths, ``file://`` URLs,
  ``pathlib`` paths and None are not.
* :func:`retry`: call a function with retries and exponential backoff. ``PATENTCLIP_IO_RETRIES`` (default
  :data:`DEFAULT_RETRIES` = 8) is the number of *retries* after the first attempt; the wait before retry ``n``
  (1-based) is ``PATENTCLIP_IO_BACKOFF * 2 ** (n - 1)`` seconds (default 0.5 s), at most :data:`MAX_DELAY` (30 s).
  ``FileNotFoundError`` (and what else the caller names) is not retried. After the last retry the caller's error
  type is raised, naming what failed, the number of retries and the last error. The shard reader, the shard
  builder's uploads and listings, and the checkpoint uploads (with their own count, launch/checkpoint.py) use it.
* Reading shards: webdataset 1.x opens URLs through ``webdataset.gopen.gopen_schemes`` and has no ``s3://``
  handler of its own. :func:`register_fsspec_gopen` adds one that reads through fsspec (s3fs for ``s3://``;
  endpoint, credentials and region from the standard AWS environment variables, e.g. ``AWS_ENDPOINT_URL``).
  :class:`RetryingReader` keeps the byte offset it has delivered. When the connection drops or the server
  answers 5xx mid-shard, it waits, reopens the object and seeks to that offset, so the tar stream continues
  exactly where it was; after ``max_retries`` failures in a row it raises :class:`ShardReadError` naming the
  shard URL, the byte offset and the last error.
"""
from __future__ import annotations

import importlib
import io
import logging
import os
import time
from typing import Callable, Optional, Tuple, Type, TypeVar

import fsspec

RETRY_ENV = "PATENTCLIP_IO_RETRIES"
BACKOFF_ENV = "PATENTCLIP_IO_BACKOFF"
DEFAULT_RETRIES = 8
DEFAULT_BACKOFF = 0.5
MAX_DELAY = 30.0

T = TypeVar("T")


class ShardReadError(IOError):
    """A shard could not be read after all retries."""


def is_remote(path) -> bool:
    """True for a URL of a filesystem other than the local one (see the module docstring)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    s = os.fspath(path)
    return isinstance(s, str) and "://" in s and not s.startswith("file://")


def io_retries() -> int:
    """Retries after the first attempt: ``PATENTCLIP_IO_RETRIES``, default :data:`DEFAULT_RETRIES`."""
    return max(0, int(os.environ.get(RETRY_ENV, str(DEFAULT_RETRIES))))


def io_backoff() -> float:
    """Seconds before the first retry: ``PATENTCLIP_IO_BACKOFF``, default :data:`DEFAULT_BACKOFF`."""
    return float(os.environ.get(BACKOFF_ENV, str(DEFAULT_BACKOFF)))


def retry(fn: Callable[[], T], what: str, *, retries: Optional[int] = None, backoff: Optional[float] = None,
          error: Callable[[str], BaseException] = OSError,
          give_up: Tuple[Type[BaseException], ...] = (FileNotFoundError,),
          before_retry: Optional[Callable[[], None]] = None) -> T:
    """``fn()``, retried on any exception but those in ``give_up`` (module docstring: counts, waits).

    ``retries``/``backoff``: None reads the environment. ``before_retry`` runs after each wait (e.g. reconnect).
    After the last retry raises ``error(f"{what} failed after {retries} retries: {type}: {message}")`` from the
    last exception."""
    retries = io_retries() if retries is None else retries
    backoff = io_backoff() if backoff is None else backoff
    failures = 0
    while True:
        try:
            return fn()
        except give_up:
            raise
        except Exception as exc:  # connection drops, timeouts, 5xx from s3fs/aiohttp/botocore
            failures += 1
            if failures > retries:
                raise error(f"{what} failed after {retries} retries: {type(exc).__name__}: {exc}") from exc
            delay = min(MAX_DELAY, backoff * 2 ** (failures - 1))
            logging.warning("%s failed (%s: %s); retry %d/%d in %.1f s", what, type(exc).__name__, exc, failures,
                            retries, delay)
            time.sleep(delay)
            if before_retry is not None:
                before_retry()


class RetryingReader(io.RawIOBase):
    """A read-only stream over an fsspec URL that reconnects and resumes at the current offset on errors."""

    def __init__(self, url: str, max_retries: Optional[int] = None, backoff: Optional[float] = None,
                 block_size: int = 4 << 20):
        super().__init__()
        self.url = url
        self.max_retries = io_retries() if max_retries is None else max_retries
        self.backoff = io_backoff() if backoff is None else backoff
        self.block_size = block_size
        self.offset = 0
        self.retries_used = 0
        self._f = None
        self._open()

    def _connect(self):
        fs, path = fsspec.core.url_to_fs(self.url)
        f = fs.open(path, "rb", block_size=self.block_size)
        if self.offset:
            f.seek(self.offset)
        return f

    def _open(self):
        self._f = self._with_retries(self._connect, "open")

    def _with_retries(self, fn, what: str):
        def reconnect():  # after a failed read: a fresh connection at the same offset
            self.retries_used += 1
            try:
                if self._f is not None:
                    self._f.close()
            except Exception:
                pass
            self._f = None
            if what == "read":
                try:
                    self._f = self._connect()
                except FileNotFoundError:
                    raise
                except Exception as reopen_exc:  # counted by the next attempt (not connected)
                    logging.debug("reopen of %s failed: %s", self.url, reopen_exc)

        return retry(fn, f"{self.url}: {what} at byte {self.offset}", retries=self.max_retries,
                     backoff=self.backoff, error=ShardReadError, before_retry=reconnect)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        def attempt():
            if self._f is None:
                raise ConnectionError("not connected")
            return self._f.read(len(b))

        data = self._with_retries(attempt, "read")
        n = len(data)
        b[:n] = data
        self.offset += n
        return n

    def close(self):
        try:
            if self._f is not None:
                self._f.close()
        finally:
            self._f = None
            super().close()


def gopen_fsspec(url: str, mode: str = "rb", bufsize: int = 8192, **kw):
    if mode[0] != "r":
        with fsspec.open(url, mode) as f:  # pragma: no cover - writing goes through fsspec directly
            return f
    return io.BufferedReader(RetryingReader(url), buffer_size=1 << 20)


def _gopen_module():
    """The module webdataset.gopen (``import webdataset.gopen`` gives the function of the same name)."""
    return importlib.import_module("webdataset.gopen")


def register_fsspec_gopen(schemes=("s3", "gs", "gcs", "az", "abfs", "abfss", "hf", "memory")) -> None:
    """Let webdataset open these URL schemes through fsspec (idempotent)."""
    wg = _gopen_module()
    for scheme in schemes:
        wg.gopen_schemes[scheme] = gopen_fsspec


def open_shard(url: str):
    """Open one shard for reading: local paths and webdataset URLs via ``webdataset.gopen``, fsspec URLs with
    retries."""
    wg = _gopen_module()
    register_fsspec_gopen()
    if "://" in url and url.split("://", 1)[0] in wg.gopen_schemes and wg.gopen_schemes[url.split("://", 1)[0]] is gopen_fsspec:
        return gopen_fsspec(url)
    return wg.gopen(url)


def read_text(url: str) -> str:
    with fsspec.open(url, "r") as f:
        return f.read()


def exists(url: str) -> bool:
    fs, path = fsspec.core.url_to_fs(url)
    return fs.exists(path)
