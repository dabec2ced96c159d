"""Importers: public patent-drawing formats -> the manifest's in-memory records (:class:`PatentRecord`).

Every importer returns ``(records, problems, stats)`` exactly like :func:`read_manifest` (plus counters), so one
builder path serves all formats. Formats (docs/importers.md has the details and examples):

* ``deeppatent2`` -- DeepPatent2 per-figure JSON (a JSON array, an object of arrays, or JSON Lines) with
  ``patentID`` (``USD0836880-20190101``), ``patentdate``, ``figid``, ``caption``, ``object``, ``aspect``,
  ``object_title``, ``figure_file``, ``subfigure_file``. It has no Locarno class: one is joined from a user table.
* ``deeppatent`` -- DeepPatent (v1) split lists, lines ``<relative path> <label>``; the label identifies the patent.
* ``csv`` -- a CSV with an image path column and a class column (PatentCLIP's ``full_path``, ``cat``), names
  configurable, optional id/date/title/view/caption columns.
* ``uspto`` -- the USPTO's own design grants: grant XML and TIFF drawing sheets, in folders, per-patent zips or
  weekly bulk archives; sheets are cut into figures (:mod:`.uspto`).

Drawings get their captions from the templates (:mod:`.captions`) in the shard workers, unless the input has
captions of its own (a CSV caption column) or a captions file is joined.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from .manifest import Drawing, PatentRecord, Problem

__all__ = ["FORMATS", "LOCARNO_CLASSES", "normalize_locarno", "canonical_patent_key", "LocarnoTable",
           "ClassNames", "ImportOptions", "import_deeppatent2", "import_deeppatent", "import_csv", "import_records"]

#: Input formats of ``patentclip-shards build --format``.
FORMATS = ("manifest", "deeppatent2", "deeppatent", "csv", "uspto")

#: The 32 Locarno classes (and 99), 13th edition headings, lower case: the fallback class names.
LOCARNO_CLASSES = {
    "01": "foodstuffs", "02": "articles of clothing and haberdashery",
    "03": "travel goods, cases, parasols and personal belongings", "04": "brushware",
    "05": "textile piecegoods, artificial and natural sheet material", "06": "furnishing",
    "07": "household goods", "08": "tools and hardware",
    "09": "packages and containers for the transport or handling of goods",
    "10": "clocks and watches and other measuring, checking and signalling instruments",
    "11": "articles of adornment", "12": "means of transport or hoisting",
    "13": "equipment for production, distribution or transformation of electricity",
    "14": "recording, telecommunication or data processing equipment", "15": "machines",
    "16": "photographic, cinematographic and optical apparatus", "17": "musical instruments",
    "18": "printing and office machinery", "19": "stationery and office equipment, artists' and teaching materials",
    "20": "sales and advertising equipment, signs", "21": "games, toys, tents and sports goods",
    "22": "arms, pyrotechnic articles, articles for hunting, fishing and pest killing",
    "23": "fluid distribution, sanitary, heating, ventilation and air-conditioning equipment",
    "24": "medical and laboratory equipment", "25": "building units and construction elements",
    "26": "lighting apparatus", "27": "tobacco and smokers' supplies",
    "28": "pharmaceutical and cosmetic products, toilet articles and apparatus",
    "29": "devices and equipment against fire hazards, for accident prevention and for rescue",
    "30": "articles for the care and handling of animals",
    "31": "machines and appliances for preparing food or drink",
    "32": "graphic symbols and logos, surface patterns, ornamentation", "99": "miscellaneous",
}

_ID_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# a US design patent number: D + 6-7 digits after zero padding (USD0836880, D836880); "D00001" (a drawing sheet)
# is not one
_DESIGN_NO = re.compile(r"(?<![A-Za-z0-9])(?:US)?D0*([1-9]\d{5,6})(?![0-9])(?:-(\d{8})(?![0-9]))?", re.IGNORECASE)


def normalize_locarno(value: Any) -> Optional[str]:
    """A Locarno code as ``CC-SS``: ``07-01``, ``0701``, ``7-1``, ``07.01``, ``LOC (13) Cl. 07-01`` all give
    ``07-01``; a main class alone (``07``) gives ``07-00``. None when the value is not a code."""
    if value is None:
        return None
    s = str(value).strip().upper()
    s = re.sub(r"^(LOC\s*(\(\d+\))?\s*(CL\.?)?|CL\.?|D)\s*", "", s).strip()
    m = re.fullmatch(r"(\d{1,2})\s*[-./_ ]\s*(\d{1,2})", s)
    if m:
        return f"{int(m.group(1)):02d}-{int(m.group(2)):02d}"
    m = re.fullmatch(r"(\d{2})(\d{2})", s)
    if m:
        return f"{m.group(1)}-{m.group(2)}"
    m = re.fullmatch(r"(\d{1,2})", s)
    if m:
        return f"{int(m.group(1)):02d}-00"
    return None


def canonical_patent_key(value: Any) -> str:
    """A patent number in one spelling, for joining tables: upper case, no ``US`` prefix, no leading zeros, no
    ``-YYYYMMDD`` date or kind-code suffix: ``USD0836880-20190101``, ``D836,880 S``, ``D0836880`` -> ``D836880``."""
    s = re.sub(r"[\s,]", "", str(value)).upper()
    m = re.fullmatch(r"(?:US)?([A-Z]{0,2}?)0*(\d+)(?:-\d{8})?(?:-?[A-Z]\d?)?", s)
    if m:
        return f"{m.group(1)}{int(m.group(2))}"
    return s


def _parse_date(value: Any) -> Optional[str]:
    if value is None:
        return None
    s = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            return _dt.datetime.strptime(s[:10] if fmt == "%Y-%m-%d" else s, fmt).date().isoformat()
        except ValueError:
            pass
    return None


def _patent_id_from(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(patent id ``USD0836880``, ISO date or None) of the design patent number in a file name or id such as
    ``USD0836880-20190101-D00001.png``; (None, None) when there is none."""
    m = _DESIGN_NO.search(text)
    if not m:
        return None, None
    return f"USD{m.group(1).zfill(7)}", _parse_date(m.group(2)) if m.group(2) else None


