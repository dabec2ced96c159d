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


def read_group(group: List[str], skips: SkipCounter) -> List[Dict]:
    """The raw samples of a shard group, in shard order (I/O only: runs in the prefetch thread)."""
    samples: List[Dict] = []
    for url in group:
        samples.extend(tar_samples(url, skips))
    return samples


def prefetched(groups: Iterable[Tuple[int, List[str]]], skips: SkipCounter
               ) -> Iterator[Tuple[int, List[str], List[Dict]]]:
    """(index, shards, raw samples) of each group; the next group is read by a background thread while the
    current one is decoded, so a worker does not stall at group boundaries (S3 latency)."""
    groups = iter(groups)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="patentclip-prefetch")
    try:
        nxt = next(groups, None)
        pending = pool.submit(read_group, nxt[1], skips) if nxt else None
        while nxt is not None:
            gidx, group = nxt
            raw = pending.result()
            nxt = next(groups, None)
            pending = pool.submit(read_group, nxt[1], skips) if nxt else None
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
