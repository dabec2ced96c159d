"""Parametric 3-D families, one per synthetic design class: each draws its parameters from class ranges.

Conventions: y is up, the object stands on y = 0, its "front" faces +z (the front view looks along -z), "side" =
from +x. One concern (the shapes of the synthetic corpus); long because there are 26 families of ~30 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .geometry import _Model, _TAU, _X, _Y, _Z, _interp_profile, _smoothstep, _unit


@dataclass
class Traits:
    """What one drawn design looks like, in words read off the family's drawn parameters (no extra draws, so the
    drawings do not change): ``adjectives`` before the noun ("tall", "flared") and ``features`` after it
    ("a foot ring", "four vertical back slats"). The captions describe the design with them."""

    adjectives: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)

    def add(self, adjective: str = "", *features: str) -> "Traits":
        if adjective:
            self.adjectives.append(adjective)
        self.features.extend(f for f in features if f)
        return self


_Builder = Callable[[_Model, np.random.Generator], Traits]
_COUNTS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")


def _grade(x: float, lo: float, hi: float, words: tuple[str, str, str]) -> str:
    """``words[0]`` in the lowest third of [lo, hi], ``words[1]`` in the middle third, ``words[2]`` in the top one."""
    t = (x - lo) / (hi - lo) if hi > lo else 0.5
    return words[0] if t < 1 / 3 else (words[1] if t < 2 / 3 else words[2])


def _n(k: int, thing: str) -> str:
    """``"three slats"``, ``"two latches"``, ``"three shelves"``: a count in words with its noun."""
    if k != 1:
        head, _, last = thing.rpartition(" ")
        last = last[:-1] + "ves" if last.endswith("lf") else last + ("es" if last.endswith(("ch", "sh", "s", "x"))
                                                                        else "s")
        thing = f"{head} {last}" if head else last
    return f"{_COUNTS[k] if k < len(_COUNTS) else k} {thing}"


def _u(rng: np.random.Generator, a: float, b: float) -> float:
    return float(rng.uniform(a, b))


def _i(rng: np.random.Generator, a: int, b: int) -> int:
    """Random integer in the closed range [a, b]."""
    return int(rng.integers(a, b + 1))


def _cup(m: _Model, rng: np.random.Generator) -> None:
    r0 = _u(rng, 0.30, 0.45)
    r1 = r0 * _u(rng, 1.0, 1.35)
    h = _u(rng, 0.75, 1.35)
    footed = rng.random() < 0.5
    prof = [(0.0, r0 * 0.88), (0.05, r0)] if footed else [(0.0, r0)]
    banded = rng.random() < 0.5
    if banded:  # decorative band
        y = h * _u(rng, 0.35, 0.6)
        prof.append((y, r0 + (r1 - r0) * y / h))
    prof += [(h * 0.94, r0 + (r1 - r0) * 0.94), (h, r1)]
    m.lathe([0, 0, 0], _Y, prof)

    def wall(y):
        return r0 + (r1 - r0) * y / h

    y_top, y_bot = h * _u(rng, 0.68, 0.86), h * _u(rng, 0.12, 0.35)
    out = _u(rng, 0.22, 0.42) * h + 0.08
    t = np.linspace(-math.pi / 2, math.pi / 2, 24)
    ymid, b = (y_top + y_bot) / 2, (y_top - y_bot) / 2
    ys = ymid + b * np.sin(t)
    angular = rng.random() < 0.3
    if angular:  # angular handle
        xs = np.array([wall(y) for y in ys]) + out * np.clip(1.6 * np.cos(t), 0, 1)
    else:
        xs = np.array([wall(y) for y in ys]) + out * np.cos(t)
    m.band(np.stack([xs - 0.03, ys, np.zeros_like(ys)], 1), _Z, _u(rng, 0.05, 0.09), _u(rng, 0.08, 0.14))
    return Traits().add(_grade(h / r0, 0.75 / 0.45, 1.35 / 0.3, ("squat", "", "tall")),
                        "an angular handle" if angular else "a rounded C-shaped handle",
                        "a foot ring" if footed else "", "a decorative band" if banded else "").add(
        _grade(r1 / r0, 1.0, 1.35, ("straight-sided", "gently flared", "flared")))


def _chair(m: _Model, rng: np.random.Generator) -> None:
    w, d = _u(rng, 0.8, 1.1), _u(rng, 0.75, 1.0)
    hs, ts, lt = _u(rng, 0.75, 0.95), _u(rng, 0.05, 0.1), _u(rng, 0.05, 0.09)
    hb = _u(rng, 0.6, 1.0)
    m.box([0, hs - ts / 2, 0], [w, ts, d])
    legs_h = hs - ts
    squares = 0
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (w / 2 - lt / 2), sz * (d / 2 - lt / 2)
            square = rng.random() < 0.5
            squares += square
            if square:
                m.box([x, legs_h / 2, z], [lt, legs_h, lt])
            else:
                m.cylinder([x, 0, z], _Y, lt / 2, legs_h, n=16)
    # back: posts, top rail and a panel / slats / rails
    zb = -d / 2 + lt / 2
    for sx in (-1, 1):
        m.box([sx * (w / 2 - lt / 2), hs + hb / 2, zb], [lt, hb, lt])
    m.box([0, hs + hb - lt, zb], [w, lt * 2, lt])
    style = _i(rng, 0, 2)
    inner = w - 2 * lt
    legs = "round legs" if squares == 0 else ("square legs" if squares == 4 else "mixed square and round legs")
    traits = Traits().add(_grade(w, 0.8, 1.1, ("narrow", "", "wide")), legs).add(
        _grade(hb, 0.6, 1.0, ("low-backed", "", "high-backed")))
    if style == 0:
        ph = hb * _u(rng, 0.35, 0.6)
        m.box([0, hs + hb - 2 * lt - ph / 2, zb], [inner, ph, lt * 0.7])
        traits.add("", "a solid back panel")
    elif style == 1:
        k = _i(rng, 2, 5)
        traits.add("", _n(k, "vertical back slat"))
        for j in range(k):
            x = -inner / 2 + inner * (j + 1) / (k + 1)
            m.box([x, hs + (hb - 2 * lt) / 2, zb], [lt * 0.8, hb - 2 * lt, lt * 0.6])
    else:
        k = _i(rng, 2, 4)
        traits.add("", _n(k, "horizontal back rail"))
        for j in range(k):
            y = hs + (hb - 2 * lt) * (j + 1) / (k + 1)
            m.box([0, y, zb], [inner, lt * 0.8, lt * 0.6])
    if rng.random() < 0.35:  # armrests
        traits.add("", "armrests")
        ya = hs + _u(rng, 0.2, 0.3)
        for sx in (-1, 1):
            m.box([sx * (w / 2 + lt / 2), ya, 0], [lt, lt, d * 0.9])
            m.box([sx * (w / 2 + lt / 2), (hs + ya) / 2, d * 0.35], [lt * 0.8, ya - hs, lt * 0.8])
    if rng.random() < 0.4:  # stretchers
        ys = legs_h * _u(rng, 0.2, 0.35)
        m.line([-w / 2 + lt / 2, ys, -d / 2 + lt], [-w / 2 + lt / 2, ys, d / 2 - lt])
        m.line([w / 2 - lt / 2, ys, -d / 2 + lt], [w / 2 - lt / 2, ys, d / 2 - lt])
        traits.add("", "side stretchers between the legs")
    return traits


def _lamp(m: _Model, rng: np.random.Generator) -> None:
    style = ("floor", "arc", "desk")[_i(rng, 0, 2)]
    pole_h = _u(rng, 1.0, 1.7)
    pr = _u(rng, 0.02, 0.035)
    square_base = style == "floor" or rng.random() < 0.4
    if square_base:
        bw = _u(rng, 0.5, 0.8)
        bh = _u(rng, 0.05, 0.09)
        m.box([0, bh / 2, 0], [bw, bh, bw * _u(rng, 0.45, 0.7)])
    else:
        bh = _u(rng, 0.04, 0.08)
        m.lathe([0, 0, 0], _Y, [(0, _u(rng, 0.25, 0.4)), (bh, _u(rng, 0.2, 0.25))])
    m.cylinder([0, bh, 0], _Y, pr, pole_h, n=12)
    top = np.array([0.0, bh + pole_h, 0.0])
    rb, hh = _u(rng, 0.3, 0.5), _u(rng, 0.3, 0.5)
    rt = rb * _u(rng, 0.4, 0.8)
    traits = Traits().add(_grade(pole_h, 1.0, 1.7, ("short", "", "tall")),
                          "a rectangular base" if square_base else "a round base",
                          "a steeply tapered shade" if rt / rb < 0.6 else "a drum-like shade").add(
        {"floor": "floor-standing", "arc": "arched", "desk": "angled desk"}[style])
    if style == "floor":
        y0 = top[1] - hh * _u(rng, 0.3, 0.6)
        m.lathe([0, y0, 0], _Y, [(0, rb), (hh, rt)])
        m.line([rt * 0.6, y0 + hh * 0.2, 0], [rt * 0.6, y0 - _u(rng, 0.15, 0.3), 0])  # pull cord
        traits.add("", "a pull cord")
    elif style == "arc":
        a = _u(rng, 0.4, 0.8)
        t = np.linspace(0, math.pi / 2, 16)
        arc = np.stack([a - a * np.cos(t), top[1] + a * np.sin(t), np.zeros_like(t)], 1)
        m.band(arc, _Z, 0.05, 0.05)
        m.lathe(arc[-1] + [0, 0.02, 0], -_Y, [(0, rt * 0.5), (0.1, rt), (hh + 0.1, rb)], rings=[0, 2])
    else:
        phi = math.radians(_u(rng, 20, 60))
        a1 = _u(rng, 0.4, 0.7)
        end = top + a1 * np.array([math.cos(phi), math.sin(phi), 0.0])
        m.band(np.stack([top, end]), _Z, 0.05, 0.05)
        axis = _unit([_u(rng, 0.2, 0.8), -1.0, 0.0])
        m.lathe(end, axis, [(0, rt * 0.6), (0.08, rt), (hh, rb)], rings=[0, 2], e1=_Z)
        traits.add("", f"an arm raised at {round(math.degrees(phi) / 5) * 5} degrees")
    return traits


def _bottle(m: _Model, rng: np.random.Generator) -> None:
    r = _u(rng, 0.3, 0.45)
    hb = _u(rng, 0.8, 1.5)
    s2 = _u(rng, 0.5, 0.95)
    rn = r * _u(rng, 0.22, 0.38)
    hs, hn = _u(rng, 0.15, 0.45), _u(rng, 0.15, 0.35)
    prof = [(0.0, r * 0.92), (0.04, r), (hb, r)]
    for k in range(1, 7):
        t = k / 6
        prof.append((hb + hs * t, rn + (r - rn) * (1 + math.cos(math.pi * t)) / 2))
    prof.append((hb + hs + hn, rn))
    m.lathe([0, 0, 0], _Y, prof, rings=[0, 1, 2, 8, 9], scale=(1.0, s2))
    cap_h = _u(rng, 0.1, 0.22)
    cap_r = rn * _u(rng, 1.05, 1.35)
    y_cap = hb + hs + hn - cap_h * 0.3
    m.lathe([0, y_cap, 0], _Y, [(0, cap_r), (cap_h * 0.5, cap_r), (cap_h, cap_r * 0.95)], scale=(1.0, s2))
    # front label
    lw, lh = r * _u(rng, 0.9, 1.5), hb * _u(rng, 0.3, 0.55)
    ly = hb * _u(rng, 0.35, 0.55)
    rect_label = rng.random() < 0.7
    if rect_label:
        m.rect([0, ly, r * s2 + 0.005], _X, _Y, lw, lh)
    else:
        m.ellipse([0, ly, r * s2 + 0.005], _X, _Y, lw / 2, lh / 2)
    traits = Traits().add(_grade(hb, 0.8, 1.5, ("short", "", "tall")),
                          "a rectangular front label" if rect_label else "an oval front label",
                          "a screw cap").add(_grade(s2, 0.5, 0.95, ("flat oval", "oval", "round"))).add(
        _grade(rn / r, 0.22, 0.38, ("narrow-necked", "", "wide-necked")))
    if rng.random() < 0.4:  # grip grooves
        k_grooves = _i(rng, 2, 4)
        traits.add("", _n(k_grooves, "grip groove") + " near the base")
        for k in range(k_grooves):
            m.ellipse([0, 0.08 + 0.05 * k, 0], _X, _Z, r, r * s2)
    return traits


def _car(m: _Model, rng: np.random.Generator) -> None:
    length, width = _u(rng, 3.6, 4.8), _u(rng, 1.6, 1.95)
    rw = _u(rng, 0.3, 0.4)
    y0 = rw * _u(rng, 0.5, 0.8)
    hb = _u(rng, 0.45, 0.7)
    y1 = y0 + hb
    zr, zf = -length / 2, length / 2
    nose = _u(rng, 0.3, 0.7)
    body = [(zr, y0), (zr, y1 - hb * _u(rng, 0.0, 0.2)), (zr + 0.2, y1), (zf - nose, y1),
            (zf, y1 - hb * _u(rng, 0.25, 0.45)), (zf, y0)]
    m.prism(body, [0, 0, 0], _Z, _Y, _X, width)
    zc0 = zr + length * _u(rng, 0.1, 0.3)
    zc1 = zc0 + length * _u(rng, 0.38, 0.55)
    hc = _u(rng, 0.4, 0.6)
    zt0, zt1 = zc0 + _u(rng, 0.15, 0.5), zc1 - _u(rng, 0.4, 0.8)
    cabin = [(zc0, y1), (zc1, y1), (zt1, y1 + hc), (zt0, y1 + hc)]
    wc = width * _u(rng, 0.8, 0.92)
    m.prism(cabin, [0, 0, 0], _Z, _Y, _X, wc)
    cz = np.mean([p[0] for p in cabin])
    cy = y1 + hc / 2
    win = [((z - cz) * 0.8 + cz, (y - cy) * 0.75 + cy) for z, y in cabin]
    for sx in (-1, 1):
        m.poly([[sx * wc / 2, y, z] for z, y in win], closed=True)
    for zw in (zr + rw * _u(rng, 1.3, 1.8), zf - rw * _u(rng, 1.5, 2.1)):
        for sx in (-1, 1):
            x0 = sx * (width / 2 - 0.26)
            m.cylinder([x0, rw, zw], _X * sx, rw, 0.24, n=28)
            m.circle([x0 + sx * 0.245, rw, zw], _X, rw * 0.55, n=20)
    for sx in (-1, 1):  # headlights
        m.ellipse([sx * width * 0.33, y1 - hb * 0.25, zf + 0.005], _X, _Y, width * 0.1, hb * 0.12, n=16)
    return Traits().add(_grade(length, 3.6, 4.8, ("compact", "mid-size", "long")),
                        _grade(hc, 0.4, 0.6, ("a low roofline", "a medium roofline", "a high roofline")),
                        _grade(nose, 0.3, 0.7, ("a blunt front", "a sloped front", "a long sloping hood")),
                        "a cabin set " + _grade((zc0 - zr) / length, 0.1, 0.3, ("well back", "mid-body",
                                                                                  "far forward")),
                        "four wheels and oval headlights")


def _telephone(m: _Model, rng: np.random.Generator) -> None:
    if rng.random() < 0.6:  # handset / mobile slab standing upright, keypad facing +z
        w, h, t = _u(rng, 0.5, 0.75), _u(rng, 1.1, 1.6), _u(rng, 0.08, 0.16)
        traits = Traits().add(_grade(h / w, 1.1 / 0.75, 1.6 / 0.5, ("stubby", "", "slender")),
                              "a four by three keypad").add("handheld")
        m.box([0, h / 2, 0], [w, h, t])
        zf = t / 2 + 0.004
        sh = h * _u(rng, 0.25, 0.4)
        m.rect([0, h * 0.93 - sh / 2 - 0.05, zf], _X, _Y, w * 0.8, sh)
        m.rect([0, h * 0.96, zf], _X, _Y, w * 0.3, h * 0.015)
        kh = h * _u(rng, 0.35, 0.45)
        m.keys([0, kh / 2 + h * 0.05, zf], _X, _Y, w * 0.8, kh, 4, 3, fill=_u(rng, 0.55, 0.8))
        traits.add("", _grade(sh / h, 0.25, 0.4, ("a small display", "a medium display", "a large display")))
        if rng.random() < 0.5:
            traits.add("", "a stub antenna")
            m.cylinder([w * 0.3, h, 0], _Y, 0.025, _u(rng, 0.2, 0.45), n=10)
    else:  # desk telephone: wedge base, keypad on the sloping face, handset on top
        w, d = _u(rng, 0.9, 1.2), _u(rng, 0.8, 1.1)
        hf, hr = _u(rng, 0.15, 0.25), _u(rng, 0.35, 0.5)
        m.prism([(-d / 2, 0), (d / 2, 0), (d / 2, hf), (-d / 2, hr)], [0, 0, 0], _Z, _Y, _X, w)
        slope = _unit([0, hr - hf, d])
        ev = _unit([0, hr - hf, -d])  # up the slope
        c = np.array([0, (hf + hr) / 2, 0.1]) + slope * 0.005
        m.keys(c, _X, ev, w * 0.45, d * 0.6, 4, 3)
        y = hr + 0.08
        m.box([0, y, -d * 0.25], [w * 1.05, 0.1, 0.16])
        for sx in (-1, 1):
            m.box([sx * w * 0.5, y - 0.02, -d * 0.25], [0.2, 0.16, 0.24])
        traits = Traits().add(_grade(hr - hf, 0.1, 0.35, ("low-profile", "", "steeply sloped")),
                              "a wedge-shaped base", "a keypad on the sloping face", "a handset resting on top").add(
            "desk")
    return traits


def _pot(m: _Model, rng: np.random.Generator) -> None:
    r = _u(rng, 0.6, 0.9)
    h = r * _u(rng, 0.55, 1.0)
    traits = Traits().add(_grade(h / r, 0.55, 1.0, ("shallow", "", "deep")), "a domed lid")
    m.lathe([0, 0, 0], _Y, [(0, r * 0.94), (0.05, r), (h * 0.92, r), (h, r * 1.03)])
    hl = _u(rng, 0.12, 0.25)
    lid = [(0, r * 1.02), (hl * 0.3, r * 0.92), (hl * 0.7, r * 0.6), (hl, r * 0.25)]
    m.lathe([0, h, 0], _Y, lid, rings=[0, 3])
    kr = _u(rng, 0.08, 0.14)
    traits.add("", _grade(kr, 0.08, 0.14, ("a small lid knob", "a lid knob", "a large lid knob")))
    m.lathe([0, h + hl, 0], _Y, [(0, kr * 0.5), (0.06, kr * 0.5), (0.1, kr)], rings=[0, 2], n=20)
    if rng.random() < 0.65:  # stockpot: two ear handles
        yh = h * _u(rng, 0.7, 0.85)
        wz, out = _u(rng, 0.15, 0.28), _u(rng, 0.12, 0.22)
        t = np.linspace(-math.pi / 2, math.pi / 2, 16)
        for sx in (-1, 1):
            xs = sx * (r - 0.02 + out * np.cos(t))
            m.band(np.stack([xs, np.full_like(t, yh), wz * np.sin(t)], 1), _Y, 0.05, 0.06)
        traits.add("two-handled", "two ear handles")
    else:  # saucepan: long straight handle
        ln = r * _u(rng, 1.0, 1.4)
        rise = _u(rng, 0.05, 0.3)
        yh = h * 0.8
        pts = np.array([[r - 0.02, yh, 0.0], [r + ln, yh + rise, 0.0]])
        m.band(pts, _Z, 0.09, 0.08)
        m.ellipse([r + ln * 0.9, yh + rise * 0.9, 0], _X, _Z, 0.05, 0.02, n=12)
        traits.add("long-handled", "a straight handle " + ("angled upward" if rise > 0.175 else "held level"))
    return traits


def _table(m: _Model, rng: np.random.Generator) -> None:
    w = _u(rng, 1.4, 2.4)
    d = w * _u(rng, 0.45, 0.7)
    h, tt = _u(rng, 0.7, 0.95), _u(rng, 0.04, 0.1)
    style = _i(rng, 0, 2)
    traits = Traits().add(_grade(w, 1.4, 2.4, ("small", "", "long")),
                          _grade(tt, 0.04, 0.1, ("a thin top", "a medium top", "a thick top")))
    if style == 1:  # oval pedestal table
        m.lathe([0, h - tt, 0], _Y, [(0, w / 2), (tt, w / 2)], scale=(1.0, d / w), n=48)
        pr = _u(rng, 0.05, 0.12)
        m.cylinder([0, 0.05, 0], _Y, pr, h - tt - 0.05, n=16)
        fl = _u(rng, 0.3, 0.5)
        m.box([0, 0.025, 0], [fl * 2, 0.05, 0.1])
        m.box([0, 0.025, 0], [0.1, 0.05, fl * 1.6])
        return traits.add("oval pedestal", "a central column on a cross foot")
    m.box([0, h - tt / 2, 0], [w, tt, d])
    lt = _u(rng, 0.05, 0.1)
    ins = _u(rng, 0.02, 0.15)
    lh = h - tt
    if style == 0:
        for sx in (-1, 1):
            for sz in (-1, 1):
                m.box([sx * (w / 2 - ins - lt / 2), lh / 2, sz * (d / 2 - ins - lt / 2)], [lt, lh, lt])
        traits.add("four-legged", _grade(ins, 0.02, 0.15, ("legs at the corners", "slightly inset legs",
                                                             "inset legs")))
        if rng.random() < 0.6:  # apron
            ah = _u(rng, 0.06, 0.14)
            m.box([0, lh - ah / 2, 0], [w - 2 * ins, ah, d - 2 * ins])
            traits.add("", "an apron under the top")
    else:  # trestle
        for sx in (-1, 1):
            x = sx * (w / 2 - ins - lt)
            m.box([x, lh / 2, 0], [lt, lh, lt * 1.5])
            m.box([x, 0.03, 0], [lt * 1.2, 0.06, d * 0.85])
        m.box([0, lh * 0.35, 0], [w - 2 * ins - 2 * lt, lt, lt])
        traits.add("trestle", "two trestle legs joined by a low stretcher")
    return traits


def _shoe(m: _Model, rng: np.random.Generator) -> None:
    length = _u(rng, 2.4, 3.0)
    wmax = length * _u(rng, 0.33, 0.4)
    ts = _u(rng, 0.1, 0.25)
    boot = rng.random() < 0.35
    height = _u(rng, 1.0, 1.5) if boot else _u(rng, 0.45, 0.7)
    htoe = _u(rng, 0.2, 0.32)
    s = np.concatenate([-np.cos(np.linspace(0, math.pi, 33))])  # heel -1 .. toe +1
    base_hw = wmax / 2 * np.power(np.clip(1 - s ** 2, 0, 1), 0.35) * (0.82 + 0.18 * s)
    inner = base_hw * (1 - 0.15 * np.exp(-((s + 0.1) / 0.3) ** 2))
    z = s * length / 2
    outline = np.concatenate([
        np.stack([base_hw, z], 1),
        np.stack([-inner, z], 1)[::-1][1:-1],
    ])
    for y in (0.0, ts):
        m.poly([[x, y, zz] for x, zz in outline], closed=True)
    for k in (0, 16, 32):
        m.line([base_hw[k], 0, z[k]], [base_hw[k], ts, z[k]])
    # upper
    yup = ts + htoe + (height - htoe) * (1 - _smoothstep(-0.35 if boot else -0.3, 0.75, s))
    for side, hw in ((1, base_hw), (-1, inner)):
        m.poly(np.stack([side * hw * 0.92, yup, z], 1))
    m.line([0, ts, z[0]], [0, yup[0], z[0]])
    # collar opening
    c0 = -0.95 if boot else -0.9
    c1 = -0.5 if boot else -0.25
    zc, rz = (c0 + c1) / 2 * length / 2, (c1 - c0) / 2 * length / 2
    m.ellipse([0, height + ts, zc], _X, _Z, wmax * 0.32, rz, n=24)
    # instep line and laces
    mask = s > c1
    m.poly(np.stack([np.zeros(mask.sum()), yup[mask] + 0.04, z[mask]], 1))
    nl = _i(rng, 3, 6)
    for k in range(nl):
        sk = c1 + (0.45 - c1) * (k + 0.5) / nl
        yk = float(np.interp(sk, s, yup)) + 0.05
        wk = float(np.interp(sk, s, base_hw)) * 0.35
        m.line([-wk, yk, sk * length / 2], [wk, yk, sk * length / 2])
    toe_cap = rng.random() < 0.5
    if toe_cap:  # toe cap
        m.poly(np.stack([base_hw[24:] * 0.95 * np.linspace(1, 0, 9), yup[24:] * 0.8, z[24:]], 1))
    return Traits().add(_grade(ts, 0.1, 0.25, ("thin-soled", "", "thick-soled")),
                        _n(nl, "lace") + " across the instep", "a toe cap" if toe_cap else "").add(
        "high ankle boot-style" if boot else "low-cut")


def _watch(m: _Model, rng: np.random.Generator) -> None:
    r = _u(rng, 0.4, 0.55)
    t = _u(rng, 0.1, 0.18)
    zf = t / 2
    round_case = rng.random() < 0.7
    if round_case:
        m.lathe([0, 0, -t / 2], _Z, [(0, r * 0.95), (t * 0.4, r), (t, r * 0.97)], n=48)
        m.circle([0, 0, zf], _Z, r * 0.84, n=48)
        face = r * 0.84
    else:
        m.box([0, 0, 0], [2 * r, 2 * r * 1.15, t])
        m.rect([0, 0, zf], _X, _Y, 1.6 * r, 1.8 * r)
        face = r * 0.8
    nt = (4, 12)[_i(rng, 0, 1)]
    for k in range(nt):
        a = _TAU * k / nt
        dv = np.array([math.sin(a), math.cos(a), 0.0])
        inner = 0.72 if k % 3 == 0 else 0.8
        m.line(dv * face * inner + [0, 0, zf], dv * face * 0.93 + [0, 0, zf])
    for length, a in ((0.45, rng.uniform(0, _TAU)), (0.7, rng.uniform(0, _TAU))):
        m.line([0, 0, zf], [face * length * math.sin(a), face * length * math.cos(a), zf])
    m.cylinder([r, 0, 0], _X, _u(rng, 0.04, 0.06), 0.08, n=12)  # crown
    sw = min(r * _u(rng, 0.9, 1.3), 1.8 * r)
    ls = _u(rng, 0.8, 1.3)
    bend = _u(rng, 0.4, 1.0)
    for sy in (-1, 1):
        u = np.linspace(0, 1, 14)
        ys = sy * (r * 0.85 + ls * np.sin(u * bend * math.pi / 2) / (bend * math.pi / 2))
        zs = -ls * (1 - np.cos(u * bend * math.pi / 2)) / (bend * math.pi / 2) * 0.8
        m.band(np.stack([np.zeros_like(u), ys, zs], 1), _X, 0.04, sw)
    buckle = rng.random() < 0.6
    if buckle:
        m.rect([0, -(r * 0.85 + ls * 0.55), 0.03], _X, _Y, sw * 1.15, 0.08)  # buckle
    return Traits().add("round" if round_case else "square", _n(nt, "hour marker"),
                        _grade(sw / r, 0.9, 1.3, ("a narrow strap", "a strap", "a wide strap")),
                        "a buckle" if buckle else "").add(_grade(t, 0.1, 0.18, ("thin", "", "thick")))


def _bag(m: _Model, rng: np.random.Generator) -> None:
    w, h, d = _u(rng, 0.9, 1.4), _u(rng, 0.6, 1.0), _u(rng, 0.25, 0.45)
    wt = w * _u(rng, 0.7, 1.0)
    m.prism([(-w / 2, 0), (w / 2, 0), (wt / 2, h), (-wt / 2, h)], [0, 0, 0], _X, _Y, _Z, d)
    tote = rng.random() < 0.4
    traits = Traits().add(_grade(wt / w, 0.7, 1.0, ("tapered", "", "boxy")),
                          "two tall tote handles" if tote else "a single top handle")
    hh = h * (_u(rng, 0.6, 0.9) if tote else _u(rng, 0.3, 0.55))
    ha = wt * (_u(rng, 0.25, 0.35) if tote else _u(rng, 0.3, 0.42))
    t = np.linspace(0, math.pi, 20)
    for zh in ((-d / 3, d / 3) if tote else (0.0,)):
        arc = np.stack([ha * np.cos(t), h + hh * np.sin(t), np.full_like(t, zh)], 1)
        m.band(arc, _Z, 0.05, 0.05)
    zf = d / 2 + 0.005
    if rng.random() < 0.6:  # flap with clasp
        fy = h * _u(rng, 0.35, 0.6)
        pointed = rng.random() < 0.5
        if pointed:
            flap = [(-wt / 2, h), (wt / 2, h), (wt / 2 * 0.95, fy + 0.1), (0, fy), (-wt / 2 * 0.95, fy + 0.1)]
        else:
            flap = [(-wt / 2, h), (wt / 2, h), (wt / 2 * 0.97, fy), (-wt / 2 * 0.97, fy)]
        m.poly([[x, y, zf] for x, y in flap], closed=True)
        m.rect([0, fy, zf], _X, _Y, 0.1, 0.07)
        traits.add("", ("a pointed" if pointed else "a straight") + " front flap with a clasp")
    else:
        m.rect([0, h * 0.45, zf], _X, _Y, w * 0.5, h * 0.3)  # front pocket
        traits.add("", "a front pocket")
    return traits


def _hammer(m: _Model, rng: np.random.Generator) -> None:
    lh = _u(rng, 1.3, 1.9)
    hr = _u(rng, 0.06, 0.09)
    grip = lh * _u(rng, 0.3, 0.45)
    m.lathe([0, 0, 0], _Y, [(0, hr * 1.2), (grip, hr * 1.15), (grip + 0.05, hr), (lh, hr * 0.85)],
            scale=(1.0, 0.7), n=20)
    rings = _i(rng, 2, 5)
    for k in range(rings):
        m.ellipse([0, grip * (k + 1) / 6, 0], _X, _Z, hr * 1.18, hr * 0.82, n=16)
    lx = _u(rng, 0.55, 0.85)
    hh, hd = _u(rng, 0.14, 0.22), _u(rng, 0.14, 0.2)
    ff = lx * _u(rng, 0.35, 0.5)  # length of the face side
    claw_hammer = rng.random() < 0.6
    if claw_hammer:  # claw hammer
        claw = [(-hr, lh + hh / 2), (-lx + ff * 0.3, lh + hh * 0.1), (-(lx - ff), lh - hh * 0.9),
                (-(lx - ff) + 0.05, lh - hh * 0.95), (-hr, lh - hh / 2)]
    else:  # cross peen
        claw = [(-hr, lh + hh / 2), (-(lx - ff), lh + hh * 0.12), (-(lx - ff), lh - hh * 0.12),
                (-hr, lh - hh / 2)]
    outline = [(ff * 0.8, lh + hh / 2), *claw, (ff * 0.8, lh - hh / 2)]
    m.prism(outline, [0, 0, 0], _X, _Y, _Z, hd)
    m.lathe([ff * 0.8, lh, 0], _X, [(0, hh * 0.5), (ff * 0.25, hh * 0.55), (ff * 0.35, hh * 0.5)], n=24)
    return Traits().add(_grade(lh, 1.3, 1.9, ("short-handled", "", "long-handled")),
                        "a curved claw" if claw_hammer else "a cross peen", _n(rings, "grip ring"),
                        _grade(lx, 0.55, 0.85, ("a compact head", "a head", "a long head")))


def _bicycle(m: _Model, rng: np.random.Generator) -> None:
    rw = _u(rng, 0.55, 0.7)
    wb = _u(rng, 2.0, 2.4)
    zr, zf = -wb / 2, wb / 2
    ns = _i(rng, 8, 16)
    for zc in (zr, zf):
        c = np.array([0.0, rw, zc])
        m.cylinder(c - [0.03, 0, 0], _X, rw, 0.06, n=40)
        m.circle(c, _X, rw * 0.9, n=40)
        for k in range(ns):
            a = _TAU * k / ns
            m.line(c, c + rw * 0.9 * np.array([0, math.sin(a), math.cos(a)]))
    bb = np.array([0.0, rw * _u(rng, 0.45, 0.6), zr + wb * _u(rng, 0.38, 0.45)])
    seat = bb + [0, rw * _u(rng, 1.2, 1.45), -_u(rng, 0.15, 0.3)]
    head_top = np.array([0, rw * _u(rng, 1.2, 1.4), zf - rw * _u(rng, 0.35, 0.5)])
    head_bot = head_top + [0, -0.22, 0.08]
    rear, front = np.array([0, rw, zr]), np.array([0, rw, zf])
    step = rng.random() < 0.3
    traits = Traits().add("step-through" if step else "diamond-frame", f"{_COUNTS[ns]}-spoke wheels").add(
        _grade(rw, 0.55, 0.7, ("small-wheeled", "", "large-wheeled")))
    top_to = head_bot + [0, -0.25, -0.3] if step else head_top
    for a, b in ((bb, seat), (seat, top_to), (bb, head_bot), (bb, rear), (seat, rear), (head_bot, front),
                 (head_top, head_bot)):
        m.line(a, b)
    post = seat + [0, 0.15, -0.04]
    m.line(seat, post)
    m.prism([(-0.2, 0), (0.15, 0.02), (0.18, 0.06), (-0.2, 0.07)], post, _Z, _Y, _X, 0.14)
    bar = head_top + [0, 0.15, -0.05]
    m.line(head_top, bar)
    bw = _u(rng, 0.25, 0.35)
    flat_bar = rng.random() < 0.5
    traits.add("", "a flat handlebar" if flat_bar else "drop handlebars")
    if flat_bar:
        m.line(bar - [bw, 0, 0], bar + [bw, 0, 0])
    else:  # drop bars
        t = np.linspace(0, math.pi, 10)
        for sx in (-1, 1):
            m.poly(np.stack([np.full_like(t, sx * bw * 0.7), bar[1] - 0.1 + 0.1 * np.cos(t),
                             bar[2] + 0.12 * np.sin(t)], 1))
        m.line(bar - [bw * 0.7, 0, 0], bar + [bw * 0.7, 0, 0])
    m.circle(bb + [0.06, 0, 0], _X, 0.14, n=20)
    a = rng.uniform(0, _TAU)
    for sx, sgn in ((1, 1), (-1, -1)):
        p = bb + sgn * 0.2 * np.array([0, math.sin(a), math.cos(a)])
        m.line(bb, p + [sx * 0.08, 0, 0])
        m.box(p + [sx * 0.14, 0, 0], [0.12, 0.03, 0.08])
    return traits


def _storage_box(m: _Model, rng: np.random.Generator) -> None:
    w = _u(rng, 1.0, 1.6)
    h, d = w * _u(rng, 0.4, 0.8), w * _u(rng, 0.5, 0.8)
    lh = h * _u(rng, 0.15, 0.3)
    m.box([0, (h - lh) / 2, 0], [w, h - lh, d])
    m.box([0, h - lh / 2, 0], [w + 0.05, lh, d + 0.05])
    for sx in (-1, 1):  # hand-hold slots
        c = np.array([sx * (w / 2 + 0.004), (h - lh) * 0.7, 0.0])
        sl, sh = d * _u(rng, 0.3, 0.5), (h - lh) * _u(rng, 0.1, 0.2)
        t = np.linspace(-math.pi / 2, math.pi / 2, 8)
        right = np.stack([np.full_like(t, c[0]), c[1] + sh / 2 * np.sin(t), sl / 2 + sh / 2 * np.cos(t)], 1)
        left = right.copy()
        left[:, 2] *= -1
        m.poly(np.vstack([right, left[::-1]]), closed=True)
    zf = d / 2 + 0.03
    nlat = _i(rng, 1, 2)
    traits = Traits().add(_grade(h / w, 0.4, 0.8, ("low", "", "tall")), "a lid",
                          _n(nlat, "front latch"), "hand-hold slots on the sides").add(
        _grade(lh / h, 0.15, 0.3, ("", "", "deep-lidded")))
    for k in range(nlat):
        x = 0.0 if nlat == 1 else (-1 + 2 * k) * w * 0.3
        m.rect([x, h - lh, zf], _X, _Y, 0.1, 0.12)
    if rng.random() < 0.5:  # ribs on the front
        nr = _i(rng, 2, 4)
        traits.add("", _n(nr, "vertical rib") + " on the front")
        for k in range(nr):
            x = -w / 2 + w * (k + 1) / (nr + 1)
            m.line([x, 0.05, d / 2 + 0.004], [x, h - lh - 0.05, d / 2 + 0.004])
    return traits


def _vase(m: _Model, rng: np.random.Generator) -> None:
    h = _u(rng, 1.2, 2.0)
    rmax = _u(rng, 0.35, 0.6)
    ctrl = [(0.0, rmax * _u(rng, 0.4, 0.75)), (h * _u(rng, 0.25, 0.5), rmax),
            (h * _u(rng, 0.7, 0.85), rmax * _u(rng, 0.2, 0.45)), (h, rmax * _u(rng, 0.35, 0.85))]
    prof = _interp_profile(ctrl, 6)
    handles = rng.random() < 0.5
    s2 = 1.0 if handles else _u(rng, 0.5, 0.72)
    traits = Traits().add(_grade(h, 1.2, 2.0, ("short", "", "tall")),
                          _grade(ctrl[2][1] / rmax, 0.2, 0.45, ("a narrow neck", "a neck", "a wide neck"))).add(
        "" if handles else "flattened")
    m.lathe([0, 0, 0], _Y, prof, rings=[0, 6, 12, 18], scale=(1.0, s2), n=48)
    if handles:
        y0, y1 = ctrl[2][0], (ctrl[1][0] + ctrl[2][0]) / 2
        r0 = float(np.interp(y0, prof[:, 0], prof[:, 1]))
        r1 = float(np.interp(y1, prof[:, 0], prof[:, 1]))
        out = _u(rng, 0.15, 0.3)
        t = np.linspace(0, 1, 16)
        for sx in (-1, 1):
            xs = sx * (r0 + (r1 - r0) * t + out * np.sin(math.pi * t) - 0.02)
            ys = y0 + (y1 - y0) * t + 0.1 * np.sin(math.pi * t)
            m.band(np.stack([xs, ys, np.zeros_like(t)], 1), _Z, 0.05, 0.06)
        traits.add("", "two side handles")
    else:  # motif on the front
        yb = ctrl[1][0]
        z = rmax * s2 + 0.005
        rr = rmax * _u(rng, 0.25, 0.4)
        diamond = rng.random() < 0.5
        traits.add("", "a diamond motif on the front" if diamond else "a double ring motif on the front")
        if diamond:
            m.poly([[0, yb + rr, z], [rr, yb, z], [0, yb - rr, z], [-rr, yb, z]], closed=True)
        else:
            m.ellipse([0, yb, z], _X, _Y, rr, rr, n=20)
            m.ellipse([0, yb, z], _X, _Y, rr * 0.5, rr * 0.5, n=16)
    return traits


def _laptop(m: _Model, rng: np.random.Generator) -> None:
    w = _u(rng, 1.3, 1.7)
    d = w * _u(rng, 0.62, 0.75)
    t = _u(rng, 0.03, 0.06)
    m.box([0, t / 2, 0], [w, t, d])
    rows, cols = _i(rng, 4, 6), _i(rng, 10, 14)
    m.grid([0, t + 0.003, -d * 0.12], _X, -_Z, w * 0.85, d * 0.42, rows, cols)
    m.rect([0, t + 0.003, d * 0.3], _X, _Z, w * _u(rng, 0.25, 0.4), d * 0.22)
    theta = math.radians(_u(rng, 95, 125))
    v = np.array([0.0, math.sin(theta), math.cos(theta)])
    n = np.cross(_X, v)
    ls = d * _u(rng, 0.92, 1.0)
    st = t * 0.7
    hinge = np.array([0.0, t, -d / 2 + 0.02])
    c = hinge + v * ls / 2 + n * st / 2
    m.obox(c, [w, ls, st], axes=(_X, v, n))
    m.rect(c + n * (st / 2 + 0.003), _X, v, w * 0.9, ls * 0.82)
    m.circle(c + n * (st / 2 + 0.003) + v * ls * 0.45, n, 0.012, n=8)
    return Traits().add(_grade(t, 0.03, 0.06, ("thin", "", "thick")),
                        f"a keyboard of {_COUNTS[rows]} rows of {cols} keys", "a touchpad",
                        _grade(math.degrees(theta), 95, 125, ("an upright open lid", "an open lid",
                                                              "a lid tilted far back")))


def _camera(m: _Model, rng: np.random.Generator) -> None:
    w = _u(rng, 1.1, 1.5)
    h, d = w * _u(rng, 0.55, 0.75), w * _u(rng, 0.3, 0.5)
    m.box([0, h / 2, 0], [w, h, d])
    rl = h * _u(rng, 0.28, 0.4)
    ll = w * _u(rng, 0.15, 0.55)
    lx = w * _u(rng, -0.1, 0.1)
    ly = h * 0.45
    m.lathe([lx, ly, d / 2], _Z, [(0, rl), (ll * 0.4, rl), (ll * 0.45, rl * 1.05), (ll, rl * 1.05)], n=40)
    m.circle([lx, ly, d / 2 + ll], _Z, rl * 0.7, n=32)
    traits = Traits().add(_grade(h / w, 0.55, 0.75, ("low-profile", "", "tall-bodied")),
                          _grade(ll / w, 0.15, 0.55, ("a short lens", "a lens", "a long lens barrel")))
    if rng.random() < 0.6:  # viewfinder hump
        traits.add("", "a viewfinder hump on top")
        vw, vh = w * 0.28, h * _u(rng, 0.15, 0.25)
        m.prism([(-vw / 2, h), (vw / 2, h), (vw / 4, h + vh), (-vw / 4, h + vh)], [lx, 0, 0], _X, _Y, _Z, d * 0.7)
    else:  # rangefinder windows + flash
        traits.add("", "rangefinder windows")
        m.rect([-w * 0.35, h * 0.8, d / 2 + 0.004], _X, _Y, w * 0.15, h * 0.12)
        m.rect([w * 0.33, h * 0.8, d / 2 + 0.004], _X, _Y, w * 0.18, h * 0.16)
    m.cylinder([w * 0.35, h, d * 0.1], _Y, 0.05, 0.05, n=12)
    m.cylinder([-w * 0.3, h, 0], _Y, _u(rng, 0.08, 0.12), 0.06, n=16)
    if rng.random() < 0.7:  # grip
        g = _u(rng, 0.06, 0.12)
        m.box([-w * 0.4, h / 2, d / 2 + g / 2], [w * 0.16, h * 0.9, g])
        traits.add("", "a hand grip")
    return traits


def _fan(m: _Model, rng: np.random.Generator) -> None:
    pole = _u(rng, 0.8, 1.5)
    round_base = rng.random() < 0.5
    if round_base:
        m.lathe([0, 0, 0], _Y, [(0, _u(rng, 0.35, 0.5)), (0.08, _u(rng, 0.25, 0.35))], n=36)
    else:
        bw = _u(rng, 0.6, 0.9)
        m.box([0, 0.04, 0], [bw, 0.08, bw * 0.6])
    m.cylinder([0, 0.08, 0], _Y, _u(rng, 0.03, 0.05), pole, n=12)
    c = np.array([0.0, pole + 0.08, 0.0])
    rg = _u(rng, 0.45, 0.65)
    gd = _u(rng, 0.08, 0.14)
    m.lathe(c - [0, 0, gd], _Z, [(0, rg * 0.95), (gd, rg), (2 * gd, rg * 0.95)], n=48)
    rings = _i(rng, 2, 4)
    for k in range(1, rings + 1):
        m.circle(c + [0, 0, gd], _Z, rg * k / 5, n=32)
    ns = _i(rng, 8, 16)
    for k in range(ns):
        a = _TAU * k / ns
        m.line(c + [0, 0, gd], c + [rg * math.cos(a), rg * math.sin(a), gd])
    m.lathe(c - [0, 0, gd], -_Z, [(0, 0.18), (0.3, 0.15), (0.35, 0.08)], rings=[0, 1], n=24)
    nb = _i(rng, 3, 5)
    a0 = rng.uniform(0, _TAU)
    bl, bwid = rg * 0.85, _u(rng, 0.18, 0.3)
    t = np.linspace(0, math.pi, 10)
    for k in range(nb):
        a = a0 + _TAU * k / nb
        ax = np.array([math.cos(a), math.sin(a), 0.0])
        ay = np.array([-math.sin(a), math.cos(a), 0.0])
        rr = 0.08 + (bl - 0.08) * (1 - np.cos(t)) / 2
        ww = bwid * np.sin(t) * (0.6 + 0.4 * (1 - np.cos(t)) / 2)
        side1 = c + np.outer(rr, ax) + np.outer(ww / 2, ay)
        side2 = c + np.outer(rr, ax) - np.outer(ww / 2, ay)
        m.poly(np.vstack([side1, side2[::-1]]), closed=True)
    m.circle(c + [0, 0, 0.02], _Z, 0.08, n=16)
    return Traits().add(_grade(pole, 0.8, 1.5, ("table", "", "pedestal")), _n(nb, "blade"),
                        f"a round guard with {_COUNTS[rings]} rings and {ns} spokes",
                        "a round base" if round_base else "a rectangular base")


def _washer(m: _Model, rng: np.random.Generator) -> None:
    w = _u(rng, 0.8, 1.0)
    h, d = w * _u(rng, 1.0, 1.3), w * _u(rng, 0.8, 1.0)
    m.box([0, h / 2 + 0.04, 0], [w, h, d])
    for sx in (-1, 1):
        for sz in (-1, 1):
            m.box([sx * w * 0.4, 0.02, sz * d * 0.4], [0.06, 0.04, 0.06])
    zf = d / 2 + 0.004
    ph = h * _u(rng, 0.1, 0.16)
    traits = Traits().add(_grade(h / w, 1.0, 1.3, ("compact", "", "tall")))
    if rng.random() < 0.7:  # front loader
        traits.add("front-loading")
        m.line([-w / 2, h + 0.04 - ph, zf], [w / 2, h + 0.04 - ph, zf])
        rd = w * _u(rng, 0.28, 0.36)
        traits.add("", _grade(rd / w, 0.28, 0.36, ("a small round door", "a round door", "a large round door")))
        cy = (h - ph) * _u(rng, 0.45, 0.52) + 0.04
        m.circle([0, cy, zf], _Z, rd, n=40)
        m.circle([0, cy, zf + 0.02], _Z, rd * 0.75, n=36)
        m.rect([-rd - 0.02, cy, zf], _X, _Y, 0.04, rd * 0.5)
        m.rect([-w * 0.3, h + 0.04 - ph / 2, zf], _X, _Y, w * 0.25, ph * 0.5)
        knobs = _i(rng, 1, 2)
        for k in range(knobs):
            m.circle([w * (0.3 - 0.18 * k), h + 0.04 - ph / 2, zf], _Z, ph * 0.3, n=16)
        traits.add("", _n(knobs, "control knob"))
        if rng.random() < 0.5:
            m.rect([w * 0.02, h + 0.04 - ph / 2, zf], _X, _Y, w * 0.2, ph * 0.45)
            traits.add("", "a display panel")
    else:  # top loader with back console
        yt = h + 0.04
        m.rect([0, yt + 0.004, d * 0.08], _X, _Z, w * 0.85, d * 0.7)
        ch = _u(rng, 0.15, 0.25)
        m.box([0, yt + ch / 2, -d / 2 + 0.06], [w, ch, 0.12])
        knobs = _i(rng, 2, 3)
        for k in range(knobs):
            m.circle([w * (-0.3 + 0.3 * k), yt + ch / 2, -d / 2 + 0.125], _Z, ch * 0.25, n=16)
        traits.add("top-loading", "a back console with " + _n(knobs, "knob"))
    return traits


def _robot(m: _Model, rng: np.random.Generator) -> None:
    tw, th, td = _u(rng, 0.6, 0.9), _u(rng, 0.7, 1.0), _u(rng, 0.35, 0.5)
    lh = _u(rng, 0.5, 0.8)
    lw = tw * _u(rng, 0.25, 0.35)
    for sx in (-1, 1):
        m.box([sx * tw * 0.25, 0.05 + lh / 2, 0], [lw, lh, td * 0.6])
        m.box([sx * tw * 0.25, 0.05, 0.06], [lw * 1.2, 0.1, td * 0.9])
    ty = 0.05 + lh + th / 2
    m.box([0, ty, 0], [tw, th, td])
    aw, al = _u(rng, 0.12, 0.2), th * _u(rng, 0.8, 1.1)
    raised = False
    for sx in (-1, 1):
        raise_arm = sx == 1 and rng.random() < 0.5
        raised = raised or raise_arm
        ang = math.radians(_u(rng, 100, 160)) if raise_arm else math.radians(_u(rng, 0, 20))
        down = np.array([sx * math.sin(ang), -math.cos(ang), 0.0])
        side = np.array([math.cos(ang), sx * math.sin(ang), 0.0])
        shoulder = np.array([sx * (tw / 2 + aw / 2), ty + th / 2 - 0.05, 0.0])
        m.obox(shoulder + down * al / 2, [aw, al, aw], axes=(side, down, _Z))
    hw = tw * _u(rng, 0.5, 0.8)
    hh = _u(rng, 0.3, 0.45)
    hy = ty + th / 2 + 0.05 + hh / 2
    box_head = rng.random() < 0.6
    if box_head:
        m.box([0, hy, 0], [hw, hh, td * 0.9])
    else:
        m.cylinder([0, hy - hh / 2, 0], _Y, hw / 2, hh, scale=(1.0, 0.8), n=28)
    m.line([0, ty + th / 2, 0], [0, ty + th / 2 + 0.05, 0])
    zf = td * 0.45 + 0.01
    for sx in (-1, 1):
        m.circle([sx * hw * 0.22, hy + hh * 0.1, zf], _Z, hh * 0.13, n=16)
    teeth = _i(rng, 3, 6)
    m.grid([0, hy - hh * 0.25, zf], _X, _Y, hw * 0.5, hh * 0.15, 1, teeth)
    top = hy + hh / 2
    m.line([0, top, 0], [0, top + _u(rng, 0.15, 0.3), 0])
    m.circle([0, top + 0.3, 0], _Z, 0.04, n=12)
    m.rect([0, ty + th * 0.1, td / 2 + 0.005], _X, _Y, tw * 0.5, th * 0.35)
    buttons = _i(rng, 2, 4)
    for k in range(buttons):
        m.circle([-tw * 0.15 + 0.1 * k, ty + th * 0.1, td / 2 + 0.006], _Z, 0.03, n=10)
    return Traits().add(_grade(lh / th, 0.5, 1.15, ("stocky", "", "long-legged")),
                        "a square head" if box_head else "a round head", f"a mouth grille of {teeth} teeth",
                        "one arm raised" if raised else "both arms lowered",
                        "a chest panel with " + _n(buttons, "button"), "an antenna")


def _hat(m: _Model, rng: np.random.Generator) -> None:
    traits = Traits()
    if rng.random() < 0.6:  # brimmed hat (fedora / bowler / top hat)
        rb = _u(rng, 0.75, 1.0)
        rc = rb * _u(rng, 0.5, 0.65)
        hc = _u(rng, 0.35, 0.8)
        s1 = _u(rng, 0.8, 0.9)
        curl = _u(rng, 0.0, 0.12)
        m.lathe([0, 0, 0], _Y, [(0, rc), (0.02, rb * 0.8), (curl, rb)], rings=[0, 2], scale=(s1, 1.0), n=48)
        crown = _interp_profile([(0, rc), (hc * 0.75, rc * _u(rng, 0.85, 1.0)), (hc, rc * _u(rng, 0.3, 0.8))], 4)
        m.lathe([0, 0, 0], _Y, crown, rings=[0, len(crown) - 1], scale=(s1, 1.0), n=40)
        bh = hc * _u(rng, 0.15, 0.3)
        m.ellipse([0, bh, 0], _X, _Z, rc * s1 * 1.01, rc * 1.01, n=40)
        bow = [[rc * s1 + 0.01, bh * 0.5, 0], [rc * s1 + 0.01, bh * 1.3, 0.12], [rc * s1 + 0.01, bh * 1.3, -0.12]]
        m.poly(bow, closed=True)
        traits.add("brimmed", _grade(rb, 0.75, 1.0, ("a narrow brim", "a brim", "a wide brim")),
                   _grade(hc, 0.35, 0.8, ("a low crown", "a medium crown", "a tall crown")),
                   "a hat band with a bow")
        if curl > 0.06:
            traits.add("", "an upturned brim edge")
        if rng.random() < 0.6:  # crease
            traits.add("", "a creased top")
            t = np.linspace(-0.6, 0.6, 9)
            m.poly(np.stack([np.zeros_like(t), hc - 0.06 + 0.04 * t ** 2, t * rc], 1))
    else:  # baseball cap with a visor toward +z
        rc = _u(rng, 0.5, 0.65)
        hc = rc * _u(rng, 0.8, 1.0)
        dome = _interp_profile([(0, rc), (hc * 0.5, rc * 0.92), (hc * 0.85, rc * 0.5), (hc, 0.03)], 4)
        m.lathe([0, 0, 0], _Y, dome, rings=[0], n=40)
        for a in np.linspace(0, math.pi, 4)[:-1]:
            d = np.array([math.cos(a), 0.0, math.sin(a)])
            m.poly(np.stack([np.outer(dome[:, 1], d)[:, 0], dome[:, 0], np.outer(dome[:, 1], d)[:, 2]], 1))
            m.poly(np.stack([-np.outer(dome[:, 1], d)[:, 0], dome[:, 0], -np.outer(dome[:, 1], d)[:, 2]], 1))
        m.circle([0, hc + 0.02, 0], _Y, 0.05, n=10)
        vl = rc * _u(rng, 0.7, 1.1)
        t = np.linspace(0, math.pi, 20)
        outer = np.stack([rc * np.cos(t), -0.08 * np.sin(t), rc * 0.3 + vl * np.sin(t)], 1)
        inner = np.stack([rc * np.cos(t), np.zeros_like(t), rc * np.sin(t)], 1)
        m.poly(np.vstack([outer, inner[::-1]]), closed=True)
        traits.add("baseball-style", "a six-panel dome", "a button on top",
                   _grade(vl / rc, 0.7, 1.1, ("a short visor", "a visor", "a long visor")))
    return traits


def _spoon(m: _Model, rng: np.random.Generator) -> None:
    total = _u(rng, 1.8, 2.4)
    bl = _u(rng, 0.45, 0.65)
    bw = bl * _u(rng, 0.55, 0.75)
    he, hn = _u(rng, 0.12, 0.22), _u(rng, 0.05, 0.08)
    lh = total - bl
    curv = _u(rng, 0.05, 0.2)

    def zoff(y):
        return curv * (np.asarray(y) / total - 0.5) ** 2 * 4

    ys = np.linspace(0, lh, 16)
    hw = he / 2 + (hn / 2 - he / 2) * (ys / lh) ** 0.7
    t = np.linspace(-math.pi / 2, math.pi / 2, 20)
    bx, by = bw / 2 * np.cos(t), lh + bl / 2 + bl / 2 * np.sin(t)
    e = np.linspace(0, math.pi, 10)
    ex, ey = he / 2 * np.cos(e), -he / 2 * np.sin(e)
    right = np.concatenate([np.stack([hw, ys], 1), np.stack([bx, by], 1)[1:]])
    left = right[::-1].copy()
    left[:, 0] *= -1
    end = np.stack([ex[::-1] * -1, ey], 1)  # rounded handle end, from -x to +x through y<0
    outline = np.vstack([right, left[1:], end[::-1] * [1, 1]])
    m.poly(np.stack([outline[:, 0], outline[:, 1], zoff(outline[:, 1])], 1), closed=True)
    yc = lh + bl / 2
    m.ellipse([0, yc, float(zoff(yc))], _X, _Y, bw / 2 * 0.8, bl / 2 * 0.85, n=28)
    depth = _u(rng, 0.06, 0.12)
    k = np.linspace(-1, 1, 15)
    keel_y = yc + bl / 2 * k
    m.poly(np.stack([np.zeros_like(k), keel_y, zoff(keel_y) - depth * np.sqrt(1 - k ** 2)], 1))
    engraved = rng.random() < 0.5
    if engraved:  # engraved line on the handle
        y2 = np.linspace(0.1, lh * 0.6, 8)
        m.poly(np.stack([np.zeros_like(y2), y2, zoff(y2) + 0.003], 1))
    return Traits().add(_grade(total, 1.8, 2.4, ("short", "", "long")),
                        _grade(bw / bl, 0.55, 0.75, ("a narrow oval bowl", "an oval bowl", "a round bowl")),
                        _grade(he, 0.12, 0.22, ("a slim handle end", "a handle", "a broad handle end")),
                        "an engraved line along the handle" if engraved else "").add(
        _grade(curv, 0.05, 0.2, ("flat", "", "curved")))


def _bookcase(m: _Model, rng: np.random.Generator) -> None:
    w, h, d = _u(rng, 0.8, 1.6), _u(rng, 1.4, 2.2), _u(rng, 0.3, 0.45)
    bt = _u(rng, 0.03, 0.06)
    m.box([0, h / 2, 0], [w, h, d])
    zf = d / 2 + 0.003
    plinth = _u(rng, 0.06, 0.12)
    m.rect([0, (h + plinth) / 2, zf], _X, _Y, w - 2 * bt, h - plinth - bt)
    ns = _i(rng, 2, 5)
    doors = rng.random() < 0.5
    traits = Traits().add(_grade(h, 1.4, 2.2, ("low", "", "tall")),
                          _n(ns if doors else ns - 1, "shelf"),
                          "two cupboard doors below" if doors else "open shelves to the floor").add(
        _grade(w, 0.8, 1.6, ("narrow", "", "wide")))
    ylow = plinth + (h - plinth) * (_u(rng, 0.3, 0.4) if doors else 0.0)
    for k in range(ns):
        y = ylow + (h - bt - ylow) * k / (ns + 1) if not doors else ylow + (h - bt - ylow) * k / ns
        if k == 0 and not doors:
            continue
        m.rect([0, y, 0], _X, _Z, w - 2 * bt, d - bt)
        m.rect([0, y - bt / 2, zf], _X, _Y, w - 2 * bt, bt)
    if doors:
        dh = ylow - plinth - 0.02
        for sx in (-1, 1):
            m.rect([sx * (w / 4 - bt / 4), plinth + dh / 2 + 0.01, zf], _X, _Y, w / 2 - bt * 1.5, dh)
            m.circle([sx * 0.06, plinth + dh * 0.6, zf], _Z, 0.02, n=8)
    if rng.random() < 0.4:
        m.line([0, ylow, zf], [0, h - bt, zf])
        traits.add("", "a central divider")
    return traits


def _guitar(m: _Model, rng: np.random.Generator) -> None:
    lb = _u(rng, 1.3, 1.7)
    wl = _u(rng, 0.9, 1.15)
    wu = wl * _u(rng, 0.7, 0.85)
    t = _u(rng, 0.25, 0.4)
    s = (1 - np.cos(np.linspace(0, math.pi, 41))) / 2
    lower = wl / 2 * np.sqrt(np.clip(1 - ((s - 0.34) / 0.34) ** 2, 0, 1))
    upper = wu / 2 * np.sqrt(np.clip(1 - ((s - 0.74) / 0.26) ** 2, 0, 1))
    hw = np.maximum(lower, upper)
    y = s * lb
    outline = np.vstack([np.stack([hw, y], 1), np.stack([-hw, y], 1)[::-1][1:-1]])
    m.prism(outline, [0, 0, 0], _X, _Y, _Z, t)
    zf = t / 2 + 0.004
    traits = Traits().add(_grade(wl, 0.9, 1.15, ("slim-bodied", "", "wide-bodied")))
    if rng.random() < 0.6:  # acoustic: sound hole
        m.circle([0, lb * 0.64, zf], _Z, wu * _u(rng, 0.15, 0.2), n=28)
        traits.add("acoustic", "a round sound hole")
    else:  # electric: pickups and knobs
        pickups = _i(rng, 1, 3)
        traits.add("electric", _n(pickups, "pickup") + " and two knobs")
        for k in range(pickups):
            m.rect([0, lb * (0.38 + 0.13 * k), zf], _X, _Y, wu * 0.4, 0.08)
        for k in range(2):
            m.circle([wl * 0.28, lb * (0.15 + 0.1 * k), zf], _Z, 0.04, n=10)
    m.rect([0, lb * 0.22, zf], _X, _Y, wu * 0.5, 0.07)
    ln, nw = _u(rng, 1.2, 1.6), _u(rng, 0.12, 0.16)
    m.box([0, lb + ln / 2, t / 2 - 0.05], [nw, ln, 0.08])
    nf = _i(rng, 10, 18)
    traits.add("", _grade(ln, 1.2, 1.6, ("a short neck", "a neck", "a long neck")) + " with frets",
               "six tuning pegs")
    for k in range(1, nf + 1):
        fy = lb + ln - ln * (1 - 2 ** (-k / 12)) * 1.6
        if fy > lb:
            m.line([-nw / 2, fy, t / 2 - 0.005], [nw / 2, fy, t / 2 - 0.005])
    hl = _u(rng, 0.3, 0.45)
    top = lb + ln
    m.prism([(-nw / 2, top), (nw / 2, top), (nw * 0.9, top + hl), (-nw * 0.9, top + hl)],
            [0, 0, 0], _X, _Y, _Z, 0.06)
    for k in range(3):
        yk = top + hl * (0.25 + 0.25 * k)
        for sx in (-1, 1):
            m.circle([sx * (nw * 0.75 + 0.06), yk, 0], _X, 0.035, n=8)
    for k in range(6):
        x0 = (-2.5 + k) * wu * 0.5 / 6
        x1 = (-2.5 + k) * nw * 0.8 / 6
        m.line([x0, lb * 0.22, zf + 0.01], [x1, top, t / 2 - 0.005])
    return traits
