"""The LLM-informed paper's backbones (plugins/model_configs): a timm image tower with a CLIP text tower.

Each test-size config trains a few steps under --recipe llm-informed with its text tower taken from a CLIP
checkpoint (--pretrained-text) and frozen: the text weights come out bit-identical, the optimizer holds none of
them, the image tower moves; the run exports to a folder that plain open_clip (+ timm) loads and that gives the
trainer's embeddings. The full-size configs are built on the meta device and checked against CLIP ViT-B-32's
text tower, whose OpenAI weights they take."""
import json
import os
import subprocess
import sys
import textwrap

import open_clip
import pytest
import torch

from conftest import read_jsonl
from test_recipes import start_cli

from patentclip.evaluation import export as X
from patentclip.plugins import pretrained as P
from patentclip.plugins.models import register_model_configs

register_model_configs()

TINY = ["patentclip-tiny-resnet", "patentclip-tiny-efficientnet", "patentclip-tiny-vit", "patentclip-tiny-swinv2"]
FULL = {"patentclip-resnet50": "resnet50", "patentclip-efficientnet-b0": "efficientnet_b0",
        "patentclip-vit-b-32": "vit_base_patch32_224", "patentclip-swinv2-b": "swinv2_base_window8_256"}


def test_full_size_configs_take_clip_vit_b_32s_text_tower():
    """Same text config and embedding width as ViT-B-32, so the OpenAI text weights fit key for key; the image
    tower is the paper's backbone with an MLP projector (its feature width is not 512)."""
    b32 = open_clip.get_model_config("ViT-B-32")
    with torch.device("meta"):
        ref = open_clip.create_model("ViT-B-32", device="meta")
        ref_text = {k: v.shape for k, v in ref.state_dict().items() if k in P.text_keys(ref)}
        for name, arch in FULL.items():
            cfg = open_clip.get_model_config(name)
            assert cfg["text_cfg"] == b32["text_cfg"] and cfg["embed_dim"] == b32["embed_dim"]
            assert cfg["vision_cfg"]["timm_model_name"] == arch and cfg["vision_cfg"]["timm_model_pretrained"] is False
            model = open_clip.create_model(name, device="meta")
            assert {k: v.shape for k, v in model.state_dict().items() if k in P.text_keys(model)} == ref_text
            assert model.visual.trunk.num_features != cfg["embed_dim"] and cfg["vision_cfg"]["timm_proj"] == "mlp"


def test_projector_only_where_the_widths_differ():
    for name in TINY:
        cfg = open_clip.get_model_config(name)
        model = open_clip.create_model(name)
        width = model.visual.trunk.num_features
        assert (cfg["vision_cfg"]["timm_proj"] == "mlp") == (width != cfg["embed_dim"]), name
        assert cfg["text_cfg"] == open_clip.get_model_config("patentclip-tiny")["text_cfg"]
        size = cfg["vision_cfg"]["image_size"]
        assert model.encode_image(torch.zeros(2, 3, size, size)).shape == (2, cfg["embed_dim"])


@pytest.fixture(scope="module")
def backbone_runs(synthetic_shards, tmp_path_factory):
    """One short llm-informed run per test-size backbone (all at once, one thread each), text tower from a
    patentclip-tiny CLIP checkpoint; then each run's export."""
    root = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(11)
    text_sd = open_clip.create_model("patentclip-tiny").state_dict()
    torch.save({"epoch": 1, "state_dict": text_sd, "model": "patentclip-tiny"}, root / "clip.pt")
    procs = {name: start_cli("patentclip.launch.train", "--train-data", synthetic_shards["train"], "--model", name,
                             "--recipe", "llm-informed", "--pretrained-text", root / "clip.pt", "--batch-size", "8",
                             "--epochs", "1", "--train-num-samples", "32", "--lr", "1e-3", "--warmup", "1",
                             "--workers", "0", "--logs", root, "--name", name, "--seed", "0")
             for name in TINY}
    for name, p in procs.items():
        out = p.communicate(timeout=600)[0]
        assert p.returncode == 0, f"{name}:\n{out[-4000:]}"
    exports = {}
    for name in TINY:  # patentclip-export's own functions, in this process
        exports[name] = root / "export" / name
        X.export(X.read_checkpoint(str(root / name / "checkpoints" / "epoch_1.pt")), str(exports[name]))
    return {"root": root, "text_sd": text_sd, "exports": exports}


