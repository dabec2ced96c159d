"""timm backbones that patentclip registers in timm's model registry: test-size relatives of the LLM-informed
paper's backbones for which timm has no test-size model of its own.

timm ships test-size ResNet, EfficientNet and ViT models (``test_resnet``, ``test_efficientnet``, ``test_vit``;
the ``patentclip-tiny-*`` configs use them, so an exported folder of those loads in plain open_clip + timm). It has
no test-size SwinV2, so ``patentclip_tiny_swinv2`` is timm's own ``SwinTransformerV2`` (the class of
``swinv2_base_window8_256``) at 64 px with window 4, widths 32/64/128 and one or two blocks per stage (0.5 M
parameters). Building it needs this module imported (``patentclip.plugins.models.register_model_configs`` does;
a plain open_clip process loading an exported ``patentclip-tiny-swinv2`` folder imports
``patentclip.plugins.timm_backbones`` first). It has no published weights: ``--pretrained-image-source FILE``
loads a state dict from a file.
"""
from __future__ import annotations

import timm
from timm.models import register_model

TINY_SWINV2 = "patentclip_tiny_swinv2"
TINY_SWINV2_ARGS = dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 2), num_heads=(1, 2, 4))


def patentclip_tiny_swinv2(pretrained: bool = False, **kwargs):
    """Test-size SwinV2 (see the module docstring). ``pretrained=True`` needs ``pretrained_cfg_overlay`` with a
    ``file``: there are no published weights."""
    if pretrained and "file" not in (kwargs.get("pretrained_cfg_overlay") or {}):
        raise ValueError(f"{TINY_SWINV2} has no published weights: pass a file (pretrained_cfg_overlay="
                         f"{{'file': ...}}, or patentclip-train --pretrained-image-source FILE)")
    return timm.create_model("swinv2_tiny_window8_256", pretrained=pretrained, **{**TINY_SWINV2_ARGS, **kwargs})


def register_timm_backbones() -> None:
    """Add patentclip's backbones to timm's registry (idempotent; done when this module is imported)."""
    if not timm.models.is_model(TINY_SWINV2):
        register_model(patentclip_tiny_swinv2)


register_timm_backbones()
