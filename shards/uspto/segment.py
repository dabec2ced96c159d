"""Drawing sheets to figures: whitespace segmentation, figure labels, and the numbering of a patent's figures.

Conventions:

* Boxes are ``(y0, x0, y1, x1)`` in sheet pixels, end-exclusive. A figure is stored as its **crop box** and its
  **keep boxes** (the boxes of the ink regions that belong to it): when it is cut out, ink inside the crop but
  outside every keep box (a neighbouring figure reaching in) and inside a label box is painted white.
* **Regions**: the sheet's ink without its labels, counted in 4 x 4 blocks (a block is ink if any of its 16
  pixels is), grown by :data:`MERGE_PX` sheet pixels and split into connected regions: ink closer than about twice that
  distance (broken lines, shading, the parts of one view) is one region; figures are set further apart than that
  (USPTO rule 1.84(h) asks for views "separated" on the sheet). Regions with less than
  :data:`SPECK_FRACTION` of the sheet's largest region's ink are **specks** (a stray mark, the loose end of a
  lead line): they join the nearest figure and never make one.
* **With labels** (:mod:`.labels`): each label is matched to one region (minimum total distance between label box
  and region box, Hungarian method); a label that finds no region of its own (two views touching) makes the
  regions be split again with half the merging distance, down to 1/4. Unmatched regions join the figure whose
  matched region is nearest. The same figure number read twice on a sheet (a callout such as "FIG. 3" beside an
  enlarged detail) keeps the taller reading, the other is erased as text.
* **Without labels** (none read, or no OCR): every region is a figure, in **reading order** (top to bottom in
  rows of overlapping height, left to right), and the figure says ``method = "reading_order"``.
* **Numbering a patent** (:func:`number_figures`): figure numbers run up through the sheets. Using only what was
  read on the sheets: Hague-style numbers (``1.3``) are dropped when the patent also has ``FIG.``-style ones
  (dimension-like text); the numbers that make the longest increasing run through the sheets are taken as read,
  and any other (read out of order, or twice) is replaced by the one free number its place allows, if there is
  exactly one (``4`` read for ``1`` before ``2``), else dropped; a sheet's unlabelled
  figures get the free numbers between its neighbours' when there are exactly as many (``method =
  "inferred"``), else reading-order numbers. The XML's figure count is never used here: it is what the
  segmentation is measured against.

One concern (a patent's sheets to its numbered figures) in about 490 lines: numbering repairs the segmentation with
its own geometry (reading order, merging a figure into another), so the two stay together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .labels import BLOCK, Candidate, Label, block_counts, components, crop_for_ocr, find_candidates, read_labels

Box = Tuple[int, int, int, int]

#: Reduction factor of the region analysis.
REDUCE = 4
#: Ink closer than about twice this many sheet pixels (300 dpi) is one region.
MERGE_PX = 28
#: A region with less ink than this fraction of the sheet's largest region is a speck.
SPECK_FRACTION = 0.02
#: An unmatched region on a sheet with labels is kept apart as a possibly unlabelled view when it has at least
#: this fraction of the ink of the smallest labelled view (else it joins the nearest view).
UNLABELLED_FRACTION = 0.25
#: Margin in sheet pixels around a figure's crop box.
CROP_MARGIN = 12


@dataclass
class Figure:
    """One figure cut from a sheet."""

    sheet: int  # 1-based sheet number (``D00001`` is 1)
    crop: Box
    keep: List[Box]
    erase: List[Box]
    label: Optional[str] = None  # the figure number as read on the sheet
    label_box: Optional[Box] = None
    label_text: Optional[str] = None
    method: str = "label"  # label | inferred | reading_order | sheet
    figure: Optional[str] = None  # the figure number assigned by number_figures()
    ink: int = 0

    def to_dict(self) -> Dict:
        return {"sheet": self.sheet, "crop": list(self.crop), "keep": [list(b) for b in self.keep],
                "erase": [list(b) for b in self.erase], "label": self.label,
                "label_box": list(self.label_box) if self.label_box else None, "label_text": self.label_text,
                "method": self.method, "figure": self.figure, "ink": self.ink}

    @classmethod
    def from_dict(cls, d: Dict) -> "Figure":
        return cls(d["sheet"], tuple(d["crop"]), [tuple(b) for b in d["keep"]], [tuple(b) for b in d["erase"]],
                   d.get("label"), tuple(d["label_box"]) if d.get("label_box") else None, d.get("label_text"),
                   d.get("method", "label"), d.get("figure"), d.get("ink", 0))


@dataclass
class SheetResult:
    sheet: int
    size: Tuple[int, int]  # (height, width)
    figures: List[Figure]
    labels_read: List[str] = field(default_factory=list)
    inverted: bool = False
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict:
        return {"sheet": self.sheet, "size": list(self.size), "figures": [f.to_dict() for f in self.figures],
                "labels_read": self.labels_read, "inverted": self.inverted, "notes": self.notes}

    @classmethod
    def from_dict(cls, d: Dict) -> "SheetResult":
        return cls(d["sheet"], tuple(d["size"]), [Figure.from_dict(f) for f in d["figures"]], d.get("labels_read", []),
                   d.get("inverted", False), d.get("notes", []))


def _gap(a: Box, b: Box) -> float:
    """Euclidean distance between two boxes (0 when they overlap)."""
    dy = max(0, max(a[0], b[0]) - min(a[2], b[2]))
    dx = max(0, max(a[1], b[1]) - min(a[3], b[3]))
    return float(np.hypot(dy, dx))


def _union(boxes: Sequence[Box]) -> Box:
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


@dataclass
class _Region:
    box: Box
    ink: int
    parts: List[Box]


def _regions(counts: np.ndarray, shape: Tuple[int, int], merge_px: int, dpi: float) -> List[_Region]:
    """Connected regions of the coarse ink counts after growing the ink by about ``merge_px`` sheet pixels
    (a square: separable maximum filters)."""
    from scipy import ndimage

    small = counts > 0
    r = max(1, int(round(merge_px * dpi / 300.0 / REDUCE)))
    grown = ndimage.maximum_filter1d(ndimage.maximum_filter1d(small.view(np.uint8), 2 * r + 1, axis=0),
                                     2 * r + 1, axis=1).view(bool)
    lab, n = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return []
    ink = np.bincount(lab.ravel(), weights=counts.ravel(), minlength=n + 1)
    out = []
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if ink[i] <= 0:
            continue
        sub = small[sl] & (lab[sl] == i)
        ys = np.flatnonzero(sub.any(axis=1))
        xs = np.flatnonzero(sub.any(axis=0))
        y0, x0 = sl[0].start + ys[0], sl[1].start + xs[0]
        y1, x1 = sl[0].start + ys[-1] + 1, sl[1].start + xs[-1] + 1
        box = (int(y0 * REDUCE), int(x0 * REDUCE), int(min(shape[0], y1 * REDUCE)), int(min(shape[1], x1 * REDUCE)))
        out.append(_Region(box, int(ink[i]), [box]))
    return out


def _reading_order(boxes: Sequence[Box]) -> List[int]:
    """Indices of ``boxes`` in reading order: rows of vertically overlapping boxes top to bottom, each row left
    to right."""
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][0], boxes[i][1]))
    rows: List[List[int]] = []
    for i in order:
        b = boxes[i]
        for row in rows:
            rb = _union([boxes[j] for j in row])
            ov = min(rb[2], b[2]) - max(rb[0], b[0])
            if ov > 0.3 * min(rb[2] - rb[0], b[2] - b[0]):
                row.append(i)
                break
        else:
            rows.append([i])
    rows.sort(key=lambda row: min(boxes[j][0] for j in row))
    return [j for row in rows for j in sorted(row, key=lambda k: boxes[k][1])]


def _dedupe_labels(labels: List[Label]) -> Tuple[List[Label], List[Label]]:
    """(labels kept, callouts): a figure number read twice on one sheet keeps its tallest reading."""
    by: Dict[str, List[Label]] = {}
    for lb in labels:
        by.setdefault(lb.figure, []).append(lb)
    kept, dropped = [], []
    for fig, group in by.items():
        group.sort(key=lambda lb: (-lb.height, lb.box))
        kept.append(group[0])
        dropped.extend(group[1:])
    return kept, dropped


@dataclass
class SheetPrep:
    """What the segmentation keeps of a decoded sheet while its patent's labels are read (the ink itself is
    not kept: a patent may have a hundred sheets)."""

    sheet: int
    shape: Tuple[int, int]
    dpi: float
    inverted: bool
    counts: np.ndarray  # ink pixels per REDUCE x REDUCE block
    candidates: List[Candidate]
    crops: list  # OCR crops of the candidates (empty without OCR)


def prepare_sheet(ink: np.ndarray, sheet: int, dpi: float = 300.0, ocr: bool = True,
                  inverted: bool = False) -> SheetPrep:
    """Components, coarse ink counts and candidate label lines of a sheet (and their OCR crops)."""
    lab, boxes, areas = components(ink)
    counts = block_counts(ink, REDUCE)
    cands = find_candidates(ink, boxes, areas, dpi, counts if REDUCE == BLOCK else None)
    crops = [crop_for_ocr(lab, c) for c in cands] if ocr else []
    return SheetPrep(sheet, ink.shape, dpi, inverted, counts, cands, crops)


def segment_sheet(ink: np.ndarray, sheet: int, dpi: float = 300.0, ocr: bool = True,
                  inverted: bool = False) -> SheetResult:
    """Cut one sheet into figures (module docstring); :func:`segment_sheets` does a patent's sheets with one
    OCR run."""
    prep = prepare_sheet(ink, sheet, dpi, ocr, inverted)
    labels = read_labels([(prep.candidates, prep.crops)])[0] if ocr else []
    return finish_sheet(prep, labels)


def segment_sheets(sheets, ocr: bool = True) -> Tuple[List[SheetResult], List[str]]:
    """Segment and number a patent's sheets: ``sheets`` yields ``(sheet number, ink, dpi, inverted)``.
    Returns the sheets' results and the numbering notes (:func:`number_figures`)."""
    preps = [prepare_sheet(ink, n, dpi, ocr, inv) for n, ink, dpi, inv in sheets]
    labels = read_labels([(p.candidates, p.crops) for p in preps]) if ocr else [[] for _ in preps]
    results = [finish_sheet(p, lbs) for p, lbs in zip(preps, labels)]
    return results, number_figures(results)


