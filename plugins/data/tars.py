"""Reading shards: tar members to samples, with what is skipped counted (read ahead by read_ahead.py).

A sample is webdataset's dict of raw member bytes by extension (shards/sample_format.py) plus ``__key__`` and
``__url__``. Damage is handled here, where the tar is read (webdataset's ``tar_file_iterator`` opens the tar and
advances to the next header outside its error handler, so a shard that is not a tar, or one truncated inside a
member, ended the run with an unnamed ``tarfile.ReadError``):

* a shard that is not a tar, is empty (0 bytes) or is missing is skipped, logged with its URL and counted by the
  worker's :class:`SkipCounter`; more than ``max_unreadable`` of a worker's shards in an epoch (a fraction, at least
  one; ``--max-unreadable-shards``) end the run with :class:`UnreadableShards` naming them;
* a member that cannot be read (a shard truncated or damaged inside it) is skipped with the sample it belongs to,
  logged with the shard URL and the member name, and counted; the shard ends there (a tar stream cannot be
  resynchronised), its samples before the damage are kept;
* a shard that cannot be read after the retries of plugins/remote_io.py (an outage, not damage) raises
  ``ShardReadError`` naming it, as before (a lost connection must stop the run, not silently shorten the epoch).

``sizes.json`` beside the shards gives the number of samples (:func:`dataset_size`).
"""
from __future__ import annotations

import json
import logging
import math
import posixpath
import re
import tarfile
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

from open_clip_train.data import expand_urls
from webdataset.tariterators import base_plus_ext

from patentclip.plugins import remote_io
from patentclip.plugins.openclip_compat import group_by_keys_nothrow

SIZES_FILE = "sizes.json"
#: Default of ``--max-unreadable-shards``: the fraction of a worker's shards in an epoch that may be unreadable.
DEFAULT_MAX_UNREADABLE = 0.05
#: What a damaged tar raises while it is read (a read error after the retries is ``ShardReadError``, never these).
TAR_DAMAGE = (tarfile.TarError, EOFError, zlib.error, OSError)
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's metadata members (``__key__`` etc.), not sample members


class UnreadableShards(RuntimeError):
    """More of a worker's shards are unreadable than ``--max-unreadable-shards`` allows."""


class SkipCounter:
    """Counts (and logs) what the pipeline skips: corrupt tar members, undecodable images, bad samples, unreadable
    shards (each counts one). ``shards``: how many shards the worker reads in a pass, for the unreadable limit.

    What a shard group's read finds is collected in a :class:`GroupSkips` and counted, logged and checked against
    the limit only when the stream takes that group (:meth:`take`): a group read ahead but not needed (the batch
    quota was reached) counts nothing, so the counts in the loader's position do not depend on timing."""

    def __init__(self, count: int = 0, shards: int = 1, max_unreadable: float = DEFAULT_MAX_UNREADABLE):
        self.count = count
        self.reasons: Dict[str, int] = {}
        self.unreadable: List[str] = []
        self.allowed_unreadable = max(1, math.floor(max_unreadable * shards))
        self.max_unreadable = max_unreadable

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        self.count += 1
        reason = type(exn).__name__
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        logging.warning("skipped %s: %s: %s", where or "a sample", reason, exn)
        return True

    def take(self, group: "GroupSkips") -> None:
        """Count what reading a group found; more unreadable shards than allowed end the run, naming them."""
        for exn, where in group.skipped:
            self(exn, where)
        for url in group.unreadable:
            if url not in self.unreadable:
                self.unreadable.append(url)
        if len(self.unreadable) > self.allowed_unreadable:
            raise UnreadableShards(
                f"{len(self.unreadable)} unreadable shards, more than --max-unreadable-shards {self.max_unreadable:g} "
                f"allows ({self.allowed_unreadable} of this data-loader worker's shards): "
                f"{', '.join(self.unreadable)}. Check them with `patentclip-shards inspect` and rebuild them.")


class GroupSkips:
    """What reading one shard group skipped (in the prefetch thread), for :meth:`SkipCounter.take`."""

    def __init__(self):
        self.skipped: List[Tuple[BaseException, str]] = []
        self.unreadable: List[str] = []

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        self.skipped.append((exn, where))
        return True

    def unreadable_shard(self, url: str, exn: BaseException) -> None:
        """A shard that is not a tar (or is empty, or missing): skipped, counted, and named."""
        self(exn, f"unreadable shard {url}")
        self.unreadable.append(url)


