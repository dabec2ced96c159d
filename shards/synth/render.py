"""Views and rendering: orthographic or perspective projection of a model, drawn as black lines on white."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .geometry import _Model, _X, _Y, _Z, _unit
from .families import _u
from .classes import DESIGN_CLASSES, DesignClass


#: view name -> (direction from the object towards the viewer, or None for oblique views)
_VIEW_DIRECTIONS: dict[str, np.ndarray | None] = {
    "front": _Z,
    "back": -_Z,
    "side": _X,
    "right": _X,
    "left": -_X,
    "top": _Y,
    "bottom": -_Y,
    "perspective": None,
    "isometric": None,
}
SUPPORTED_VIEWS: tuple[str, ...] = tuple(_VIEW_DIRECTIONS)

_VIEW_PHRASES = {
    "front": "front view",
    "back": "rear view",
    "side": "side view",
    "right": "right side view",
    "left": "left side view",
    "top": "top plan view",
    "bottom": "bottom view",
    "perspective": "perspective view",
    "isometric": "isometric view",
}

_MARGIN = 0.08


def _camera_basis(direction: np.ndarray) -> np.ndarray:
    """Rows: camera right, camera up, towards the viewer (world y stays up when possible)."""
    zc = _unit(direction)
    if abs(float(zc @ _Y)) > 0.999:
        xc = _X.copy()
    else:
        xc = _unit(np.cross(_Y, zc))
    yc = np.cross(zc, xc)
    return np.stack([xc, yc, zc])


def _render(model: _Model, view: str, size: int, *, yaw: float = 35.0, pitch: float = 25.0,
            line_width: int = 1) -> Image.Image:
    """Project ``model`` for ``view`` and draw it black-on-white on a ``size`` x ``size`` canvas."""
    direction = _VIEW_DIRECTIONS[view]
    perspective = view == "perspective"
    if direction is None:
        if view == "isometric":
            yaw, pitch = 45.0, math.degrees(math.atan(1 / math.sqrt(2)))
        ya, pa = math.radians(yaw), math.radians(pitch)
        direction = np.array([math.sin(ya) * math.cos(pa), math.sin(pa), math.cos(ya) * math.cos(pa)])
    basis = _camera_basis(direction)
    polys = model.polylines(basis[2])
    lengths = [len(p) for p in polys]
    pts = np.concatenate(polys, axis=0)
    center = (pts.min(0) + pts.max(0)) / 2
    cam = (pts - center) @ basis.T
    if perspective:
        radius = float(np.linalg.norm(pts - center, axis=1).max())
        dist = 3.2 * max(radius, 1e-6)
        xy = cam[:, :2] * (dist / (dist - cam[:, 2]))[:, None]
    else:
        xy = cam[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    extent = float(max(hi[0] - lo[0], hi[1] - lo[1], 1e-9))
    scale = size * (1 - 2 * _MARGIN) / extent
    px = (xy - (lo + hi) / 2) * scale
    px[:, 1] *= -1
    px += size / 2
    img = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(img)
    start = 0
    for n in lengths:
        seg = px[start:start + n]
        start += n
        draw.line([(float(x), float(y)) for x, y in seg], fill=0, width=line_width,
                  joint="curve" if line_width > 1 else None)
    return img


def _line_width(image_size: int) -> int:
    return 1 if image_size < 96 else 2


def _camera_jitter(rng: np.random.Generator) -> tuple[float, float]:
    return _u(rng, 28.0, 45.0), _u(rng, 18.0, 30.0)


def _class_by_code(code: str) -> DesignClass:
    for c in DESIGN_CLASSES:
        if c.code == code or c.label == code or c.noun == code:
            return c
    raise KeyError(f"unknown design class {code!r}; known: {', '.join(c.code for c in DESIGN_CLASSES)}")


def check_views(views: Sequence[str]) -> None:
    if isinstance(views, str):
        raise TypeError("views must be a sequence of view names, not a string")
    if not views:
        raise ValueError("at least one view is required")
    unknown = [v for v in views if v not in _VIEW_DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown view(s) {unknown}; supported: {', '.join(SUPPORTED_VIEWS)}")
    if len(set(views)) != len(views):
        raise ValueError(f"duplicate views in {list(views)}")


def render_design(design_class: str | DesignClass, seed: int = 0,
                  views: Sequence[str] = ("front", "side", "top", "perspective"),
                  image_size: int = 128) -> list[Image.Image]:
    """Render one random object of ``design_class`` (code, label or noun) in the given views.

    Handy for demos and notebooks; :func:`generate_synthetic_patents` uses the same
    machinery.  Returns one mode ``"L"`` image per view.
    """
    dc = design_class if isinstance(design_class, DesignClass) else _class_by_code(design_class)
    check_views(views)
    rng = np.random.default_rng([int(seed), 0x5EED])
    model = _Model()
    dc.builder(model, rng)
    yaw, pitch = _camera_jitter(rng)
    return [_render(model, v, image_size, yaw=yaw, pitch=pitch, line_width=_line_width(image_size))
            for v in views]
