"""Seeded hashing: every pseudo-random choice of patentclip as a pure function of what it is about.

``stable_int(*parts)`` is the 64-bit blake2b digest (8 bytes, little endian) of the parts' ``str`` joined by
U+001F (unit separator). Unlike Python's ``hash`` it is the same on every machine, process and Python version,
so a draw keyed by, say, (salt, seed, epoch, sample key) repeats in every run, in every data-loader worker and
after a resume, and needs no RNG state to be saved. The first part is a salt naming the draw ("split", "view",
"caption", "sampler", ...), so two draws about the same thing are independent.

* ``stable_index(n, *parts)``: an index in [0, n) (``stable_int % n``; 0 when n <= 1).
* ``uniform01(*parts)``: a float in [0, 1) from the digest's top 53 bits (a double's mantissa).

Users: the shard builder's split and patent order (shards/build.py), the data pipeline's shard order, view
pairing, group shuffle, caption draw and augmentation seeds (plugins/data/), and the class-aware sampler
(plugins/samplers.py). Changing these functions changes every split, shard and batch: they are pinned by
tests/test_seeding.py. This module imports nothing but ``hashlib`` so that ``shards/`` can use it without torch.
"""
from __future__ import annotations

import hashlib

SEPARATOR = "\x1f"


def stable_int(*parts) -> int:
    """A deterministic 64-bit unsigned integer from the given parts (see the module docstring)."""
    h = hashlib.blake2b(SEPARATOR.join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def stable_index(n: int, *parts) -> int:
    """A deterministic index in [0, n) from the given parts (0 for n <= 1)."""
    if n <= 1:
        return 0
    return stable_int(*parts) % n


def uniform01(*parts) -> float:
    """A deterministic uniform number in [0, 1) from the given parts."""
    return (stable_int(*parts) >> 11) / float(1 << 53)