class _Damage:
    """Where a shard stopped being readable: the member (or the header after ``after``) and the error."""

    def __init__(self):
        self.member: Optional[str] = None
        self.error: Optional[BaseException] = None


class _Tail:
    """A read-only stream that keeps the last ``keep`` bytes it delivered, so that the block at a given offset can
    be looked at after the tar reader has passed it (the end-of-archive check of :func:`_members`)."""

    def __init__(self, raw, keep: int = 1 << 16):
        self.raw, self.keep = raw, keep
        self.buf = bytearray()
        self.end = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.end += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.keep:
            del self.buf[:-self.keep]
        return data

    def block(self, offset: int, size: int = tarfile.BLOCKSIZE) -> Optional[bytes]:
        """The ``size`` bytes at ``offset``, if they were delivered and are still kept."""
        start = self.end - len(self.buf)
        if offset < start or offset + size > self.end:
            return None
        return bytes(self.buf[offset - start:offset - start + size])


def _members(stream, url: str, skips: GroupSkips, damage: _Damage) -> Iterator[Dict]:
    """The regular members of a tar stream as webdataset's file samples; a damaged one ends the stream, noted in
    ``damage``. A stream that is not a tar at all is an unreadable shard. A tar that stops without its end-of-archive
    block (zeros) was truncated at a header or has a damaged header there (Python's tarfile ends such a stream
    silently): noted as damage too, so the samples lost after it are not lost unsaid."""
    tail = _Tail(stream)
    try:
        tar = tarfile.open(fileobj=tail, mode="r|*")
    except remote_io.ShardReadError:
        raise
    except TAR_DAMAGE as exn:
        skips.unreadable_shard(url, exn)
        return
    last = None
    while True:
        info = None
        try:
            info = tar.next()
            if info is None:
                if getattr(tar.fileobj, "comptype", "tar") == "tar" and tail.block(tar.offset) != bytes(
                        tarfile.BLOCKSIZE):  # an uncompressed tar ends with a zero block at tar.offset
                    raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset}: the shard is truncated "
                                            f"or a header is damaged there")
                return
            if not info.isreg() or _SKIP_META.match(info.name):
                continue
            data = tar.extractfile(info).read()
        except remote_io.ShardReadError:
            raise
        except TAR_DAMAGE as exn:
            damage.member = info.name if info is not None else (f"the member after {last}" if last else
                                                                "its first member")
            damage.error = exn
            return
        last = info.name
        yield {"fname": info.name, "data": data, "__url__": url}
        tar.members = []  # a streamed tar need not remember its members


def tar_samples(url: str, skips: GroupSkips) -> Iterator[Dict]:
    """The samples (raw bytes per extension) of one shard (the module docstring says what is skipped)."""
    try:
        stream = remote_io.open_shard(url)
    except FileNotFoundError as exn:
        skips.unreadable_shard(url, exn)
        return
    damage = _Damage()
    try:
        damaged_key = None
        for sample in group_by_keys_nothrow(_members(stream, url, skips, damage)):
            if damage.member is not None and damaged_key is None:
                damaged_key = base_plus_ext(damage.member)[0]
            if damaged_key is not None and sample["__key__"] == damaged_key:
                continue  # the sample the damaged member belongs to is incomplete: skipped with it
            yield sample
        if damage.member is not None:
            skips(damage.error, f"member {damage.member} of {url} (the rest of this shard is unreadable)")
    finally:
        try:
            stream.close()
        except Exception:
            pass


def dataset_size(shards: str) -> Tuple[Optional[int], int]:
    """(number of samples, number of shards) from the sizes.json beside each source's shards (any fsspec URL);
    (None, n) when a source has none."""
    urls, _ = expand_urls(shards)
    total = 0
    cache: Dict[str, Optional[Dict]] = {}
    for u in urls:
        d = posixpath.dirname(u)
        if d not in cache:
            try:
                cache[d] = json.loads(remote_io.read_text(posixpath.join(d, SIZES_FILE)))
            except (FileNotFoundError, OSError, ValueError):
                cache[d] = None
        if cache[d] is None or posixpath.basename(u) not in cache[d]:
            return None, len(urls)
        total += int(cache[d][posixpath.basename(u)])
    return total, len(urls)
