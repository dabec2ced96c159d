"""``--format uspto``: USPTO design grants (grant XML + bi-level TIFF drawing sheets) to patent records.

What one grant becomes (docs/importers.md, "USPTO design grants"):

* a :class:`UsptoRecord` with the grant's number (``USD0907292``), grant date, title, Locarno class and its
  heading name, and in ``extra`` (written into every drawing's metadata in the shards): ``application_date``,
  ``application_number``, ``us_classes``, ``locarno_edition``, ``citations_examiner`` (the examiner's patent
  citations: number, country, kind, date), ``claim``, ``object`` (the claimed article), ``number_of_figures``,
  ``number_of_sheets``, ``kind_code`` (``S1``);
* one drawing per figure cut from the sheets (:mod:`.segment`), in figure order, with ``figure`` (the number),
  its ``view`` and ``object`` and ``caption`` (the sentence describing it) from the XML, ``view_text``, ``sheet``
  and ``segmentation`` (how the number was found: ``label``, ``inferred``, ``reading_order``); with
  ``images="sheets"`` one drawing per whole sheet instead (view ``sheet``), with ``"both"`` the figures and then
  the sheets (``drawing_type``: ``figure`` or ``sheet``).

Sheets are segmented in ``workers`` processes (one patent per task: its labels are read in one OCR run), and
the result of each patent is cached in ``cache_dir`` under a digest of the sheets' location and size and of the
segmentation's version, so a rerun (a resumed build) reads the cache instead of segmenting again. The shard
workers cut the figures out of the sheets again from the stored boxes (:meth:`UsptoRecord.image_source`).

The segmentation is measured against the XML's ``number-of-figures``: the share of patents with exactly as many
figures as the XML says is in the build report (``input.segmentation``), with the figure/view assignment of every
patent that misses.

One concern (the ``--format uspto`` importer) in about 450 lines: :func:`import_uspto` is one walk over the grants,
with the segmentation's workers and cache, served by the other modules of :mod:`patentclip.shards.uspto`.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import sample_format as SF
from ..images import ImageError, ImageOptions
from ..importers.common import ClassNames, ImportOptions, LocarnoTable, parse_date
from ..importers.registry import IMPORTERS
from ..manifest import Drawing, PatentRecord, Problem
from ..pool import ignore_sigint
from .archives import GrantFiles, Member, read_member, walk_inputs
from .bilevel import ink_to_grey, read_ink
from .grant_xml import Grant, GrantXMLError, parse_grant
from .labels import tesseract_available
from .segment import Figure, SheetResult, _fig_key, segment_sheets

__all__ = ["UsptoRecord", "import_uspto", "IMAGE_MODES", "SEGMENT_VERSION", "default_cache_dir"]

#: What a grant's drawings are: its figures, its whole sheets, or both.
IMAGE_MODES = ("figures", "sheets", "both")
#: Bumped when the segmentation's output for the same sheets changes (invalidates the cache).
SEGMENT_VERSION = 1
#: Share of patents with the exact figure count the segmentation is expected to reach (issue 16).
ACCURACY_TARGET = 0.9


def default_cache_dir() -> str:
    """``$PATENTCLIP_CACHE/uspto-segments``, else ``$XDG_CACHE_HOME/patentclip/uspto-segments``, else
    ``~/.cache/patentclip/uspto-segments``."""
    if os.environ.get("PATENTCLIP_CACHE"):
        return os.path.join(os.environ["PATENTCLIP_CACHE"], "uspto-segments")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "patentclip", "uspto-segments")


# --------------------------------------------------------------------------------------------------------------
# The record: figures are cut from the sheets in the shard workers
# --------------------------------------------------------------------------------------------------------------


_SHEET_CACHE: Dict[Tuple, Any] = {}


def _sheet_ink(root: Path, member: Member):
    """The decoded ink of a sheet; the last sheet decoded in this process is kept (its figures follow each
    other)."""
    key = (str(root), member)
    hit = _SHEET_CACHE.get(key)
    if hit is None:
        try:
            data = read_member(root, member)
        except FileNotFoundError:
            raise ImageError("missing_file", f"{member.describe()}: file not found") from None
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            raise ImageError("unreadable_image", f"{member.describe()}: cannot read ({exc})") from None
        if not data:
            raise ImageError("empty_image", f"{member.describe()}: empty file (0 bytes)")
        try:
            ink, inverted, _ = read_ink(data)
        except Exception as exc:  # PIL: UnidentifiedImageError, truncated data, ...
            raise ImageError("unreadable_image", f"{member.describe()}: {type(exc).__name__}: {exc}") from None
        _SHEET_CACHE.clear()
        hit = _SHEET_CACHE[key] = ink
    return hit


def cut_figure(ink, crop=None, keep=(), erase=()):
    """The ink of one figure: the crop box, with ink outside every keep box and inside the erase boxes (labels)
    removed (segment module docstring). No crop: the whole sheet."""
    if crop is None:
        return ink
    y0, x0, y1, x1 = crop
    sub = ink[y0:y1, x0:x1].copy()
    if keep:
        import numpy as np

        mask = np.zeros_like(sub)
        for (a, b, c, d) in keep:
            mask[max(0, a - y0):max(0, c - y0), max(0, b - x0):max(0, d - x0)] = True
        sub &= mask
    for (a, b, c, d) in erase:
        sub[max(0, a - y0):max(0, c - y0), max(0, b - x0):max(0, d - x0)] = False
    return sub


@dataclass
class UsptoRecord(PatentRecord):
    """A patent whose drawings are figures cut from its drawing sheets (or whole sheets)."""

    def image_source(self, drawing: Drawing, opts: ImageOptions):
        """The figure as a grey PIL image at the training size (:func:`.bilevel.ink_to_grey`)."""
        ex = drawing.extra
        ink = _sheet_ink(self.root, Member.from_list(ex["_sheet"]))
        crop = tuple(ex["_crop"]) if ex.get("_crop") else None
        if crop and (crop[2] > ink.shape[0] or crop[3] > ink.shape[1]):
            raise ImageError("unreadable_image", f"sheet {ex.get('sheet')} is {ink.shape[1]}x{ink.shape[0]}, "
                                                 f"smaller than the figure's box {list(crop)}: the file changed")
        sub = cut_figure(ink, crop, [tuple(b) for b in ex.get("_keep", [])], [tuple(b) for b in ex.get("_erase", [])])
        if sub.size == 0 or not sub.any():
            raise ImageError("empty_image", f"figure {ex.get('figure')} on sheet {ex.get('sheet')} has no ink")
        im = ink_to_grey(sub, opts.max_side)
        im.info["orig_size"] = (sub.shape[1], sub.shape[0])
        return im


# --------------------------------------------------------------------------------------------------------------
# Segmentation tasks (worker processes) and their cache
# --------------------------------------------------------------------------------------------------------------


def _segment_task(args) -> Dict[str, Any]:
    root, sheets, ocr = args
    errors: List[List] = []
    inverted: List[int] = []

    def gen():
        for number, m in sheets:
            member = Member.from_list(m)
            try:
                ink, inv, dpi = read_ink(read_member(Path(root), member))
            except Exception as exc:  # unreadable or missing sheet: reported, the others are segmented
                errors.append([number, f"{member.describe()}: cannot read the sheet ({type(exc).__name__}: {exc})"])
                continue
            if inv:
                inverted.append(number)
            yield number, ink, dpi[0], inv

    try:
        results, notes = segment_sheets(gen(), ocr=ocr)
    except RuntimeError as exc:  # tesseract failed: segment without labels
        results, notes = segment_sheets(gen(), ocr=False)
        notes.append(f"OCR failed ({exc}); figures numbered in reading order")
    return {"sheets": [r.to_dict() for r in results], "notes": notes, "errors": errors, "inverted": inverted}


def _segment_indexed(item):
    i, args = item
    return i, _segment_task(args)


def _cache_key(root: Path, sheets: List[Tuple[int, Member]], ocr: bool) -> str:
    h = hashlib.sha256()
    parts: List[Any] = [SEGMENT_VERSION, bool(ocr)]
    for number, m in sheets:
        full = Path(m.path) if os.path.isabs(m.path) else root / m.path
        try:
            st = os.stat(full)
            stat = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = None
        parts.append([number, m.to_list(), stat])
    h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()[:32]


def _segment_all(root: Path, tasks: List[Tuple[str, List[Tuple[int, Member]]]], ocr: bool, workers: int,
                 cache_dir: Optional[str], progress: bool) -> Dict[str, Dict]:
    """Segmentation of every patent (cached results first, the rest in ``workers`` processes)."""
    out: Dict[str, Dict] = {}
    todo = []
    keys: Dict[str, str] = {}
    for pid, sheets in tasks:
        keys[pid] = _cache_key(root, sheets, ocr)
        if cache_dir:
            f = Path(cache_dir) / f"{pid}-{keys[pid]}.json"
            try:
                out[pid] = json.loads(f.read_text(encoding="utf-8"))
                continue
            except (OSError, ValueError):
                pass
        todo.append((pid, sheets))
    from tqdm import tqdm

    bar = tqdm(total=sum(len(s) for _, s in todo), desc="segmenting sheets", unit="sheet", disable=not progress)
    args = [(str(root), [(n, m.to_list()) for n, m in sheets], ocr) for _, sheets in todo]

    def done(pid, res, n):
        out[pid] = res
        bar.update(n)
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)
            f = Path(cache_dir) / f"{pid}-{keys[pid]}.json"
            tmp = f.with_name(f.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(res), encoding="utf-8")
            os.replace(tmp, f)

    try:
        if workers <= 1 or len(todo) <= 1:
            for (pid, sheets), a in zip(todo, args):
                done(pid, _segment_task(a), len(sheets))
        else:
            ctx = mp.get_context("spawn")
            # the patents with most sheets first (better balance at the end); the results do not depend on it
            order = sorted(range(len(todo)), key=lambda i: (-len(todo[i][1]), i))
            with ctx.Pool(min(workers, len(todo)), initializer=ignore_sigint) as pool:
                for i, res in pool.imap_unordered(_segment_indexed, [(i, args[i]) for i in order], chunksize=1):
                    done(todo[i][0], res, len(todo[i][1]))
    finally:
        bar.close()
    return out


# --------------------------------------------------------------------------------------------------------------
# The importer
# --------------------------------------------------------------------------------------------------------------


def _default_root(paths: Sequence[str]) -> Path:
    ps = [Path(p).resolve() for p in paths]
    dirs = [p if p.is_dir() else p.parent for p in ps]
    return Path(os.path.commonpath([str(d) for d in dirs])) if dirs else Path(".")


@IMPORTERS.register("uspto")
def import_uspto(paths, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """USPTO design grants -> records (module docstring). Returns ``(records, problems, stats)``; ``stats`` has
    ``segmentation`` (the measure against the XML's figure counts) and ``report_lines`` (the build summary's)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    mode = opts.uspto_images
    if mode not in IMAGE_MODES:
        raise ValueError(f"unknown --uspto-images {mode!r}; one of {', '.join(IMAGE_MODES)}")
    root = Path(opts.images_root).resolve() if opts.images_root else _default_root(paths)
    grants_found, walk = walk_inputs([str(p) for p in paths], root)
    if not grants_found and not walk.skipped_by_kind and not walk.problems:
        raise ValueError(f"{', '.join(map(str, paths))}: no USPTO grant XML found (give folders of patent folders, "
                         "per-patent zips or the weekly .tar/.zip archives)")
    problems: List[Problem] = []
    names = ClassNames.load(opts.class_names) if opts.class_names else ClassNames()
    table = LocarnoTable.load(opts.locarno_table, opts.locarno_id_column, opts.locarno_class_column) \
        if opts.locarno_table else None
    if table:
        for c, n in table.names.items():
            names.given.setdefault(c, n)
            # the grant's own class wins; the table fills patents whose XML has none
    for where, msg in walk.problems:
        problems.append(Problem(0, None, f"{where}: {msg}", "unreadable_archive", "record", source=where))
    skipped_kind = Counter(walk.skipped_by_kind)

    def problem(n: int, gf: GrantFiles, pid: Optional[str], kind: str, scope: str, msg: str, **kw):
        src = gf.xml.describe()
        problems.append(Problem(n, pid, f"{src}: {msg}", kind, scope, source=src, **kw))

    grants: List[Tuple[int, GrantFiles, Grant, List[Tuple[int, Member]]]] = []
    seen: Dict[str, str] = {}
    for n, gf in enumerate(grants_found, start=1):
        try:
            g = parse_grant(read_member(root, gf.xml), gf.xml.describe())
        except GrantXMLError as exc:
            problem(n, gf, None, "invalid_xml", "record", f"{exc}; skipped")
            continue
        except (OSError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            problem(n, gf, None, "unreadable_archive", "record", f"cannot read ({exc}); skipped")
            continue
        if not g.is_design:
            skipped_kind[f"kind {g.kind or '?'}"] += 1
            continue
        pid = g.patent_id
        if pid in seen:
            problem(n, gf, pid, "duplicate_id", "record", f"patent {pid} again (first in {seen[pid]}); skipped")
            continue
        seen[pid] = gf.xml.describe()
        for note in g.notes:
            problem(n, gf, pid, "xml_note", "repair", f"patent {pid}: {note}")
        sheets: List[Tuple[int, Member]] = []
        for name in g.sheet_files:
            m = re.search(r"D(\d+)\.[A-Za-z]+$", name)
            number = int(m.group(1)) if m else len(sheets) + 1
            member = gf.sheet(name)
            if member is None:
                problem(n, gf, pid, "missing_file", "drawing", f"patent {pid}: drawing sheet {name} is not in "
                        f"{gf.container}; skipped", path=name)
                continue
            sheets.append((number, member))
        if g.number_of_sheets is not None and g.number_of_sheets != len(g.sheet_files):
            problem(n, gf, pid, "sheet_count", "repair", f"patent {pid}: the XML says {g.number_of_sheets} sheets "
                    f"and names {len(g.sheet_files)}; the files named are used")
        grants.append((n, gf, g, sheets))

    ocr = bool(opts.ocr) and tesseract_available() is not None
    seg: Dict[str, Dict] = {}
    if mode in ("figures", "both"):
        if opts.ocr and not ocr:
            problems.append(Problem(0, None, "tesseract is not installed (Debian: apt-get install tesseract-ocr): "
                                             "figure labels are not read, figures are numbered in reading order",
                                    "ocr_unavailable", "note"))
        cache = None if opts.segment_cache in ("", "none", "off") else (opts.segment_cache or default_cache_dir())
        seg = _segment_all(root, [(g.patent_id, sheets) for _, _, g, sheets in grants if sheets], ocr,
                           max(1, opts.workers), cache, opts.progress)

    records: List[PatentRecord] = []
    misses: List[Dict] = []
    measured = exact = found_total = described_total = 0
    methods: Counter = Counter()
    for n, gf, g, sheets in grants:
        pid = g.patent_id
        src = gf.xml.describe()
        date = g.grant_date if g.grant_date and len(g.grant_date) == 10 else None
        if date is None and opts.default_date:
            date = parse_date(opts.default_date)
            problem(n, gf, pid, "date_defaulted", "repair", f"patent {pid}: no grant date; --default-date used")
        if date is None:
            problem(n, gf, pid, "missing_date", "record", f"patent {pid}: no grant date; skipped")
            continue
        code = g.locarno or (table.lookup(pid) if table else None)
        if code is None:
            if opts.missing_class == "other":
                code = "99-00"
                problem(n, gf, pid, "class_defaulted", "repair", f"patent {pid}: no Locarno class; put in 99-00")
            else:
                problem(n, gf, pid, "unknown_class", "record", f"patent {pid}: no Locarno classification in the XML"
                        + (f" nor in {table.path}" if table else "") + "; skipped")
                continue
        descs = {d.figure: d for d in g.figures}
        drawings: List[Drawing] = []
        sheet_member = dict(sheets)
        base_extra = {"drawing_type": "figure"} if mode == "both" else {}
        figs: List[Tuple[SheetResult, Figure]] = []
        if pid in seg:
            res = seg[pid]
            for number, msg in res["errors"]:
                problem(n, gf, pid, "unreadable_image", "drawing", f"patent {pid}: sheet {number}: {msg}; skipped")
            for number in res["inverted"]:
                problem(n, gf, pid, "inverted_sheet", "repair", f"patent {pid}: sheet {number} decoded mostly black "
                        "(photometric tag wrong); inverted")
            for note in res["notes"]:
                problem(n, gf, pid, "segmentation_note", "repair", f"patent {pid}: {note}")
            for sd in res["sheets"]:
                s = SheetResult.from_dict(sd)
                for note in s.notes:
                    problem(n, gf, pid, "segmentation_note", "repair", f"patent {pid}: sheet {s.sheet}: {note}")
                figs.extend((s, f) for f in s.figures)
            figs.sort(key=lambda sf: (_fig_key(sf[1].figure), sf[1].sheet, sf[1].crop))
            for s, f in figs:
                d = descs.get(f.figure)
                obj = (d.object if d else None) or g.object
                extra: Dict[str, Any] = {**base_extra, "figure": f.figure, "sheet": f.sheet,
                                         "segmentation": f.method}
                if d:
                    extra.update({"caption": d.text, "view_text": d.view_text})
                if obj:
                    extra["object"] = obj
                extra.update({"_sheet": sheet_member[f.sheet].to_list(), "_crop": list(f.crop),
                              "_keep": [list(b) for b in f.keep], "_erase": [list(b) for b in f.erase]})
                drawings.append(Drawing(len(drawings), sheet_member[f.sheet].path,
                                        d.view if d else "unspecified", (), extra))
            found = {f.figure for _, f in figs}
            described = set(descs)
            for fig in sorted(found - described, key=_fig_key):
                problem(n, gf, pid, "figure_not_described", "repair", f"patent {pid}: FIG. {fig} was cut from the "
                        "sheets but the XML does not describe it: no view or caption")
            expected = g.number_of_figures if g.number_of_figures is not None else (len(descs) or None)
            methods.update(f.method for _, f in figs)
            found_total += len(figs)
            described_total += expected or 0
            if expected is not None:
                measured += 1
                if len(figs) == expected:
                    exact += 1
                else:
                    views = {k: v.view for k, v in descs.items()}
                    misses.append({"patent_id": pid, "found": len(figs), "xml": expected,
                                   "figures": [{"sheet": s.sheet, "figure": f.figure, "method": f.method,
                                                "view": views.get(f.figure)} for s, f in figs],
                                   "not_found": sorted(described - found, key=_fig_key)})
        if mode in ("sheets", "both"):
            for number, m in sheets:
                extra = {"drawing_type": "sheet"} if mode == "both" else {}
                extra.update({"sheet": number, "_sheet": m.to_list()})
                drawings.append(Drawing(len(drawings), m.path, "sheet", (), extra))
        if not drawings:
            problem(n, gf, pid, "no_drawings", "record", f"patent {pid}: no drawing could be cut from its sheets; "
                    "skipped")
            continue
        rextra: Dict[str, Any] = {"_source": src}
        if g.object:
            rextra["object"] = g.object
        rextra.update({"kind_code": g.kind, "application_number": g.application_number,
                       "application_date": g.application_date, "locarno_edition": g.locarno_edition,
                       "us_classes": g.us_classes,
                       SF.CITATIONS_EXAMINER: [c.to_dict() for c in g.examiner_citations],
                       "claim": g.claim, "number_of_figures": g.number_of_figures,
                       "number_of_sheets": g.number_of_sheets})
        title = g.title or (f"Ornamental design for {g.object}" if g.object else f"Design {pid}")
        records.append(UsptoRecord(n, pid, date, code, names.name(code), title, drawings, root, rextra))

    segmentation = None
    lines: List[str] = []
    if mode in ("figures", "both"):
        acc = exact / measured if measured else None
        segmentation = {"patents_measured": measured, "exact_count": exact, "accuracy": acc,
                        "target": ACCURACY_TARGET, "figures_found": found_total,
                        "figures_in_xml": described_total, "by_method": dict(sorted(methods.items())),
                        "ocr": "tesseract" if ocr else "none", "misses": misses}
        if measured:
            lines.append(f"segmentation: {exact} of {measured} patents ({100 * acc:.1f} %) with exactly the XML's "
                         f"number of figures (target {100 * ACCURACY_TARGET:.0f} %); {found_total} figures cut, "
                         f"{described_total} in the XML; numbered by "
                         + ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
                         + ("" if ocr else "; no OCR: labels not read"))
        for miss in misses:
            lines.append(f"  {miss['patent_id']}: {miss['found']} figures cut, the XML says {miss['xml']}"
                         + (f" (not found: FIG. {', '.join(miss['not_found'])})" if miss["not_found"] else ""))
            for f in miss["figures"]:
                lines.append(f"    sheet {f['sheet']}: FIG. {f['figure']} {f['view'] or '(not described)'} "
                             f"[{f['method']}]")
    if skipped_kind:
        lines.append("not design grants, skipped: " + ", ".join(f"{k} {v}" for k, v in sorted(skipped_kind.items())))
    stats = {"rows_read": len(grants_found), "patents_read": len(grants), "archives": walk.archives,
             "skipped_by_kind": dict(sorted(skipped_kind.items())), "images": mode, "segmentation": segmentation,
             "report_lines": lines}
    return records, problems, stats
