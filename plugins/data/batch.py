"""The patent batch: its fields, defined once, and the collation of examples into it.

Every consumer (the step, the model, the losses, evaluation, the report, the benchmarks) names a field through
these constants, never through a string literal. A batch is a dict, typed as :class:`PatentBatch`:

=================  ==============================================================================================
``IMAGE``          (B, 3, H, W) float; with the uint8 image transport (B, 1 or 3, H, W) uint8 pixels, which the
                   loader's ``image_transport`` finishes on the device (plugins/image_transport.py)
``IMAGE_ERASE``    (B, erasing steps, 4) int32: the random-erasing boxes drawn in the worker, painted on the device
                   (uint8 transport with random erasing only); ``erase_field(f)`` for image field ``f``
``TEXT``           (B, context_length) long: one caption per use, tokenized
``CLASS_ID``       (B,) long: the Locarno class id (classes.json)
``GRANT_DAY``      (B,) long: days since 1970-01-01 (-1 unknown)
``VIEW``           list of str: the drawing's view
``PATENT_ID``      list of str
``KEY``            list of str: the sample key, ``<patent_id>_<NN>``
=================  ==============================================================================================

Multi-view mode (``--multiview``) adds :data:`SECOND_VIEW_FIELDS`: ``IMAGE2`` (and ``IMAGE2_ERASE``), another view of
the same patent, ``VIEW2`` (list of str) and ``HAS_VIEW2`` (B,) long: 0 for a patent with a single drawing, whose
``IMAGE2`` is then a second, independently augmented copy of the same drawing (documented fallback, not an error).

Collation (:func:`collate_patent_batch`): tensors are stacked (grey one-channel images expanded to three channels
where a batch mixes them with colour ones), ints become a long tensor, strings stay lists.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, TypedDict

import torch

IMAGE = "image"
IMAGE2 = "image2"
TEXT = "text"
CLASS_ID = "class_id"
GRANT_DAY = "grant_day"
VIEW = "view"
VIEW2 = "view2"
HAS_VIEW2 = "has_view2"
PATENT_ID = "patent_id"
KEY = "key"
ERASE_SUFFIX = "_erase"


def erase_field(image_field: str) -> str:
    """The field of the erase boxes of an image field (``image`` -> ``image_erase``)."""
    return image_field + ERASE_SUFFIX


IMAGE_ERASE = erase_field(IMAGE)
IMAGE2_ERASE = erase_field(IMAGE2)
IMAGE_FIELDS = (IMAGE, IMAGE2)                      # the fields the image transport finishes on the device
SECOND_VIEW_FIELDS = (IMAGE2, IMAGE2_ERASE, VIEW2, HAS_VIEW2)

# the typed form; its keys are the constants above (functional syntax: the names are not written twice)
PatentBatch = TypedDict("PatentBatch", {
    IMAGE: torch.Tensor, IMAGE_ERASE: torch.Tensor, TEXT: torch.Tensor, CLASS_ID: torch.Tensor,
    GRANT_DAY: torch.Tensor, VIEW: List[str], PATENT_ID: List[str], KEY: List[str],
    IMAGE2: torch.Tensor, IMAGE2_ERASE: torch.Tensor, VIEW2: List[str], HAS_VIEW2: torch.Tensor,
}, total=False)
FIELDS = tuple(PatentBatch.__annotations__)


def _same_channels(vals: List[torch.Tensor]) -> List[torch.Tensor]:
    """One-channel (grey) images expanded to three where a batch mixes them with colour ones."""
    if all(v.shape == vals[0].shape for v in vals) or any(v.ndim != 3 for v in vals):
        return vals
    if {v.shape[0] for v in vals} == {1, 3} and len({v.shape[1:] for v in vals}) == 1:
        return [v.expand(3, -1, -1) for v in vals]
    return vals  # torch.stack says what differs


def collate_patent_batch(samples: Sequence[Dict]) -> PatentBatch:
    """Stack tensors, turn ints into a long tensor, keep strings as lists."""
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        if torch.is_tensor(vals[0]):
            out[k] = torch.stack(_same_channels(vals))
        elif isinstance(vals[0], (int, bool)):
            out[k] = torch.tensor(vals, dtype=torch.long)
        else:
            out[k] = vals
    return out
