"""Captions: templates over a drawing's fields, captions joined from a JSON Lines file, and cleaning.

Where a drawing's captions come from (docs/importers.md, "Captions"):

1. A **captions file** (``--captions FILE``), JSON Lines ``{"key": ..., "captions": [...]}``, e.g. captions an LLM
   wrote offline (both seed papers do this; ``patentclip-caption`` writes them). ``key`` is the drawing's sample
   key ``<patent_id>_<NN>``, its image path exactly as the input names it, or a patent number in any spelling
   (all the patent's drawings). ``--captions-join`` says what happens to the drawing's own captions: ``replace``
   (default: only the file's), ``prepend`` (the file's first) or ``append``. An optional ``"provenance"`` list, one object per caption (``patentclip-caption`` writes engine,
   model, instruction version and seed), goes into the shards as ``caption_provenance``, aligned with
   ``captions`` (``null`` for a drawing's own captions); other fields of the line are ignored.
2. Otherwise the drawing's own captions: the manifest's, or, for the importers, **templates** (``{title}``,
   ``{object}``, ``{a_object}``, ``{view}``, ``{class_name}``, ``{class_code}``, ``{caption}``, ``{patent_id}``);
   a template is used for a drawing only when every field it names is known. Several templates give several
   captions per drawing; the trainer draws one per use.

Every caption is cleaned the same way: control characters removed (reported), whitespace runs made one space,
captions longer than ``max_chars`` cut at a word boundary (reported), empty ones dropped (reported), exact
duplicates dropped. Text that was not valid UTF-8 has had its bad bytes replaced by U+FFFD when it was read
(reported where it was read).

The captions file is not loaded into memory: :class:`CaptionIndex` keeps the byte offset of each key's line and
the shard workers read the lines they need.
"""
from __future__ import annotations

import json
import re
import string
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

#: Fields a template may name.
TEMPLATE_FIELDS = ("title", "object", "a_object", "view", "class_name", "class_code", "caption", "patent_id")

#: Default templates, in order (the first one that applies becomes the shard's ``txt``).
DEFAULT_TEMPLATES: Tuple[str, ...] = (
    "A {view} view of {a_object}, a design in the class {class_name}.",
    "{title}, {view} view.",
    "Line drawing of {a_object} shown in {view} view.",
    "This is a design patent drawing of {a_object}, classified as {class_name}.",
    "The ornamental design of {a_object}.",
    "{title}.",
    "A design patent drawing in Locarno class {class_code}, {class_name}.",
    "{caption}",
)

DEFAULT_MAX_CHARS = 1000
JOIN_MODES = ("replace", "prepend", "append")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b\u2028\u2029\ufeff]")
_SPACE = re.compile(r"\s+")


def article(noun: str) -> str:
    """``noun`` with "a"/"an" in front (by its first letter)."""
    noun = noun.strip()
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def parse_templates(lines: Iterable[str], source: str = "templates",
                    fields: Optional[Sequence[str]] = TEMPLATE_FIELDS) -> Tuple[str, ...]:
    """Check templates: each must name only ``fields`` (:data:`TEMPLATE_FIELDS`; ``None``: any name, for patterns
    a language model fills in); returns them as a tuple. Raises ValueError."""
    out = []
    for i, t in enumerate(lines, start=1):
        if not isinstance(t, str) or not t.strip():
            continue
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as exc:
            raise ValueError(f"{source}: template {i} {t!r}: {exc}") from None
        bad = [n for n in names if fields is not None and n not in fields]
        if bad:
            raise ValueError(f"{source}: template {i} {t!r} names unknown field(s) {bad}; known: "
                             f"{', '.join(fields)}")
        out.append(t.strip())
    if not out:
        raise ValueError(f"{source}: no templates")
    return tuple(out)


def load_templates(path, fields: Optional[Sequence[str]] = TEMPLATE_FIELDS) -> Tuple[str, ...]:
    """Templates from a file: a JSON list of strings, or text with one template per line (``#`` comments)."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return parse_templates(json.loads(text), str(path), fields)
    return parse_templates([ln for ln in text.splitlines() if not ln.lstrip().startswith("#")], str(path), fields)


def template_fields(*, title=None, obj=None, view=None, class_name=None, class_code=None, caption=None,
                    patent_id=None) -> Dict[str, str]:
    """The known (non-empty) template fields of a drawing."""
    f = {"title": title, "object": obj, "view": None if view in (None, "", "unspecified") else view,
         "class_name": class_name, "class_code": class_code, "caption": caption, "patent_id": patent_id}
    f = {k: _SPACE.sub(" ", str(v)).strip() for k, v in f.items() if v is not None and str(v).strip()}
    if "title" in f:
        f["title"] = f["title"].rstrip(".")
    if "object" in f:
        f["a_object"] = article(f["object"])
    return f


def drawing_fields(record, drawing) -> Dict[str, str]:
    """The known template fields of a drawing of a :class:`~patentclip.shards.manifest.PatentRecord` (a generated
    title, ``Design DP-17``, is not a title; the drawing's own ``object`` wins over the record's)."""
    return template_fields(title=None if record.extra.get("_title_generated") else record.title,
                           obj=drawing.extra.get("object") or record.object, view=drawing.view,
                           class_name=record.class_name, class_code=record.class_code,
                           caption=drawing.extra.get("caption"), patent_id=record.patent_id)


def render_templates(templates: Sequence[str], fields: Mapping[str, str]) -> List[str]:
    """The captions of the templates whose fields are all known, first letter upper-case, duplicates dropped."""
    out: List[str] = []
    for t in templates:
        names = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        if any(n not in fields for n in names):
            continue
        c = _SPACE.sub(" ", t.format(**{n: fields[n] for n in names})).strip()
        c = c[:1].upper() + c[1:]
        if c and c not in out:
            out.append(c)
    return out


def clean_captions(captions: Iterable[str], max_chars: int = DEFAULT_MAX_CHARS) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Clean captions (module docstring). Returns ``(captions, repairs)``, repairs as ``(kind, detail)`` with kind
    ``caption_control_chars``, ``caption_truncated`` or ``caption_empty``."""
    out, repairs, _ = clean_captions_traced(captions, max_chars)
    return out, repairs


