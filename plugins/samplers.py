"""Sampler plugins: how often each streamed training example is used in an epoch.

A sampler is registered in ``SAMPLERS`` as a factory ``(args, class_table) -> sampler`` where the sampler has
``multiplicity(seed, epoch, key, class_id) -> int``: how many times the example with this key is emitted in
this epoch (0 drops it). The draw is a pure function of its arguments (no hidden RNG state), so a stream
without a global index can be sampled, repeated exactly, and resumed.

``class_aware`` (DesignCLIP section 3.1)
-----------------------------------------
DesignCLIP draws training samples with class-dependent probability ``p_c = f_c^-beta / sum_j f_j^-beta``
(f_c: frequency of class c). We read this as the selection weight of one *sample* of class c, normalised
over the classes, so that the share of class c in the sampled stream is

    q_c = n_c f_c^-beta / sum_j n_j f_j^-beta  ∝  f_c^(1-beta)

beta = 0 is the natural distribution, beta = 1 gives every class the same share (class-balanced), beta > 1
over-samples the tail (the paper's best beta is 1.2). On a stream this is done by emitting each example of
class c with expected multiplicity

    m_c = f_c^-beta / sum_j f_j^(1-beta)            (so that sum_c n_c m_c = N: the epoch keeps its length)

-- the class table's balance weights (:func:`patentclip.plugins.classes.balance_weights`, the class-aware losses'
weights too) --

as ``floor(m_c) + [u < frac(m_c)]`` with ``u`` uniform in [0, 1) from a hash of (seed, epoch, key). Head
classes (m_c < 1) are thinned, tail classes repeated. Class counts come from ``classes.json`` of the training
shards.

Repeats and the batch
---------------------
After the group shuffle, :func:`spread_repeats` moves the repeats of one drawing at least a batch apart, so no
batch holds the same drawing twice: two copies in one batch would be negatives of each other in every
contrastive term (same drawing, same caption list, only the augmentation differs). With beta 1.2 a tail drawing
is used up to ~5 times per epoch, and a plain shuffle of a 1000-example group puts two of its copies in one
batch of 64 with probability ~0.5. The spread is deterministic (a function of the shuffled order and the batch
size), so exact resume is unaffected. It works within a shard group, where all copies of a drawing are: a
worker that rolls over into a second pass of its shards to fill its batch quota (open_clip's "repeat a few
samples"), or ``--dataset-resampled`` drawing a shard twice in a row, can still put a drawing next to its copy
from the pass before, at a group boundary.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Hashable, List, Sequence, TypeVar

import torch

from patentclip.plugins.classes import balance_weights
from patentclip.plugins.registry import SAMPLERS
from patentclip.plugins.seeding import uniform01

T = TypeVar("T")


def spread_repeats(items: Sequence[T], key: Callable[[T], Hashable], distance: int) -> List[T]:
    """``items`` reordered so that items with the same key are at least ``distance`` positions apart, where the
    list allows it; otherwise as far apart as a greedy pass gets them.

    First the ``m`` copies of a key are spread evenly over the list, keeping its random order otherwise: copy
    ``j`` of a key first seen at position ``p`` of ``n`` is placed at ``n (p / n + j) / m`` (a single item keeps
    ``p``), ties in list order. Then one greedy pass fixes what is still too close: an item whose key was
    placed fewer than ``distance`` positions ago waits, and at every position the first waiting item that is
    allowed again goes before the next new one. A list without repeats is returned unchanged. Deterministic."""
    n = len(items)
    if distance <= 1 or n < 2:
        return list(items)
    keys = [key(x) for x in items]
    where: dict = {}
    for i, k in enumerate(keys):
        where.setdefault(k, []).append(i)
    if len(where) == n:
        return list(items)
    target = [0.0] * n
    for k, idx in where.items():
        m, p = len(idx), idx[0]
        for j, i in enumerate(idx):
            target[i] = n * (p / n + j) / m if m > 1 else float(p)
    order = sorted(range(n), key=lambda i: (target[i], i))
    last: dict = {}
    out: List[T] = []
    waiting: deque = deque()  # (item, key) in the order they were held back
    nxt = 0
    while nxt < n or waiting:
        pos = len(out)
        placed = False
        for w, (x, k) in enumerate(waiting):
            if pos - last[k] >= distance:
                del waiting[w]
                out.append(x)
                last[k] = pos
                placed = True
                break
        while not placed and nxt < n:
            i = order[nxt]
            nxt += 1
            x, k = items[i], keys[i]
            if k in last and pos - last[k] < distance:
                waiting.append((x, k))
                continue
            out.append(x)
            last[k] = pos
            placed = True
        if not placed:  # only held-back items remain and none is allowed yet: the one placed longest ago goes
            w = min(range(len(waiting)), key=lambda j: last[waiting[j][1]])
            x, k = waiting[w]
            del waiting[w]
            out.append(x)
            last[k] = pos
    return out


class NaturalSampler:
    """Every example exactly once per pass: the data's own class distribution."""

    def multiplicity(self, seed: int, epoch: int, key: str, class_id: int) -> int:
        return 1


class ClassAwareSampler:
    """DesignCLIP's class-aware sampling on a stream (see the module docstring for the formula)."""

    def __init__(self, counts: torch.Tensor, beta: float):
        self.beta = float(beta)
        try:
            # expected multiplicity per class: the class-balance weights (0 for classes without training samples)
            self.expected = balance_weights(counts, self.beta)
        except ValueError as exc:
            raise ValueError(f"class_aware sampler: {exc}") from None

    def target_distribution(self, counts: torch.Tensor) -> torch.Tensor:
        """The class shares of the sampled stream implied by ``counts``: n_c m_c / sum_j n_j m_j."""
        mass = counts.to(torch.float64) * self.expected
        return mass / mass.sum()

    def multiplicity(self, seed: int, epoch: int, key: str, class_id: int) -> int:
        m = float(self.expected[class_id])
        whole = math.floor(m)
        return whole + (1 if uniform01("sampler", seed, epoch, key) < m - whole else 0)


@SAMPLERS.register("natural")
def natural_sampler(args, class_table):
    return NaturalSampler()


@SAMPLERS.register("class_aware")
def class_aware_sampler(args, class_table):
    return ClassAwareSampler(class_table.counts(), args.sampler_beta)
