"""Keys and seeded draws: what identifies a sample, and every random choice of the pipeline as a pure function.

A sample is identified by its key (``<patent_id>_<NN>``, shards/sample_format.py) and belongs to a patent. Every
random choice is a hash (plugins/seeding.py) of a salt naming the choice and the things it is about, so a run
repeats without hidden RNG state, in any worker, after a resume, and from local disk or S3 alike:

==================  =====================================================  ===========================================
choice              keyed by                                               function
==================  =====================================================  ===========================================
shard order         ("shards", seed, epoch)                                :func:`shard_order_rng`
further passes      ("pass", seed, epoch, rank, worker, pass)              :func:`pass_rng`
resampled shards    ("resample", seed, epoch, rank, worker)                :func:`resample_rng`
group shuffle       ("group", seed, epoch, group index, first shard name)  :func:`group_rng`
paired view         ("view", seed, epoch, key)                             :func:`other_view_index`
caption             ("caption", seed, epoch, key, copy)                    :func:`caption_index`
augmentation        ("aug", anchor/other/self-pair, seed, epoch, key,      :func:`augmentation_seed`
                    copy)
sampler repeats     ("sampler", seed, epoch, key)                          plugins/samplers.py
==================  =====================================================  ===========================================

``copy`` numbers the repeats of a drawing that the sampler emits in one epoch; the group shuffle is keyed by
the shard's file name, not its URL.
"""
from __future__ import annotations

import posixpath
import random
from typing import Dict, Sequence

from patentclip.plugins.seeding import stable_index, stable_int
from patentclip.shards import sample_format as SF


def patent_of(key: str, meta: Dict) -> str:
    """The patent of a sample: the json's ``patent_id``, else the key's patent part."""
    return str(meta.get(SF.PATENT_ID) or SF.patent_of_key(key))


def shard_order_rng(seed: int, epoch: int) -> random.Random:
    return random.Random(stable_int("shards", seed, epoch))


def pass_rng(seed: int, epoch: int, rank: int, worker: int, pass_index: int) -> random.Random:
    return random.Random(stable_int("pass", seed, epoch, rank, worker, pass_index))


def resample_rng(seed: int, epoch: int, rank: int, worker: int) -> random.Random:
    return random.Random(stable_int("resample", seed, epoch, rank, worker))


def group_rng(seed: int, epoch: int, group_index: int, group: Sequence[str]) -> random.Random:
    first = posixpath.basename(group[0]) if group else ""
    return random.Random(stable_int("group", seed, epoch, group_index, first))


def other_view_index(n: int, seed: int, epoch: int, key: str) -> int:
    """Which of the ``n`` other drawings of the patent is paired with ``key``."""
    return stable_index(n, "view", seed, epoch, key)


def caption_index(n: int, seed: int, epoch: int, key: str, copy: int) -> int:
    """Which of the ``n`` captions a use of the drawing gets."""
    return stable_index(n, "caption", seed, epoch, key, copy)


def augmentation_seed(role: str, seed: int, epoch: int, key: str, copy: int) -> int:
    """The seed of torch's and Python's RNG for one augmented image (``role``: anchor, other or self-pair)."""
    return stable_int("aug", role, seed, epoch, key, copy) & ((1 << 63) - 1)
