"""Extra evaluation metrics, registered by name: ``patentclip-eval --metrics a,b`` and ``patentclip-train
--eval-metrics a,b`` add them to the built-in ones (docs/extending.md).

The contract: a metric is a function ``(features, class_table) -> {name: value}`` of the features the evaluation
already extracted (``extract_features``: ``image_features`` and ``text_features`` L2-normalised on the CPU,
``class_id``, ``grant_day``, ``patent_id``, ``view``, ``key``) and the evaluation's class table; each value is a
number (a float, or a 0-dim tensor). It runs once per evaluation, after the built-in metrics, and must not
change the features. Its names must not collide with another metric's.

A metric of the project's own is one module that registers itself, named in :data:`BUILTIN_METRIC_MODULES`
(strings, so that this module imports none of them); a user's is imported with ``--plugins``.
"""
from __future__ import annotations

import importlib
import math
from typing import Dict, Sequence, Tuple

import torch

from patentclip.plugins.registry import Registry

METRICS = Registry("metric")

#: modules of metrics shipped with patentclip (each registers itself in METRICS when imported)
BUILTIN_METRIC_MODULES: Sequence[str] = ()


def load_builtin_metrics() -> None:
    for name in BUILTIN_METRIC_MODULES:
        importlib.import_module(name)


def metric_names(spec: str) -> Tuple[str, ...]:
    """``"a, b"`` (a ``--metrics`` / ``--eval-metrics`` value) -> ``("a", "b")``."""
    return tuple(m.strip() for m in spec.split(",") if m.strip())


def check_metric_names(names: Sequence[str]) -> None:
    """Fail at start, not after an evaluation, when a name is not registered (the error lists what is)."""
    load_builtin_metrics()
    for name in names:
        METRICS.get(name)


def extra_from_features(names: Sequence[str], features: Dict, class_table) -> Dict[str, float]:
    """The values of the metrics ``names`` on the extracted ``features``, as one flat dict of floats."""
    load_builtin_metrics()
    out: Dict[str, float] = {}
    for name in names:
        values = METRICS.get(name)(features, class_table)
        if not isinstance(values, dict):
            raise TypeError(f"metric {name!r} returned {type(values).__name__}, not a dict of named values")
        for key, value in values.items():
            if key in out:
                raise ValueError(f"metric {name!r} returns {key!r}, which another metric already returned")
            value = value.item() if isinstance(value, torch.Tensor) else value
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"metric {name!r}: value {key!r} is {type(value).__name__}, not a number")
            out[key] = float(value) if math.isfinite(float(value)) else float("nan")
    return out
