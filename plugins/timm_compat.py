"""The named points where patentclip reuses timm and huggingface_hub, and nothing else.

timm builds the image towers of the LLM-informed backbones (through open_clip's ``TimmModel``, model configs with
``vision_cfg.timm_model_name``) and loads their pretrained weights; huggingface_hub finds model-hub files in the
local cache. ``tests/test_timm_compat.py`` fails loudly if a new timm or huggingface_hub moves any name listed in
``REUSED_NAMES``, drops a backbone of ``TIMM_ARCHS``, renames the weight files patentclip looks for in the cache,
or stops letting ``pretrained_cfg_overlay={"file": ...}`` decide where weights are read from. The open_clip names
of the same machinery are in ``patentclip.plugins.openclip_compat.REUSED_NAMES``.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import open_clip
import timm
from huggingface_hub import constants as hf_constants
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import LocalEntryNotFoundError
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from timm.models import get_pretrained_cfg

# module -> names patentclip imports and reuses as they are
REUSED_NAMES = {
    "timm": ["create_model", "list_models"],
    "timm.models": ["get_pretrained_cfg", "register_model", "is_model", "load_state_dict"],
    "timm.models._hub": ["HF_WEIGHTS_NAME", "HF_SAFE_WEIGHTS_NAME", "load_state_dict_from_hf"],
    "timm.models._builder": ["_resolve_pretrained_source", "load_pretrained"],
    "huggingface_hub": ["hf_hub_download", "try_to_load_from_cache", "scan_cache_dir"],
    "huggingface_hub.constants": ["HF_HUB_OFFLINE", "HF_HUB_CACHE"],
    "huggingface_hub.errors": ["LocalEntryNotFoundError"],
    "huggingface_hub.file_download": ["repo_folder_name"],
}

#: timm backbones of the shipped model configs (plugins/model_configs): the LLM-informed paper's four, and the
#: test-size models of the same families that the tests and CPU benchmarks train
TIMM_ARCHS = ["resnet50", "efficientnet_b0", "vit_base_patch32_224", "swinv2_base_window8_256",
              "test_resnet", "test_efficientnet", "test_vit", "swinv2_tiny_window8_256"]

# the weight files looked for in a model-hub repository (timm's and open_clip's names for them)
TIMM_WEIGHTS_NAME = "pytorch_model.bin"          # timm.models._hub.HF_WEIGHTS_NAME
TIMM_SAFE_WEIGHTS_NAME = "model.safetensors"     # timm.models._hub.HF_SAFE_WEIGHTS_NAME
OPENCLIP_WEIGHTS_NAME = HF_WEIGHTS_NAME
OPENCLIP_SAFE_WEIGHTS_NAME = HF_SAFE_WEIGHTS_NAME
OPENCLIP_CONFIG_NAME = HF_CONFIG_NAME

__all__ = ["open_clip", "timm", "hf_constants", "hf_hub_download", "LocalEntryNotFoundError", "timm_pretrained_cfg",
           "openclip_weight_alternatives"]


def timm_pretrained_cfg(name: str) -> Optional[Dict]:
    """timm's pretrained config of ``arch`` or ``arch.tag`` as a dict, or None when timm has no weights for it."""
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=False)
    except (RuntimeError, ValueError):
        return None
    return cfg.to_dict() if cfg is not None else None


def openclip_weight_alternatives(filename: str) -> List[str]:
    """The file names open_clip tries for ``filename`` of a hub repository, in its order: the safetensors
    alternative first (``open_clip.pretrained._get_safe_alternatives``), then the name itself."""
    alts = []
    if filename == HF_WEIGHTS_NAME:
        alts.append(HF_SAFE_WEIGHTS_NAME)
    if filename != HF_WEIGHTS_NAME and filename.endswith((".bin", ".pth")):
        alts.append(filename[:-4] + ".safetensors")
    return alts + [filename]
