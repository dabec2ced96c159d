"""USPTO design grants as the USPTO publishes them (grant XML + bi-level TIFF drawing sheets) into patentclip
records: ``patentclip-shards build --format uspto`` (docs/importers.md, "USPTO design grants").

Modules, by concern:

* :mod:`.archives` -- where the files are: folders, per-patent zips, weekly bulk tar/zip archives of zips;
  members read on demand without extracting.
* :mod:`.grant_xml` -- the grant XML: numbers, dates, title, Locarno and US classes, examiners' citations,
  drawing sheets, claim; :mod:`.descriptions` -- the figure descriptions (figure number, view, object).
* :mod:`.bilevel` -- bi-level sheets to ink masks and to grey images at the training size.
* :mod:`.labels` -- "FIG. N" labels on a sheet: candidate text lines and OCR (tesseract).
* :mod:`.segment` -- sheets cut into figures and the figures numbered.
* :mod:`.importer` -- the importer: records with figures, views, captions and citations; the segmentation
  measured against the XML's figure counts.
"""
