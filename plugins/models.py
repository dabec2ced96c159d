"""Model configs shipped with patentclip and their registration in open_clip's model registry.

``patentclip-tiny`` is a small ViT/transformer CLIP (64 px, 3+3 layers, width 96) for the demo, the tests and
CPU benchmarks. It is trained from scratch; nothing is downloaded. Real runs use open_clip's own configs
(``ViT-B-32``, ``ViT-L-14`` ...) with ``--pretrained openai``.
"""
from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_MODEL = "patentclip-tiny"

_registered = False


def register_model_configs() -> None:
    """Add patentclip's model configs to open_clip (idempotent)."""
    global _registered
    if _registered and TINY_MODEL in open_clip.list_models():
        return
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True
