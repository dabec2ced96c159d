"""The plugin contracts: what the training loop relies on from a dataset, a sampler, a loss and a loader.

Written as ``typing.Protocol`` classes, as torchtitan's train spec writes its components, so that a plugin
author reads here (not in the loop) what they must provide, and a type checker can hold them to it. The loop
only ever calls what is listed here.

How plugins are made. Every kind has a registry (``patentclip.plugins.registry``: ``DATASETS``, ``SAMPLERS``,
``LOSSES``; ``patentclip.shards.importers.IMPORTERS`` for input formats). A registered class takes explicit,
typed constructor arguments and is usable without any command line; the only code that reads ``args`` (the
parsed ``patentclip-train`` flags, always complete: every flag has its parser default) is its factory, the
classmethod ``from_args`` (for a registered function, the function itself is the factory). The registry
builds a plugin with ``REGISTRY.build(name, args, ...)``, which calls that factory.

    @LOSSES.register("my_loss")
    class MyLoss(torch.nn.Module):
        def __init__(self, class_table: ClassTable, margin: float): ...
        @classmethod
        def from_args(cls, args, class_table): return cls(class_table, margin=args.my_margin)
        def forward(self, features, batch): return {"my_loss": ...}

Batches are dicts whose field names are defined once in the data pipeline's batch schema
(``patentclip.plugins.data``); features are open_clip's output dict (``image_features``, ``text_features``,
``logit_scale``, plus ``image2_features`` for a second view).
"""
from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Protocol, runtime_checkable

import torch

from patentclip.plugins.classes import ClassTable


@runtime_checkable
class Loss(Protocol):
    """A loss plugin: an ``nn.Module`` whose forward returns named, unweighted terms.

    ``needs_second_view``: True when it reads ``features["image2_features"]`` (the trainer then switches the
    pipeline to multi-view pairs). Parameters it owns (a classification head, class centres) are trained,
    checkpointed and exported with the model.

    Random draws inside ``forward`` must be a pure function of (seed, step, rank), so that a resumed run draws
    what the uninterrupted one drew. Two ways: define ``set_step(step)`` (optional; the trainer calls it through
    ``LossSet.set_step`` before every optimizer step, and the micro-batch passes of ``--accum-freq`` share it)
    and draw from a ``torch.Generator`` seeded from (seed, step, rank) (``losses.draw_seed``; as
    ``class_aware_classification`` does), or draw from torch's global generator, which the trainer seeds from
    (seed, step, rank) before every step (``launch/step.py: begin_step``). Python's ``random`` and NumPy's
    global generators are not seeded per step: do not draw from them.
    """

    needs_second_view: bool

    def __call__(self, features: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
        ...


@runtime_checkable
class Sampler(Protocol):
    """How often each streamed training example is used in an epoch.

    ``multiplicity`` must be a pure function of its arguments (no hidden state): the stream has no global index,
    and exact resume replays it.
    """

    def multiplicity(self, seed: int, epoch: int, key: str, class_id: int) -> int:
        ...


@runtime_checkable
class Loader(Protocol):
    """The training loader the loop iterates: batches, their count, and an exact-resume position.

    ``state_dict()`` is saved with every checkpoint (one per rank) and ``load_state_dict`` makes a fresh loader
    continue with exactly the batches the uninterrupted run would have produced. ``num_batches`` is the same
    on every rank (equal batch counts, so no rank waits on a collective the others never reach). A loader whose
    workers send images that are not model-ready (the uint8 pixels of ``patent-wds``) has ``image_transport``
    (plugins/image_transport.py), which the step and evaluation call to finish them on the device; without one
    its image fields are taken as model-ready float tensors (``image_transport.transport_of``).
    """

    num_batches: int
    num_samples: int
    skipped: int

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        ...

    def state_dict(self) -> Dict[str, Any]:
        ...

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        ...


@runtime_checkable
class Data(Protocol):
    """What a dataset builder returns (open_clip's ``DataInfo`` shape): a loader and a per-epoch hook."""

    dataloader: Loader

    def set_epoch(self, epoch: int) -> None:
        ...


class DatasetBuilder(Protocol):
    """A registered dataset factory: ``(args, preprocess, is_train, epoch, tokenizer, class_table) -> Data``."""

    def __call__(self, args: argparse.Namespace, preprocess: Callable, is_train: bool, epoch: int = 0,
                 tokenizer: Optional[Callable] = None, class_table: Optional[ClassTable] = None) -> Data:
        ...


class SamplerFactory(Protocol):
    """A registered sampler factory: ``(args, class_table) -> Sampler``."""

    def __call__(self, args: argparse.Namespace, class_table: ClassTable) -> Sampler:
        ...


class LossFactory(Protocol):
    """A registered loss's factory (its ``from_args``): ``(args, class_table) -> Loss``."""

    def __call__(self, args: argparse.Namespace, class_table: ClassTable) -> Loss:
        ...
