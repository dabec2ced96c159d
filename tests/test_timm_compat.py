"""The named points where patentclip reuses timm and huggingface_hub (plugins/timm_compat.py), and the behaviour
the starting-weights code relies on: fail loudly when a new version moves them."""
import importlib
import inspect

import pytest
import torch

from patentclip.plugins import timm_compat as tc


@pytest.mark.parametrize("module,names", sorted(tc.REUSED_NAMES.items()))
def test_reused_names_exist(module, names):
    mod = importlib.import_module(module)
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, (f"{module} moved {missing}: patentclip reuses these names; update "
                         f"patentclip.plugins.timm_compat and its callers")


def test_backbones_of_the_shipped_configs_exist():
    import timm

    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    assert [a for a in tc.TIMM_ARCHS if not timm.models.is_model(a)] == []
    # every timm backbone a shipped config names is declared here
    import json

    from patentclip.plugins.models import MODEL_CONFIG_DIR

    used = {json.loads(p.read_text())["vision_cfg"].get("timm_model_name") for p in MODEL_CONFIG_DIR.glob("*.json")}
    assert used - {None} <= set(tc.TIMM_ARCHS) | {"patentclip_tiny_swinv2"}


def test_weight_file_names_are_the_libraries():
    from open_clip.pretrained import _get_safe_alternatives
    from timm.models import _hub

    assert (_hub.HF_WEIGHTS_NAME, _hub.HF_SAFE_WEIGHTS_NAME) == (tc.TIMM_WEIGHTS_NAME, tc.TIMM_SAFE_WEIGHTS_NAME)
    for name in (tc.OPENCLIP_WEIGHTS_NAME, "open_clip_pytorch_model.bin", "x/model.pth", "weights.safetensors"):
        assert tc.openclip_weight_alternatives(name) == list(_get_safe_alternatives(name)) + [name]


def test_a_file_in_pretrained_cfg_overlay_wins_over_the_hub():
    """patentclip loads timm weights with pretrained_cfg_overlay={'file': ...}; timm must read that file rather
    than the hub repository or URL of the backbone's config."""
    from timm.models._builder import _resolve_pretrained_source

    cfg = {"source": "", "file": "/w.safetensors", "hf_hub_id": "timm/x", "url": "https://x"}
    assert _resolve_pretrained_source(cfg) == ("file", "/w.safetensors")
    assert "pretrained_cfg_overlay" in inspect.signature(__import__("timm").create_model).parameters


def test_timm_pretrained_cfg_and_swinv2_overrides():
    import timm

    cfg = tc.timm_pretrained_cfg("resnet50")
    assert cfg["hf_hub_id"].startswith("timm/resnet50.") and len(cfg["mean"]) == 3
    assert tc.timm_pretrained_cfg("test_resnet.r160_in1k")["hf_hub_id"] == "timm/test_resnet.r160_in1k"
    assert tc.timm_pretrained_cfg("no_such_model") is None
    # the tiny SwinV2 overrides the architecture arguments of timm's swinv2 entrypoint
    m = timm.create_model("swinv2_tiny_window8_256", img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 2),
                          num_heads=(1, 2, 4), num_classes=0)
    assert m.num_features == 128 and m(torch.zeros(1, 3, 64, 64)).shape == (1, 128)


def test_offline_hub_lookup_raises_local_entry_not_found(tmp_path):
    from huggingface_hub import hf_hub_download

    with pytest.raises(tc.LocalEntryNotFoundError):
        hf_hub_download("patentclip-tests/none", "x.bin", cache_dir=str(tmp_path), local_files_only=True)
