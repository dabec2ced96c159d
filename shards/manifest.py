"""Reading, validating and writing patentclip manifests.

A manifest is a JSON Lines file with one design patent per line::

    {"patent_id": "USD0836880", "grant_date": "2019-01-01", "class": "07-01",
     "class_name": "cups and mugs", "title": "Ornamental design for a cup",
     "drawings": [{"path": "USD0836880/D00001.png", "view": "perspective",
                   "captions": ["A perspective view of ..."]}, ...]}

Drawing paths are relative to the folder containing the manifest.  The full format,
including every validation rule, is documented in ``docs/manifest.md``; the JSON Schema
(draft 2020-12) ships as ``manifest.schema.json`` next to this module.

:func:`read_manifest` never raises on bad data: every bad line or drawing is reported as
a :class:`Problem` (1-based line number, patent id when known, clear reason) and skipped,
and the good records are returned.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping

from .records import (DRAWING_PROBLEM_KINDS, RECORD_PROBLEM_KINDS, REPAIR_KINDS, Drawing, PatentRecord, Problem,
                      outside_roots)

#: The manifest's names; the record types and problem kinds are :mod:`.records`'.
__all__ = [
    "MANIFEST_FILENAME",
    "SCHEMA_PATH",
    "Drawing",
    "PatentRecord",
    "Problem",
    "load_schema",
    "validate_record",
    "read_manifest",
    "write_manifest",
    "RECORD_PROBLEM_KINDS",
    "DRAWING_PROBLEM_KINDS",
    "REPAIR_KINDS",
    "outside_roots",
]

#: Default file name of a manifest inside its data folder.
MANIFEST_FILENAME = "manifest.jsonl"
#: The JSON Schema (draft 2020-12) of one manifest line.
SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")

# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return SCHEMA_PATH.read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """Return (a fresh copy of) the manifest-line JSON Schema."""
    return json.loads(_schema_text())


@lru_cache(maxsize=1)
def _validator():
    import jsonschema

    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # No format checker: grant_date is checked explicitly (clearer "bad_date" problems).
    return jsonschema.Draft202012Validator(schema)


def _where(path: Iterable[Any]) -> str:
    parts = list(path)
    if not parts:
        return "record"
    if parts[0] == "drawings" and len(parts) >= 2 and isinstance(parts[1], int):
        s = f"drawing {parts[1] + 1}"
        rest = parts[2:]
        if rest[:1] == ["captions"] and len(rest) >= 2 and isinstance(rest[1], int):
            return f"{s} caption {rest[1] + 1}"
        return s + (" " + ".".join(str(p) for p in rest) if rest else "")
    return "field " + ".".join(f"'{p}'" if isinstance(p, str) else f"[{p}]" for p in parts)


def _describe(err) -> str:
    """Turn a jsonschema ValidationError into a short, readable sentence."""
    where = _where(err.absolute_path)
    if err.validator == "pattern":
        if err.validator_value == "\\S":
            msg = "must not be blank"
        else:
            desc = err.schema.get("description")
            msg = f"{err.instance!r} is not valid" + (f" ({desc})" if desc else f" (must match {err.validator_value})")
    elif err.validator == "type" and not list(err.absolute_path):
        msg = f"a manifest line must be a JSON object, got {type(err.instance).__name__}"
    elif err.validator == "minItems" and list(err.absolute_path)[-1:] == ["drawings"]:
        msg = "at least one drawing is required"
    elif err.validator == "minItems" and list(err.absolute_path)[-1:] == ["captions"]:
        msg = "at least one caption is required"
    else:
        msg = err.message
    return f"{where}: {msg}"


_NONBLANK = re.compile(r"\S")


@lru_cache(maxsize=1)
def _patterns() -> dict[str, "re.Pattern[str]"]:
    """The schema's own patterns (so the fast path below cannot drift from the schema)."""
    sch = load_schema()
    props, dprops = sch["properties"], sch["$defs"]["drawing"]["properties"]
    return {k: re.compile(props[k]["pattern"]) for k in ("patent_id", "grant_date", "class")} | {
        "path": re.compile(dprops["path"]["pattern"])}