@pytest.mark.parametrize("name", TINY)
def test_backbone_trains_with_the_text_tower_frozen(backbone_runs, name):
    run = backbone_runs["root"] / name
    steps = read_jsonl(run / "train_steps.jsonl")
    assert len(steps) == 4 and all(s["loss"] == s["loss"] for s in steps)
    trained = torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"]
    with torch.device("meta"):
        keys = P.text_keys(open_clip.create_model(name, device="meta"))
    text_sd = backbone_runs["text_sd"]
    assert keys and all(torch.equal(trained[k], text_sd[k]) for k in keys)  # bit-identical to the source
    torch.manual_seed(0)
    init = open_clip.create_model(name).state_dict()
    visual = [k for k in trained if k.startswith("visual.") and trained[k].is_floating_point()]
    assert sum(not torch.equal(trained[k], init[k]) for k in visual) > len(visual) // 2  # the image tower trains
    # the optimizer (DeepSpeed's ZeRO-0 state: torch AdamW's) holds moments for the trainable parameters only
    ds = torch.load(run / "checkpoints" / "deepspeed" / "epoch_1" / "mp_rank_00_model_states.pt",
                    map_location="cpu", weights_only=False)
    opt = ds["optimizer"]
    opt = opt.get("base_optimizer_state", opt) if "state" not in opt else opt
    numel = sum(s["exp_avg"].numel() for s in opt["state"].values())
    module = {k: v for k, v in ds["module"].items()}
    total = sum(v.numel() for k, v in module.items() if v.is_floating_point() and not k.endswith("attn_mask")
                and "running_" not in k)
    text_numel = sum(text_sd[k].numel() for k in keys)
    assert numel == total - text_numel, (numel, total, text_numel)
    params = (run / "params.txt").read_text()
    assert "lock_text: True" in params and f"pretrained_text: {backbone_runs['root'] / 'clip.pt'}" in params


PLAIN = textwrap.dedent("""
    import json, sys
    import torch
    import open_clip
    plain = [m for m in sys.modules if m.startswith("patentclip.")]
    out = {}
    for folder, imports in json.loads(sys.argv[1]):
        for name in imports:
            __import__(name)
        model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
        model.eval()
        size = preprocess.transforms[0].size
        size = size if isinstance(size, int) else size[0]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            out[folder] = model.encode_image(torch.rand(3, 3, size, size, generator=g), normalize=True)
    torch.save({"embeddings": out, "patentclip_modules_before_imports": plain,
                "patentclip_modules": [m for m in sys.modules if m.startswith("patentclip.")]}, sys.argv[2])
""")


def test_exports_load_in_plain_open_clip(backbone_runs, tmp_path):
    """Every exported folder loads with plain open_clip + timm in a fresh process (the tiny SwinV2 needs its timm
    registration, patentclip.plugins.timm_backbones, and nothing else of patentclip; the others nothing) and embeds
    like the trainer's checkpoint."""
    jobs = []
    for name in TINY:
        folder = backbone_runs["exports"][name]
        cfg = json.loads((folder / "open_clip_config.json").read_text())
        assert cfg["model_cfg"] == open_clip.get_model_config(name)
        jobs.append((str(folder), ["patentclip.plugins.timm_backbones"] if name == "patentclip-tiny-swinv2" else []))
    jobs.sort(key=lambda j: bool(j[1]))  # the three that need nothing of patentclip first
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", PLAIN, json.dumps(jobs), str(tmp_path / "emb.pt")],
                       capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = torch.load(tmp_path / "emb.pt")
    assert got["patentclip_modules_before_imports"] == []
    assert set(got["patentclip_modules"]) <= {"patentclip.plugins", "patentclip.plugins.timm_backbones"}
    for name in TINY:
        model = open_clip.create_model(name, pretrained=str(backbone_runs["root"] / name / "checkpoints" /
                                                            "epoch_1.pt")).eval()
        size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            ours = model.encode_image(torch.rand(3, 3, size, size, generator=g), normalize=True)
        torch.testing.assert_close(got["embeddings"][str(backbone_runs["exports"][name])], ours, rtol=1e-5, atol=1e-6)
