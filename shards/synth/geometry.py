"""A small 3-D wire-frame toolkit for the synthetic drawings: lathed bodies of revolution and polyline models."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np


_X = np.array([1.0, 0.0, 0.0])
_Y = np.array([0.0, 1.0, 0.0])
_Z = np.array([0.0, 0.0, 1.0])
_TAU = 2.0 * math.pi


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    n = float(np.linalg.norm(v))
    if n == 0.0:
        raise ValueError("zero-length direction vector")
    return v / n


def _perp_frame(axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane perpendicular to ``axis``.

    For the principal axes the result is the natural one (Y -> X/Z, Z -> X/Y, X -> Y/Z)
    so that elliptical cross-sections can be specified along world axes.
    """
    a = _unit(axis)
    ref = _X if abs(float(a @ _X)) < 0.9 else _Y
    e1 = _unit(ref - (ref @ a) * a)
    e2 = np.cross(a, e1)
    return e1, e2


@dataclass
class _Lathe:
    """A body of revolution (optionally with an elliptical cross-section).

    ``profile`` is an ``(m, 2)`` array of ``(h, r)`` pairs along ``axis`` starting at
    ``base``.  Rings (cross-section ellipses) are drawn at the profile rows listed in
    ``rings``; the two silhouette curves are computed per view direction.
    """

    base: np.ndarray
    axis: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    profile: np.ndarray
    rings: tuple[int, ...]
    s1: float = 1.0
    s2: float = 1.0
    n: int = 40

    def polylines(self, view_dir: np.ndarray) -> list[np.ndarray]:
        h = self.profile[:, 0]
        r = self.profile[:, 1]
        out: list[np.ndarray] = []
        t = np.linspace(0.0, _TAU, self.n + 1)
        ring_dirs = np.outer(self.s1 * np.cos(t), self.e1) + np.outer(self.s2 * np.sin(t), self.e2)
        for i in self.rings:
            if r[i] > 1e-9:
                out.append(self.base + h[i] * self.axis + r[i] * ring_dirs)
        a = float(self.e1 @ view_dir)
        b = float(self.e2 @ view_dir)
        if math.hypot(a, b) > 1e-3:  # not looking along the axis: draw the silhouettes
            theta = math.atan2(-a * self.s2, b * self.s1)
            for th in (theta, theta + math.pi):
                d = self.s1 * math.cos(th) * self.e1 + self.s2 * math.sin(th) * self.e2
                out.append(self.base + np.outer(h, self.axis) + np.outer(r, d))
        return out


