"""Image<->text retrieval of the evaluation drawings with their captions (the DesignCLIP / PatentCLIP tables):
each drawing's image and its caption are the positive pair, identical captions being one text whose positives are
all the drawings it describes; R@1/5/10 in both directions (hit rate,
:func:`patentclip.evaluation.metrics.image_text_recall`)."""
from __future__ import annotations

from typing import Dict

import torch

from patentclip.evaluation import metrics as M
from patentclip.evaluation.settings import EvalSettings

KS = (1, 5, 10)


def image_text_from_features(feats: Dict, settings: EvalSettings, device="cpu") -> Dict[str, float]:
    """``image_to_text_R@K`` and ``text_to_image_R@K`` of :func:`extract_features`' output (K in 1, 5, 10),
    computed on ``device`` in chunks of ``settings.max_chunk_bytes``. Identical captions (equal ``text_id``) are one
    text whose positives are every drawing it describes (docs/evaluation.md), so the figures do not depend on the
    order of the drawings."""
    dev = torch.device(device)
    return M.image_text_recall(feats["image_features"].to(dev), feats["text_features"].to(dev), ks=KS,
                               text_ids=feats["text_id"].to(dev), max_chunk_bytes=settings.max_chunk_bytes)
