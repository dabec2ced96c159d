"""Sampler plugins: pipeline stages that decide how often each streamed sample is used.

A sampler is registered in ``SAMPLERS`` as a factory ``(args, class_table, epoch_fn) -> stage``, where the
stage is a generator function over samples (a webdataset pipeline stage). ``natural`` keeps the stream's
own class distribution.
"""
from __future__ import annotations

from patentclip.plugins.registry import SAMPLERS


def _identity_stage(src):
    yield from src


@SAMPLERS.register("natural")
def natural_sampler(args, class_table, epoch_fn):
    """Every sample exactly once per pass: the data's natural class distribution."""
    return _identity_stage
