"""Making one training or evaluation example: a drawing's fields read from its sample, its image decoded and
preprocessed with seeded augmentation, one caption drawn and tokenized.

An :class:`Example` is a drawing to emit (``anchor``), in multi-view mode with the other drawing of its patent it
is paired with (``other``; None for a patent with a single drawing, which is then paired with a second,
independently augmented copy of itself), and ``copy``: which of the sampler's repeats this is. :class:`ExampleMaker`
turns it into the per-example dict of batch fields (plugins/data/batch.py).

Training augmentation is made repeatable by seeding torch's CPU generator (what torchvision's random transforms
use) and Python's ``random`` (what open_clip's colour jitter / grey-scale augmentations use) from (seed, epoch,
key, copy) for each image, and restoring both after (direct generator calls: ``torch.random.fork_rng`` +
``torch.manual_seed`` cost ~2 ms per sample). Evaluation does not augment and takes the first caption.

Errors: a sample without a class id, with one that classes.json does not know, or whose json names its class
otherwise than classes.json, raises (a wrong class table must stop the run); one without a caption or image raises
``ValueError`` and an undecodable image ``OSError``, which the stream skips and counts.
"""
from __future__ import annotations

import datetime as _dt
import io
import random
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from PIL import Image

from patentclip.plugins.classes import ClassTable
from patentclip.plugins.data import batch as B
from patentclip.plugins.data import keys
from patentclip.plugins.grey_preprocess import GreyAwarePreprocess
from patentclip.shards import sample_format as SF

_EPOCH0 = _dt.date(1970, 1, 1)


@dataclass(frozen=True, eq=False)
class Example:
    anchor: Dict                   # the raw sample (member bytes by extension, __key__, __url__, __meta__)
    other: Optional[Dict] = None   # multi-view mode: the paired drawing of the same patent
    copy: int = 0                  # which repeat of the anchor in this epoch (class-aware sampler)


def grant_day(date: Optional[str]) -> int:
    """ISO date -> days since 1970-01-01; -1 when absent or unparsable."""
    if not date:
        return -1
    try:
        return (_dt.date.fromisoformat(str(date)[:10]) - _EPOCH0).days
    except ValueError:
        return -1


def where(s: Dict) -> str:
    return f"sample {s['__key__']!r} of {s.get('__url__', '?')}"


def class_id_of(s: Dict, class_table: ClassTable) -> int:
    """The sample's class id (its ``cls`` member, else the json's ``class_id``), checked against the table, with
    the class code and name of its json (:meth:`ClassTable.check_class`)."""
    meta = s["__meta__"]
    if SF.CLS in s:
        cid = SF.decode_cls(s[SF.CLS])
    elif SF.CLASS_ID in meta:
        cid = int(meta[SF.CLASS_ID])
    else:
        raise ValueError(f"{where(s)} has no class id (cls or json class_id)")
    return class_table.check_class(cid, meta.get(SF.CLASS_CODE), meta.get(SF.CLASS_NAME), where(s))


def captions_of(s: Dict) -> list:
    """The drawing's captions: the json's, else the txt member."""
    captions = [c for c in (s["__meta__"].get(SF.CAPTIONS) or []) if c]
    if not captions and s.get(SF.TXT):
        captions = [SF.decode_txt(s[SF.TXT])]
    if not captions:
        raise ValueError(f"{where(s)} has no caption (txt or json captions)")
    return captions


def decode_image(s: Dict) -> Image.Image:
    ext = SF.image_ext_of(s)
    if ext is None:
        raise ValueError(f"{where(s)} has no image ({'/'.join(SF.IMAGE_EXTS)})")
    img = Image.open(io.BytesIO(s[ext]))
    img.load()
    return img


class ExampleMaker:
    """Example -> dict of batch fields, for one stream (the module docstring)."""

    def __init__(self, *, preprocess: GreyAwarePreprocess, tokenizer: Callable, class_table: ClassTable,
                 seed: int, augment: bool, random_caption: bool, multiview: bool):
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.class_table = class_table
        self.seed = seed
        self.augment = augment
        self.random_caption = random_caption
        self.multiview = multiview

    def image(self, s: Dict, role: str, epoch: int, copy: int) -> torch.Tensor:
        img = decode_image(s)
        if not self.augment:
            return self.preprocess(img)
        gen = torch.default_generator
        saved, saved_py = gen.get_state(), random.getstate()
        aug_seed = keys.augmentation_seed(role, self.seed, epoch, s["__key__"], copy)
        gen.manual_seed(aug_seed)
        random.seed(aug_seed)
        try:
            return self.preprocess(img)
        finally:
            gen.set_state(saved)
            random.setstate(saved_py)

    def __call__(self, ex: Example, epoch: int) -> Dict:
        s, copy = ex.anchor, ex.copy
        meta, key = s["__meta__"], s["__key__"]
        captions = captions_of(s)
        caption = captions[keys.caption_index(len(captions), self.seed, epoch, key, copy)] \
            if self.random_caption else captions[0]
        erasing = self.preprocess.erasing > 0
        out = {
            B.IMAGE: self.image(s, "anchor", epoch, copy),
            B.TEXT: self.tokenizer([caption])[0],
            B.CLASS_ID: class_id_of(s, self.class_table),
            B.GRANT_DAY: grant_day(meta.get(SF.GRANT_DATE)),
            B.VIEW: str(meta.get(SF.VIEW, "")),
            B.PATENT_ID: keys.patent_of(key, meta),
            B.KEY: key,
        }
        if erasing:  # the random-erasing boxes drawn here, painted on the device
            out[B.IMAGE_ERASE] = self.preprocess.last_erase()
        if self.multiview:
            if ex.other is not None:
                out[B.IMAGE2] = self.image(ex.other, "other", epoch, copy)
                out[B.VIEW2] = str(ex.other["__meta__"].get(SF.VIEW, ""))
                out[B.HAS_VIEW2] = 1
            else:
                out[B.IMAGE2] = self.image(s, "self-pair", epoch, copy)
                out[B.VIEW2] = out[B.VIEW]
                out[B.HAS_VIEW2] = 0
            if erasing:
                out[B.IMAGE2_ERASE] = self.preprocess.last_erase()
        return out
