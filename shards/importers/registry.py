"""The importer registry: ``--format NAME`` -> a function ``(paths, opts) -> (records, problems, stats)``.

The contract (:class:`Importer`): given the input paths (files or folders, as the user typed them) and the
shared :class:`~.common.ImportOptions`, return the :class:`~patentclip.shards.manifest.PatentRecord` s it could
make, one :class:`~patentclip.shards.manifest.Problem` per thing it skipped or repaired (file, line or member,
and what was kept), and counters for the build report (at least ``rows_read`` and ``patents_read``). One builder
path serves every format. A new input format is one new module in this package that registers itself
(docs/extending.md):

    @IMPORTERS.register("myformat")
    def import_myformat(paths, opts): ...
"""
from __future__ import annotations

from typing import Dict, List, Protocol, Sequence, Tuple

from patentclip.plugins.registry import Registry

from ..manifest import PatentRecord, Problem
from .common import ImportOptions

IMPORTERS = Registry("input format")


class Importer(Protocol):
    def __call__(self, paths: Sequence, opts: ImportOptions) -> Tuple[List[PatentRecord], List[Problem], Dict]:
        ...
