"""Preprocess grey drawings on one channel: the same tensors as open_clip's RGB preprocess, at about a third of
the resize cost.

Patent drawings are line art; the shard builder stores them as 8-bit grey PNGs (mode ``L``). open_clip's
pipeline converts every image to RGB and then resizes / crops three identical channels. This wrapper keeps a
grey image on its one channel through the geometric transforms (PIL resamples each band with the same
coefficients, so one band is exactly each of the three), converts it to a tensor, and only then repeats it into
three channels, before anything that can tell channels apart (``Normalize``, random erasing, GridMask). The
result is bit-identical to ``preprocess(img.convert("RGB"))`` (tested), including the random draws of
``RandomResizedCrop`` and the flips, which depend on the image size only.

The fast path is taken only for images of mode ``L``, ``LA`` or ``1`` (which convert to RGB by copying the grey
value) and only when every step before ``ToTensor`` is a known geometric transform; a preprocess with colour
augmentation (open_clip's ``color_jitter``, ``gray_scale``) or an unknown step runs unchanged on the RGB image.

**Tensor crop/resize** (``resize="tensor"``, ``--image-resize tensor``; default ``pil``, off): with the uint8 image
transport, a grey drawing is turned into its uint8 pixels *first* and the same geometric steps (open_clip's
``RandomResizedCrop`` / ``Resize`` / ``CenterCrop`` objects, flips) run on the (1, H, W) uint8 tensor, with
torch's antialiased bicubic instead of PIL's. The random draws are the same calls on the same image size, so the
crop boxes and flips are identical; the resampled pixels differ from PIL's by rounding (``benchmarks/
loader_costs.py`` measures by how much, and how fast: docs/benchmarks.md; on this project's CPU it was no faster
than PIL). Not exact against open_clip's PIL path, hence off by default. It needs the uint8 transport and a
preprocess of geometric steps only before ``ToTensor``; otherwise it is refused (:class:`TensorResizeRefused`,
naming why) when the loader is built. Colour (RGB) drawings keep the PIL path.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
import torchvision.transforms as T

from patentclip.plugins.image_transport import DrawErasing, ImageTransport, PILToUint8, is_to_tensor

GREY_MODES = ("L", "LA", "1")
RESIZES = ("pil", "tensor")   # --image-resize


class TensorResizeRefused(ValueError):
    """``--image-resize tensor`` where it cannot apply (the message says why and what to change)."""


def _geometric_types() -> tuple:
    types = [T.Resize, T.CenterCrop, T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomVerticalFlip]
    try:
        from open_clip import transform as oct
        types += [getattr(oct, n) for n in ("ResizeKeepRatio", "CenterCropOrPad") if hasattr(oct, n)]
    except ImportError:  # pragma: no cover - open_clip is a dependency
        pass
    return tuple(types)


def _is_rgb_conversion(step) -> bool:
    """open_clip's ``_convert_to_rgb`` function (2.x) or ``MaybeConvertMode('RGB')`` (3.x)."""
    if getattr(step, "__name__", "") == "_convert_to_rgb":
        return True
    return type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB"


class RepeatChannels(torch.nn.Module):
    """(1, H, W) -> (3, H, W) (a broadcast view; the next step that writes makes it a tensor of its own)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(3, -1, -1)

    def __repr__(self) -> str:
        return "RepeatChannels(3)"


def grey_steps(preprocess) -> Optional[List[Callable]]:
    """The one-channel version of a ``T.Compose`` preprocess, or None when it has no safe one."""
    steps = getattr(preprocess, "transforms", None)
    if not steps:
        return None
    geometric = _geometric_types()
    out: List[Callable] = []
    for i, step in enumerate(steps):
        if _is_rgb_conversion(step):
            continue
        if is_to_tensor(step):
            return out + [step, RepeatChannels()] + list(steps[i + 1:])
        if not isinstance(step, geometric):
            return None
        out.append(step)
    return None


class GreyAwarePreprocess:
    """Callable on a decoded PIL image of any mode: grey images take the one-channel path, others are converted
    to RGB and go through ``preprocess`` unchanged.

    With the ``ImageTransport`` chosen for this preprocess, of kind uint8 (plugins/image_transport.py), both
    paths stop at the uint8 pixels (one channel for grey drawings), which the transport finishes on the device;
    random erasing is drawn here and its boxes of the last call are ``last_erase()``. Without one (or a float
    one) they make the float tensors of ``preprocess``."""

    def __init__(self, preprocess: Callable, transport: Optional[ImageTransport] = None, resize: str = "pil"):
        if resize not in RESIZES:
            raise ValueError(f"unknown image resize {resize!r}; one of: {', '.join(RESIZES)}")
        self.resize = resize
        self.preprocess = preprocess
        self.uint8 = transport is not None and transport.split is not None
        self.erase_boxes: List[Tuple[int, int, int, int]] = []
        self.erasing = 0  # random-erasing steps drawn here and painted on the device
        tail: List[Callable] = []
        if self.uint8:
            split = transport.split
            drawers = [DrawErasing(e, v, self.erase_boxes) for e, v in zip(split.erasing, split.erase_values)]
            tail = [PILToUint8()] + split.on_uint8 + drawers
            self.preprocess = T.Compose(split.before + tail)
            self.erasing = len(drawers)
        steps = grey_steps(preprocess)
        if resize == "tensor":
            why = ("the uint8 image transport is not in use (--image-transport float, or a preprocess it cannot "
                   "take: see the log)" if not self.uint8 else
                   "the preprocess has a step other than crops, resizes and flips before ToTensor (e.g. colour "
                   f"jitter or grey-scale augmentation): {preprocess!r}" if steps is None else "")
            if why:
                raise TensorResizeRefused(f"--image-resize tensor cannot apply: {why}. Use --image-resize pil "
                                          f"(the default).")
        if steps is not None and self.uint8:  # geometric steps, then uint8 pixels on one channel
            geometric = steps[:next(i for i, s in enumerate(steps) if is_to_tensor(s))]
            # tensor path: the pixels first, the same geometric steps on the uint8 tensor (tail[0] is PILToUint8)
            steps = [tail[0]] + geometric + tail[1:] if resize == "tensor" else geometric + tail
        self.grey = T.Compose(steps) if steps is not None else None

    def __call__(self, img):
        self.erase_boxes.clear()
        if self.grey is not None and img.mode in GREY_MODES:
            if img.mode != "L":
                img = img.convert("L")
            return self.grey(img).contiguous()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return self.preprocess(img)

    def last_erase(self) -> torch.Tensor:
        """(erasing steps, 4) int32: the boxes the last call drew (top, left, height, width; -1s: none)."""
        return torch.tensor(self.erase_boxes, dtype=torch.int32).view(-1, 4)

    def __repr__(self) -> str:
        return (f"GreyAwarePreprocess(one-channel path: {self.grey is not None}, transport: "
                f"{'uint8' if self.uint8 else 'float'}, resize: {self.resize}, {self.preprocess!r})")
