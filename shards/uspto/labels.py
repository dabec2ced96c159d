"""Figure labels on drawing sheets: find the text lines that may be "FIG. N" labels and read them with OCR.

Conventions:

* Boxes are ``(y0, x0, y1, x1)`` in sheet pixels, end-exclusive (numpy slicing order).
* A **character** is a connected ink component of letter size: 10-180 pixels high (0.8-15 mm at 300 dpi; USPTO
  rule 1.84(p)(3) asks for at least 3.2 mm) and not much wider than high. A **text line** is a chain of
  characters of similar height whose vertical spans overlap and whose gaps are at most about one character
  height, and whose characters are (median) at least 0.6 of the line's height; a small component level with
  the lower half of its neighbours (a full stop) joins a line. Lines run
  left to right (``orientation`` 0), or, on sheets drawn in landscape and turned, bottom to top or top to
  bottom (both are tried for every vertical line: the reading that parses wins).
* A **label** is a line whose text reads as a figure label: ``FIG. 3``, ``Fig 12A``, ``FIGURE 2``, ``FIG.-5`` or,
  in Hague-system designs, ``1.3`` (:func:`parse_label` gives the figure id: ``3``, ``12A``, ``1.3``).

OCR is Debian's ``tesseract`` (5.x, LSTM engine) run as a program, once per patent on a strip holding every
candidate line of its sheets (scaled to about 40 pixels high, vertical ones turned both ways), with a character whitelist; the
words it returns are mapped back to the candidates by position. :func:`tesseract_available` says whether the
program is installed; without it no label is read and the segmentation falls back to reading order.
"""
from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

Box = Tuple[int, int, int, int]

#: Character heights in pixels at 300 dpi (scaled by the sheet's dpi).
CHAR_MIN_H, CHAR_MAX_H = 10, 180
#: Letter spacings tried when chaining characters into lines (gap limits relative to the character height).
SPACINGS = (1.0, 3.0)
#: Most candidate lines read per sheet, and the most other ink around a candidate (see find_candidates).
MAX_CANDIDATES = 48
MAX_CLUTTER = 0.06
#: Tallest strip of candidates given to one tesseract run.
STRIP_HEIGHT = 30000
#: Block size (sheet pixels) of the coarse ink counts.
BLOCK = 4
#: Height in pixels the candidates are scaled to for OCR.
OCR_HEIGHT = 40
_WHITELIST = "FIGUREfigure0123456789.-ABCDEFabcdef"
_LABEL = re.compile(r"^(?:F[I1l|][G6C](?:URE)?S?|FI[GC]\.?)\s*[.,:\-]*\s*(\d{1,3}(?:\.\d{1,2})?[A-F]?)\.?$")
_HAGUE = re.compile(r"^([1-9]\d?)\.([1-9]\d?)$")


@dataclass(frozen=True)
class Label:
    """A figure label found on a sheet: the figure id read, its box, how it was read."""

    figure: str
    box: Box
    text: str
    orientation: int  # 0 horizontal, 90 read after turning the line clockwise, 270 counter-clockwise
    confidence: float

    @property
    def height(self) -> int:
        return (self.box[2] - self.box[0]) if self.orientation == 0 else (self.box[3] - self.box[1])


def parse_label(text: str) -> Optional[str]:
    """The figure id of a label's text (``FIG. 12A`` -> ``12A``, ``1.3`` -> ``1.3``), None if it is not one."""
    t = re.sub(r"\s+", " ", text.strip()).upper().replace("FlG", "FIG")
    t = t.replace("O", "0") if re.match(r"^F", t) and re.search(r"\d", t) else t
    m = _LABEL.match(t)
    if m:
        fig = m.group(1)
        return fig.lstrip("0") or "0" if "." not in fig else fig
    m = _HAGUE.match(t)
    if m:
        return f"{m.group(1)}.{m.group(2)}"
    return None


@functools.lru_cache(maxsize=1)
def tesseract_available() -> Optional[str]:
    """The path of the ``tesseract`` program (``$PATENTCLIP_TESSERACT`` or on PATH), None if it is missing."""
    exe = os.environ.get("PATENTCLIP_TESSERACT") or shutil.which("tesseract")
    return exe if exe and os.access(exe, os.X_OK) else None