def _patent_id_from_path(path: str) -> Tuple[Optional[str], Optional[str]]:
    """The patent number in an image path: in the file name, else in the nearest folder name that has one."""
    parts = re.split(r"[/\\]", path)
    for part in reversed(parts):
        found = _patent_id_from(part)
        if found[0]:
            return found
    return None, None


def _read_text_lines(path) -> Iterator[Tuple[int, str, Optional[str]]]:
    """(line number, text, problem) per line; bad UTF-8 is replaced by U+FFFD and named in ``problem``."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8"), None
            except UnicodeDecodeError as exc:
                yield lineno, raw.decode("utf-8", errors="replace"), f"not valid UTF-8 ({exc.reason} at byte " \
                                                                     f"{exc.start}); bad bytes replaced by U+FFFD"


# --------------------------------------------------------------------------------------------------------------
# Tables: patent -> Locarno class, class code -> name
# --------------------------------------------------------------------------------------------------------------


def _table_rows(path, columns: Sequence[Optional[str]]) -> Iterator[Tuple[int, List[Any], Optional[str]]]:
    """Rows of a small table (CSV/TSV with a header, JSON object ``{key: value}``, JSON list of objects or JSON
    Lines): yields (line or item number, [values of ``columns``], problem)."""
    text = Path(path).read_bytes().decode("utf-8-sig", errors="replace")
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            data = json.loads(text)
            items: Iterable = data.items() if isinstance(data, dict) else enumerate(data, start=1)
            for i, (k, v) in enumerate(items, start=1):
                if isinstance(v, dict):
                    yield i, [v.get(c) for c in columns], None
                elif isinstance(data, dict):
                    yield i, [k, v] + [None] * (len(columns) - 2), None
                else:
                    yield i, [None] * len(columns), f"item {i} is not an object"
            return
        except json.JSONDecodeError:
            pass  # JSON Lines
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                v = json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, [None] * len(columns), f"invalid JSON: {exc.msg}"
                continue
            yield lineno, ([v.get(c) for c in columns] if isinstance(v, dict) else [None] * len(columns)), \
                None if isinstance(v, dict) else "not a JSON object"
        return
    first = text.splitlines()[0] if text.strip() else ""
    dialect = "excel-tab" if "\t" in first else "excel"
    reader = csv.reader(io.StringIO(text), dialect=dialect)
    header = next(reader, [])
    norm = [h.strip() for h in header]
    idx = []
    for pos, c in enumerate(columns):
        if c is None:
            idx.append(pos if pos < len(norm) else None)
        elif c in norm:
            idx.append(norm.index(c))
        else:
            raise ValueError(f"{path}: no column {c!r} (columns: {', '.join(norm)})")
    for lineno, row in enumerate(reader, start=2):
        if not any(x.strip() for x in row):
            continue
        yield lineno, [row[i].strip() if i is not None and i < len(row) else None for i in idx], None


class ClassNames:
    """Class code -> name: a user table (``--class-names``: code,name), then names given with the codes (the
    Locarno table's name column, a CSV's class-name column), then ``<main class heading> (CC-SS)`` from
    :data:`LOCARNO_CLASSES`."""

    def __init__(self, names: Optional[Dict[str, str]] = None):
        self.user = dict(names or {})
        self.given: Dict[str, str] = {}

    @classmethod
    def load(cls, path) -> "ClassNames":
        names = {}
        for line, (code, name), problem in _table_rows(path, [None, None]):
            c = normalize_locarno(code)
            if problem or not c or not name or not str(name).strip():
                raise ValueError(f"{path}: line {line}: expected a Locarno code and a name, got {code!r}, {name!r}")
            names[c] = str(name).strip()
        return cls(names)

    def by_name(self, name: str) -> Optional[str]:
        """The code of a class given by its name (user names first, then the Locarno headings)."""
        low = name.strip().lower()
        for c, n in list(self.user.items()) + list(self.given.items()):
            if n.lower() == low:
                return c
        for main, n in LOCARNO_CLASSES.items():
            if n == low:
                return f"{main}-00"
        return None

    def name(self, code: str) -> str:
        if code in self.user:
            return self.user[code]
        if code in self.given:
            return self.given[code]
        heading = LOCARNO_CLASSES.get(code[:2], "unknown class")
        return heading if code.endswith("-00") else f"{heading} ({code})"


@dataclass
class LocarnoTable:
    """Patent number -> Locarno class (``--locarno-table``: CSV/TSV with a header, JSON object or JSON Lines).

    Columns: ``patent_id`` and ``class`` (configurable), an optional ``class_name``. Patent numbers are matched
    exactly and then in :func:`canonical_patent_key` spelling. Bad rows and contradicting duplicates are listed in
    ``problems`` (the first row wins)."""

    classes: Dict[str, str] = field(default_factory=dict)
    names: Dict[str, str] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    path: str = ""

    @classmethod
    def load(cls, path, id_column: str = "patent_id", class_column: str = "class",
             name_column: Optional[str] = "class_name") -> "LocarnoTable":
        t = cls(path=str(path))
        text = Path(path).read_bytes()[:4096].decode("utf-8", errors="replace").lstrip()
        is_json = text.startswith("{") or text.startswith("[")
        cols = [id_column, class_column] + ([name_column] if name_column else [])
        if not is_json:
            first = text.splitlines()[0] if text.strip() else ""
            header = next(csv.reader(io.StringIO(first), dialect="excel-tab" if "\t" in first else "excel"), [])
            if name_column and name_column not in [h.strip() for h in header]:
                cols = cols[:2]
        for line, vals, problem in _table_rows(path, cols):
            pid, raw_code = vals[0], vals[1]
            name = vals[2] if len(vals) > 2 else None
            if problem or pid in (None, "") or raw_code in (None, ""):
                t.problems.append(f"{path}: line {line}: {problem or 'missing patent id or class'}")
                continue
            code = normalize_locarno(raw_code)
            if code is None:
                t.problems.append(f"{path}: line {line}: patent {pid}: {raw_code!r} is not a Locarno class code")
                continue
            for key in dict.fromkeys((str(pid).strip(), canonical_patent_key(pid))):
                if key in t.classes and t.classes[key] != code:
                    t.problems.append(f"{path}: line {line}: patent {pid} is in class {code} here but "
                                      f"{t.classes[key]} earlier; the first is kept")
                    break
                t.classes.setdefault(key, code)
            if name and str(name).strip():
                t.names.setdefault(code, str(name).strip())
        return t

    def lookup(self, *ids: Optional[str]) -> Optional[str]:
        for i in ids:
            if i and i in self.classes:
                return self.classes[i]
        for i in ids:
            if i and canonical_patent_key(i) in self.classes:
                return self.classes[canonical_patent_key(i)]
        return None


@dataclass
class ImportOptions:
    """Options shared by the importers (CLI flags of the same names)."""

    images_root: Optional[str] = None
    locarno_table: Optional[str] = None
    locarno_id_column: str = "patent_id"
    locarno_class_column: str = "class"
    class_names: Optional[str] = None
    missing_class: str = "skip"  # or "other": class 99-00 "miscellaneous"
    default_date: Optional[str] = None
    image_field: str = "subfigure"  # deeppatent2: subfigure_file, falling back to figure_file; or "figure"
    # csv
    path_column: str = "full_path"
    class_column: str = "cat"
    id_column: Optional[str] = None
    date_column: Optional[str] = None
    title_column: Optional[str] = None
    view_column: Optional[str] = None
    caption_column: Optional[str] = None
    class_name_column: Optional[str] = None
    delimiter: Optional[str] = None
    # uspto (shards/uspto): figures, sheets or both; read figure labels with OCR; segmentation processes;
    # segmentation cache folder (None: the default, "none": no cache); progress bar
    uspto_images: str = "figures"
    ocr: bool = True
    workers: int = 1
    segment_cache: Optional[str] = None
    progress: bool = False

    def __post_init__(self):
        if self.missing_class not in ("skip", "other"):
            raise ValueError("missing_class must be 'skip' or 'other'")
        if self.image_field not in ("subfigure", "figure"):
            raise ValueError("image_field must be 'subfigure' or 'figure'")
        if self.default_date is not None and _parse_date(self.default_date) is None:
            raise ValueError(f"default date {self.default_date!r} is not a date (YYYY-MM-DD)")


class _Collector:
    """Groups drawings into patents and turns them into PatentRecords with problems."""

    def __init__(self, opts: ImportOptions, source: str, root: Path):
        self.opts = opts
        self.source = source
        self.root = root
        self.problems: List[Problem] = []
        self.patents: Dict[str, Dict[str, Any]] = {}
        self.table = LocarnoTable.load(opts.locarno_table, opts.locarno_id_column, opts.locarno_class_column) \
            if opts.locarno_table else None
        self.names = ClassNames.load(opts.class_names) if opts.class_names else ClassNames()
        if self.table:
            for c, n in self.table.names.items():
                self.names.given.setdefault(c, n)
        self._basename_index: Optional[Dict[str, str]] = None
        self.rows = 0

    def problem(self, line: int, pid: Optional[str], kind: str, scope: str, msg: str, **kw) -> None:
        self.problems.append(Problem(line, pid, f"{self.source} line {line}: {msg}", kind, scope, source=self.source,
                                     **kw))

    def resolve(self, rel: str) -> Optional[str]:
        """The image's path relative to the root (or absolute) if the file exists, else None. Files not at
        ``root/rel`` are looked up by name anywhere under the root (an index built once); a name that occurs more
        than once there is not resolved."""
        p = Path(rel)
        full = p if p.is_absolute() else self.root / p
        if full.is_file():
            return str(rel)
        if self._basename_index is None:
            self._basename_index = {}
            for dirpath, _, files in os.walk(self.root):
                for f in files:
                    rel_f = os.path.relpath(os.path.join(dirpath, f), self.root)
                    # a name found twice is ambiguous (D00001.png in every patent folder): not resolved by name
                    self._basename_index[f] = None if f in self._basename_index else rel_f
        return self._basename_index.get(p.name)

    def add(self, line: int, pid: str, *, date: Optional[str], code: Optional[str], title: Optional[str],
            obj: Optional[str], path: str, view: str, captions: Tuple[str, ...], extra: Dict[str, Any],
            order: Tuple = (), class_name: Optional[str] = None) -> None:
        p = self.patents.get(pid)
        if p is None:
            p = self.patents[pid] = {"line": line, "date": date, "code": code, "title": title, "object": obj,
                                     "class_name": class_name, "drawings": [], "paths": set(),
                                     "source": self.source}
        else:
            if date and p["date"] and date != p["date"]:
                self.problem(line, pid, "conflicting_date", "repair", f"patent {pid}: date {date} here but "
                             f"{p['date']} on line {p['line']}; the first is kept")
            if code and p["code"] and code != p["code"]:
                self.problem(line, pid, "conflicting_class", "repair", f"patent {pid}: class {code} here but "
                             f"{p['code']} on line {p['line']}; the first is kept")
            for k, v in (("date", date), ("code", code), ("title", title), ("object", obj), ("class_name", class_name)):
                if not p[k] and v:
                    p[k] = v
        if path in p["paths"]:
            self.problem(line, pid, "duplicate_drawing", "drawing", f"patent {pid}: image {path!r} listed twice "
                         "(duplicate key); the first is kept", path=path)
            return
        p["paths"].add(path)
        p["drawings"].append((order, line, path, view, captions, {**extra, "_line": line}))

    def records(self) -> List[PatentRecord]:
        out: List[PatentRecord] = []
        for pid, p in self.patents.items():
            line = p["line"]
            self.source = p["source"]
            if not _ID_OK.match(pid):
                self.problem(line, pid, "bad_patent_id", "record", f"patent id {pid!r} has characters other than "
                             "letters, digits, '_' and '-' (it becomes the sample key); skipped")
                continue
            date = p["date"]
            if date is None and self.opts.default_date:
                date = _parse_date(self.opts.default_date)
                self.problem(line, pid, "date_defaulted", "repair", f"patent {pid}: no grant date; "
                             f"--default-date {date} used")
            if date is None:
                self.problem(line, pid, "missing_date", "record", f"patent {pid}: no grant date (give a date "
                             "column/field or --default-date); skipped")
                continue
            code = p["code"]
            if code is None and self.table is not None:
                code = self.table.lookup(pid)
            if code is None:
                if self.opts.missing_class == "other":
                    code = "99-00"
                    self.problem(line, pid, "class_defaulted", "repair", f"patent {pid}: no Locarno class; put in "
                                 "99-00 (--missing-class other)")
                else:
                    where = f"in {self.table.path}" if self.table else "(no --locarno-table given)"
                    self.problem(line, pid, "unknown_class", "record", f"patent {pid}: no Locarno class {where}; "
                                 "skipped")
                    continue
            if p["class_name"]:
                self.names.given.setdefault(code, p["class_name"])
            drawings = []
            ordered = sorted(p["drawings"], key=lambda d: d[0]) if any(d[0] for d in p["drawings"]) else p["drawings"]
            for order, dline, rel, view, captions, extra in ordered:
                found = self.resolve(rel)
                if found is None:
                    self.problem(dline, pid, "missing_file", "drawing", f"patent {pid}: image {rel!r}: file not found "
                                 f"under {self.root}", path=rel)
                    continue
                if found != rel:
                    extra = {**extra, "_input_path": rel}  # a captions file may name the image as the input did
                drawings.append(Drawing(len(drawings), found, view or "unspecified", tuple(captions), extra))
            if not drawings:
                self.problem(line, pid, "no_drawings", "record", f"patent {pid}: no usable drawings; skipped")
                continue
            title = p["title"] or (f"Ornamental design for {_a(p['object'])}" if p["object"] else f"Design {pid}")
            extra: Dict[str, Any] = {"_source": p["source"]}
            if not p["title"] and not p["object"]:
                extra["_title_generated"] = True  # "Design <id>" says nothing: not used in caption templates
            if p["object"]:
                extra["object"] = p["object"]
            out.append(PatentRecord(line, pid, date, code, self.names.name(code), title, drawings, self.root, extra))
        if self.table:
            for msg in self.table.problems:
                self.problems.append(Problem(0, None, msg, "class_table", "note", source=self.table.path))
        return out


def _a(noun: str) -> str:
    from .captions import article

    return article(noun)


def _view(aspect: Any) -> str:
    if not isinstance(aspect, str) or not aspect.strip():
        return "unspecified"
    v = re.sub(r"\bviews?\b", "", aspect.lower())
    v = re.sub(r"[^a-z0-9 -]+", " ", v)
    return re.sub(r"\s+", " ", v).strip() or "unspecified"


def _figkey(figid: Any) -> Tuple:
    s = str(figid if figid is not None else "")
    m = re.match(r"\D*(\d+)(.*)", s)
    return (int(m.group(1)), m.group(2)) if m else (1 << 30, s)


# --------------------------------------------------------------------------------------------------------------
# DeepPatent2
# --------------------------------------------------------------------------------------------------------------


def _dp2_items(path) -> Iterator[Tuple[int, Any, Optional[str]]]:
    """(record number or line, record, problem) of a DeepPatent2 JSON file (array, object of arrays, JSON Lines)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", errors="replace").lstrip()
    if head.startswith("["):
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8", errors="replace"))
        except json.JSONDecodeError as exc:
            yield exc.lineno, None, f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}; the file " \
                                    "could not be read"
            return
        for i, rec in enumerate(data, start=1):
            yield i, rec, None
        return
    if head.startswith("{"):
        try:
            data = json.loads(Path(path).read_bytes().decode("utf-8", errors="replace"))
        except json.JSONDecodeError:
            data = None  # JSON Lines
        if isinstance(data, dict):
            if "patentID" in data:
                yield 1, data, None
                return
            i = 0
            for v in data.values():
                for rec in (v if isinstance(v, list) else [v]):
                    i += 1
                    yield i, rec, None
            return
    for lineno, text, problem in _read_text_lines(path):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield lineno, None, f"invalid JSON: {exc.msg} at column {exc.colno}"
            continue
        yield lineno, rec, problem


