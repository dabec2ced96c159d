"""Reading shards: tar members to samples, with what is skipped counted, and the next shard group read ahead.

A sample is webdataset's dict of raw member bytes by extension (shards/sample_format.py) plus ``__key__`` and
``__url__``. A corrupt member or a truncated shard is skipped, counted by the worker's :class:`SkipCounter` and
logged; a shard that cannot be read after the retries of plugins/remote_io.py raises ``ShardReadError`` naming
it (a lost shard must stop the run, not silently shorten the epoch). ``sizes.json`` beside the shards gives the
number of samples (:func:`dataset_size`).
"""
from __future__ import annotations

import json
import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

from open_clip_train.data import expand_urls
from webdataset.tariterators import tar_file_iterator

from patentclip.plugins import remote_io
from patentclip.plugins.openclip_compat import group_by_keys_nothrow

SIZES_FILE = "sizes.json"


class SkipCounter:
    """Counts (and logs) what the pipeline skips: corrupt tar members, undecodable images, bad samples."""

    def __init__(self, count: int = 0):
        self.count = count
        self.reasons: Dict[str, int] = {}

    def __call__(self, exn: BaseException, where: str = "") -> bool:
        self.count += 1
        reason = type(exn).__name__
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        logging.warning("skipped %s: %s: %s", where or "a sample", reason, exn)
        return True

    def add(self, other: "SkipCounter") -> None:
        """Count what ``other`` counted (a shard read in a background thread, added when its group is used)."""
        self.count += other.count
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n


def tar_samples(url: str, skips: SkipCounter) -> Iterator[Dict]:
    """The samples (raw bytes per extension) of one shard; read errors after retries are raised, a corrupt
    member or a truncated shard is skipped and counted."""
    stream = remote_io.open_shard(url)
    try:
        def handler(exn):
            if isinstance(exn, remote_io.ShardReadError):
                raise exn
            return skips(exn, f"member of {url}")

        files = ({**f, "__url__": url} for f in tar_file_iterator(stream, handler=handler))
        yield from group_by_keys_nothrow(files)
    finally:
        try:
            stream.close()
        except Exception:
            pass


READ_THREADS = 4   # shards of a worker read at once (the current group's and the next group's)


def prefetched(groups: Iterable[Tuple[int, List[str]]], skips: SkipCounter, threads: int = READ_THREADS
               ) -> Iterator[Tuple[int, List[str], List[Dict]]]:
    """(index, shards, raw samples) of each group, the samples in shard order.

    Read-ahead: the shards of a group are read by ``threads`` background threads at once (a group arrives after
    about its slowest shard rather than the sum of its shards: what a worker waits for before its first batch of
    an epoch or after a resume), and the next group's shards are read while the current group is decoded, so a
    worker does not stall at group boundaries (S3 latency). Memory: at most the current and the next group.
    Order: each shard's samples are kept apart and joined in the group's shard order, so the examples and
    therefore the resume positions are those of a sequential read. What a shard's read skips is counted into
    ``skips`` when its group is yielded, not when it is read ahead, so a resume position's skip count covers
    exactly the groups before it. (A worker cannot start on a group's first
    shard before the others arrive: the group shuffle, plugins/data/patents.py, draws from the whole group.)
    """
    groups = iter(groups)
    pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="patentclip-prefetch")

    def read(url: str) -> Tuple[List[Dict], SkipCounter]:
        mine = SkipCounter()
        return list(tar_samples(url, mine)), mine

    def submit(item):
        return [pool.submit(read, url) for url in item[1]] if item else None

    try:
        nxt = next(groups, None)
        pending = submit(nxt)
        while nxt is not None:
            gidx, group = nxt
            raw: List[Dict] = []
            for f in pending:
                samples, skipped = f.result()
                raw.extend(samples)
                skips.add(skipped)
            nxt = next(groups, None)
            pending = submit(nxt)
            yield gidx, group, raw
    finally:
        # at the batch quota the prefetched group is not needed: do not wait for it
        pool.shutdown(wait=False, cancel_futures=True)


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
