"""One data-loader worker's stream of batches, and its position for an exact resume.

:class:`PatentStream` is the ``IterableDataset`` each worker iterates. Its ``__iter__`` composes the stages:

    shard groups (shard_groups.py), those consumed before a resume left out unread
      -> raw samples (tars.py); the next group read ahead, and with persistent
         workers the next epoch's first group once this epoch's last is taken (read_ahead.py)
      -> examples of each group from the resume offset on (patents.py)          :func:`positioned`
      -> batch fields of each example; a bad one skipped and counted (examples.py)  :func:`made`
      -> a whole pass of groups without one usable example ends the stream       :func:`progressing`
      -> batches of ``batch_size``, up to the worker's quota (batch.py)          :func:`batched`

and ends with an end marker. Every batch carries, under :data:`POSITION`, the worker's :class:`Cursor` after it:
(shard group, offset of the next example in the group, batches emitted, samples skipped). A stream given a
cursor as its start skips whole groups before the cursor's group without reading them, re-reads that group only,
and continues with exactly the batches the uninterrupted stream would have produced. The loader (loader.py)
takes the position out of each batch and keeps it for ``state_dict()``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from open_clip_train.data import SharedEpoch
from torch.utils.data import IterableDataset, get_worker_info

from patentclip.plugins.classes import ClassMismatch, ClassTable
from patentclip.plugins.data import patents, read_ahead, tars
from patentclip.plugins.data.batch import collate_patent_batch
from patentclip.plugins.data.examples import Example, ExampleMaker, class_id_of
from patentclip.plugins.data.shard_groups import ShardPlan
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
from patentclip.plugins.image_transport import ImageTransport

POSITION = "_pos"   # the stream's entry in each batch (taken out by the loader)
END = "_end"        # the last item of a worker: {END: worker, POSITION: ...}, no batch fields

Positioned = Tuple[int, int, Optional[Example]]   # (group, offset after, example or None at a group's end)


@dataclass
class Cursor:
    """A worker's position in its epoch: the next example is example ``offset`` of shard group ``group``;
    ``batches`` emitted so far, ``skipped`` samples counted."""
    group: int = 0
    offset: int = 0
    batches: int = 0
    skipped: int = 0

    def to_dict(self) -> Dict[str, int]:
        return asdict(self)


class EmptyStream(RuntimeError):
    """A worker read a whole pass over its shards without one usable example: it could never fill a batch."""


def is_fatal(exc: BaseException) -> bool:
    """A problem of the run (the class table), not of one sample: never skipped."""
    return isinstance(exc, ClassMismatch) or (
        isinstance(exc, ValueError) and ("unknown class id" in str(exc) or "has no class id" in str(exc)))


def positioned(groups: Iterable[Tuple[int, List[str], List[Dict]]], examples_of: Callable, start: Cursor
               ) -> Iterator[Positioned]:
    """(group, offset after, example) from the cursor on; (next group, 0, None) after each group."""
    for gidx, group, raw in groups:
        examples = examples_of(gidx, group, raw)
        for j in range(start.offset if gidx == start.group else 0, len(examples)):
            yield gidx, j + 1, examples[j]
        yield gidx + 1, 0, None


def made(items: Iterable[Positioned], make: Callable[[Example], Dict], skips: tars.SkipCounter
         ) -> Iterator[Tuple[int, int, Optional[Dict]]]:
    """Each example made into its batch fields; one that cannot be (no caption, undecodable image) is skipped
    and counted, and passes on as None so that the position still advances."""
    for gidx, offset, ex in items:
        item = None
        if ex is not None:
            try:
                item = make(ex)
            except ValueError as exc:
                if is_fatal(exc):
                    raise
                skips(exc, f"sample {ex.anchor['__key__']!r}")
            except (OSError, SyntaxError) as exc:  # undecodable image
                skips(exc, f"image of {ex.anchor['__key__']!r} in {ex.anchor.get('__url__')}")
        yield gidx, offset, item


def progressing(items: Iterable[Tuple[int, int, Optional[Dict]]], groups_per_pass: int, who: str,
                shards: Sequence[str], start: Optional[Cursor] = None) -> Iterator[Tuple[int, int, Optional[Dict]]]:
    """The items, ending with :class:`EmptyStream` once ``groups_per_pass`` groups in a row (a whole pass over the
    worker's shards) ended without one usable example: a training worker with a batch quota would otherwise read
    its shards again and again, forever, deaf to the stop signal (the only shard an empty tar, every shard
    unreadable, every drawing undecodable). ``who`` and ``shards`` (the worker and its shards) for the message.
    A group the stream entered part-way (``start``: a resume position inside it, possibly at its very end) is no
    evidence either way: only groups read from their first example count."""
    empty_groups, usable = 0, False
    partial = start.group if start is not None and start.offset > 0 else None
    for gidx, offset, item in items:
        if item is not None:
            usable = True
        elif offset == 0:  # the end of a group
            if gidx - 1 == partial:  # the group resumed part-way: it says nothing about the shards
                partial, usable = None, False
                yield gidx, offset, item
                continue
            empty_groups = 0 if usable else empty_groups + 1
            usable = False
            if empty_groups >= groups_per_pass:
                listed = ", ".join(shards[:8]) + (f" and {len(shards) - 8} more" if len(shards) > 8 else "")
                raise EmptyStream(
                    f"{who} read a whole pass over its shards ({listed}) and found no sample to train on: every shard "
                    f"is empty, unreadable or without a usable drawing (the log says which were skipped). Check "
                    f"them with `patentclip-shards inspect`.")
        yield gidx, offset, item


def batched(items: Iterable[Tuple[int, int, Optional[Dict]]], cursor: Cursor, *, batch_size: int,
            quota: Optional[int], keep_partial: bool) -> Iterator[List[Dict]]:
    """Lists of ``batch_size`` items; ``cursor`` follows the items (``cursor.batches`` counts the lists). Stops
    at the quota without reading further; a last partial list only with ``keep_partial`` (evaluation)."""
    if quota is not None and cursor.batches >= quota:
        return
    pending: List[Dict] = []
    for gidx, offset, item in items:
        cursor.group, cursor.offset = gidx, offset
        if item is None:
            continue
        pending.append(item)
        if len(pending) == batch_size:
            cursor.batches += 1
            yield pending
            pending = []
            if quota is not None and cursor.batches >= quota:
                return
    if pending and keep_partial:
        cursor.batches += 1
        yield pending


class PatentStream(IterableDataset):
    """The per-worker patent stream (see the module docstring). Yields batch dicts with a :data:`POSITION`."""

    def __init__(self, urls: Sequence[str], *, is_train: bool, batch_size: int, seed: int, rank: int,
                 world_size: int, shared_epoch: SharedEpoch, class_table: ClassTable, preprocess: Callable,
                 tokenizer: Callable, image_transport: ImageTransport, sampler=None, multiview: bool = False,
                 random_caption: bool = True, group_shards: int = 4, num_worker_batches: Optional[int] = None,
                 resampled: bool = False, weights: Optional[Sequence[float]] = None,
                 max_unreadable_shards: float = tars.DEFAULT_MAX_UNREADABLE, image_resize: str = "pil"):
        super().__init__()
        self.max_unreadable_shards = max_unreadable_shards
        self.is_train = is_train
        self.batch_size = batch_size
        self.seed = seed
        self.world_size = world_size
        self.shared_epoch = shared_epoch
        self.class_table = class_table
        self.image_transport = image_transport
        self.sampler = sampler
        self.multiview = multiview
        self.num_worker_batches = num_worker_batches
        self.plan = ShardPlan(list(urls), is_train, seed, rank, world_size,
                              max(1, group_shards) if is_train else 1,
                              repeat=is_train and num_worker_batches is not None, resampled=resampled,
                              weights=list(weights) if weights is not None else None)
        # grey drawings on one channel, and (uint8 transport) finished on the device: the same tensors
        self.preprocess = GreyAwarePreprocess(preprocess, image_transport, image_resize)
        self.make = ExampleMaker(preprocess=self.preprocess, tokenizer=tokenizer, class_table=class_table,
                                 seed=seed, augment=is_train, random_caption=random_caption and is_train,
                                 multiview=multiview)
        self.resume: Optional[Dict] = None  # {"epoch", "exact", "workers": {wid: cursor}} or {..., "fraction"}
        # the loader sets it when its workers persist across epochs (loader.py): then each worker reads its next
        # epoch's first group while it finishes this one (read_ahead.py, overlap 3)
        self.read_ahead_next_epoch = False
        self.reader = read_ahead.GroupReader()

    def group_examples(self, gidx: int, group: List[str], samples: List[Dict], epoch: int,
                       skips: Optional[tars.SkipCounter] = None) -> List[Example]:
        return patents.group_examples(samples, group=group, group_index=gidx, epoch=epoch, seed=self.seed,
                                      is_train=self.is_train, multiview=self.multiview, batch_size=self.batch_size,
                                      sampler=self.sampler, class_id=lambda s: class_id_of(s, self.class_table),
                                      skips=skips)

    def start(self, epoch: int, worker: int, num_workers: int) -> Cursor:
        """Where this worker starts in the epoch: the resume state's cursor, the same fraction of the epoch
        (another world size or worker count), or the beginning."""
        r = self.resume
        if not r or int(r.get("epoch", -1)) != epoch:
            return Cursor()
        if r.get("exact"):
            saved = r["workers"].get(str(worker), r["workers"].get(worker, {}))
            return Cursor(**{k: int(saved[k]) for k in ("group", "offset", "batches", "skipped") if k in saved})
        frac = float(r["fraction"])
        n_groups = self.plan.first_pass_groups(worker, num_workers)
        return Cursor(group=int(frac * n_groups) if n_groups is not None else 0,
                      batches=int(frac * (self.num_worker_batches or 0)))

    def next_epoch_group(self, epoch: int, worker: int, num_workers: int) -> Optional[List[str]]:
        """The shard group this worker starts the next epoch with (its resume position's, when it has one)."""
        start = self.start(epoch + 1, worker, num_workers)
        return next(itertools.islice(self.plan.groups(epoch + 1, worker, num_workers), start.group, None), None)

    def __iter__(self):
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.shared_epoch.get_value()
        cursor = self.start(epoch, worker, num_workers)
        shards = self.plan.worker_shards(epoch, worker, num_workers)
        skips = tars.SkipCounter(cursor.skipped, len(shards), self.max_unreadable_shards)
        groups = ((g, grp) for g, grp in enumerate(self.plan.groups(epoch, worker, num_workers)) if g >= cursor.group)
        start = Cursor(**cursor.to_dict())
        memo: Dict[int, List[Example]] = {}

        def examples_of(g: int, grp: List[str], raw: List[Dict]) -> List[Example]:
            if g not in memo:  # computed once per group (also by `final`): json skips counted once
                memo.clear()
                memo[g] = self.group_examples(g, grp, raw, epoch, skips)
            return memo[g]

        def final(g: int, grp: List[str], raw: List[Dict]) -> bool:
            """Does this group complete the worker's batch quota (counting every example usable)?"""
            if self.num_worker_batches is None:
                return False
            left = len(examples_of(g, grp, raw)) - (start.offset if g == start.group else 0)
            return left >= (self.num_worker_batches - cursor.batches) * self.batch_size

        then = self.next_epoch_group(epoch, worker, num_workers) if self.read_ahead_next_epoch else None
        raw = read_ahead.prefetched(groups, skips, self.reader, then, final)
        examples = positioned(raw, examples_of, Cursor(**start.to_dict()))
        items = made(examples, lambda ex: self.make(ex, epoch), skips)
        if self.plan.repeat or self.plan.resampled:  # a stream that would never end: it must make progress
            items = progressing(items, max(1, math.ceil(len(shards) / self.plan.group_shards)),
                                f"data-loader worker {worker} of rank {self.plan.rank}", shards,
                                Cursor(**cursor.to_dict()))
        for pending in batched(items, cursor, batch_size=self.batch_size, quota=self.num_worker_batches,
                               keep_partial=not self.is_train):
            batch = collate_patent_batch(pending)
            cursor.skipped = skips.count
            batch[POSITION] = {"worker": worker, "epoch": epoch, **cursor.to_dict()}
            yield batch
        raw.close()   # at the quota: this epoch's read-ahead is not needed
        if then is not None:
            self.reader.hold(then)
        cursor.skipped = skips.count
        yield {END: worker, POSITION: {"worker": worker, "epoch": epoch, **cursor.to_dict()}}
