"""A contact sheet of a build: the first drawings as they were written into the shards, in a grid, each with its
patent, figure and view, so that crops, polarity and line weight can be checked by eye.

The drawings are read back from the shards (the first shards of the first split that has any, in shard order),
not from the inputs: the picture shows exactly what training will see.
"""
from __future__ import annotations

import io
import json
import tarfile
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageOps

__all__ = ["contact_sheet", "write_contact_sheet"]

_IMAGE_EXT = ("png", "jpg", "jpeg", "webp")


def _samples(fs, shard_paths: Sequence[str], n: int) -> List[Tuple[Image.Image, dict]]:
    out: List[Tuple[Image.Image, dict]] = []
    for path in shard_paths:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            current: dict = {}
            key = None
            for m in tar:
                if not m.isfile():
                    continue
                k, _, ext = m.name.rpartition(".")
                if key is not None and k != key and "img" in current:
                    out.append((current["img"], current.get("meta", {})))
                    if len(out) >= n:
                        return out
                    current = {}
                key = k
                data = tar.extractfile(m).read()
                if ext in _IMAGE_EXT:
                    current["img"] = Image.open(io.BytesIO(data)).convert("L")
                elif ext == "json":
                    current["meta"] = json.loads(data)
            if "img" in current and len(out) < n:
                out.append((current["img"], current.get("meta", {})))
        if len(out) >= n:
            break
    return out[:n]


def contact_sheet(samples: Sequence[Tuple[Image.Image, dict]], cell: int = 256, columns: int = 8) -> Image.Image:
    """The grid image: each drawing fitted into a ``cell`` square (a thin grey frame shows its extent), with
    ``<patent_id> FIG. <figure>`` and the view written under it."""
    rows = max(1, -(-len(samples) // columns))
    text_h = 26
    sheet = Image.new("L", (columns * cell, rows * (cell + text_h)), 255)
    draw = ImageDraw.Draw(sheet)
    for i, (im, meta) in enumerate(samples):
        x, y = (i % columns) * cell, (i // columns) * (cell + text_h)
        thumb = ImageOps.contain(im, (cell - 8, cell - 8))
        ox, oy = x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2
        sheet.paste(thumb, (ox, oy))
        draw.rectangle([ox - 1, oy - 1, ox + thumb.width, oy + thumb.height], outline=170)
        fig = meta.get("figure")
        line1 = f"{meta.get('patent_id', '?')}" + (f" FIG. {fig}" if fig else f" #{meta.get('drawing_index', i)}")
        line2 = str(meta.get("view", ""))[:40]
        draw.text((x + 4, y + cell), line1, fill=0)
        draw.text((x + 4, y + cell + 12), line2, fill=90)
    return sheet


def write_contact_sheet(out, splits: Sequence[str], shard_names: dict, n: int = 48,
                        name: str = "build_report_contact_sheet.png") -> Optional[str]:
    """Write the contact sheet of the first ``n`` drawings of a build into its output folder (an
    :class:`~.output.Output`); returns its path, None when no drawing was written."""
    for split in splits:
        names = sorted(shard_names.get(split) or [])
        if not names:
            continue
        samples = _samples(out.fs, [out._fspath(out.path(split, s)) for s in names], n)
        if not samples:
            continue
        buf = io.BytesIO()
        contact_sheet(samples).save(buf, format="PNG", optimize=True)
        out.write_bytes([name], buf.getvalue())
        return out.path(name)
    return None
