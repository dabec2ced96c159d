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

as ``floor(m_c) + [u < frac(m_c)]`` with ``u`` uniform in [0, 1) from a hash of (seed, epoch, key). Head
classes (m_c < 1) are thinned, tail classes repeated; the shuffle that follows separates the repeats. Class
counts come from ``classes.json`` of the training shards.
"""
from __future__ import annotations

import hashlib
import math

import torch

from patentclip.plugins.registry import SAMPLERS


def uniform01(*parts) -> float:
    """A deterministic uniform number in [0, 1) from the given parts."""
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / float(1 << 53)


class NaturalSampler:
    """Every example exactly once per pass: the data's own class distribution."""

    def multiplicity(self, seed: int, epoch: int, key: str, class_id: int) -> int:
        return 1


class ClassAwareSampler:
    """DesignCLIP's class-aware sampling on a stream (see the module docstring for the formula)."""

    def __init__(self, counts: torch.Tensor, beta: float):
        counts = counts.to(torch.float64)
        if (counts < 0).any() or counts.sum() <= 0:
            raise ValueError("class_aware sampler: classes.json has no training samples")
        self.beta = float(beta)
        freq = counts / counts.sum()
        present = counts > 0
        m = torch.zeros_like(freq)
        m[present] = freq[present].pow(-self.beta)
        m = m / (freq * m).sum()
        self.expected = m  # expected multiplicity per class (0 for classes without training samples)

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
    return ClassAwareSampler(class_table.counts(), getattr(args, "sampler_beta", 1.0))
