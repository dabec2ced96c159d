"""What every importer shares: Locarno codes and class names, patent ids and dates, table reading, the
importer options, and the collector that groups drawings into :class:`PatentRecord` s with problems.

One concern (the vocabulary every importer is written in) in about 520 lines: an importer, ours or a user's
(docs/extending.md), takes what it needs from here in one import, and the Locarno rules, the class-name tables and
the collector build on each other."""
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

from ..captions import article
from ..manifest import Drawing, PatentRecord, Problem, outside_roots

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


#: Locarno edition whose subclasses :data:`LOCARNO_SUBCLASSES` lists.
LOCARNO_EDITION = 14
#: Class -> its highest numbered subclass in LOC (14) (2023). Every class also has subclass 99 (miscellaneous),
#: except 31 and 32, which have no subclasses (only ``31-00``, ``32-00``). A code ``CC-00`` names a main class.
#: Vacant subclasses (e.g. 03-02) are accepted: older editions used them. Class 99 is not Locarno's: it is this
#: project's "miscellaneous" for records without a class (``--missing-class other``: ``99-00`` only).
LOCARNO_SUBCLASSES = {
    "01": 6, "02": 7, "03": 5, "04": 4, "05": 6, "06": 13, "07": 10, "08": 11, "09": 10, "10": 7, "11": 5,
    "12": 17, "13": 3, "14": 6, "15": 10, "16": 6, "17": 5, "18": 4, "19": 8, "20": 3, "21": 4, "22": 6, "23": 9,
    "24": 4, "25": 4, "26": 6, "27": 7, "28": 5, "29": 2, "30": 15, "31": 0, "32": 0,
}
#: A US national design class written as the USPTO does (``D15/86``, ``D 8/403``, ``D15 86``): "D", the class
#: number 1-99, a subclass. Never a Locarno code (Locarno codes carry no "D").
_USPC_DESIGN = re.compile(r"D\s*\d{1,2}\s*([-/.,_ ]\s*)?\d{1,4}[A-Z]?")


def parse_locarno(value: Any) -> Tuple[Optional[str], Optional[str]]:
    """(``CC-SS`` code, None) for a Locarno code, or (None, why it is not one).

    Spellings: ``07-01``, ``0701``, ``7-1``, ``07.01``, ``LOC (14) Cl. 07-01`` give ``07-01``; a main class alone
    (``07``) gives ``07-00``. Refused: classes outside 01-32, subclasses the class does not have in LOC (14)
    (:data:`LOCARNO_SUBCLASSES`), and US national design classes (``D15/86``, ``D 8403``: a ``D`` prefix, which
    Locarno codes never have), whose digits would otherwise read as a wrong Locarno code (15-86, 84-03)."""
    if value is None:
        return None, "no class"
    raw = str(value).strip()
    s = raw.upper()
    if not s or s in MISSING_VALUES:
        return None, "no class"
    if _USPC_DESIGN.fullmatch(s):
        return None, (f"{raw!r} looks like a US national design class (USPC D<class>/<subclass>), not a Locarno "
                      f"code")
    s = re.sub(r"^(LOC\s*(\(\d+\))?\s*(CL\.?)?|CL\.?)\s*", "", s).strip()
    m = (re.fullmatch(r"(\d{1,2})\s*[-./_ ]\s*(\d{1,2})", s) or re.fullmatch(r"(\d{2})(\d{2})", s)
         or re.fullmatch(r"(\d{1,2})()", s))
    if not m:
        return None, f"{raw!r} is not a Locarno class code"
    cls, sub = int(m.group(1)), int(m.group(2) or 0)
    code = f"{cls:02d}-{sub:02d}"
    if code == "99-00":
        return code, None
    top = LOCARNO_SUBCLASSES.get(f"{cls:02d}")
    if top is None:
        return None, f"{raw!r}: Locarno classes are 01-32, there is no class {cls:02d}"
    if not (sub == 0 or (top > 0 and (sub == 99 or 1 <= sub <= top))):
        have = f"{cls:02d}-01 to {cls:02d}-{top:02d} and {cls:02d}-99" if top else f"only {cls:02d}-00"
        return None, f"{raw!r}: Locarno class {cls:02d} has no subclass {sub:02d} (LOC ({LOCARNO_EDITION}): {have})"
    return code, None


def normalize_locarno(value: Any) -> Optional[str]:
    """The ``CC-SS`` code of a Locarno code, None when the value is not one (:func:`parse_locarno` says why)."""
    return parse_locarno(value)[0]


#: Values that mean "no value" in the source tables (DeepPatent2's producer writes the string ``NULL``).
MISSING_VALUES = frozenset({"NULL"})


def present(value: Any) -> Optional[str]:
    """A field's text, stripped, or None when it is absent, not text, empty or a missing-value marker
    (:data:`MISSING_VALUES`, compared in upper case: ``NULL``, ``null``)."""
    if not isinstance(value, str):
        return None
    s = value.strip()
    return s if s and s.upper() not in MISSING_VALUES else None


def canonical_patent_key(value: Any) -> str:
    """A patent number in one spelling, for joining tables: upper case, no ``US`` prefix, no leading zeros, no
    ``-YYYYMMDD`` date or kind-code suffix: ``USD0836880-20190101``, ``D836,880 S``, ``D0836880`` -> ``D836880``."""
    s = re.sub(r"[\s,]", "", str(value)).upper()
    m = re.fullmatch(r"(?:US)?([A-Z]{0,2}?)0*(\d+)(?:-\d{8})?(?:-?[A-Z]\d?)?", s)
    if m:
        return f"{m.group(1)}{int(m.group(2))}"
    return s