def import_deeppatent2(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """DeepPatent2 figure records -> patents (grouped by ``patentID``), drawings in figure order."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    problems: List[Problem] = []
    col = _Collector(opts, Path(paths[0]).name, root)
    for path in paths:
        col.source = Path(path).name
        for n, rec, problem in _dp2_items(path):
            col.rows += 1
            if rec is None:
                col.problem(n, None, "invalid_json", "record", problem)
                continue
            if problem:
                col.problem(n, None, "invalid_utf8", "repair", problem)
            if not isinstance(rec, dict):
                col.problem(n, None, "schema", "record", f"a figure record must be a JSON object, got "
                            f"{type(rec).__name__}")
                continue
            raw_id = rec.get("patentID") or rec.get("patent_id")
            if not isinstance(raw_id, str) or not raw_id.strip():
                col.problem(n, None, "schema", "record", "no 'patentID'; figure skipped")
                continue
            pid, id_date = _patent_id_from(raw_id)
            pid = pid or raw_id.strip().split("-")[0]
            date = _parse_date(rec.get("patentdate")) or id_date
            if rec.get("patentdate") and _parse_date(rec.get("patentdate")) is None:
                col.problem(n, pid, "bad_date", "repair", f"patent {pid}: patentdate {rec.get('patentdate')!r} is "
                            f"not a date; {'the date in the patentID is used' if id_date else 'ignored'}")
            sub, whole = rec.get("subfigure_file"), rec.get("figure_file")
            fig = (sub or whole) if opts.image_field == "subfigure" else (whole or sub)
            if not isinstance(fig, str) or not fig.strip():
                col.problem(n, pid, "schema", "drawing", f"patent {pid}: no 'figure_file'/'subfigure_file'; figure "
                            "skipped")
                continue
            code = None
            for k in ("locarno", "class", "locarno_class"):
                if rec.get(k):
                    code = normalize_locarno(rec[k])
            caption = rec.get("caption") if isinstance(rec.get("caption"), str) else rec.get("description")
            obj = rec.get("object") if isinstance(rec.get("object"), str) and rec.get("object").strip() else None
            extra = {k: rec[k] for k in ("figid", "aspect") if rec.get(k) not in (None, "")}
            if isinstance(caption, str) and caption.strip():
                extra["caption"] = caption.strip()
            if obj:
                extra["object"] = obj.strip()
            extra["source_id"] = raw_id.strip()
            title = rec.get("object_title") if isinstance(rec.get("object_title"), str) else None
            col.add(n, pid, date=date, code=code, title=title.strip() if title and title.strip() else None,
                    obj=obj.strip() if obj else None, path=fig.strip(), view=_view(rec.get("aspect")), captions=(),
                    extra=extra, order=(_figkey(rec.get("figid")), fig.strip()))
    records = col.records()
    problems.extend(col.problems)
    return records, problems, {"rows_read": col.rows, "patents_read": len(col.patents)}


# --------------------------------------------------------------------------------------------------------------
# DeepPatent (v1)
# --------------------------------------------------------------------------------------------------------------


def import_deeppatent(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """DeepPatent split lists (``<relative path> <label>`` per line) -> patents (one per label)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    col = _Collector(opts, Path(paths[0]).name, root)
    labels: Dict[str, str] = {}
    for path in paths:
        col.source = Path(path).name
        for lineno, text, problem in _read_text_lines(path):
            if not text.strip():
                continue
            col.rows += 1
            if problem:
                col.problem(lineno, None, "invalid_utf8", "repair", problem)
            parts = text.strip().rsplit(None, 1)
            if len(parts) != 2:
                col.problem(lineno, None, "bad_line", "record", f"expected '<relative path> <label>', got "
                            f"{text.strip()[:80]!r}")
                continue
            rel, label = parts
            found_id, date = _patent_id_from(Path(rel).name)
            pid = found_id or re.sub(r"[^A-Za-z0-9_-]", "_", f"DP-{label}")
            if label in labels and labels[label] != pid:
                col.problem(lineno, pid, "label_conflict", "repair", f"label {label} is patent {labels[label]} on an "
                            f"earlier line but this file name says {pid}; grouped under {labels[label]}")
                pid = labels[label]
            labels.setdefault(label, pid)
            col.add(lineno, pid, date=date, code=None, title=None, obj=None, path=rel, view="unspecified",
                    captions=(), extra={"label": label})
    records = col.records()
    return records, col.problems, {"rows_read": col.rows, "patents_read": len(col.patents)}


# --------------------------------------------------------------------------------------------------------------
# CSV (PatentCLIP classification scripts: full_path, cat)
# --------------------------------------------------------------------------------------------------------------


def import_csv(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """One drawing per row; the patent from ``--id-column`` or else the patent number in the image path."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    col = _Collector(opts, Path(paths[0]).name, root)
    for path in paths:
        col.source = Path(path).name
        raw = Path(path).read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            text = raw.decode("utf-8-sig", errors="replace")
            col.problem(1, None, "invalid_utf8", "repair", f"file is not valid UTF-8 ({exc.reason} at byte "
                        f"{exc.start}); bad bytes replaced by U+FFFD")
        delim = opts.delimiter or ("\t" if "\t" in text.split("\n", 1)[0] else ",")
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
        header = [h.strip() for h in next(reader, [])]
        wanted = {"path": opts.path_column, "class": opts.class_column, "id": opts.id_column,
                  "date": opts.date_column, "title": opts.title_column, "view": opts.view_column,
                  "caption": opts.caption_column, "class_name": opts.class_name_column}
        missing = [c for c in wanted.values() if c and c not in header]
        if missing:
            raise ValueError(f"{path}: column(s) {missing} not in the header ({', '.join(header)}); set them with "
                             "--path-column/--class-column/...")
        pos = {k: header.index(c) for k, c in wanted.items() if c}
        for row in reader:
            lineno = reader.line_num
            if not any(x.strip() for x in row):
                continue
            col.rows += 1
            if len(row) != len(header):
                col.problem(lineno, None, "bad_line", "record", f"{len(row)} fields, the header has {len(header)}; "
                            "row skipped")
                continue
            get = {k: (row[i].strip() or None) for k, i in pos.items()}
            rel = get.get("path")
            if not rel:
                col.problem(lineno, None, "schema", "record", f"empty {opts.path_column!r}; row skipped")
                continue
            pid, date = (get["id"], None) if get.get("id") else _patent_id_from_path(rel)
            if not pid:
                pid = re.sub(r"[^A-Za-z0-9_-]", "_", Path(rel).stem)
            if get.get("date"):
                d = _parse_date(get["date"])
                if d is None:
                    col.problem(lineno, pid, "bad_date", "record", f"patent {pid}: date {get['date']!r} is not a date; "
                                "row skipped")
                    continue
                date = d
            code = None
            raw_cls = get.get("class")
            if raw_cls:
                code = normalize_locarno(raw_cls) or col.names.by_name(raw_cls)
                if code is None:
                    col.problem(lineno, pid, "unknown_class", "record", f"patent {pid}: class {raw_cls!r} is neither "
                                "a Locarno code nor a known class name (give --class-names); row skipped")
                    continue
                if code and get.get("class_name"):
                    col.names.given.setdefault(code, get["class_name"])
                elif code and not normalize_locarno(raw_cls):
                    col.names.given.setdefault(code, raw_cls)
            captions = (get["caption"],) if get.get("caption") else ()
            col.add(lineno, pid, date=date, code=code, title=get.get("title"), obj=None, path=rel,
                    view=_view(get.get("view")) if get.get("view") else "unspecified", captions=captions, extra={},
                    class_name=get.get("class_name"))
    records = col.records()
    return records, col.problems, {"rows_read": col.rows, "patents_read": len(col.patents)}


def _import_uspto(paths, opts: ImportOptions):
    """``--format uspto`` (:mod:`.uspto.importer`), loaded when used: it brings scipy and the OCR along."""
    from .uspto.importer import import_uspto

    return import_uspto(paths, opts)


def import_records(input_format: str, paths, opts: Optional[ImportOptions] = None):
    """Dispatch to the importer of ``input_format``; ``manifest`` reads the project's own manifest."""
    opts = opts or ImportOptions()
    if input_format == "manifest":
        from .manifest import read_manifest

        paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        if len(paths) != 1:
            raise ValueError("--format manifest takes exactly one manifest file")
        records, problems = read_manifest(paths[0])
        rows = sum(1 for p in problems if p.scope == "record") + len(records)
        return records, problems, {"rows_read": rows, "patents_read": rows}
    fn = {"deeppatent2": import_deeppatent2, "deeppatent": import_deeppatent, "csv": import_csv,
          "uspto": _import_uspto}.get(input_format)
    if fn is None:
        raise ValueError(f"unknown input format {input_format!r} ({', '.join(FORMATS)})")
    return fn(paths, opts)
