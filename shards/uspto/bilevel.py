"""Bi-level drawing sheets (USPTO TIFF, CCITT group 4) to ink masks and to the project's grey images.

Conventions:

* An **ink mask** is a 2-D ``bool`` numpy array, ``True`` where the sheet is black (ink), ``[row, column]``.
* **Polarity**: TIFF bi-level images say which value is white (``PhotometricInterpretation`` 0 = WhiteIsZero, the
  USPTO's, or 1 = BlackIsZero); PIL applies it when decoding, so a correct file decodes to white paper and black
  lines. A drawing sheet is mostly paper: a decoded sheet with more than half of its pixels black has its
  photometric tag wrong (seen in scans from other sources), and is inverted; :func:`read_ink` says so.
* **Grey at the training size** (:func:`ink_to_grey`): a 300 dpi sheet is about 2500 x 3300 pixels and its lines
  are 1-4 pixels wide; shrinking a figure to the 512-pixel shards (3-6 times) with a plain filter turns a 1-pixel
  line into a faint grey trace, or loses it. The ink is averaged over each output pixel (area average: every line
  leaves its share of darkness), then the coverage is amplified by ``gain = max(1, shrink / 2)`` (capped at 4) and
  clipped: a 1-pixel line at 3x shrink covers a third of its output pixels and comes out at 50 % grey rather than
  33 %; at 6x it stays at 50 % grey instead of 17 %. Solid areas stay black, paper stays white (255).
"""
from __future__ import annotations

import io
import warnings
from typing import Optional, Tuple

import numpy as np
from PIL import Image

#: Largest amplification of the ink coverage when shrinking (see the module docstring).
MAX_GAIN = 4.0


def read_ink(data: bytes) -> Tuple[np.ndarray, bool, Tuple[float, float]]:
    """Decode a drawing sheet (bi-level TIFF, or any image PIL reads: grey or colour are thresholded at 50 %).

    Returns ``(ink mask, inverted, dpi)``; ``inverted`` is True when the decoded sheet was mostly black and was
    inverted (module docstring). Raises ``OSError``/``ValueError`` (PIL's) for unreadable data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's "Corrupt EXIF data": a broken file fails below, and is reported
        with Image.open(io.BytesIO(data)) as im:
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            im.load()
            dpi = im.info.get("dpi") or (300.0, 300.0)
            if im.mode == "1":
                ink = ~np.asarray(im, dtype=bool)
            else:
                ink = np.asarray(im.convert("L"), dtype=np.uint8) < 128
    inverted = bool(ink.mean() > 0.5) if ink.size else False
    if inverted:
        ink = ~ink
    return ink, inverted, (float(dpi[0]), float(dpi[1]))


def ink_to_grey(ink: np.ndarray, max_side: int = 0, gain: Optional[float] = None) -> Image.Image:
    """An ink mask as an 8-bit grey image (white paper, black ink), shrunk so that its longest side is at most
    ``max_side`` (0 = keep the size) by area averaging with the coverage gain of the module docstring."""
    h, w = ink.shape
    if h == 0 or w == 0:
        raise ValueError("empty ink mask")
    if not max_side or max(h, w) <= max_side:
        return Image.fromarray(np.where(ink, 0, 255).astype(np.uint8), "L")
    shrink = max(h, w) / max_side
    size = (max(1, round(w / shrink)), max(1, round(h / shrink)))
    coverage = Image.fromarray(ink.astype(np.uint8) * 255, "L").resize(size, Image.BOX)
    g = min(MAX_GAIN, max(1.0, shrink / 2.0)) if gain is None else gain
    cov = np.asarray(coverage, dtype=np.float32) * (g / 255.0)
    return Image.fromarray((255.0 * (1.0 - np.clip(cov, 0.0, 1.0)) + 0.5).astype(np.uint8), "L")
