"""Hand drawings from the data-loader workers to the step as uint8 pixels and normalise them where the model runs.

open_clip's preprocess ends in ``ToTensor -> Normalize``: every image leaves its worker as three float32
channels (600 KB at 224 px), is copied through shared memory, stacked into the batch and copied to the GPU, and
the worker spends about a third of its time per drawing on the ``/255``, the normalisation and that stacking.

With ``--image-transport uint8`` (the default) a worker stops at the uint8 pixels after the geometric steps (one
channel for a grey drawing: 50 KB at 224 px, a twelfth), and :class:`DeviceNormalize`, which the loader hands
along with every batch as ``batch["image_finish"]``, does ``/255 -> three channels -> Normalize`` on the device
inside the step (:func:`finish_images`). The arithmetic is the same, in the same order and precision, so the
tensors the model sees are bit-identical to the float transport's (tested, including GridMask).

The split is taken when every step after ``ToTensor`` is ``Normalize`` (the last), a flip or GridMask; those run
on the uint8 pixels instead (GridMask's fill 1.0 painted as 255, the same value after ``/255``). A step that must see
normalised values (random erasing fills with 0 after ``Normalize``) or one this module does not know keeps the
float transport for that pipeline, and the log says which step did.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torchvision.transforms as T

TRANSPORTS = ("uint8", "float")
IMAGE_KEYS = ("image", "image2")
FINISH_KEY = "image_finish"


def is_to_tensor(step) -> bool:
    """torchvision's ``ToTensor`` or open_clip 3.x's ``MaybeToTensor``."""
    return isinstance(step, T.ToTensor) or type(step).__name__ == "MaybeToTensor"


def _runs_on_uint8(step) -> bool:
    """Steps that give the same result on the pixels as on ``pixels / 255``: flips, GridMask."""
    from patentclip.plugins.augment import GridMask

    return isinstance(step, (GridMask, T.RandomHorizontalFlip, T.RandomVerticalFlip))


def split_for_uint8(preprocess) -> Tuple[Optional[Tuple[List[Callable], List[Callable], T.Normalize]], str]:
    """``((steps before ToTensor, steps to run on the uint8 tensor, the Normalize), "")`` for a ``T.Compose``
    whose tail can move to the device, else ``(None, why not)``."""
    steps = list(getattr(preprocess, "transforms", None) or [])
    at = next((i for i, s in enumerate(steps) if is_to_tensor(s)), None)
    if at is None:
        return None, "the preprocess has no ToTensor step"
    before, after = steps[:at], steps[at + 1:]
    norm_at = next((i for i, s in enumerate(after) if isinstance(s, T.Normalize)), None)
    if norm_at is None:
        return None, "the preprocess has no Normalize after ToTensor"
    if norm_at < len(after) - 1:
        return None, f"{type(after[norm_at + 1]).__name__} runs after Normalize"
    for s in after[:-1]:
        if not _runs_on_uint8(s):
            return None, f"{type(s).__name__} runs on float values between ToTensor and Normalize"
    if getattr(after[-1], "inplace", False):
        return None, "Normalize is in place"
    return (before, list(after[:-1]), after[-1]), ""


class PILToUint8(torch.nn.Module):
    """PIL image -> (C, H, W) uint8 tensor (``ToTensor`` without the ``/255``)."""

    def forward(self, img) -> torch.Tensor:
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(img)

    def __repr__(self) -> str:
        return "PILToUint8()"


class DeviceNormalize:
    """(B, C, H, W) uint8, C 1 or 3 -> (B, 3, H, W) float32 as ``ToTensor`` + ``Normalize`` would make it.

    Float input is returned unchanged (a batch of the float transport)."""

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._stats: Dict[torch.device, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device):
        if device not in self._stats:
            self._stats[device] = (torch.tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1),
                                   torch.tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1))
        return self._stats[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected a (batch, 1 or 3, H, W) uint8 image batch, got {tuple(x.shape)}")
        mean, std = self._on(x.device)
        y = x.to(torch.float32).div(255)  # ToTensor: img.to(float32).div(255)
        if y.shape[1] == 1:
            y = y.expand(-1, 3, -1, -1)
        return (y - mean).div_(std)  # Normalize: tensor.clone().sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"DeviceNormalize(mean={self.mean}, std={self.std})"


def finish_images(batch: Dict, key: str, device, dtype: torch.dtype) -> torch.Tensor:
    """``batch[key]`` on ``device`` in ``dtype``, normalised there if the loader sent uint8 pixels."""
    x = batch[key]
    if x.dtype == torch.uint8:
        finish = batch.get(FINISH_KEY)
        if finish is None:
            raise ValueError(f"batch[{key!r}] holds uint8 pixels but the batch has no {FINISH_KEY!r} to normalise "
                             f"them (a loader of the uint8 image transport adds it)")
        x = finish(x.to(device=device, non_blocking=True))
    return x.to(device=device, dtype=dtype, non_blocking=True)


def log_fallback(why: str) -> None:
    logging.info("image transport: float (%s); uint8 needs a preprocess ending ToTensor [GridMask] Normalize", why)