def _text(v: Any) -> bool:
    return isinstance(v, str) and bool(v) and _NONBLANK.search(v) is not None


def _quick_valid(obj: Any) -> bool:
    """True only if ``obj`` satisfies every rule of manifest.schema.json (a fast path for the common case: the
    schema validator costs milliseconds per record, too slow for a million). False means "ask the validator"."""
    if not isinstance(obj, dict):
        return False
    pat = _patterns()
    for k in ("patent_id", "grant_date", "class"):
        v = obj.get(k)
        if not (isinstance(v, str) and pat[k].search(v)):
            return False
    drawings = obj.get("drawings")
    if not (_text(obj.get("class_name")) and _text(obj.get("title"))):
        return False
    if "object" in obj and not (isinstance(obj["object"], str) and obj["object"]):
        return False
    if not (isinstance(drawings, list) and drawings):
        return False
    for d in drawings:
        if not isinstance(d, dict):
            return False
        path, caps = d.get("path"), d.get("captions")
        if not (isinstance(path, str) and path and pat["path"].search(path)):
            return False
        if "view" in d and not (isinstance(d["view"], str) and d["view"]):
            return False
        if not (isinstance(caps, list) and caps and all(_text(c) for c in caps)):
            return False
    return True


def validate_record(obj: Any) -> list[str]:
    """Schema-check one parsed manifest line; return readable messages (empty if valid)."""
    if _quick_valid(obj):
        return []
    errors = sorted(_validator().iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    return [_describe(e) for e in errors]


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


def read_manifest(path: str | os.PathLike, *, check_files: bool = True,
                  allowed_roots: Iterable[str | os.PathLike] = ()) -> tuple[list[PatentRecord], list[Problem]]:
    """Read and validate a manifest; bad records are skipped and reported, never raised.

    Each non-blank line is checked in this order (the first failing record-level check
    skips the line with one :class:`Problem` of scope ``"record"``):

    1. UTF-8 decoding (a line that is not valid UTF-8 is repaired: bad bytes become U+FFFD,
       reported as ``invalid_utf8`` with scope ``"repair"``) and JSON parsing (``invalid_json``),
    2. the JSON Schema ``manifest.schema.json`` (``schema``; all violations of the line
       are listed in one reason),
    3. ``patent_id`` not used by an earlier accepted line (``duplicate_id``),
    4. ``grant_date`` is a real calendar date (``bad_date``),
    5. the class code has the same ``class_name`` as on earlier lines
       (``class_name_conflict``).

    Then every drawing is checked: a path listed twice in the record
    (``duplicate_drawing``) and, with ``check_files``, an image file that does not exist
    (``missing_file``) or that resolves, through a symlink, outside the manifest's folder and
    ``allowed_roots`` (``outside_root``) skip just that drawing (scope ``"drawing"``).  A record left
    without drawings is skipped as well (``no_drawings``).  Blank lines are ignored.

    Args:
        path: the manifest file; drawing paths are resolved against its folder.
        check_files: check that every drawing's file exists (and lies inside the allowed folders).
        allowed_roots: folders besides the manifest's own that drawings may resolve into.

    Returns:
        ``(records, problems)``: the accepted records in file order, and every problem
        found, in file order.

    Raises:
        FileNotFoundError / OSError: only if the manifest itself cannot be opened.
    """
    path = Path(path)
    root = path.parent
    roots = [root, *allowed_roots]
    records: list[PatentRecord] = []
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    class_names: dict[str, tuple[str, int]] = {}

    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            encoding_problem = None
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                # repaired: bad bytes become U+FFFD; a damaged id, date, class or path then fails its own check
                text = raw.decode("utf-8", errors="replace")
                encoding_problem = (f"line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start}); bad bytes "
                                    "replaced by U+FFFD")
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as exc:
                problems.append(Problem(lineno, None, f"line {lineno}: invalid JSON: {exc.msg} at column {exc.colno}",
                                        "invalid_json"))
                continue
            pid = obj.get("patent_id") if isinstance(obj, dict) else None
            pid = pid if isinstance(pid, str) else None
            if encoding_problem:
                problems.append(Problem(lineno, pid, encoding_problem, "invalid_utf8", "repair"))

            messages = validate_record(obj)
            if messages:
                shown = "; ".join(messages[:5]) + (f"; ... ({len(messages) - 5} more)" if len(messages) > 5 else "")
                problems.append(Problem(lineno, pid, f"line {lineno}: schema violation: {shown}", "schema"))
                continue
            if pid in seen_ids:
                problems.append(Problem(lineno, pid, f"line {lineno}: duplicate patent_id '{pid}' "
                                        f"(first seen on line {seen_ids[pid]})", "duplicate_id"))
                continue
            try:
                _dt.date.fromisoformat(obj["grant_date"])
            except ValueError:
                problems.append(Problem(lineno, pid, f"line {lineno}: grant_date '{obj['grant_date']}' is not a valid "
                                        "calendar date", "bad_date"))
                continue
            code, name = obj["class"], obj["class_name"]
            if code in class_names and class_names[code][0] != name:
                first_name, first_line = class_names[code]
                problems.append(Problem(lineno, pid, f"line {lineno}: class '{code}' is named '{name}' here but "
                                        f"'{first_name}' on line {first_line}", "class_name_conflict"))
                continue
            seen_ids[pid] = lineno
            class_names.setdefault(code, (name, lineno))

            drawings: list[Drawing] = []
            seen_paths: set[str] = set()
            for idx, d in enumerate(obj["drawings"]):
                rel = d["path"]
                if rel in seen_paths:
                    problems.append(Problem(lineno, pid, f"line {lineno}: drawing {idx + 1} '{rel}': listed twice "
                                            "in this record", "duplicate_drawing", "drawing", idx + 1, rel))
                    continue
                seen_paths.add(rel)
                if check_files:
                    full = root / rel
                    if not full.exists():
                        problems.append(Problem(lineno, pid, f"line {lineno}: drawing {idx + 1} '{rel}': file not found",
                                                "missing_file", "drawing", idx + 1, rel))
                        continue
                    if not full.is_file():
                        problems.append(Problem(lineno, pid, f"line {lineno}: drawing {idx + 1} '{rel}': not a regular "
                                                "file", "missing_file", "drawing", idx + 1, rel))
                        continue
                    real = outside_roots(full, roots)
                    if real is not None:
                        problems.append(Problem(lineno, pid, f"line {lineno}: drawing {idx + 1} '{rel}': resolves to "
                                                f"{real}, outside the manifest's folder (a symlink?); refused "
                                                "(--allow-root DIR admits another folder)", "outside_root", "drawing",
                                                idx + 1, rel))
                        continue
                extra = {k: v for k, v in d.items() if k not in ("path", "view", "captions")}
                drawings.append(Drawing(idx, rel, d.get("view", "unspecified"), tuple(d["captions"]), extra))
            if not drawings:
                n = len(obj["drawings"])
                problems.append(Problem(lineno, pid, f"line {lineno}: no usable drawings (all {n} drawing"
                                        f"{'s' if n != 1 else ''} skipped)", "no_drawings"))
                continue
            extra = {k: v for k, v in obj.items()
                     if k not in ("patent_id", "grant_date", "class", "class_name", "title", "drawings")}
            records.append(PatentRecord(lineno, pid, obj["grant_date"], code, name, obj["title"], drawings, root, extra))
    return records, problems


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def write_manifest(path: str | os.PathLike, records: Iterable[Mapping[str, Any] | PatentRecord]) -> Path:
    """Write records (dicts in manifest form, or :class:`PatentRecord`) as JSON Lines.

    The output is deterministic: keys keep their insertion order, UTF-8 without ASCII
    escaping, ``\\n`` line endings.  The file is written to a temporary name and renamed
    into place.  Returns the path.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            obj = rec.to_dict() if isinstance(rec, PatentRecord) else rec
            fh.write(json.dumps(obj, ensure_ascii=False))
            fh.write("\n")
    os.replace(tmp, path)
    return path
