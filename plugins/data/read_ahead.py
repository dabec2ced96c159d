"""Reading shard groups ahead of the stream that consumes them: within an epoch, and across epochs.

A worker's stream (stream.py) consumes shard groups (shard_groups.py) one after the other. A group is shuffled as a
whole (patents.py: a permutation of *all* its examples, seeded by (seed, epoch, group)), so its first example can
come from any of its shards, and the number of its examples -- which the permutation depends on -- is known only
once every shard of the group has been read (damaged members, undecodable json and the sampler's repeats change
it). A worker therefore cannot yield from a group's first shard while the rest of the group downloads without
changing the order that exact resume depends on. What is overlapped instead, with :class:`GroupReader`:

1. **The shards of a group are read at once** (``threads`` background threads): a group arrives after about its
   slowest shard, not the sum of its shards.
2. **The next group of the epoch is read while the current one is consumed** (decoded, preprocessed, batched):
   a worker does not wait at group boundaries.
3. **Across epochs** (persistent loader workers, :attr:`PatentStream.read_ahead_next_epoch`): once the worker has
   taken the last group its epoch needs -- the last of its groups, or (training, where a worker stops at its batch
   quota) the group whose examples complete the quota -- the first group of its *next* epoch (the group that epoch
   starts at, resume position included) is read in the background, instead of a next group of this epoch, while
   the worker consumes that last group, finishes the epoch and waits for the next one; the next epoch takes it
   from the hold instead of reading it again. A hold that the next iteration does not want (another epoch than
   predicted, another start group) is dropped and read normally. Should the quota need another group after all
   (drawings that do not decode), it is read then, without read-ahead: a stall, never a change of order.

Not overlapped: the first group of a loader's *first* epoch and of a resumed epoch (new workers: nothing was held)
is waited for in full (about its slowest shard), before the worker's first batch.

Order and exact resume are unchanged: a group's samples are joined in the group's shard order whatever the order
the reads finish in, and a held group holds the same bytes a later read would. What a shard's read skips (damage)
is counted when its group is *taken* (``SkipCounter.take``), so a resume position's skip count covers exactly the
groups before it, whatever was read ahead.

Memory: at most two groups' raw bytes per worker at a time -- the group being consumed and the one read ahead
(the next group, or the next epoch's first group); an idle persistent worker between epochs keeps one (its next
epoch's first group). A read made useless by the batch quota is cancelled; one already running finishes and is
dropped. A worker process that is stopped (end of training, new workers after a resume) while its held group is
still being read exits when those reads finish (Python joins a pool's threads at exit), or when torch terminates
it after its join timeout.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from patentclip.plugins.data import tars

READ_THREADS = 4   # shards of a worker read at once (the current group's, the next group's)


def read_shard(url: str) -> Tuple[List[Dict], tars.GroupSkips]:
    """One shard's samples and what reading it skipped (counted by the stream when its group is taken)."""
    mine = tars.GroupSkips()
    return list(tars.tar_samples(url, mine)), mine


class GroupReader:
    """Background reads of whole shard groups, and one group held for the next iteration (module docstring).

    One per stream object, i.e. one per data-loader worker process (a process forked after the reader was used
    starts a pool of its own and drops what its parent held). ``hits`` counts groups taken from the hold."""

    def __init__(self, threads: int = READ_THREADS):
        self.threads = max(1, threads)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pid: Optional[int] = None
        self._held: Optional[Tuple[Tuple[str, ...], List[Future]]] = None
        self.hits = 0

    def __getstate__(self):  # a spawned worker gets a fresh reader (threads and futures do not travel)
        return {"threads": self.threads}

    def __setstate__(self, state):
        self.__init__(state["threads"])

    def _executor(self) -> ThreadPoolExecutor:
        if self._pid != os.getpid():   # new process (fork): the parent's threads are not here
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="patentclip-read-ahead")
            self._pid = os.getpid()
            self._held = None
        return self._pool

    @property
    def held(self) -> Optional[Tuple[str, ...]]:
        """The shards of the group held for the next iteration (None when none)."""
        return self._held[0] if self._held is not None and self._pid == os.getpid() else None

    def submit(self, urls: Sequence[str]) -> List[Future]:
        """Read the group's shards in the background; the held reads when it is the held group."""
        pool = self._executor()
        if self._held is not None and self._held[0] == tuple(urls):
            futures, self._held = self._held[1], None
            self.hits += 1
            return futures
        return [pool.submit(read_shard, u) for u in urls]

    def hold(self, urls: Sequence[str]) -> None:
        """Start reading the group for the next iteration (the previous hold, if another group, is dropped)."""
        if self.held == tuple(urls):
            return
        self.drop()
        self._held = (tuple(urls), [self._executor().submit(read_shard, u) for u in urls])

    def drop(self) -> None:
        if self._held is not None:
            cancel(self._held[1])
        self._held = None

    def close(self) -> None:
        self.drop()
        if self._pool is not None and self._pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._pid = None


def cancel(futures: Optional[Iterable[Future]]) -> None:
    """Cancel reads not started; one already running finishes and is dropped."""
    for f in futures or ():
        f.cancel()


def prefetched(groups: Iterable[Tuple[int, List[str]]], skips: tars.SkipCounter, reader: Optional[GroupReader] = None,
               then: Optional[Sequence[str]] = None,
               final: Optional[Callable[[int, List[str], List[Dict]], bool]] = None
               ) -> Iterator[Tuple[int, List[str], List[Dict]]]:
    """(index, shards, raw samples) of each group, the samples in shard order, read ahead by ``reader`` (overlaps 1
    and 2 of the module docstring; a reader of its own, closed at the end, when None). What a shard's read skipped
    is counted into ``skips`` when its group is yielded.

    ``then``: the group the *next* iteration starts with (overlap 3), held by the reader once the last group needed
    has been taken: the last of ``groups``, or the group ``final(index, shards, raw)`` says completes the stream
    (a training worker's batch quota). After a group judged final the next one is not read ahead; should the
    stream want it after all (fewer usable examples than counted), it is read then."""
    own = reader is None
    reader = GroupReader() if own else reader
    groups = iter(groups)
    pending: Optional[List[Future]] = None
    try:
        nxt = next(groups, None)
        pending = reader.submit(nxt[1]) if nxt else None
        while nxt is not None:
            gidx, group = nxt
            if pending is None:  # the previous group was judged the last one needed: read this one now
                pending = reader.submit(group)
            raw: List[Dict] = []
            for f in pending:
                samples, skipped = f.result()
                raw.extend(samples)
                skips.take(skipped)
            nxt, pending = next(groups, None), None
            if then is not None and (nxt is None or (final is not None and final(gidx, group, raw))):
                reader.hold(then)
            elif nxt is not None:
                pending = reader.submit(nxt[1])
            yield gidx, group, raw
    finally:
        cancel(pending)   # at the batch quota the group read ahead is not needed: do not wait for it
        if own:
            reader.close()
