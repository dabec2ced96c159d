"""Are the shards stored much larger than the model needs? A warning at the start of training.

Every loader worker decodes and resizes each drawing at the size it is stored at; a model trained at ``N`` px
needs about ``N * 8/7`` (shards/images.py: :func:`~patentclip.shards.images.storage_side`). Drawings stored at
512 px for a 224-px model cost a worker about twice the time of 256-px ones (issue 21). The stored size is read
from the first drawings of the first shard (their image headers only; a few kilobytes through the same reader as
training, local or S3), so it holds for shards from any builder. The check warns when their median longest side
exceeds :data:`WARN_FACTOR` times what the model needs, and says how to rebuild.
"""
from __future__ import annotations

import io
import logging
import statistics
from typing import Callable, Optional

from PIL import Image

from patentclip.plugins.data import tars
from patentclip.shards import sample_format as SF
from patentclip.shards.images import storage_side

WARN_FACTOR = 1.5   # warn when drawings are stored at more than this times the size the model needs
PROBE = 8           # drawings of the first shard whose size is read


def model_image_size(preprocess: Callable) -> Optional[int]:
    """The image size of an open_clip preprocess: the ``size`` of its first resize or crop step (None if none)."""
    for step in getattr(preprocess, "transforms", ()):
        size = getattr(step, "size", None)
        if isinstance(size, int):
            return size
        if isinstance(size, (tuple, list)) and size:
            return int(max(size))
    return None


def stored_side(url: str, probe: int = PROBE) -> Optional[int]:
    """Median longest side (px) of the first ``probe`` drawings of the shard (None when it has none)."""
    sides = []
    for sample in tars.tar_samples(url, tars.GroupSkips()):  # damage is the stream's to count and name, not this
        ext = SF.image_ext_of(sample)                        # probe's: an unreadable shard or image is passed over
        if ext is None:
            continue
        try:
            with Image.open(io.BytesIO(sample[ext])) as im:  # reads the header only
                sides.append(max(im.size))
        except (OSError, SyntaxError):  # an undecodable drawing: the stream skips and counts it
            continue
        if len(sides) >= probe:
            break
    return int(statistics.median(sides)) if sides else None


def check_stored_size(url: str, image_size: Optional[int]) -> Optional[str]:
    """The warning (also logged) when the drawings of shard ``url`` are stored much larger than a model of
    ``image_size`` px needs; None when they are not, or when either size is unknown."""
    if not image_size:
        return None
    side = stored_side(url)
    need = storage_side(image_size)
    if side is None or side <= WARN_FACTOR * need:
        return None
    msg = (f"the training shards store drawings at {side} px (longest side, e.g. {url}) but the model trains at "
           f"{image_size} px and needs about {need}: every loader worker decodes and resizes "
           f"{(side / need) ** 2:.1f}x the pixels it uses (about {side / need:.1f}x slower per drawing). Rebuild "
           f"them with `patentclip-shards build ... --train-image-size {image_size}` (stores {need} px)")
    logging.warning(msg)
    return msg