def finish_sheet(prep: SheetPrep, labels: List[Label]) -> SheetResult:
    """Regions, label matching and figure boxes of a prepared sheet (module docstring)."""
    from scipy.optimize import linear_sum_assignment

    sheet, dpi, inverted, counts, cands = prep.sheet, prep.dpi, prep.inverted, prep.counts, prep.candidates
    shape = prep.shape
    notes: List[str] = []
    labels_read = [lb.figure for lb in labels]
    labels, callouts = _dedupe_labels(labels)
    text_boxes = [lb.box for lb in labels] + [lb.box for lb in callouts]
    drawing = counts.copy()
    for (y0, x0, y1, x1) in text_boxes:
        drawing[y0 // REDUCE:-(-y1 // REDUCE), x0 // REDUCE:-(-x1 // REDUCE)] = 0
    if not drawing.any():
        return SheetResult(sheet, shape, [], labels_read, inverted, ["blank sheet"])
    # lines of text that were not read as labels (an unread "FIG. 2", a Hague "1.1"): never a view of their own
    text_lines = [c.box for c in cands if len(c.members) >= 3]
    merge = MERGE_PX
    while True:
        regions = _regions(drawing, shape, merge, dpi)
        biggest = max(r.ink for r in regions)
        main = [r for r in regions if r.ink >= SPECK_FRACTION * biggest]
        specks = [r for r in regions if r.ink < SPECK_FRACTION * biggest]
        if len(main) > 1:
            text = [r for r in main if any(_inside(r.box, t, REDUCE + 2) for t in text_lines)]
            # text inside a view (a screen's words, a marking) belongs to the view
            text = [r for r in text if not any(_gap(r.box, o.box) == 0 for o in main if o not in text)]
            if text and len(text) < len(main):
                main = [r for r in main if r not in text]
                text_boxes += [r.box for r in text]
        if len(main) >= len(labels) or merge <= MERGE_PX // 4:
            break
        merge //= 2
    if merge != MERGE_PX:
        notes.append(f"views closer than usual: regions split at {merge} px")
    groups: List[List[_Region]] = []
    glabels: List[Optional[Label]] = []
    rest = list(specks)
    if labels:
        cost = np.array([[_gap(lb.box, r.box) for r in main] for lb in labels])
        li, ri = linear_sum_assignment(cost)
        matched = dict(zip(li.tolist(), ri.tolist()))
        for k, lb in enumerate(labels):
            if k in matched:
                groups.append([main[matched[k]]])
                glabels.append(lb)
            else:
                notes.append(f"label FIG. {lb.figure} found no view of its own; ignored")
        taken = set(matched.values())
        smallest = min((g[0].ink for g in groups), default=0)
        for j, r in enumerate(main):
            if j in taken:
                continue
            if r.ink >= UNLABELLED_FRACTION * smallest:
                groups.append([r])  # a view whose label was not read: number_figures() decides
                glabels.append(None)
            else:
                rest.append(r)
    else:
        order = _reading_order([r.box for r in main])
        groups = [[main[j]] for j in order]
        glabels = [None] * len(groups)
    if not groups:
        return SheetResult(sheet, shape, [], labels_read, inverted, notes + ["no view found"])
    anchors = [g[0].box for g in groups]
    for r in list(rest):
        if any(_inside(r.box, t, REDUCE + 2) for t in text_lines):  # a stray character of unread text
            rest.remove(r)
            text_boxes.append(r.box)
    for r in rest:
        k = min(range(len(groups)), key=lambda i: (_gap(r.box, anchors[i]), i))
        groups[k].append(r)
    h, w = shape
    figures: List[Figure] = []
    for g, lb in zip(groups, glabels):
        fig = Figure(sheet, (0, 0, 0, 0), [r.box for r in g], [], lb.figure if lb else None, lb.box if lb else None,
                     lb.text if lb else None, "label" if lb else "reading_order",
                     ink=sum(r.ink for r in g))
        _set_crop(fig, text_boxes, (h, w))
        figures.append(fig)
    return SheetResult(sheet, shape, figures, labels_read, inverted, notes)


def _inside(a: Box, b: Box, tol: int) -> bool:
    return a[0] >= b[0] - tol and a[1] >= b[1] - tol and a[2] <= b[2] + tol and a[3] <= b[3] + tol


def _set_crop(fig: Figure, text_boxes: Sequence[Box], shape: Tuple[int, int]) -> None:
    u = _union(fig.keep)
    fig.crop = (max(0, u[0] - CROP_MARGIN), max(0, u[1] - CROP_MARGIN), min(shape[0], u[2] + CROP_MARGIN),
                min(shape[1], u[3] + CROP_MARGIN))
    fig.erase = [tuple(b) for b in text_boxes if _gap(b, fig.crop) == 0]


def _merge_into(sheet: SheetResult, f: Figure, targets: List[Figure]) -> Figure:
    """Merge figure ``f`` into the nearest of ``targets`` (same sheet); returns the target."""
    g = min(targets, key=lambda t: (min(_gap(a, b) for a in f.keep for b in t.keep), t.crop))
    g.keep = g.keep + f.keep
    g.ink += f.ink
    _set_crop(g, list(dict.fromkeys(g.erase + f.erase)), sheet.size)
    sheet.figures.remove(f)
    return g


def _fig_key(fig: str) -> Tuple:
    """Sort key of a figure number: ``2`` < ``2A`` < ``10``; Hague ``1.2`` < ``1.10``."""
    m = re.match(r"^(\d+)(?:\.(\d+))?([A-Z]?)$", fig or "")
    if not m:
        return (1 << 20, 0, fig or "")
    return (int(m.group(1)), int(m.group(2) or 0), m.group(3))


def _longest_increasing(items: List, key) -> List:
    """The longest subsequence of ``items`` whose ``key`` strictly increases (the first such, by patience
    sorting)."""
    import bisect

    tails: List[int] = []  # index into items of the smallest tail of a run of each length
    tail_keys: List[int] = []
    prev: List[int] = [-1] * len(items)
    for i, it in enumerate(items):
        k = key(it)
        j = bisect.bisect_left(tail_keys, k)
        if j > 0:
            prev[i] = tails[j - 1]
        if j == len(tails):
            tails.append(i)
            tail_keys.append(k)
        else:
            tails[j] = i
            tail_keys[j] = k
    out = []
    i = tails[-1] if tails else -1
    while i >= 0:
        out.append(items[i])
        i = prev[i]
    return out[::-1]


def _is_hague(fig: Optional[str]) -> bool:
    return bool(fig and "." in fig)


def _number_hague(sheets: List[SheetResult]) -> List[str]:
    """Hague numbers (``1.1``, ``1.2``, ...) are taken as read; unlabelled views get the free numbers of their
    design between their neighbours' when there are exactly as many, else numbers after the design's last."""
    notes: List[str] = []
    figs = [f for s in sheets for f in s.figures]

    def pair(f: Figure) -> Optional[Tuple[int, int]]:
        m = re.match(r"^(\d+)\.(\d+)$", f.figure or "")
        return (int(m.group(1)), int(m.group(2))) if m else None

    for s in sheets:
        unl = [f for f in s.figures if f.figure is None]
        if not unl:
            continue
        before = [pair(f) for f in figs if f.sheet < s.sheet and pair(f)]
        after = [pair(f) for f in figs if f.sheet > s.sheet and pair(f)]
        here = {pair(f) for f in s.figures if pair(f)}
        lo = max(before) if before else (after and (min(after)[0], 0)) or (1, 0)
        hi = min(after) if after else None
        if hi is not None and hi[0] == lo[0]:
            free = [(lo[0], k) for k in range(lo[1] + 1, hi[1]) if (lo[0], k) not in here]
        elif hi is None:
            free = [(lo[0], lo[1] + 1 + k) for k in range(len(unl))]
        else:
            free = []
        ordered = _reading_order([f.crop for f in unl])
        if len(free) == len(unl):
            for p, j in zip(free, ordered):
                unl[j].figure, unl[j].method = f"{p[0]}.{p[1]}", "inferred"
        else:
            notes.append(f"sheet {s.sheet}: {len(unl)} unlabelled view(s) and {len(free)} free figure numbers: "
                         "numbered after the design's last")
    for f in figs:
        if f.figure is None:
            top = max([pair(g) for g in figs if pair(g)] or [(1, 0)])
            f.figure, f.method = f"{top[0]}.{top[1] + 1}", "reading_order"
    return notes


def number_figures(sheets: List[SheetResult]) -> List[str]:
    """Give every figure of a patent its number (module docstring); returns notes on what was repaired."""
    notes: List[str] = []
    figs = [f for s in sheets for f in s.figures]
    has_fig_style = any(f.label and not _is_hague(f.label) for f in figs)
    has_hague = any(_is_hague(f.label) for f in figs)
    if has_fig_style and has_hague:
        for f in figs:
            if _is_hague(f.label):
                notes.append(f"sheet {f.sheet}: {f.label_text!r} read as figure {f.label} but the patent's labels "
                             "are FIG. N: not a label")
                f.label, f.method = None, "reading_order"
    hague = has_hague and not has_fig_style
    for f in figs:
        f.figure = f.label
    if hague:
        return notes + _number_hague(sheets)
    # plain integer numbering: repair numbers out of order or read twice
    def num(f: Figure) -> Optional[int]:
        m = re.match(r"^(\d+)$", f.figure or "")
        return int(m.group(1)) if m else None

    # the numbers read that fit the longest increasing run through the sheets are taken as read; each of the
    # others gets the one free number its place allows, or none (it is then an unlabelled view)
    seq = sorted((f for f in figs if num(f) is not None), key=lambda f: (f.sheet, num(f)))
    keep = set(map(id, _longest_increasing(seq, num)))
    kept = [f for f in seq if id(f) in keep]
    used = {num(f) for f in kept}
    for f in seq:
        if id(f) in keep:
            continue
        n = num(f)
        lo = max([num(g) for g in kept if g.sheet < f.sheet] + [0])
        later = [num(g) for g in kept if g.sheet > f.sheet]
        hi = min(later) if later else None
        free = [k for k in range(lo + 1, hi if hi is not None else lo + 2) if k not in used]
        if len(free) == 1:
            notes.append(f"sheet {f.sheet}: label read as FIG. {n} is out of order or read twice; taken as "
                         f"FIG. {free[0]}")
            f.figure = str(free[0])
            used.add(free[0])
        else:
            notes.append(f"sheet {f.sheet}: label read as FIG. {n} is out of order or read twice; not used")
            f.figure, f.label, f.method = None, None, "reading_order"

    # unlabelled views: the free numbers between the neighbours' if there are exactly as many; on a sheet with
    # labelled views an unlabelled one that gets no number is a detached part of the nearest labelled view
    for s in sheets:
        unl = [f for f in s.figures if f.figure is None]
        if not unl:
            continue
        labelled = [f for f in s.figures if f.figure is not None]
        idx = [k for k, f in enumerate(figs) if f.sheet == s.sheet]
        nums_before = [num(f) for f in figs[:idx[0]] if num(f) is not None]
        nums_after = [num(f) for f in figs[idx[-1] + 1:] if num(f) is not None]
        here = {num(f) for f in labelled if num(f) is not None}
        lo = max(nums_before) if nums_before else 0
        hi = min(nums_after) if nums_after else None
        if hi is not None:
            free = [k for k in range(lo + 1, hi) if k not in here]
        elif not labelled:
            free = list(range(lo + 1, lo + 1 + len(unl)))
        else:
            free = []
        if len(free) == len(unl):
            ordered = _reading_order([f.crop for f in unl])
            for k, j in zip(free, ordered):
                unl[j].figure = str(k)
                unl[j].method = "inferred" if (has_fig_style and (labelled or hi is not None)) else "reading_order"
        elif labelled:
            for f in unl:
                g = _merge_into(s, f, labelled)
                notes.append(f"sheet {s.sheet}: an unlabelled part joined FIG. {g.figure}")
        else:
            notes.append(f"sheet {s.sheet}: {len(unl)} unlabelled view(s) and {len(free)} free figure numbers: "
                         "numbered in reading order after the others")
    figs = [f for s in sheets for f in s.figures]
    # whatever is still unnumbered: after the highest number, in sheet and reading order
    top = max([num(f) or 0 for f in figs] + [0])
    for f in figs:
        if f.figure is None:
            top += 1
            f.figure = str(top)
            f.method = "reading_order"
    return notes
