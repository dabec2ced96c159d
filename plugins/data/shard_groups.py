"""Which shards a data-loader worker reads in an epoch, in which order and in which groups.

Training: the shard list is shuffled by (seed, epoch), split over the ranks (``shards[rank::world_size]``) and
then over the rank's workers (``[worker::num_workers]``), as open_clip splits it, and cut into groups of
``group_shards`` shards (the unit of the example shuffle and of resume). A worker with a batch quota (every rank
must take the same number of steps) goes on with another pass over its shards, reshuffled by (seed, epoch, pass),
when the first pass runs out before the quota: open_clip's "roll over and repeat a few samples"; the caller stops
at the quota. ``--dataset-resampled`` draws every group's shards with replacement (weighted by
``--train-data-upsampling-factors``) from (seed, epoch, rank, worker), without end. Evaluation: every shard once,
in order, one per group, split over the workers only.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence

from patentclip.plugins.data import keys


@dataclass(frozen=True)
class ShardPlan:
    urls: Sequence[str]
    is_train: bool
    seed: int
    rank: int = 0
    world_size: int = 1
    group_shards: int = 1
    repeat: bool = False                       # further passes until the caller's quota (training with a quota)
    resampled: bool = False
    weights: Optional[Sequence[float]] = None  # resampling weights, one per url

    def groups(self, epoch: int, worker: int, num_workers: int) -> Iterator[List[str]]:
        """This rank's and worker's shard groups for the epoch, in order (see the module docstring)."""
        if self.resampled:
            rng = keys.resample_rng(self.seed, epoch, self.rank, worker)
            while True:
                if self.weights is None:
                    yield [rng.choice(self.urls) for _ in range(self.group_shards)]
                else:
                    yield rng.choices(self.urls, weights=self.weights, k=self.group_shards)
        urls = list(self.urls)
        if self.is_train:
            keys.shard_order_rng(self.seed, epoch).shuffle(urls)
            urls = urls[self.rank::self.world_size]
        mine = urls[worker::num_workers]
        p = 0
        while mine:
            order = list(mine)
            if p > 0:
                keys.pass_rng(self.seed, epoch, self.rank, worker, p).shuffle(order)
            for i in range(0, len(order), self.group_shards):
                yield order[i:i + self.group_shards]
            if not self.repeat:
                return
            p += 1

    def worker_shards(self, epoch: int, worker: int, num_workers: int) -> List[str]:
        """The shards of this rank's and worker's first pass (every shard when resampling)."""
        if self.resampled:
            return list(self.urls)
        first = self.first_pass_groups(worker, num_workers)
        return [u for g in itertools.islice(self.groups(epoch, worker, num_workers), first) for u in g]

    def first_pass_groups(self, worker: int, num_workers: int) -> Optional[int]:
        """Number of shard groups in this worker's first pass (None when resampling)."""
        if self.resampled:
            return None
        urls = list(self.urls)
        if self.is_train:
            urls = urls[self.rank::self.world_size]
        return math.ceil(len(urls[worker::num_workers]) / self.group_shards)
