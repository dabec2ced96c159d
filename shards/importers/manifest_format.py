"""``--format manifest`` (the default): the project's own manifest, one JSON line per patent (docs/manifest.md)."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

from ..manifest import PatentRecord, Problem, read_manifest
from .common import ImportOptions
from .registry import IMPORTERS


@IMPORTERS.register("manifest")
def import_manifest(paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if len(paths) != 1:
        raise ValueError("--format manifest takes exactly one manifest file")
    records, problems = read_manifest(paths[0], allowed_roots=opts.allowed_roots)
    rows = sum(1 for p in problems if p.scope == "record") + len(records)
    return records, problems, {"rows_read": rows, "patents_read": rows}