class _Model:
    """A collection of 3-D polylines plus view-dependent bodies of revolution."""

    def __init__(self) -> None:
        self.polys: list[np.ndarray] = []
        self.lathes: list[_Lathe] = []

    # -- primitives -------------------------------------------------------------------
    def poly(self, pts, closed: bool = False) -> None:
        p = np.asarray(pts, dtype=float).reshape(-1, 3)
        if closed:
            p = np.vstack([p, p[:1]])
        self.polys.append(p)

    def line(self, a, b) -> None:
        self.poly([a, b])

    def obox(self, center, size, axes=(_X, _Y, _Z)) -> None:
        """Box with edges along the (orthonormal) ``axes``; ``size`` along each axis."""
        c = np.asarray(center, dtype=float)
        hx, hy, hz = (0.5 * float(s) for s in size)
        ax, ay, az = (np.asarray(a, dtype=float) for a in axes)

        def corner(sx, sy, sz):
            return c + sx * hx * ax + sy * hy * ay + sz * hz * az

        bottom = [corner(-1, -1, -1), corner(1, -1, -1), corner(1, -1, 1), corner(-1, -1, 1)]
        top = [corner(-1, 1, -1), corner(1, 1, -1), corner(1, 1, 1), corner(-1, 1, 1)]
        self.poly(bottom, closed=True)
        self.poly(top, closed=True)
        for b, t in zip(bottom, top):
            self.line(b, t)

    def box(self, center, size) -> None:
        self.obox(center, size)

    def rect(self, center, e1, e2, w, h) -> None:
        c = np.asarray(center, dtype=float)
        e1 = np.asarray(e1, dtype=float) * (w / 2)
        e2 = np.asarray(e2, dtype=float) * (h / 2)
        self.poly([c - e1 - e2, c + e1 - e2, c + e1 + e2, c - e1 + e2], closed=True)

    def grid(self, center, e1, e2, w, h, rows: int, cols: int) -> None:
        """Rectangle subdivided into ``rows`` x ``cols`` cells (e.g. a keyboard)."""
        c = np.asarray(center, dtype=float)
        e1 = np.asarray(e1, dtype=float)
        e2 = np.asarray(e2, dtype=float)
        self.rect(c, e1, e2, w, h)
        for i in range(1, rows):
            y = -h / 2 + h * i / rows
            self.line(c - e1 * w / 2 + e2 * y, c + e1 * w / 2 + e2 * y)
        for j in range(1, cols):
            x = -w / 2 + w * j / cols
            self.line(c + e1 * x - e2 * h / 2, c + e1 * x + e2 * h / 2)

    def keys(self, center, e1, e2, w, h, rows: int, cols: int, fill: float = 0.7) -> None:
        """``rows`` x ``cols`` separate key caps inside a ``w`` x ``h`` area."""
        c = np.asarray(center, dtype=float)
        e1 = np.asarray(e1, dtype=float)
        e2 = np.asarray(e2, dtype=float)
        cw, ch = w / cols, h / rows
        for i in range(rows):
            for j in range(cols):
                kc = c + e1 * (-w / 2 + cw * (j + 0.5)) + e2 * (h / 2 - ch * (i + 0.5))
                self.rect(kc, e1, e2, cw * fill, ch * fill)

    def ellipse(self, center, e1, e2, a, b, n: int = 32, t0: float = 0.0, t1: float = _TAU) -> None:
        full = abs((t1 - t0) - _TAU) < 1e-9
        t = np.linspace(t0, t1, n + 1 if full else n)
        pts = (
            np.asarray(center, dtype=float)
            + np.outer(a * np.cos(t), np.asarray(e1, dtype=float))
            + np.outer(b * np.sin(t), np.asarray(e2, dtype=float))
        )
        self.poly(pts)

    def circle(self, center, normal, r, n: int = 32) -> None:
        e1, e2 = _perp_frame(normal)
        self.ellipse(center, e1, e2, r, r, n)

    def lathe(self, base, axis, profile, rings: Iterable[int] | None = None, scale=(1.0, 1.0),
              n: int = 40, e1=None) -> None:
        axis = _unit(axis)
        if e1 is None:
            e1, e2 = _perp_frame(axis)
        else:
            e1 = _unit(e1)
            e2 = np.cross(axis, e1)
        prof = np.asarray(profile, dtype=float).reshape(-1, 2)
        ring_idx = tuple(range(len(prof))) if rings is None else tuple(int(i) % len(prof) for i in rings)
        self.lathes.append(_Lathe(np.asarray(base, dtype=float), axis, e1, e2, prof, ring_idx,
                                  float(scale[0]), float(scale[1]), n))

    def cylinder(self, base, axis, r, length, scale=(1.0, 1.0), n: int = 28) -> None:
        self.lathe(base, axis, [(0.0, r), (length, r)], scale=scale, n=n)

    def prism(self, outline, origin, eu, ev, ew, depth, connect: Iterable[int] | None = None) -> None:
        """Extrude a closed 2-D ``outline`` (in the ``eu``/``ev`` plane) by ``depth`` along ``ew``.

        Both end faces are drawn; side edges join the end faces at ``connect`` vertices
        (default: every vertex for small polygons, the extreme vertices for curved ones).
        """
        o = np.asarray(origin, dtype=float)
        eu, ev, ew = (np.asarray(e, dtype=float) for e in (eu, ev, ew))
        uv = np.asarray(outline, dtype=float)
        face = o + np.outer(uv[:, 0], eu) + np.outer(uv[:, 1], ev)
        f0 = face - ew * depth / 2
        f1 = face + ew * depth / 2
        self.poly(f0, closed=True)
        self.poly(f1, closed=True)
        if connect is None:
            if len(uv) <= 8:
                connect = range(len(uv))
            else:
                connect = {int(np.argmin(uv[:, 0])), int(np.argmax(uv[:, 0])),
                           int(np.argmin(uv[:, 1])), int(np.argmax(uv[:, 1]))}
        for i in connect:
            self.line(f0[i], f1[i])

    def band(self, curve, normal, width, depth) -> None:
        """Sweep a ``width`` x ``depth`` rectangle along a curve lying in a plane with ``normal``."""
        c = np.asarray(curve, dtype=float)
        nrm = _unit(normal)
        tang = np.gradient(c, axis=0)
        m = np.cross(nrm, tang)
        m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        edges = []
        for sw in (-0.5, 0.5):
            for sd in (-0.5, 0.5):
                e = c + sw * width * m + sd * depth * nrm
                self.poly(e)
                edges.append(e)
        for k in (0, -1):
            self.poly([edges[0][k], edges[1][k], edges[3][k], edges[2][k]], closed=True)

    def polylines(self, view_dir: np.ndarray) -> list[np.ndarray]:
        out = list(self.polys)
        for lathe in self.lathes:
            out.extend(lathe.polylines(view_dir))
        return out


def _smoothstep(a: float, b: float, x):
    t = np.clip((np.asarray(x, dtype=float) - a) / (b - a), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _interp_profile(ctrl: Sequence[tuple[float, float]], n_per_seg: int = 6) -> np.ndarray:
    """Cosine-interpolate ``(h, r)`` control points into a smooth lathe profile."""
    pts = [ctrl[0]]
    for (h0, r0), (h1, r1) in zip(ctrl[:-1], ctrl[1:]):
        for k in range(1, n_per_seg + 1):
            t = k / n_per_seg
            w = (1 - math.cos(math.pi * t)) / 2
            pts.append((h0 + (h1 - h0) * t, r0 + (r1 - r0) * w))
    return np.asarray(pts, dtype=float)
