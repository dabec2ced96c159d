"""``--format deeppatent``: DeepPatent (v1) split lists, lines ``<relative path> <label>``; the label
identifies the patent. Details in docs/importers.md.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..manifest import PatentRecord, Problem
from .common import Collector, ImportOptions, patent_id_from, read_text_lines
from .registry import IMPORTERS


@IMPORTERS.register("deeppatent")
def import_deeppatent(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    """DeepPatent split lists (``<relative path> <label>`` per line) -> patents (one per label)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    root = Path(opts.images_root or Path(paths[0]).parent)
    col = Collector(opts, Path(paths[0]).name, root)
    labels: Dict[str, str] = {}
    for path in paths:
        col.source = Path(path).name
        for lineno, text, problem in read_text_lines(path):
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
            found_id, date = patent_id_from(Path(rel).name)
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
