"""Synthetic design-patent drawings for tests, demos and smoke-training runs.

Real design patents (USPTO ``USD...`` grants) consist of a handful of black-and-white
line drawings of one object -- front, side, top and perspective views -- plus a title
("Ornamental design for a cup") and a Locarno design class.  This module produces a
small, fully synthetic stand-in for such a corpus so that the whole patentclip pipeline
(manifest -> webdataset shards -> open_clip training -> zero-shot evaluation) can be
exercised without downloading anything:

* every design class has a **parametric 3-D family** (a cup is a body of revolution plus
  a handle, a chair is a seat, four legs and a back, a car is a body, a cabin and four
  wheels, ...).  Each synthetic patent draws random parameters from its class ranges,
  so no two patents are identical but all members of a class share a recognisable
  structure;
* the object is modelled as 3-D wire-frame polylines (bodies of revolution additionally
  get their view-dependent silhouette lines) and projected orthographically (front,
  side, top, ...) or with a mild perspective, then drawn with PIL as black lines on a
  white canvas, centred and scaled with a margin;
* class sizes are long-tailed (Zipf-like), like real design-patent corpora;
* every drawing gets several captions built from templates that describe the design with
  the patent's own shape words (proportions, parts and details read off its drawn
  parameters: "a tall flared cup with an angular handle and a foot ring"), so that captions
  differ from patent to patent as DesignCLIP's generated captions do, and mostly name the
  class too, so that zero-shot classification with class-name prompts is learnable.

Everything is seeded: the same arguments give a byte-identical ``manifest.jsonl`` and
identical PNG files.  The public entry point is :func:`generate_synthetic_patents`;
:func:`render_design` renders a single object and :data:`DESIGN_CLASSES` lists the
available classes (code, name, object noun).
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..manifest import MANIFEST_FILENAME, write_manifest
from .geometry import _Model
from .classes import DESIGN_CLASSES
from .render import _camera_jitter, _line_width, _render, check_views
from .captions import _article, make_captions


def class_counts(num_patents: int, num_classes: int, zipf_exponent: float = 1.1,
                 min_patents_per_class: int = 4) -> list[int]:
    """Long-tailed patent counts per class.

    Every class gets ``min_patents_per_class``; the remaining patents are shared out in
    proportion to ``1 / (k + 1) ** zipf_exponent`` (largest-remainder rounding), so the
    counts are non-increasing in ``k`` and sum to ``num_patents``.
    """
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if min_patents_per_class < 0:
        raise ValueError("min_patents_per_class must be >= 0")
    if zipf_exponent < 0:
        raise ValueError("zipf_exponent must be >= 0")
    rest = num_patents - num_classes * min_patents_per_class
    if rest < 0:
        raise ValueError(
            f"num_patents={num_patents} is too small for {num_classes} classes with at least "
            f"{min_patents_per_class} patents each (need >= {num_classes * min_patents_per_class})")
    w = 1.0 / np.power(np.arange(1, num_classes + 1, dtype=float), zipf_exponent)
    ideal = rest * w / w.sum()
    base = np.floor(ideal).astype(int)
    short = rest - int(base.sum())
    # largest remainders first; ties broken towards the head class (keeps counts monotone)
    order = sorted(range(num_classes), key=lambda k: (-(ideal[k] - base[k]), k))
    for k in order[:short]:
        base[k] += 1
    counts = [int(c) + min_patents_per_class for c in base]
    for k in range(1, num_classes):  # rounding can only break monotonicity by one
        if counts[k] > counts[k - 1]:
            counts[k - 1], counts[k] = counts[k], counts[k - 1]
    return counts


def _parse_date(value: str | _dt.date, what: str) -> _dt.date:
    if isinstance(value, _dt.date):
        return value
    try:
        return _dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValueError(f"{what} must be an ISO date YYYY-MM-DD, got {value!r}") from None


def generate_synthetic_patents(
    out_dir: str | Path,
    *,
    num_patents: int = 400,
    num_classes: int = 12,
    views: Sequence[str] = ("front", "side", "top", "perspective"),
    image_size: int = 128,
    seed: int = 0,
    zipf_exponent: float = 1.1,
    min_patents_per_class: int = 4,
    start_date: str = "2012-01-01",
    end_date: str = "2022-12-31",
    progress: bool = False,
) -> Path:
    """Write a synthetic design-patent corpus to ``out_dir`` and return the manifest path.

    Layout::

        out_dir/manifest.jsonl              one JSON record per patent (docs/manifest.md)
        out_dir/USD0712345/D00001.png       one drawing per view, in ``views`` order
        out_dir/USD0712345/D00002.png
        ...

    Args:
        out_dir: output folder (created if needed; existing files with the same names are
            overwritten).
        num_patents: number of patents (>= ``num_classes * min_patents_per_class``).
        num_classes: number of design classes, 1..``len(DESIGN_CLASSES)``; the first
            ``num_classes`` of :data:`DESIGN_CLASSES` are used.
        views: view names, any of :data:`SUPPORTED_VIEWS`, one drawing per view.
        image_size: square canvas size in pixels (>= 32).
        seed: master seed; same arguments give a byte-identical manifest and images.
        zipf_exponent: tail exponent of the class-size distribution (0 = balanced).
        min_patents_per_class: floor of the per-class patent count.
        start_date, end_date: grant dates are drawn uniformly from this inclusive range.
        progress: show a tqdm progress bar on stderr.

    Returns:
        ``out_dir / "manifest.jsonl"``.
    """
    if not 1 <= num_classes <= len(DESIGN_CLASSES):
        raise ValueError(f"num_classes must be between 1 and {len(DESIGN_CLASSES)}, got {num_classes}")
    if num_patents < 1:
        raise ValueError("num_patents must be >= 1")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 pixels, got {image_size}")
    views = tuple(views) if not isinstance(views, str) else views
    check_views(views)
    d0, d1 = _parse_date(start_date, "start_date"), _parse_date(end_date, "end_date")
    if d1 < d0:
        raise ValueError(f"end_date {d1} is before start_date {d0}")
    counts = class_counts(num_patents, num_classes, zipf_exponent, min_patents_per_class)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(seed))
    classes = np.repeat(np.arange(num_classes), counts)
    rng.shuffle(classes)
    day_offsets = np.sort(rng.integers(0, (d1 - d0).days + 1, size=num_patents))
    numbers = 650_000 + int(rng.integers(0, 50_000)) + np.cumsum(rng.integers(1, 120, size=num_patents))
    width = _line_width(image_size)

    iterator: Iterable[int] = range(num_patents)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=num_patents, desc="synth", unit="patent")
    records = []
    for i in iterator:
        dc = DESIGN_CLASSES[int(classes[i])]
        prng = np.random.default_rng([int(seed), i, 0xD35])
        model = _Model()
        traits = dc.builder(model, prng)
        yaw, pitch = _camera_jitter(prng)
        patent_id = f"USD{int(numbers[i]):07d}"
        title = f"Ornamental design for {_article(dc.noun)} {dc.noun}"
        pdir = out / patent_id
        pdir.mkdir(exist_ok=True)
        drawings = []
        for k, view in enumerate(views, start=1):
            img = _render(model, view, image_size, yaw=yaw, pitch=pitch, line_width=width)
            rel = f"{patent_id}/D{k:05d}.png"
            img.save(out / rel, format="PNG")
            drawings.append({
                "path": rel,
                "view": view,
                "captions": make_captions(dc.noun, dc.code, dc.name, title, view, prng, traits=traits),
            })
        records.append({
            "patent_id": patent_id,
            "grant_date": (d0 + _dt.timedelta(days=int(day_offsets[i]))).isoformat(),
            "class": dc.code,
            "class_name": dc.name,
            "title": title,
            "object": dc.noun,
            "drawings": drawings,
        })
    manifest = out / MANIFEST_FILENAME
    write_manifest(manifest, records)
    return manifest
