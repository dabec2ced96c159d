"""``--format deeppatent2``: DeepPatent2 per-figure JSON (a JSON array, an object of arrays, or JSON Lines).

Fields used: ``patentID`` (``USD0836880-20190101``), ``patentdate``, ``figid``, ``caption``, ``object``,
``aspect``, ``object_title``, ``figure_file``, ``subfigure_file``. DeepPatent2 has no Locarno class: one is
joined from a user table (``--locarno-table``). Details in docs/importers.md.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..manifest import PatentRecord, Problem
from .common import (Collector, ImportOptions, figure_order, parse_date, parse_locarno, patent_id_from, present,
                     read_text_lines, view_name)
from .registry import IMPORTERS


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
    for lineno, text, problem in read_text_lines(path):
        if not text.strip():
            continue
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as exc:
            yield lineno, None, f"invalid JSON: {exc.msg} at column {exc.colno}"
            continue
        yield lineno, rec, problem


@IMPORTERS.register("deeppatent2")
def import_deeppatent2(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """DeepPatent2 figure records -> patents (grouped by ``patentID``), drawings in figure order."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    problems: List[Problem] = []
    col = Collector(opts, Path(paths[0]).name, root)
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
            pid, id_date = patent_id_from(raw_id)
            pid = pid or raw_id.strip().split("-")[0]
            raw_date = present(rec.get("patentdate")) if isinstance(rec.get("patentdate"), str) else rec.get("patentdate")
            date = parse_date(raw_date) or id_date
            if raw_date and parse_date(raw_date) is None:
                col.problem(n, pid, "bad_date", "repair", f"patent {pid}: patentdate {rec.get('patentdate')!r} is "
                            f"not a date; {'the date in the patentID is used' if id_date else 'ignored'}")
            sub, whole = present(rec.get("subfigure_file")), present(rec.get("figure_file"))
            fig = (sub or whole) if opts.image_field == "subfigure" else (whole or sub)
            if not isinstance(fig, str) or not fig.strip():
                col.problem(n, pid, "schema", "drawing", f"patent {pid}: no 'figure_file'/'subfigure_file'; figure "
                            "skipped")
                continue
            code = None
            for k in ("locarno", "class", "locarno_class"):
                raw_code = rec.get(k)
                if raw_code in (None, "") or (isinstance(raw_code, str) and present(raw_code) is None):
                    continue
                code, why = parse_locarno(raw_code)
                if code is None:
                    col.problem(n, pid, "not_locarno", "repair", f"patent {pid}: {k!r}: {why}; ignored"
                                + (" (the --locarno-table is looked up)" if opts.locarno_table else ""))
            # the producer's database writes a missing value as the string NULL
            caption = present(rec.get("caption")) or present(rec.get("description"))
            obj = present(rec.get("object"))
            aspect = present(rec.get("aspect"))
            extra = {k: v for k, v in (("figid", rec.get("figid")), ("aspect", aspect)) if v not in (None, "")}
            if caption:
                extra["caption"] = caption
            if obj:
                extra["object"] = obj
            extra["source_id"] = raw_id.strip()
            col.add(n, pid, date=date, code=code, title=present(rec.get("object_title")), obj=obj, path=fig,
                    view=view_name(aspect), captions=(), extra=extra, order=(figure_order(rec.get("figid")), fig))
    records = col.records()
    problems.extend(col.problems)
    return records, problems, {"rows_read": col.rows, "patents_read": len(col.patents)}
