"""Hand drawings from the data-loader workers to the step as uint8 pixels and normalise them where the model runs.

open_clip's preprocess ends in ``ToTensor -> Normalize``: every image leaves its worker as three float32
channels (600 KB at 224 px), is copied through shared memory, stacked into the batch and copied to the GPU, and
the worker spends about a quarter of its time per drawing on the ``/255``, the normalisation and that stacking.

With ``--image-transport uint8`` (the default) a worker stops at the uint8 pixels after the geometric steps (one
channel for a grey drawing: 50 KB at 224 px, a twelfth), and :class:`DeviceNormalize` does ``/255 -> three
channels -> Normalize`` on the device inside the step. The arithmetic is the same, in the same order and
precision, so the tensors the model sees are bit-identical to the float transport's (tested, with flips, GridMask
and erasing).

The decision is one object, :class:`ImageTransport`, made once per loader from the flag and the preprocess
(``ImageTransport.choose``) and owned by the loader (``loader.image_transport``, as timm's ``PrefetchLoader`` owns
its normalisation): the workers run its first half (plugins/grey_preprocess.py builds their preprocess from its
split), and the consumer of the batches, the training step or evaluation's feature extraction, calls
``transport.images(batch, field, device, dtype)`` for the second. Nothing of it travels in the batch; a loader
without a transport sends float images (:func:`transport_of`).

The split is taken when every step between ``ToTensor`` and ``Normalize`` is a flip or GridMask, which run on the
uint8 pixels instead (GridMask's fill 1.0 painted as 255, the same value after ``/255``), and every step after
``Normalize`` is random erasing with a fixed value: the worker makes its random draws (the same calls in the same
order, so every later draw is unchanged too) and sends the box along (the batch field ``IMAGE_ERASE``: per drawing
and erasing step, top, left, height, width, or -1s), and the device paints the box after normalising. Random erasing
with random values (``value="random"``), or a step this module does not know, keeps the float transport for that
pipeline, and the log says which step did.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms as T

from patentclip.plugins.data.batch import erase_field

TRANSPORTS = ("uint8", "float")


def is_to_tensor(step) -> bool:
    """torchvision's ``ToTensor`` or open_clip 3.x's ``MaybeToTensor``."""
    return isinstance(step, T.ToTensor) or type(step).__name__ == "MaybeToTensor"


def _runs_on_uint8(step) -> bool:
    """Steps that give the same result on the pixels as on ``pixels / 255``: flips, GridMask."""
    from patentclip.plugins.augment import GridMask

    return isinstance(step, (GridMask, T.RandomHorizontalFlip, T.RandomVerticalFlip))


def _erasing_value(step) -> Optional[List[float]]:
    """The fixed fill of a RandomErasing step as torchvision casts it, or None for ``value="random"``."""
    v = step.value
    if isinstance(v, (int, float)):
        return [float(v)]
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    return None


@dataclass
class Uint8Split:
    """A preprocess cut for the uint8 transport."""

    before: List[Callable]  # the PIL steps before ToTensor
    on_uint8: List[Callable]  # flips / GridMask, run on the pixels
    normalize: T.Normalize
    erasing: List[T.RandomErasing] = field(default_factory=list)  # after Normalize: drawn in the worker
    erase_values: List[List[float]] = field(default_factory=list)  # their fill values (one, or one per channel)


def split_for_uint8(preprocess) -> Tuple[Optional[Uint8Split], str]:
    """``(Uint8Split, "")`` for a ``T.Compose`` whose tail can move to the device, else ``(None, why not)``."""
    steps = list(getattr(preprocess, "transforms", None) or [])
    at = next((i for i, s in enumerate(steps) if is_to_tensor(s)), None)
    if at is None:
        return None, "the preprocess has no ToTensor step"
    before, after = steps[:at], steps[at + 1:]
    norm_at = next((i for i, s in enumerate(after) if isinstance(s, T.Normalize)), None)
    if norm_at is None:
        return None, "the preprocess has no Normalize after ToTensor"
    for s in after[:norm_at]:
        if not _runs_on_uint8(s):
            return None, f"{type(s).__name__} runs on float values between ToTensor and Normalize"
    for s in after[norm_at + 1:]:
        if not isinstance(s, T.RandomErasing):
            return None, f"{type(s).__name__} runs after Normalize"
        if _erasing_value(s) is None:
            return None, "RandomErasing with random values runs after Normalize"
    if getattr(after[norm_at], "inplace", False):
        return None, "Normalize is in place"
    erasing = list(after[norm_at + 1:])
    values = [_erasing_value(e) for e in erasing]
    for e, v in zip(erasing, values):
        if len(v) not in (1, 3):
            raise ValueError(f"RandomErasing value {e.value!r}: one value or one per channel (3)")
    return Uint8Split(before, list(after[:norm_at]), after[norm_at], erasing, values), ""


class DrawErasing(torch.nn.Module):
    """Random erasing's random draws on the worker, the erasing itself left to the device.

    Makes exactly the calls of ``T.RandomErasing.forward`` and ``get_params`` (for an image of 3 channels and the
    pixels' size, ``value`` the step's fill as :class:`Uint8Split` has it) and appends the box,
    ``(top, left, height, width)`` or ``(-1, -1, -1, -1)`` when nothing is erased, to ``boxes``; returns the
    pixels unchanged."""

    def __init__(self, step: T.RandomErasing, value: List[float], boxes: List[Tuple[int, int, int, int]]):
        super().__init__()
        self.step, self.value, self.boxes = step, value, boxes

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        box = (-1, -1, -1, -1)
        if torch.rand(1) < self.step.p:
            shape = torch.empty((3,) + tuple(pixels.shape[-2:]), device="meta")  # get_params reads the shape only
            i, j, h, w, _ = self.step.get_params(shape, scale=self.step.scale, ratio=self.step.ratio,
                                                 value=self.value)
            if h < pixels.shape[-2]:  # get_params returns the whole image when it found no box: nothing erased
                box = (int(i), int(j), int(h), int(w))
        self.boxes.append(box)
        return pixels

    def __repr__(self) -> str:
        return f"DrawErasing({self.step!r})"


class PILToUint8(torch.nn.Module):
    """PIL image -> (C, H, W) uint8 tensor (``ToTensor`` without the ``/255``)."""

    def forward(self, img) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(img)

    def __repr__(self) -> str:
        return "PILToUint8()"


class DeviceNormalize:
    """(B, C, H, W) uint8, C 1 or 3 -> (B, 3, H, W) float32 as ``ToTensor`` + ``Normalize`` (+ the deferred random
    erasing, given its boxes) would make it. Float input is returned unchanged (a batch of the float transport)."""

    def __init__(self, mean, std, erase_values: Sequence[Sequence[float]] = ()):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.erase_values = [tuple(float(v) for v in vals) for vals in erase_values]
        self._consts: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]] = {}

    def _on(self, device: torch.device):
        """(mean, std, erase values) as (C, 1, 1) float32 tensors on ``device``, made once per device."""
        if device not in self._consts:
            as_chw = lambda v: torch.tensor(v, dtype=torch.float32, device=device).view(-1, 1, 1)  # noqa: E731
            self._consts[device] = (as_chw(self.mean), as_chw(self.std), [as_chw(v) for v in self.erase_values])
        return self._consts[device]

    def __call__(self, x: torch.Tensor, erase: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a (batch, 1 or 3, H, W) uint8 image batch, got {tuple(x.shape)}")
        mean, std, erase_values = self._on(x.device)
        y = x.to(torch.float32).div(255)  # ToTensor: img.to(float32).div(255)
        if y.shape[1] == 1:
            y = y.expand(-1, 3, -1, -1)
        y = (y - mean).div_(std)  # Normalize: tensor.clone().sub_(mean).div_(std)
        if self.erase_values:
            if erase is None or tuple(erase.shape) != (x.shape[0], len(self.erase_values), 4):
                raise ValueError(f"the preprocess erases {len(self.erase_values)} time(s) per drawing: expected "
                                 f"boxes of shape ({x.shape[0]}, {len(self.erase_values)}, 4), got "
                                 f"{None if erase is None else tuple(erase.shape)}")
            erase = erase.to(device=x.device, dtype=torch.long)
            rows = torch.arange(x.shape[2], device=x.device)
            cols = torch.arange(x.shape[3], device=x.device)
            for k, value in enumerate(erase_values):  # in the preprocess's order, as F.erase would
                i, j, h, w = (erase[:, k, n].view(-1, 1, 1, 1) for n in range(4))
                inside = ((rows.view(1, 1, -1, 1) >= i) & (rows.view(1, 1, -1, 1) < i + h)
                          & (cols.view(1, 1, 1, -1) >= j) & (cols.view(1, 1, 1, -1) < j + w) & (h > 0))
                y = torch.where(inside, value, y)
        return y

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std}, erasing={self.erase_values})"


class ImageTransport:
    """What a loader's workers send for its images and how its consumer finishes them (the module docstring).

    ``kind``: ``"uint8"`` (pixels, finished on the device by ``finish``) or ``"float"`` (model-ready tensors, moved
    only). ``split``: the preprocess cut the workers run (uint8), else None. ``refused``: why uint8 was asked
    for but the preprocess does not allow it ("" otherwise)."""

    def __init__(self, split: Optional[Uint8Split] = None, refused: str = ""):
        self.split = split
        self.refused = refused
        self.finish: Optional[DeviceNormalize] = None
        if split is not None:
            self.finish = DeviceNormalize(split.normalize.mean, split.normalize.std, split.erase_values)

    @classmethod
    def choose(cls, requested: str, preprocess) -> "ImageTransport":
        """The transport for ``--image-transport requested`` and this preprocess; uint8 falls back to float
        (logged) for a preprocess it cannot split."""
        if requested not in TRANSPORTS:
            raise ValueError(f"unknown image transport {requested!r}; choose one of {', '.join(TRANSPORTS)}")
        if requested == "float":
            return cls()
        split, why = split_for_uint8(preprocess)
        if split is None:
            log_fallback(why)
        return cls(split, why)

    @property
    def kind(self) -> str:
        return "uint8" if self.split is not None else "float"

    @property
    def erasing(self) -> int:
        """Random-erasing steps drawn in the workers and painted on the device (0 with the float transport)."""
        return len(self.split.erasing) if self.split is not None else 0

    def to_device(self, images: torch.Tensor, device, dtype: torch.dtype,
                  erase: Optional[torch.Tensor] = None) -> torch.Tensor:
        """A batch of this transport's images, model-ready on ``device`` in ``dtype`` (``erase``: the boxes the
        workers drew, with deferred random erasing)."""
        if (images.dtype == torch.uint8) != (self.finish is not None):
            raise ValueError(
                f"a {images.dtype} image batch, but this image transport is {self.kind}"
                + (": pass the loader's image_transport to the step" if self.finish is None else ""))
        if self.finish is not None:
            images = self.finish(images.to(device=device, non_blocking=True), erase)
        return images.to(device=device, dtype=dtype, non_blocking=True)

    def images(self, batch: Dict, field: str, device, dtype: torch.dtype) -> torch.Tensor:
        """``batch[field]`` (an image field of plugins/data/batch.py) model-ready on ``device`` in ``dtype``."""
        return self.to_device(batch[field], device, dtype, batch.get(erase_field(field)))

    def __repr__(self) -> str:
        return f"ImageTransport({self.kind}{', ' + repr(self.finish) if self.finish is not None else ''})"


FLOAT = ImageTransport()  # what a loader without an image transport sends


def transport_of(loader) -> ImageTransport:
    """A loader's image transport (``loader.image_transport``); float for a loader that has none (a dataset
    plugin that sends model-ready tensors)."""
    return getattr(loader, "image_transport", FLOAT)


def log_fallback(why: str) -> None:
    logging.info("image transport: float (%s); uint8 needs a preprocess ending ToTensor [flips, GridMask] Normalize "
                  "[RandomErasing with a fixed value]", why)
