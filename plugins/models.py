"""Model configs shipped with patentclip and their registration in open_clip's model registry.

``patentclip-tiny`` is a small ViT/transformer CLIP (64 px, 3+3 layers, width 96) for the demo, the tests and
CPU benchmarks. It is trained from scratch; nothing is downloaded. Real runs use open_clip's own configs
(``ViT-B-32``, ``ViT-L-14`` ...) with ``--pretrained openai``.

The LLM-informed paper's backbones: a timm image tower (open_clip's ``TimmModel``, ``vision_cfg.timm_model_name``)
and the text tower of a CLIP model (its ``text_cfg`` and ``embed_dim``, so that ``--pretrained-text`` can load
that CLIP's text weights); a two-layer MLP projector (``timm_proj: mlp``, open_clip's: width -> 2 x embed_dim ->
embed_dim) maps the backbone's features to the text embedding when their widths differ, none when they agree:

    config                        image tower (timm)         features  text tower          embed
    patentclip-resnet50           resnet50, 224 px           2048      ViT-B-32's (CLIP)   512
    patentclip-efficientnet-b0    efficientnet_b0, 224 px    1280      ViT-B-32's          512
    patentclip-vit-b-32           vit_base_patch32_224       768       ViT-B-32's          512
    patentclip-swinv2-b           swinv2_base_window8_256    1024      ViT-B-32's          512
    patentclip-tiny-resnet        test_resnet, 64 px         96        patentclip-tiny's   64
    patentclip-tiny-efficientnet  test_efficientnet, 64 px   256       patentclip-tiny's   64
    patentclip-tiny-vit           test_vit, 160 px           64        patentclip-tiny's   64  (no projector)
    patentclip-tiny-swinv2        patentclip_tiny_swinv2     128       patentclip-tiny's   64

The full-size ones start from timm's ImageNet weights (``--pretrained-image``) and OpenAI CLIP's text tower
(``--pretrained-text ViT-B-32:openai``); the tiny ones are the same families at test size (timm's ``test_*``
models; the SwinV2 one is registered by :mod:`patentclip.plugins.timm_backbones`) for the tests and CPU
benchmarks, whose text tower is ``patentclip-tiny``'s, so a trained ``patentclip-tiny`` gives them theirs.
"""
from __future__ import annotations

from pathlib import Path

import open_clip

from patentclip.plugins.timm_backbones import register_timm_backbones

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
TINY_MODEL = "patentclip-tiny"

_registered = False


def register_model_configs() -> None:
    """Add patentclip's model configs to open_clip and its test-size backbones to timm (idempotent)."""
    global _registered
    register_timm_backbones()
    if _registered and TINY_MODEL in open_clip.list_models():
        return
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    _registered = True
