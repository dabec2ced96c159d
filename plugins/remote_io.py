"""Reading shards from object storage: a webdataset ``gopen`` handler for every fsspec URL (``s3://``, ``gs://``,
``az://``, ...), with retries.

webdataset 1.x opens URLs through ``webdataset.gopen.gopen_schemes`` and has no ``s3://`` handler of its own.
:func:`register_fsspec_gopen` adds one that reads through fsspec (s3fs for ``s3://``; endpoint, credentials and
region from the standard AWS environment variables, e.g. ``AWS_ENDPOINT_URL``).

:class:`RetryingReader` keeps the byte offset it has delivered. When the connection drops or the server answers
5xx mid-shard, it waits (exponential backoff), reopens the object and seeks to that offset, so the tar stream
continues exactly where it was; after ``max_retries`` failures in a row it raises :class:`ShardReadError` naming
the shard URL and the last error.
"""
from __future__ import annotations

import importlib
import io
import logging
import os
import time
from typing import Optional

import fsspec

RETRY_ENV = "PATENTCLIP_IO_RETRIES"
BACKOFF_ENV = "PATENTCLIP_IO_BACKOFF"


class ShardReadError(IOError):
    """A shard could not be read after all retries."""


def _retries() -> int:
    return int(os.environ.get(RETRY_ENV, "8"))


def _backoff() -> float:
    return float(os.environ.get(BACKOFF_ENV, "0.5"))


class RetryingReader(io.RawIOBase):
    """A read-only stream over an fsspec URL that reconnects and resumes at the current offset on errors."""

    def __init__(self, url: str, max_retries: Optional[int] = None, backoff: Optional[float] = None,
                 block_size: int = 4 << 20):
        super().__init__()
        self.url = url
        self.max_retries = _retries() if max_retries is None else max_retries
        self.backoff = _backoff() if backoff is None else backoff
        self.block_size = block_size
        self.offset = 0
        self.retries_used = 0
        self._f = None
        self._open()

    def _open(self):
        def attempt():
            fs, path = fsspec.core.url_to_fs(self.url)
            f = fs.open(path, "rb", block_size=self.block_size)
            if self.offset:
                f.seek(self.offset)
            return f

        self._f = self._with_retries(attempt, "open")

    def _with_retries(self, fn, what: str):
        failures = 0
        while True:
            try:
                return fn()
            except FileNotFoundError:
                raise
            except Exception as exc:  # connection drops, timeouts, 5xx from s3fs/aiohttp/botocore
                failures += 1
                self.retries_used += 1
                if failures > self.max_retries:
                    raise ShardReadError(
                        f"{self.url}: {what} failed after {self.max_retries} retries at byte {self.offset}: "
                        f"{type(exc).__name__}: {exc}") from exc
                delay = min(30.0, self.backoff * 2 ** (failures - 1))
                logging.warning("%s: %s failed at byte %d (%s: %s); retry %d/%d in %.1f s", self.url, what,
                                self.offset, type(exc).__name__, exc, failures, self.max_retries, delay)
                time.sleep(delay)
                try:
                    if self._f is not None:
                        self._f.close()
                except Exception:
                    pass
                self._f = None
                if what == "read":
                    fs, path = fsspec.core.url_to_fs(self.url)
                    try:
                        f = fs.open(path, "rb", block_size=self.block_size)
                        f.seek(self.offset)
                        self._f = f
                    except FileNotFoundError:
                        raise
                    except Exception as reopen_exc:  # counted by the next loop turn
                        logging.debug("reopen of %s failed: %s", self.url, reopen_exc)

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
