"""The shard sample format: one sample per drawing, its key, its tar members and its metadata fields, as the shard
builder (shards/build.py) writes them and the data pipeline (plugins/data/) and ``patentclip-shards inspect``
(shards/inspect.py) read them.

::

    <key>  =  <patent_id>_<NN>       NN: the drawing's index in its patent, two digits or more
    <key>.png | .jpg | .webp         the drawing, normalised (docs/manifest.md, "Images"); exactly one image
                                     member (``.jpeg`` is read too)
    <key>.txt                        its first caption, UTF-8 (what vanilla open_clip trains on)
    <key>.json                       a JSON object: the fields of :data:`META_FIELDS` (+ the input's other fields)
    <key>.cls                        the class id, ASCII decimal, equal to the json's ``class_id``

The members of a sample are adjacent in the tar, in sorted extension order (as webdataset's ``TarWriter`` writes
them), and the drawings of one patent are adjacent samples of one shard. The pipeline also accepts samples of
other builders that lack ``.cls`` (the class id is then the json's ``class_id``) or json captions (then the
``.txt``), and takes the patent from the key when the json has no ``patent_id``.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

# -- members -----------------------------------------------------------------------------------------------------
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")   # image members read, in this order of preference
TXT = "txt"
JSON = "json"
CLS = "cls"
REQUIRED_MEMBERS = (TXT, JSON, CLS)           # besides the one image

# -- keys ----------------------------------------------------------------------------------------------------------
KEY_RE = re.compile(r"^(?P<pid>[A-Za-z0-9][A-Za-z0-9_-]*)_(?P<idx>\d{2,})$")

# -- json fields ---------------------------------------------------------------------------------------------------
PATENT_ID = "patent_id"
DRAWING_INDEX = "drawing_index"
NUM_DRAWINGS = "num_drawings"
VIEW = "view"
CLASS_ID = "class_id"
CLASS_CODE = "class_code"
CLASS_NAME = "class_name"
CATEGORY = "category"          # "head" or "tail" (shards/build.py, head_tail_categories)
GRANT_DATE = "grant_date"      # ISO date
TITLE = "title"
CAPTIONS = "captions"          # every caption of the drawing; the .txt is the first
ORIG_SIZE = "orig_size"        # [w, h] of the input drawing
SIZE = "size"                  # [w, h] in the shard
CAPTION_PROVENANCE = "caption_provenance"  # optional: where each caption came from (captions joined from a file)
CITATIONS_EXAMINER = "citations_examiner"  # optional: the patents the examiner cited, [{number, country, kind, date}]
                                           # (--format uspto; patentclip-eval --relevance citation reads it)
META_FIELDS = (PATENT_ID, DRAWING_INDEX, NUM_DRAWINGS, VIEW, CLASS_ID, CLASS_CODE, CLASS_NAME, CATEGORY, GRANT_DATE,
               TITLE, CAPTIONS, ORIG_SIZE, SIZE)   # always written, in this order (then the optional ones)
CHECKED_META_FIELDS = (CLASS_CODE, GRANT_DATE, NUM_DRAWINGS, VIEW)   # inspect reports a sample without one


def sample_key(patent_id: str, drawing_index: int) -> str:
    """The key of a drawing: ``<patent_id>_<NN>``."""
    return f"{patent_id}_{drawing_index:02d}"


def patent_of_key(key: str) -> str:
    """The patent id part of a key (everything before the last ``_``)."""
    return key.rsplit("_", 1)[0]


def encode_members(key: str, image_ext: str, image: bytes, meta: Mapping[str, Any]) -> List[Tuple[str, bytes]]:
    """The tar members (name, bytes) of one sample in the order they are written: sorted by extension. The
    ``.txt`` is the first of ``meta["captions"]``, the ``.cls`` is ``meta["class_id"]``."""
    if image_ext not in IMAGE_EXTS:
        raise ValueError(f"image member .{image_ext}: expected one of {', '.join(IMAGE_EXTS)}")
    members = sorted([(CLS, str(meta[CLASS_ID]).encode()),
                      (JSON, json.dumps(dict(meta), ensure_ascii=False).encode()),
                      (image_ext, image), (TXT, str(meta[CAPTIONS][0]).encode("utf-8"))])
    return [(f"{key}.{ext}", data) for ext, data in members]


def decode_json(raw) -> Dict[str, Any]:
    """The json member as a dict ({} when absent)."""
    if isinstance(raw, (bytes, bytearray)):
        return json.loads(raw.decode("utf-8"))
    return raw or {}


def decode_txt(raw) -> str:
    return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else str(raw)


def decode_cls(raw) -> int:
    """The cls member: an ASCII decimal integer."""
    return int(raw.decode("ascii").strip() if isinstance(raw, (bytes, bytearray)) else raw)


def image_ext_of(members: Mapping[str, Any]) -> Optional[str]:
    """The extension of the sample's image member (the first of :data:`IMAGE_EXTS` present), or None."""
    return next((ext for ext in IMAGE_EXTS if ext in members), None)