def clean_captions_traced(captions: Iterable[str], max_chars: int = DEFAULT_MAX_CHARS
                          ) -> Tuple[List[str], List[Tuple[str, str]], List[int]]:
    """:func:`clean_captions`, and for each caption kept the 0-based position of the input it came from (so that
    what travels with a caption, e.g. its provenance, stays with it)."""
    out: List[str] = []
    repairs: List[Tuple[str, str]] = []
    sources: List[int] = []
    for i, c in enumerate(captions, start=1):
        if not isinstance(c, str):
            repairs.append(("caption_empty", f"caption {i} is not a string ({type(c).__name__}); dropped"))
            continue
        c = unicodedata.normalize("NFC", c)
        if _CONTROL.search(c):
            n = len(_CONTROL.findall(c))
            c = _CONTROL.sub(" ", c)
            repairs.append(("caption_control_chars", f"caption {i}: {n} control character(s) removed"))
        c = _SPACE.sub(" ", c).strip()
        if not c:
            repairs.append(("caption_empty", f"caption {i} is empty; dropped"))
            continue
        if max_chars and len(c) > max_chars:
            n = len(c)
            cut = c[:max_chars]
            sp = cut.rfind(" ")
            c = (cut[:sp] if sp > max_chars // 2 else cut).rstrip()
            repairs.append(("caption_truncated", f"caption {i}: {n} characters cut to {len(c)}"))
        if c not in out:
            out.append(c)
            sources.append(i - 1)
    return out, repairs, sources


class CaptionIndex:
    """Byte offsets of the lines of a captions file (JSON Lines ``{"key": str, "captions": [str, ...]}``).

    ``problems`` lists bad lines (``(line, kind, reason)``): not UTF-8 (repaired: bad bytes replaced),
    invalid JSON, not an object with a string ``key`` and a list ``captions``, a key seen before (the first wins).
    """

    def __init__(self, path):
        self.path = str(path)
        self.offsets: Dict[str, int] = {}
        self.lines: Dict[str, int] = {}
        self.problems: List[Tuple[int, str, str]] = []
        self.lines_read = 0
        with open(self.path, "rb") as f:
            offset = 0
            for lineno, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                self.lines_read += 1
                obj, problem = _parse_caption_line(raw, lineno)
                if problem and problem[1] != "invalid_utf8":
                    self.problems.append(problem)
                    continue
                if problem:
                    self.problems.append(problem)
                key = obj["key"]
                if key in self.offsets:
                    self.problems.append((lineno, "duplicate_key", f"captions line {lineno}: key {key!r} already on "
                                                                   f"line {self.lines[key]}; this line is ignored"))
                    continue
                self.offsets[key] = start
                self.lines[key] = lineno

    def __contains__(self, key) -> bool:
        return key in self.offsets

    def __len__(self) -> int:
        return len(self.offsets)


def _parse_caption_line(raw: bytes, lineno: int):
    problem = None
    try:
        text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        problem = (lineno, "invalid_utf8", f"captions line {lineno}: not valid UTF-8 ({exc.reason} at byte "
                                           f"{exc.start}); bad bytes replaced by U+FFFD")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, (lineno, "invalid_json", f"captions line {lineno}: invalid JSON: {exc.msg} at column {exc.colno}")
    if not (isinstance(obj, dict) and isinstance(obj.get("key"), str) and isinstance(obj.get("captions"), list)):
        return None, (lineno, "bad_caption_line", f"captions line {lineno}: expected {{\"key\": str, \"captions\": "
                                                  f"[str, ...]}}")
    return obj, problem


class CaptionReader:
    """Reads captions by offset (used in the shard workers)."""

    def __init__(self, path: str):
        self.f = open(path, "rb")

    def read(self, offset: int) -> List[str]:
        return list(self.read_line(offset).get("captions") or [])

    def read_line(self, offset: int) -> Dict:
        """The whole line at ``offset`` (``{"key", "captions", ...}``; ``{}`` when it is not a caption line)."""
        self.f.seek(offset)
        raw = self.f.readline()
        obj, _ = _parse_caption_line(raw, 2)
        return obj or {}

    def close(self):
        self.f.close()


def line_provenance(line: Mapping) -> Tuple[Optional[List], Optional[str]]:
    """The ``provenance`` list of a captions-file line, aligned with its ``captions``: ``(list, None)``, ``(None,
    None)`` when the line has none, ``(None, reason)`` when it is malformed (not a list of one object or null per
    caption)."""
    prov = line.get("provenance")
    if prov is None:
        return None, None
    caps = line.get("captions") or []
    if not (isinstance(prov, list) and len(prov) == len(caps) and all(p is None or isinstance(p, dict) for p in prov)):
        return None, (f"provenance is not a list of {len(caps)} objects (one per caption); ignored")
    return list(prov), None


def join_captions(own: Sequence[str], joined: Optional[Sequence[str]], mode: str) -> List[str]:
    """The drawing's captions given its own and the captions file's (``None`` when the file has none for it)."""
    if joined is None:
        return list(own)
    if mode == "replace":
        return list(joined)
    if mode == "prepend":
        return list(joined) + list(own)
    if mode == "append":
        return list(own) + list(joined)
    raise ValueError(f"unknown captions join mode {mode!r} ({', '.join(JOIN_MODES)})")
