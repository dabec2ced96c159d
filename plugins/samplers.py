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
After the group shuffle, :func:`spread_repeats` reorders the group so that the copies of one drawing are at least
a batch (B examples) apart, so no batch holds the same drawing twice: two copies in one batch would be negatives
of each other in every contrastive term (same drawing, same caption list, only the augmentation differs). With
beta 1.2 a tail drawing is used up to ~5 times per epoch on a 1:10 tail, and ~70 times on a 1:100 tail.

When it cannot be done. Copies B apart need room: a group of n examples whose most used drawings have M copies
each (c_M such drawings) allows it exactly when ``(M - 1) B + c_M <= n`` (each of the c_M drawings needs M - 1
gaps of B; :func:`repeat_distance`). Otherwise the copies are kept as far apart as the group allows,
``d = floor((n - c_M) / (M - 1))`` examples (the largest distance any order achieves), so a batch holds at most
``ceil(B / d)`` copies of a drawing, and the loader logs a warning naming the drawing, its copies, the group
size and the group size it would need (raise ``--shuffle-group-shards`` or lower ``--sampler-beta``). Example:
beta 1.2 on a 1:100 tail uses each tail drawing ~72 times per epoch; with batches of 64 its copies fit a batch
apart only in groups of >= 4545 examples (e.g. 5 shards of 1000 drawings).

The order is deterministic (a function of the shuffled order and B), so exact resume is unaffected. It holds
within a shard group, where all copies of a drawing are (the batch boundaries may fall anywhere in the group: the
guarantee is on any B consecutive examples); a corrupt drawing skipped by the loader shortens the gap around
it by one. A worker that rolls over into a second pass of its shards to fill its batch quota (open_clip's
"repeat a few samples"), or ``--dataset-resampled`` drawing a shard twice in a row, can still put a drawing next
to its copy from the pass before, at a group boundary.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Callable, Hashable, List, Sequence, TypeVar

import torch

from patentclip.plugins.classes import balance_weights
from patentclip.plugins.registry import SAMPLERS
from patentclip.plugins.seeding import uniform01

T = TypeVar("T")
logger = logging.getLogger(__name__)


def repeat_distance(copies: Sequence[int], n: int, distance: int) -> int:
    """The largest gap ``<= distance`` at which every drawing's copies can stand in a list of ``n`` items, where
    ``copies`` are the drawings' copy counts: ``(M - 1) d + c_M <= n`` with M the largest count and c_M the
    number of drawings that have it (module docstring). ``distance`` when no drawing repeats."""
    top = max(copies, default=1)
    if top <= 1:
        return distance
    c_top = sum(1 for m in copies if m == top)
    return max(1, min(distance, (n - c_top) // (top - 1)))


_warned_tight_group = False


def spread_repeats(items: Sequence[T], key: Callable[[T], Hashable], distance: int) -> List[T]:
    """``items`` reordered so that items with the same key are at least ``distance`` positions apart, or, when
    the list cannot allow it, :func:`repeat_distance` apart (the most any order achieves; a warning says so).

    Construction (with d the achievable distance): cut the list into rows of d positions, the first row holding
    the remainder (r = n - (R - 1) d items, R = ceil(n / d) rows). (1) Every repeated key gets distinct rows:
    keys by decreasing copy count, each copy into the row with the most room left (Ryser's construction of a 0-1
    matrix with given row and column sums; it finds an assignment whenever one exists, which is when
    ``repeat_distance`` allows d), ties broken in a row order that strides through the list (R / golden ratio),
    so one drawing's copies spread over the whole group. (2) Drawings used once fill the room left, in their
    shuffled order. (3) Within a row, the keys also in the previous row go last, in the order of their columns
    there: a key at column x of row i and column y of row i + 1 is then ``d + y - x >= d`` positions apart.
    A list without repeats is returned unchanged. Deterministic."""
    global _warned_tight_group
    n = len(items)
    if distance <= 1 or n < 2:
        return list(items)
    keys = [key(x) for x in items]
    where: dict = {}
    for i, k in enumerate(keys):
        where.setdefault(k, []).append(i)
    if len(where) == n:
        return list(items)
    d = repeat_distance([len(idx) for idx in where.values()], n, distance)
    if d < distance:
        top = max(where.values(), key=len)
        c_top = sum(1 for idx in where.values() if len(idx) == len(top))
        message = (f"a shard group of {n} examples cannot keep every drawing's copies a batch ({distance}) apart: "
                   f"{keys[top[0]]!r} is used {len(top)} times ({c_top} drawing(s) that often), which needs >= "
                   f"{(len(top) - 1) * distance + c_top} examples per group; copies are kept {d} apart, so a batch "
                   f"can hold up to {math.ceil(distance / d)} copies of a drawing. Raise --shuffle-group-shards or "
                   f"lower --sampler-beta (plugins/samplers.py)")
        (logger.debug if _warned_tight_group else logger.warning)(message)
        _warned_tight_group = True
    if d <= 1:
        return list(items)
    rows_n = -(-n // d)
    first = n - (rows_n - 1) * d
    room = [first] + [d] * (rows_n - 1)
    stride = max(1, round(rows_n * 0.6180339887))
    while math.gcd(stride, rows_n) != 1:
        stride += 1
    by_room: dict = {}  # room left -> rows with that much room, in stride order
    for r in ((i * stride) % rows_n for i in range(rows_n)):
        by_room.setdefault(room[r], deque()).append(r)
    rows: List[List[int]] = [[] for _ in range(rows_n)]
    for idx in sorted((idx for idx in where.values() if len(idx) > 1), key=lambda idx: (-len(idx), idx[0])):
        todo = list(idx)
        while todo:  # one round: distinct rows, the roomiest first (one round suffices when d is achievable)
            chosen: List[int] = []
            for left in sorted((c for c, q in by_room.items() if c > 0 and q), reverse=True):
                queue = by_room[left]
                while queue and len(chosen) < len(todo):
                    chosen.append(queue.popleft())
                if len(chosen) == len(todo):
                    break
            for r, i in zip(chosen, todo):
                rows[r].append(i)
                room[r] -= 1
                by_room.setdefault(room[r], deque()).append(r)
            todo = todo[len(chosen):]
    singles = iter(sorted(idx[0] for idx in where.values() if len(idx) == 1))
    for r in range(rows_n):
        rows[r].extend(next(singles) for _ in range(room[r]))
    out: List[T] = []
    previous: dict = {}  # key -> its column in the previous row
    for r, row in enumerate(rows):
        carried = sorted((i for i in row if keys[i] in previous), key=lambda i: (previous[keys[i]], i))
        row = sorted(i for i in row if keys[i] not in previous) + carried
        offset = d - len(row)  # the first row is right-aligned: its columns end where a full row's do
        previous = {keys[i]: offset + j for j, i in enumerate(row)}
        out.extend(items[i] for i in row)
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
