"""Augmentations for patent drawings (LLM-informed paper, section 3.1): flip, random resized crop, random
erasing and GridMask, each behind a flag, on top of open_clip's preprocess.

* random resized crop: open_clip's own train transform already crops; ``--aug-rrc-scale S`` sets its scale
  range to (S, 1) through open_clip's ``aug_cfg`` (default open_clip: (0.9, 1.0)).
* ``--aug-hflip P``: horizontal flip with probability P.
* ``--aug-gridmask P``: GridMask (Chen et al. 2020) with probability P: a grid of squares (unit d drawn in
  [d_min, d_max] of the image side, keep ratio 0.6, random offset) is painted with the background, i.e.
  white — on black-on-white line drawings this removes line segments, the occlusion GridMask is meant to
  simulate (the paper fills with 0, black, for natural photos).
* ``--aug-random-erasing P``: torchvision's RandomErasing with probability P (after normalisation, value 0 =
  the mean colour).

Every random draw uses torch's RNG, which the pipeline seeds per example from (seed, epoch, key), so the
augmentation of a given example in a given epoch is the same in every run and after a resume.
"""
from __future__ import annotations

import torch
from torchvision import transforms as T


class GridMask(torch.nn.Module):
    """GridMask on a (C, H, W) tensor in [0, 1] (before normalisation), or on its uint8 pixels (the uint8 image
    transport), where the fill is painted as ``round(255 * fill)``: the same value after ``/255`` for fill 0 or 1."""

    def __init__(self, p: float = 0.5, d_min: float = 0.1, d_max: float = 0.35, ratio: float = 0.6,
                 fill: float = 1.0):
        super().__init__()
        self.p, self.d_min, self.d_max, self.ratio, self.fill = p, d_min, d_max, ratio, fill

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.p <= 0 or float(torch.rand(())) >= self.p:
            return img
        _, h, w = img.shape
        side = min(h, w)
        d = max(2, int(side * (self.d_min + float(torch.rand(())) * (self.d_max - self.d_min))))
        keep = max(1, int(round(d * self.ratio)))
        oy, ox = int(torch.randint(0, d, ())), int(torch.randint(0, d, ()))
        ys = (torch.arange(h) + oy) % d >= keep
        xs = (torch.arange(w) + ox) % d >= keep
        mask = ys[:, None] & xs[None, :]
        out = img.clone()
        out[:, mask] = round(255 * self.fill) if img.dtype == torch.uint8 else self.fill
        return out


def with_patent_augmentations(preprocess: T.Compose, args) -> T.Compose:
    """open_clip's train preprocess with the flags' augmentations (``--aug-hflip``, ``--aug-gridmask``,
    ``--aug-random-erasing``): :func:`add_augmentations` with the probabilities from ``args``."""
    return add_augmentations(preprocess, hflip=args.aug_hflip, gridmask=args.aug_gridmask,
                             random_erasing=args.aug_random_erasing)


def add_augmentations(preprocess: T.Compose, hflip: float = 0.0, gridmask: float = 0.0,
                      random_erasing: float = 0.0) -> T.Compose:
    """open_clip's train preprocess with flip / GridMask inserted before Normalize and random erasing after
    (each with its probability; 0 leaves it out)."""
    hflip, grid, erase = float(hflip or 0.0), float(gridmask or 0.0), float(random_erasing or 0.0)
    if not (hflip or grid or erase):
        return preprocess
    steps = list(preprocess.transforms)
    norm_at = next((i for i, t in enumerate(steps) if isinstance(t, T.Normalize)), len(steps))
    before, after = steps[:norm_at], steps[norm_at:]
    if hflip:
        before.append(T.RandomHorizontalFlip(hflip))
    if grid:
        before.append(GridMask(grid))
    if erase:
        after.append(T.RandomErasing(p=erase, value=0))
    return T.Compose(before + after)


def rrc_aug_cfg(args) -> None:
    """``--aug-rrc-scale S`` -> open_clip aug_cfg scale (S, 1.0) for its RandomResizedCrop."""
    s = args.aug_rrc_scale
    if s:
        cfg = dict(args.aug_cfg or {})
        cfg["scale"] = (float(s), 1.0)
        args.aug_cfg = cfg