def parse_date(value: Any) -> Optional[str]:
    if value is None:
        return None
    s = str(value).strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            return _dt.datetime.strptime(s[:10] if fmt == "%Y-%m-%d" else s, fmt).date().isoformat()
        except ValueError:
            pass
    return None


def patent_id_from(text: str) -> Tuple[Optional[str], Optional[str]]:
    """(patent id ``USD0836880``, ISO date or None) of the design patent number in a file name or id such as
    ``USD0836880-20190101-D00001.png``; (None, None) when there is none."""
    m = _DESIGN_NO.search(text)
    if not m:
        return None, None
    return f"USD{m.group(1).zfill(7)}", parse_date(m.group(2)) if m.group(2) else None


def patent_id_from_path(path: str) -> Tuple[Optional[str], Optional[str]]:
    """The patent number in an image path: in the file name, else in the nearest folder name that has one."""
    parts = re.split(r"[/\\]", path)
    for part in reversed(parts):
        found = patent_id_from(part)
        if found[0]:
            return found
    return None, None


def read_text_lines(path) -> Iterator[Tuple[int, str, Optional[str]]]:
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


def table_rows(path, columns: Sequence[Optional[str]]) -> Iterator[Tuple[int, List[Any], Optional[str]]]:
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
        for line, (code, name), problem in table_rows(path, [None, None]):
            c, why = parse_locarno(code)
            if problem or not c or not name or not str(name).strip():
                raise ValueError(f"{path}: line {line}: expected a Locarno code and a name, got {code!r}, {name!r}"
                                 + (f" ({why})" if code and why else ""))
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
        for line, vals, problem in table_rows(path, cols):
            pid, raw_code = present(str(vals[0]) if vals[0] is not None else None), vals[1]
            name = vals[2] if len(vals) > 2 else None
            if problem or pid is None or present(str(raw_code) if raw_code is not None else None) is None:
                t.problems.append(f"{path}: line {line}: {problem or 'missing patent id or class'}")
                continue
            code, why = parse_locarno(raw_code)
            if code is None:
                t.problems.append(f"{path}: line {line}: patent {pid}: {why}; row skipped")
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
    allowed_roots: Tuple[str, ...] = ()  # folders besides the input's (or images_root) that images may be in
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
        if self.default_date is not None and parse_date(self.default_date) is None:
            raise ValueError(f"default date {self.default_date!r} is not a date (YYYY-MM-DD)")


class OutsideRoot(Exception):
    """An image path that resolves outside the allowed folders (the message is where it really is)."""


class Collector:
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

    def resolve(self, rel: str) -> Tuple[Optional[str], str]:
        """(the image's path relative to the root, or absolute, if the file exists, else None; why not). Files not
        at ``root/rel`` are looked up by name anywhere under the root (an index built once); a name that occurs
        more than once there is not resolved. A path the operating system refuses (a name longer than the file
        system allows, an invalid byte) is reported for its row, not raised. A file that resolves outside the
        root and ``allowed_roots`` (a symlink, an absolute path elsewhere) raises :class:`OutsideRoot`."""
        p = Path(rel)
        full = p if p.is_absolute() else self.root / p
        try:
            is_file = full.is_file()
        except (OSError, ValueError) as exc:
            return None, f"the path cannot be used ({getattr(exc, 'strerror', None) or exc})"
        if is_file:
            found = str(rel)
        else:
            if self._basename_index is None:
                self._basename_index = {}
                for dirpath, _, files in os.walk(self.root):
                    for f in files:
                        rel_f = os.path.relpath(os.path.join(dirpath, f), self.root)
                        # a name found twice is ambiguous (D00001.png in every patent folder): not resolved by name
                        self._basename_index[f] = None if f in self._basename_index else rel_f
            found = self._basename_index.get(p.name)
            if found is None:
                return None, f"file not found under {self.root}"
            full = self.root / found
        real = outside_roots(full, [self.root, *self.opts.allowed_roots])
        if real is not None:
            raise OutsideRoot(real)
        return found, ""

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
                date = parse_date(self.opts.default_date)
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
                try:
                    found, why = self.resolve(rel)
                except OutsideRoot as real:
                    self.problem(dline, pid, "outside_root", "drawing", f"patent {pid}: image {rel!r} resolves to "
                                 f"{real}, outside {self.root} (a symlink?); refused (--allow-root DIR admits "
                                 f"another folder)", path=rel)
                    continue
                if found is None:
                    shown = rel if len(rel) <= 200 else f"{rel[:120]}...{rel[-60:]} ({len(rel)} characters)"
                    self.problem(dline, pid, "missing_file", "drawing", f"patent {pid}: image {shown!r}: {why}; "
                                 "drawing skipped", path=rel)
                    continue
                if found != rel:
                    extra = {**extra, "_input_path": rel}  # a captions file may name the image as the input did
                drawings.append(Drawing(len(drawings), found, view or "unspecified", tuple(captions), extra))
            if not drawings:
                self.problem(line, pid, "no_drawings", "record", f"patent {pid}: no usable drawings; skipped")
                continue
            title = p["title"] or (f"Ornamental design for {article(p['object'])}" if p["object"] else f"Design {pid}")
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


def view_name(aspect: Any) -> str:
    if not isinstance(aspect, str) or not aspect.strip():
        return "unspecified"
    v = re.sub(r"\bviews?\b", "", aspect.lower())
    v = re.sub(r"[^a-z0-9 -]+", " ", v)
    return re.sub(r"\s+", " ", v).strip() or "unspecified"


def figure_order(figid: Any) -> Tuple:
    s = str(figid if figid is not None else "")
    m = re.match(r"\D*(\d+)(.*)", s)
    return (int(m.group(1)), m.group(2)) if m else (1 << 30, s)
