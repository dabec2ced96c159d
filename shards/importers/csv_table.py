"""``--format csv``: a CSV with an image path column and a class column (PatentCLIP's ``full_path``, ``cat``),
names configurable, optional id/date/title/view/caption columns. Details in docs/importers.md.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..manifest import PatentRecord, Problem
from .common import (Collector, ImportOptions, normalize_locarno, parse_date, parse_locarno, patent_id_from_path,
                     present, view_name)
from .registry import IMPORTERS


@IMPORTERS.register("csv")
def import_csv(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """One drawing per row; the patent from ``--id-column`` or else the patent number in the image path."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    col = Collector(opts, Path(paths[0]).name, root)
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
            get = {k: present(row[i]) for k, i in pos.items()}  # empty or NULL: missing
            rel = get.get("path")
            if not rel:
                col.problem(lineno, None, "schema", "record", f"empty {opts.path_column!r}; row skipped")
                continue
            pid, date = (get["id"], None) if get.get("id") else patent_id_from_path(rel)
            if not pid:
                pid = re.sub(r"[^A-Za-z0-9_-]", "_", Path(rel).stem)
            if get.get("date"):
                d = parse_date(get["date"])
                if d is None:
                    col.problem(lineno, pid, "bad_date", "record", f"patent {pid}: date {get['date']!r} is not a date; "
                                "row skipped")
                    continue
                date = d
            code = None
            raw_cls = get.get("class")
            if raw_cls:
                code, why = parse_locarno(raw_cls)
                code = code or col.names.by_name(raw_cls)
                if code is None and re.search(r"\d", raw_cls):  # code-like: out of range, or a US class
                    col.problem(lineno, pid, "not_locarno", "record", f"patent {pid}: class {why}; row skipped")
                    continue
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
                    view=view_name(get.get("view")) if get.get("view") else "unspecified", captions=captions, extra={},
                    class_name=get.get("class_name"))
    records = col.records()
    return records, col.problems, {"rows_read": col.rows, "patents_read": len(col.patents)}
