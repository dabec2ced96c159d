"""The records every input becomes and the problems found on the way: :class:`PatentRecord` and its
:class:`Drawing` s (the manifest's fields, docs/manifest.md), :class:`Problem` (where, what, which scope: record,
drawing, repair, note) with its kinds, and the rule that keeps drawings inside the allowed folders
(:func:`outside_roots`). The manifest reader (:mod:`.manifest`), the importers and the shard builder share them."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping


#: Problem kinds that cause a whole record (line) to be skipped.
RECORD_PROBLEM_KINDS = (
    "invalid_json",  # the line is not parseable JSON
    "schema",  # JSON Schema violation (missing field, wrong type, bad pattern, ...)
    "duplicate_id",  # patent_id already used by an earlier accepted line
    "bad_date",  # grant_date is not a real calendar date
    "class_name_conflict",  # same class code, different class name than an earlier line
    "no_drawings",  # every drawing of the record was skipped
)
#: Problem kinds that cause a single drawing to be skipped (the record is kept).
DRAWING_PROBLEM_KINDS = (
    "duplicate_drawing",  # the same path listed twice in one record
    "missing_file",  # the image file does not exist
    "outside_root",  # the path resolves (through a symlink) outside the allowed folders
    "unreadable_image",  # the file exists but cannot be decoded (found by the shard builder)
    "empty_image",  # the file is empty (found by the shard builder)
    "image_too_large",  # more pixels than the builder decodes (found by the shard builder)
    "no_caption",  # no caption left after cleaning and no template applies (found by the shard builder)
)
#: Problem kinds of things repaired and kept (scope "repair").
REPAIR_KINDS = (
    "invalid_utf8",  # bad bytes replaced by U+FFFD
    "caption_control_chars",  # control characters removed from a caption
    "caption_truncated",  # a caption longer than the limit was cut at a word boundary
    "caption_empty",  # an empty caption was dropped (others are left)
    "caption_provenance_dropped",  # a captions-file line's provenance list was malformed (its captions are kept)
)


@dataclass(frozen=True)
class Problem:
    """One issue found in a manifest (or while reading an image during a build).

    Attributes:
        line: 1-based line number in the manifest.
        patent_id: the record's patent id, or ``None`` when it could not be determined.
        reason: complete human-readable description, starting with ``"line N: "``, e.g.
            ``"line 17: drawing 2 'USD0001/D00002.png': file not found"``.
        kind: machine-readable category, one of :data:`RECORD_PROBLEM_KINDS` or
            :data:`DRAWING_PROBLEM_KINDS`.
        scope: ``"record"`` (the whole line was skipped), ``"drawing"`` (one drawing was
            skipped, the rest of the record is kept), ``"repair"`` (something was repaired and
            kept, e.g. bad UTF-8 bytes replaced, a caption cut) or ``"note"`` (a problem in an
            auxiliary input such as a class table or a captions file).
        drawing: 1-based drawing number within the record for drawing problems.
        path: the drawing's path as written in the manifest, for drawing problems.
        source: the input file's name, for the importers' problems.
    """

    line: int
    patent_id: str | None
    reason: str
    kind: str
    scope: str = "record"
    drawing: int | None = None
    path: str | None = None
    source: str | None = None

    def __str__(self) -> str:
        return self.reason

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"line": self.line, "patent_id": self.patent_id, "kind": self.kind,
                             "scope": self.scope}
        if self.drawing is not None:
            d["drawing"] = self.drawing
        if self.path is not None:
            d["path"] = self.path
        if self.source is not None:
            d["source"] = self.source
        d["reason"] = self.reason
        return d


@dataclass(frozen=True)
class Drawing:
    """One drawing of a patent.

    Attributes:
        index: 0-based position in the record's ``drawings`` list as written in the
            manifest (kept even when earlier drawings were skipped).
        path: path relative to the manifest folder, as written in the manifest.
        view: view name, ``"unspecified"`` when the manifest has none.
        captions: one or more captions; the first is the default training text.
        extra: any other fields of the drawing object.
    """

    index: int
    path: str
    view: str
    captions: tuple[str, ...]
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def number(self) -> int:
        """1-based drawing number (as used in problem messages)."""
        return self.index + 1

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "view": self.view, "captions": list(self.captions), **self.extra}


@dataclass
class PatentRecord:
    """A validated manifest record.

    ``class`` is a Python keyword, hence ``class_code``.  ``extra`` holds the optional
    fields not defined by the format (e.g. ``"object"``), in manifest order.
    """

    line: int
    patent_id: str
    grant_date: str
    class_code: str
    class_name: str
    title: str
    drawings: list[Drawing]
    root: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def object(self) -> str | None:
        """The optional object noun (``"object"`` field), if present."""
        value = self.extra.get("object")
        return value if isinstance(value, str) else None

    def image_path(self, drawing: Drawing) -> Path:
        """Absolute location of ``drawing``'s image file."""
        return self.root / drawing.path

    def image_source(self, drawing: Drawing, opts: Any = None) -> Any:
        """What the shard builder decodes for ``drawing``: its file (:meth:`image_path`). Importers whose
        drawings are not files of their own (figures cut from USPTO drawing sheets) return a PIL image made for
        the image options ``opts`` instead."""
        return self.image_path(drawing)

    def to_dict(self) -> dict[str, Any]:
        """The record as a manifest line object (only the drawings that were kept)."""
        d: dict[str, Any] = {
            "patent_id": self.patent_id,
            "grant_date": self.grant_date,
            "class": self.class_code,
            "class_name": self.class_name,
            "title": self.title,
        }
        d.update(self.extra)
        d["drawings"] = [dr.to_dict() for dr in self.drawings]
        return d


def outside_roots(path: Path, roots: Iterable[str | os.PathLike]) -> str | None:
    """Where ``path`` really is, if that is outside every one of ``roots`` (None: inside one of them).

    Symlinks are resolved on both sides, so a link inside the data folder that points elsewhere (``/etc``, another
    user's files) is refused, while a data folder that is itself reached through a symlink is fine. The builder
    packs only images inside the manifest's folder (or the importers' ``--images-root``) and the folders given with
    ``--allow-root``."""
    real = Path(os.path.realpath(path))
    for root in roots:
        r = Path(os.path.realpath(root))
        if real == r or r in real.parents:
            return None
    return str(real)
