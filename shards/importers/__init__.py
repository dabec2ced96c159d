"""Importers: patent-drawing formats -> the manifest's in-memory records (:class:`PatentRecord`).

One module per input format, each registered in :data:`IMPORTERS` under its ``--format`` name (the contract is
in :mod:`.registry`); :func:`import_records` dispatches. Formats (docs/importers.md has details and examples):

* ``manifest`` -- the project's own manifest (docs/manifest.md).
* ``deeppatent2`` -- DeepPatent2 per-figure JSON; Locarno classes joined from a user table.
* ``deeppatent`` -- DeepPatent (v1) split lists, lines ``<relative path> <label>``.
* ``csv`` -- a CSV with an image path column and a class column (PatentCLIP's ``full_path``, ``cat``).
* ``uspto`` -- the USPTO's own design grants: grant XML and TIFF drawing sheets, in folders, per-patent zips or
  weekly bulk archives; sheets cut into figures (the package :mod:`patentclip.shards.uspto`, registered here).

Drawings get their captions from the templates (:mod:`patentclip.shards.captions`) in the shard workers, unless
the input has captions of its own (a CSV caption column) or a captions file is joined.
"""
from __future__ import annotations

from typing import Optional

from ..uspto import importer as uspto_importer
from . import csv_table, deeppatent, deeppatent2, manifest_format
from .common import LOCARNO_CLASSES, ClassNames, ImportOptions, LocarnoTable, canonical_patent_key, normalize_locarno
from .csv_table import import_csv
from .deeppatent import import_deeppatent
from .deeppatent2 import import_deeppatent2
from .registry import IMPORTERS, Importer

__all__ = ["IMPORTERS", "Importer", "FORMAT_MODULES", "LOCARNO_CLASSES", "normalize_locarno",
           "canonical_patent_key", "LocarnoTable", "ClassNames", "ImportOptions", "import_deeppatent2",
           "import_deeppatent", "import_csv", "import_records", "formats"]

#: the modules whose import registered the built-in formats
FORMAT_MODULES = (manifest_format, deeppatent2, deeppatent, csv_table, uspto_importer)


def formats():
    """The registered ``--format`` names."""
    return IMPORTERS.names()


def import_records(input_format: str, paths, opts: Optional[ImportOptions] = None):
    """``(records, problems, stats)`` from the importer registered as ``input_format``."""
    return IMPORTERS.build(input_format, paths, opts or ImportOptions())