def block_counts(ink: np.ndarray, f: int = 0) -> np.ndarray:
    """Ink pixels per ``f`` x ``f`` block (default :data:`BLOCK`), as a ``uint8`` array (edge blocks padded with
    paper)."""
    f = f or BLOCK
    h, w = ink.shape
    if f * f > 255:
        raise ValueError("block size at most 15")
    im = Image.fromarray(ink.view(np.uint8) * np.uint8(f * f), "L")  # reduce() averages: ink worth f*f each
    if h % f or w % f:
        canvas = Image.new("L", (-(-w // f) * f, -(-h // f) * f), 0)
        canvas.paste(im, (0, 0))
        im = canvas
    return np.asarray(im.reduce(f), dtype=np.uint8)


def components(ink: np.ndarray):
    """Connected ink components (8-connected): ``(labels array, boxes (n, 4) int array, areas (n,) int array)``;
    component ``i`` has label ``i + 1``."""
    from scipy import ndimage

    lab, n = ndimage.label(ink, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return lab, np.zeros((0, 4), dtype=np.int64), np.zeros(0, dtype=np.int64)
    sl = ndimage.find_objects(lab)
    boxes = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in sl], dtype=np.int64)
    areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
    return lab, boxes, areas


def _lines(boxes: np.ndarray, vertical: bool, scale: float,
           spacings: Sequence[float] = (1.0,)) -> List[List[np.ndarray]]:
    """For each of ``spacings``, index arrays of the character components that form text lines (module
    docstring), horizontal lines or (``vertical``) lines running up or down the sheet. A spacing scales the
    largest gap between characters (1: ordinary text; 3: labels set wide, ``F I G .   1``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    b = boxes[:, [1, 0, 3, 2]] if vertical else boxes  # in "line" coordinates: rows across, columns along
    h = (b[:, 2] - b[:, 0]).astype(np.float64)
    w = (b[:, 3] - b[:, 1]).astype(np.float64)
    tall = (h >= CHAR_MIN_H * scale) & (h <= CHAR_MAX_H * scale) & (w <= 1.6 * h + 2)
    small = (h >= 2 * scale) & (w >= 2 * scale) & (h <= 0.45 * CHAR_MAX_H * scale) & (w <= 0.45 * CHAR_MAX_H * scale)
    idx_t = np.flatnonzero(tall)
    if len(idx_t) < 2:
        return [[] for _ in spacings]
    top = max(spacings)
    idx_d = np.flatnonzero(small)
    rows, cols, ratio = [], [], []
    # tall-tall links: overlapping rows, similar heights, small gap along the line
    for start in range(0, len(idx_t), 1500):
        a = idx_t[start:start + 1500]
        ov = np.minimum(b[a, None, 2], b[None, idx_t, 2]) - np.maximum(b[a, None, 0], b[None, idx_t, 0])
        hmin = np.minimum(h[a, None], h[None, idx_t])
        hmax = np.maximum(h[a, None], h[None, idx_t])
        gap = np.maximum(b[a, None, 1], b[None, idx_t, 1]) - np.minimum(b[a, None, 3], b[None, idx_t, 3])
        ok = (ov >= 0.6 * hmin) & (hmax <= 2.2 * hmin) & (gap <= 1.1 * top * hmax) & (gap >= -0.3 * hmin)
        i, j = np.nonzero(ok)
        keep = a[i] != idx_t[j]
        rows.append(a[i][keep])
        cols.append(idx_t[j][keep])
        ratio.append(gap[i, j][keep] / (1.1 * hmax[i, j][keep]))
    # full stops: much smaller than a tall neighbour, level with its lower half, close to it along the line
    if len(idx_d):
        mid_t = (b[idx_t, 0] + b[idx_t, 2]) / 2.0
        for start in range(0, len(idx_d), 1500):
            d = idx_d[start:start + 1500]
            inside = (b[d, None, 0] >= mid_t[None, :] - 0.1 * h[None, idx_t]) & \
                     (b[d, None, 2] <= b[None, idx_t, 2] + 0.25 * h[None, idx_t])
            gap = np.maximum(b[d, None, 1], b[None, idx_t, 1]) - np.minimum(b[d, None, 3], b[None, idx_t, 3])
            tiny = (h[d, None] <= 0.45 * h[None, idx_t]) & (w[d, None] <= 0.6 * h[None, idx_t])
            ok = inside & tiny & (gap <= 0.9 * top * h[None, idx_t]) & (gap >= -1)
            i, j = np.nonzero(ok)
            rows.append(d[i])
            cols.append(idx_t[j])
            ratio.append(gap[i, j] / (0.9 * h[idx_t][j]))
    r_all = np.concatenate(rows)
    c_all = np.concatenate(cols)
    q_all = np.concatenate(ratio) if ratio else np.zeros(0)
    n = len(boxes)
    result = []
    for spacing in spacings:
        sel = q_all <= spacing
        r, c = r_all[sel], c_all[sel]
        if len(r) == 0:
            result.append([])
            continue
        g = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
        _, comp = connected_components(g, directed=False)
        linked = np.zeros(n, dtype=bool)
        linked[r] = True
        linked[c] = True
        members = np.flatnonzero(linked)
        order = np.argsort(comp[members], kind="stable")
        members = members[order]
        splits = np.flatnonzero(np.diff(comp[members])) + 1
        out = []
        for g_members in np.split(members, splits):
            if int(tall[g_members].sum()) < 1 or len(g_members) < 2 or len(g_members) > 14:
                continue
            lh = b[g_members, 2].max() - b[g_members, 0].min()
            lw = b[g_members, 3].max() - b[g_members, 1].min()
            if lw < 1.2 * lh or lw > 16 * lh:
                continue
            # letters fill the line's height; short dashes chained along a curve (a dotted outline) do not
            if np.median(h[g_members[tall[g_members]]]) < 0.6 * lh:
                continue
            out.append(g_members)
        result.append(out)
    return result


@dataclass
class Candidate:
    box: Box
    orientation: int
    members: np.ndarray


def find_candidates(ink: np.ndarray, boxes: np.ndarray, areas: np.ndarray, dpi: float = 300.0,
                    counts: Optional[np.ndarray] = None) -> List[Candidate]:
    """Text lines that may be labels (module docstring), at most :data:`MAX_CANDIDATES`: the lines whose
    surroundings (a margin of 0.6 line heights) hold at most :data:`MAX_CLUTTER` of other ink: half of them the
    tallest lines, half the emptiest surroundings. Labels stand in white space (on the sample sheets all but one had 0 % other ink around them, the
    exception, a callout touched by its lead line, 4 %), hatching and shading inside a view do not; and labels
    are the largest lettering on a sheet, while the chains of short dashes that broken lines and dotted patterns
    make (hundreds on some sheets) are small."""
    scale = dpi / 300.0
    f = BLOCK
    counts = block_counts(ink) if counts is None else counts
    integral = np.pad(counts.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    H, W = counts.shape

    def ink_in(y0, x0, y1, x1):  # ink in a box, to the block grid (outwards)
        y0, x0, y1, x1 = max(0, y0 // f), max(0, x0 // f), min(H, -(-y1 // f)), min(W, -(-x1 // f))
        return int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]), \
            (y1 - y0) * (x1 - x0) * f * f

    bh, bw = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    scored = []
    seen = set()
    for vertical in (False, True):
        thin, long_ = (bw, bh) if vertical else (bh, bw)
        for g in (g for groups in _lines(boxes, vertical, scale, SPACINGS) for g in groups):
            box = (int(boxes[g, 0].min()), int(boxes[g, 1].min()), int(boxes[g, 2].max()), int(boxes[g, 3].max()))
            if box in seen:
                continue
            seen.add(box)
            across = (box[3] - box[1]) if vertical else (box[2] - box[0])
            m = int(0.6 * across)
            outer = (box[0] - m, box[1] - m, box[2] + m, box[3] + m)
            total, area = ink_in(*outer)
            # an underline or specks wholly inside the margin belong to the label, not to a view
            inside = (boxes[:, 0] >= outer[0]) & (boxes[:, 1] >= outer[1]) & (boxes[:, 2] <= outer[2]) & \
                     (boxes[:, 3] <= outer[3])
            decor = inside & (((long_ >= 2.5 * thin) & (thin <= 0.3 * across)) | (areas <= 0.05 * across ** 2))
            decor[g] = True
            clutter = (total - int(areas[decor].sum())) / max(1, area)
            if clutter > MAX_CLUTTER:
                continue
            for orientation in ((90, 270) if vertical else (0,)):
                scored.append((-across, clutter, box, orientation, g))
    by_height = sorted(scored, key=lambda t: t[:4])
    by_clutter = sorted(scored, key=lambda t: (t[1], t[0], t[2], t[3]))
    chosen = {(t[2], t[3]): t for t in by_height[:MAX_CANDIDATES // 2] + by_clutter[:MAX_CANDIDATES // 2]}
    return [Candidate(box, o, g) for _, _, box, o, g in sorted(chosen.values(), key=lambda t: t[:4])]


def crop_for_ocr(lab: np.ndarray, c: Candidate) -> Image.Image:
    """A candidate line as OCR input: only its own components, turned to read left to right, scaled to
    :data:`OCR_HEIGHT` pixels high, on a white margin."""
    y0, x0, y1, x1 = c.box
    sub = np.isin(lab[y0:y1, x0:x1], c.members + 1)  # only the line's own components: no stray ink
    im = Image.fromarray(np.where(sub, 0, 255).astype(np.uint8), "L")
    if c.orientation == 90:
        im = im.transpose(Image.Transpose.ROTATE_270)  # text running bottom-to-top read after a clockwise turn
    elif c.orientation == 270:
        im = im.transpose(Image.Transpose.ROTATE_90)
    s = OCR_HEIGHT / max(1, im.height)
    im = im.resize((max(1, round(im.width * s)), OCR_HEIGHT), Image.BOX if s < 1 else Image.BILINEAR)
    pad = OCR_HEIGHT // 2
    canvas = Image.new("L", (im.width + 2 * pad, im.height + 2 * pad), 255)
    canvas.paste(im, (pad, pad))
    return canvas


def run_tesseract(image: Image.Image, psm: int = 6, timeout: float = 120.0) -> List[Tuple[str, float, Box]]:
    """Words of an image by tesseract: ``(text, confidence 0-100, (y0, x0, y1, x1))``. Raises RuntimeError when
    the program is missing or fails."""
    exe = tesseract_available()
    if exe is None:
        raise RuntimeError("tesseract is not installed (Debian: apt-get install tesseract-ocr)")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}  # one core per worker process
    cmd = [exe, "stdin", "stdout", "--psm", str(psm), "-c", f"tessedit_char_whitelist={_WHITELIST}",
           "-c", "tessedit_do_invert=0", "tsv"]
    try:
        proc = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"tesseract took more than {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"tesseract failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode('utf-8', 'replace').strip()[-300:]}")
    words = []
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[1:]:
        parts = line.split("\t")
        if len(parts) < 12 or parts[0] != "5" or not parts[11].strip():
            continue
        left, top, width, height = (int(v) for v in parts[6:10])
        words.append((parts[11].strip(), float(parts[10]), (top, left, top + height, left + width)))
    return words


def read_labels(batches: Sequence[Tuple[Sequence[Candidate], Sequence[Image.Image]]]) -> List[List[Label]]:
    """The figure labels among the candidate lines of several sheets, ``[(candidates, their OCR crops
    (crop_for_ocr)), ...]`` -> one list of labels per sheet. The crops of all sheets are read in as few
    tesseract runs as strips of at most :data:`STRIP_HEIGHT` pixels allow (a run costs about 0.1 s to start);
    the sheets where nothing was read are read again one by one. Needs tesseract (:func:`tesseract_available`)."""
    out = _read_strips(batches)
    # tesseract lays a strip out as one block of text, and in a long strip a line now and then goes unread that
    # it reads in a short one: the sheets left without any label are read again, each on its own strip
    again = [k for k, (lbs, (cands, _)) in enumerate(zip(out, batches)) if not lbs and cands]
    if len(again) and len(batches) > 1:
        for k in again:
            out[k] = _read_strips([batches[k]])[0]
    return out


def _read_strips(batches: Sequence[Tuple[Sequence[Candidate], Sequence[Image.Image]]]) -> List[List[Label]]:
    gap = OCR_HEIGHT
    items = [(k, c, im) for k, (cands, crops) in enumerate(batches) for c, im in zip(cands, crops)]
    texts: List[List[Tuple[int, str, float]]] = [[] for _ in items]
    pos = 0
    while pos < len(items):
        chunk, height = [], gap
        while pos < len(items) and (not chunk or height + items[pos][2].height + gap <= STRIP_HEIGHT):
            chunk.append(pos)
            height += items[pos][2].height + gap
            pos += 1
        width = max(items[i][2].width for i in chunk)
        strip = Image.new("L", (width + 2 * gap, height), 255)
        spans = []
        y = gap
        for i in chunk:
            strip.paste(items[i][2], (gap, y))
            spans.append((y, y + items[i][2].height))
            y += items[i][2].height + gap
        starts = np.array([sp[0] for sp in spans])
        for text, conf, (wy0, wx0, wy1, _) in run_tesseract(strip):
            cy = (wy0 + wy1) / 2
            k = int(np.searchsorted(starts, cy, side="right")) - 1
            if 0 <= k < len(spans) and spans[k][0] <= cy < spans[k][1]:
                texts[chunk[k]].append((wx0, text, conf))
    out: List[List[Label]] = [[] for _ in batches]
    best: List[dict] = [{} for _ in batches]
    for (k, c, _), ws in zip(items, texts):
        if not ws:
            continue
        ws.sort()
        text = " ".join(t for _, t, _ in ws)
        fig = parse_label(text)
        if fig is None:
            continue
        lb = Label(fig, c.box, text, c.orientation, float(min(cf for _, _, cf in ws)))
        # a vertical line read both ways: keep the more confident reading
        if c.box not in best[k] or lb.confidence > best[k][c.box].confidence:
            best[k][c.box] = lb
    for k in range(len(batches)):
        out[k] = sorted(best[k].values(), key=lambda lb: (lb.box[0], lb.box[1]))
    return out
