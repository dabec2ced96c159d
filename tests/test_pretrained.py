"""Starting weights (plugins/pretrained.py): a local checkpoint file, an exported model folder (local-dir:), a
model-hub name resolved from a hub cache the tests write with the hub offline, timm image-tower weights and a
CLIP text tower from other sources, and the missing-weights error with the login-node command. Nothing is
downloaded: every cache and checkpoint here is made by the test."""
import json
import os
import subprocess
import sys

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from conftest import read_jsonl, run_cli
from hub_cache import add_to_hub_cache, safetensors_bytes

from patentclip.launch.args import parse_train_args
from patentclip.plugins import pretrained as P
from patentclip.plugins.models import register_model_configs

register_model_configs()


def seeded_state(name, seed=1, **kw):
    torch.manual_seed(seed)
    return open_clip.create_model(name, **kw).state_dict()


def train_args(*argv):
    return parse_train_args(["--train-data", "x.tar", *map(str, argv)])


def build(args):
    model, _, preprocess = P.create_model_for_run(args, "cpu", P.plan_start(args))
    return model, preprocess


def assert_same(sd, model, keys=None):
    own = model.state_dict()
    keys = keys if keys is not None else list(sd)
    assert keys
    for k in keys:
        assert torch.equal(own[k].reshape(sd[k].shape), sd[k]), k


def clip_folder(path, name, sd, *, image_size=None, mean=None, record=True):
    """An open_clip model folder as patentclip-export / open_clip's push_to_hf_hub write it."""
    cfg = open_clip.get_model_config(name)
    if image_size:
        cfg["vision_cfg"]["image_size"] = image_size
    full = {"model_cfg": cfg, "preprocess_cfg": {"mean": list(mean or open_clip.OPENAI_DATASET_MEAN),
                                                 "std": list(open_clip.OPENAI_DATASET_STD)}}
    if record:
        full["patentclip"] = {"model_name": name}
    files = {P.CLIP_CONFIG: json.dumps(full).encode(), P.CLIP_WEIGHTS[0]: safetensors_bytes(sd)}
    if path is not None:
        os.makedirs(path, exist_ok=True)
        for fn, data in files.items():
            with open(os.path.join(path, fn), "wb") as f:
                f.write(data)
    return files


# -- local files and folders -------------------------------------------------------------------------------------

def test_start_from_a_runs_epoch_checkpoint_and_from_safetensors(tmp_path):
    sd = seeded_state("patentclip-tiny")
    ckpt = tmp_path / "epoch_3.pt"  # what patentclip-train writes: open_clip's dict plus classes and the head
    torch.save({"epoch": 3, "name": "run", "state_dict": sd, "model": "patentclip-tiny",
                "classes": [{"id": 0, "code": "01-01", "name": "a", "count": 3}],
                "patentclip_head": {"config": {"embed_dim": 64}, "state_dict": {"w": torch.zeros(2)}}}, ckpt)
    model, _ = build(train_args("--model", "patentclip-tiny", "--pretrained", ckpt))
    assert_same(sd, model)
    st = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, st)
    model, _ = build(train_args("--model", "patentclip-tiny", "--pretrained", st))
    assert_same(sd, model)


def test_start_from_an_exported_folder(tmp_path):
    """local-dir: takes the folder's architecture (image size -> --force-image-size), its preprocessing and,
    without --model, its recorded model name; an incompatible --model is refused with the differences."""
    sd = seeded_state("patentclip-tiny", force_image_size=96)
    clip_folder(tmp_path / "model", "patentclip-tiny", sd, image_size=96, mean=(0.5, 0.5, 0.5))
    args = train_args("--pretrained", f"local-dir:{tmp_path / 'model'}")
    model, preprocess = build(args)
    assert args.model == "patentclip-tiny" and args.force_image_size == 96 and args.image_mean == (0.5, 0.5, 0.5)
    assert_same(sd, model)
    assert preprocess.transforms[0].size == 96
    with pytest.raises(ValueError, match="timm_model_name"):
        build(train_args("--model", "patentclip-tiny-resnet", "--pretrained", f"local-dir:{tmp_path / 'model'}"))
    with pytest.raises(FileNotFoundError, match="open_clip_config.json"):
        P.plan_start(train_args("--pretrained", f"local-dir:{tmp_path}"))
    with pytest.raises(ValueError, match="local-dir:"):
        P.plan_start(train_args("--model", "patentclip-tiny", "--pretrained", str(tmp_path / "model")))


def test_unknown_tag_lists_the_models_tags():
    with pytest.raises(ValueError, match="openai"):
        P.plan_start(train_args("--model", "ViT-B-32", "--pretrained", "no-such-tag"))


# -- the model hub's cache, offline ------------------------------------------------------------------------------

def test_pretrained_tag_resolves_from_the_hub_cache(tmp_path):
    """ViT-B-32 / openai lives in the hub repo timm/vit_base_patch32_clip_224.openai: found in the cache (the file
    here is a stand-in, never loaded), with the tag's preprocessing and QuickGELU; missing -> the commands."""
    cache = tmp_path / "hub"
    w = P.resolve_clip_weights("openai", "ViT-B-32", str(cache))
    assert w.missing and w.fetch.hub_repo == "timm/vit_base_patch32_clip_224.openai"
    msg = P.missing_message([w], str(cache), offline=True)
    assert (f"python -c \"import open_clip; open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai', "
            f"cache_dir='{cache}')\"") in msg
    assert f"hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors --cache-dir {cache}" in msg
    # open_clip's order: the safetensors file, else the .bin one
    paths = add_to_hub_cache(cache, "timm/vit_base_patch32_clip_224.openai", {"open_clip_pytorch_model.bin": b"x"})
    w = P.resolve_clip_weights("openai", "ViT-B-32", str(cache))
    assert w.file == paths["open_clip_pytorch_model.bin"]
    paths = add_to_hub_cache(cache, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"y"})
    w = P.resolve_clip_weights("openai", "ViT-B-32", str(cache))
    assert w.file == paths["open_clip_model.safetensors"] and w.quick_gelu is True
    assert tuple(w.preprocess["mean"]) == open_clip.OPENAI_DATASET_MEAN and w.spec == "ViT-B-32:openai"
    args = train_args("--model", "ViT-B-32", "--pretrained", "openai", "--cache-dir", cache)
    P.reconcile_config(args, P.plan_start(args).model)
    assert args.force_quick_gelu  # the OpenAI weights were trained with QuickGELU


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory):
    """HF_HOME with a cached model-hub repository patentclip-tests/tiny-clip (open_clip_config.json + weights)."""
    home = tmp_path_factory.mktemp("hf_home")
    sd = seeded_state("patentclip-tiny", seed=7)
    add_to_hub_cache(home / "hub", "patentclip-tests/tiny-clip", clip_folder(None, "patentclip-tiny", sd, record=False))
    return home, sd


def test_hub_name_from_the_cache_offline_trains(hub_home, synthetic_shards, tmp_path):
    """patentclip-train --pretrained hf-hub:ORG/REPO with HF_HUB_OFFLINE=1 and HF_HOME at the test's cache: the run
    starts from the cached weights (lr 0: the epoch checkpoint is those weights, bit for bit)."""
    home, sd = hub_home
    r = run_cli("patentclip.launch.train", "--train-data", synthetic_shards["train"], "--model", "patentclip-tiny",
                "--pretrained", "hf-hub:patentclip-tests/tiny-clip", "--batch-size", "8", "--epochs", "1",
                "--train-num-samples", "16", "--lr", "0", "--workers", "0", "--logs", tmp_path, "--name", "hub",
                env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "starts from hf-hub:patentclip-tests/tiny-clip" in (tmp_path / "hub" / "out.log").read_text()
    trained = torch.load(tmp_path / "hub" / "checkpoints" / "epoch_1.pt", map_location="cpu")["state_dict"]
    for k, v in sd.items():
        assert torch.equal(trained[k], v), k
    assert len(read_jsonl(tmp_path / "hub" / "train_steps.jsonl")) == 2


def test_missing_weights_stop_the_run_with_the_login_node_command(synthetic_shards, tmp_path):
    """Offline with an empty cache: exit before any folder is made, naming the cache looked in and the exact
    commands (the ViT-L-14 / openai start of slurm/train_vitl.sh, timm weights, a CLIP text tower)."""
    home = tmp_path / "empty_hf"
    home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home)}
    base = ["--train-data", synthetic_shards["train"], "--logs", tmp_path / "logs", "--name", "x"]
    runs = [subprocess.Popen([sys.executable, "-m", "patentclip.launch.train", *map(str, base + extra)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for extra in (["--model", "ViT-L-14", "--pretrained", "openai"],
                          ["--model", "patentclip-tiny-resnet", "--pretrained-image", "--pretrained-text",
                           "ViT-B-32:openai"])]
    (_, err1), (_, err2) = [p.communicate(timeout=300) for p in runs]
    assert [p.returncode for p in runs] == [1, 1]
    assert "python -c \"import open_clip; open_clip.create_model_and_transforms('ViT-L-14', pretrained='openai')\"" \
        in err1
    assert "hf download timm/vit_large_patch14_clip_224.openai open_clip_model.safetensors" in err1
    assert f"looked in {home / 'hub'}" in err1 and "HF_HUB_OFFLINE=1" in err1
    assert "Traceback" not in err1 + err2 and not (tmp_path / "logs").exists()
    assert "python -c \"import timm; timm.create_model('test_resnet', pretrained=True)\"" in err2
    assert "hf download timm/test_resnet.r160_in1k model.safetensors" in err2
    assert "text tower 'ViT-B-32:openai'" in err2
    assert "open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai')" in err2


# -- towers from two sources -------------------------------------------------------------------------------------

def test_timm_image_weights_from_the_hub_cache(tmp_path):
    """--pretrained-image: timm's default weights of the backbone (test_resnet -> timm/test_resnet.r160_in1k),
    read from the cache by timm's own loader (its classifier dropped), with timm's preprocessing."""
    import timm

    torch.manual_seed(3)
    ref = timm.create_model("test_resnet")  # the published file has the 1000-class classifier
    add_to_hub_cache(tmp_path, "timm/test_resnet.r160_in1k", {"model.safetensors": safetensors_bytes(ref.state_dict())})
    args = train_args("--model", "patentclip-tiny-resnet", "--pretrained-image", "--cache-dir", tmp_path)
    model, _ = build(args)
    trunk = model.visual.trunk.state_dict()
    assert set(trunk) == {k for k in ref.state_dict() if not k.startswith("fc.")}
    for k, v in trunk.items():
        assert torch.equal(v, ref.state_dict()[k]), k
    assert args.image_mean == timm.get_pretrained_cfg("test_resnet").mean  # ImageNet statistics, not CLIP's
    with pytest.raises(ValueError, match="not a timm backbone"):
        P.plan_start(train_args("--model", "patentclip-tiny", "--pretrained-image"))
    torch.save({}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="give one of them"):
        P.plan_start(train_args("--model", "patentclip-tiny-resnet", "--pretrained-image", "--pretrained",
                                tmp_path / "x.pt", "--cache-dir", tmp_path))


def test_image_weights_from_a_file_and_text_tower_from_a_clip_checkpoint(tmp_path):
    """The two towers from two sources: the tiny SwinV2 from a timm state-dict file, the text tower from a
    patentclip-tiny CLIP checkpoint; the image projector and logit scale stay as initialised."""
    import timm

    torch.manual_seed(4)
    swin = timm.create_model("patentclip_tiny_swinv2")
    torch.save(swin.state_dict(), tmp_path / "swin.pth")
    clip_sd = seeded_state("patentclip-tiny", seed=5)
    torch.save({"state_dict": clip_sd, "epoch": 2}, tmp_path / "epoch_2.pt")
    args = train_args("--model", "patentclip-tiny-swinv2", "--pretrained-image-source", tmp_path / "swin.pth",
                      "--pretrained-text", tmp_path / "epoch_2.pt")
    model, _ = build(args)
    for k, v in model.visual.trunk.state_dict().items():
        if k in swin.state_dict():
            assert torch.equal(v, swin.state_dict()[k]), k
    partial = {k: v for k, v in swin.state_dict().items() if not k.startswith("layers.2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="not in the file"):
        build(train_args("--model", "patentclip-tiny-swinv2", "--pretrained-image-source", tmp_path / "partial.pth"))
    keys = P.text_keys(model)
    assert "token_embedding.weight" in keys and "text_projection" in keys and not any(k.startswith("visual") for k in keys)
    assert_same(clip_sd, model, keys)
    # a text tower of another shape is refused with the shapes
    other = {k: v for k, v in clip_sd.items()}
    other["text_projection"] = torch.zeros(96, 32)
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="text_projection"):
        build(train_args("--model", "patentclip-tiny-resnet", "--pretrained-text", tmp_path / "other.pt"))


def test_text_tower_from_a_cached_hub_model_by_model_tag(tmp_path):
    """--pretrained-text MODEL:TAG resolves the tag of that model in the hub cache (here the tiny CLIP stands in
    for a published one through its hf-hub: name) -- and hf-hub:/local-dir: specs work for the text tower too."""
    clip_sd = seeded_state("patentclip-tiny", seed=8)
    add_to_hub_cache(tmp_path, "patentclip-tests/tiny-clip", clip_folder(None, "patentclip-tiny", clip_sd))
    args = train_args("--model", "patentclip-tiny-efficientnet", "--pretrained-text",
                      "hf-hub:patentclip-tests/tiny-clip", "--cache-dir", tmp_path)
    model, _ = build(args)
    assert_same(clip_sd, model, P.text_keys(model))
    assert P.split_model_tag("ViT-B-32:openai") == ("ViT-B-32", "openai")
    assert P.split_model_tag("hf-hub:org/repo") == (None, "hf-hub:org/repo")


SLURM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "slurm")
PLAN = """
import json, sys
from patentclip.launch.args import parse_train_args
from patentclip.plugins import pretrained as P
out = {}
for script, argv in json.loads(sys.argv[1]).items():
    args = parse_train_args(["--train-data", "x.tar", *argv])
    out[script] = P.missing_message(P.plan_start(args).missing(), args.cache_dir, offline=True)
print(json.dumps(out))
"""


def test_slurm_scripts_name_the_commands_the_trainer_prints(tmp_path):
    """The login-node commands in a SLURM script's header are exactly those patentclip-train prints when the
    script's starting weights are not cached."""
    scripts = ["train_vitl.sh", "train_vitb.sh", "train_llm_informed.sh"]
    headers, argvs = {}, {}
    for script in scripts:
        path = os.path.join(SLURM, script)
        text = open(path).read()
        headers[script] = [line[1:].split("  #")[0].strip() for line in text.splitlines()
                           if line.startswith("#") and "python -c" in line]
        assert headers[script], script
        r = subprocess.run(["bash", "-c", f"source <(sed '/^source/d' {path}); printf '%s\\n' \"${{TRAIN_ARGS[@]}}\""],
                           capture_output=True, text=True, check=True)
        argvs[script] = r.stdout.splitlines()
    (tmp_path / "hf").mkdir()
    r = subprocess.run([sys.executable, "-c", PLAN, json.dumps(argvs)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    messages = json.loads(r.stdout.strip().splitlines()[-1])
    for script in scripts:
        printed = [line.strip() for line in messages[script].splitlines() if line.strip().startswith("python -c")]
        for cmd in headers[script]:
            assert cmd in printed, (script, cmd, printed)


def test_a_runs_checkpoint_brings_its_architecture(tmp_path):
    """--pretrained <run>/checkpoints/epoch_N.pt (a second stage): the run's params.txt says how it was built
    (here QuickGELU and 96 px images, as an OpenAI-initialised stage 1 at another size would have), and the new run
    takes that over, --model included when not given."""
    sd = seeded_state("patentclip-tiny", force_quick_gelu=True, force_image_size=96)
    (tmp_path / "stage1" / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1, "state_dict": sd, "model": "patentclip-tiny"},
               tmp_path / "stage1" / "checkpoints" / "epoch_1.pt")
    (tmp_path / "stage1" / "params.txt").write_text("model: patentclip-tiny\npretrained: None\nforce_quick_gelu: True\n"
                                                    "force_image_size: [96]\nimage_mean: None\n")
    args = train_args("--pretrained", tmp_path / "stage1" / "checkpoints" / "epoch_1.pt")
    model, _ = build(args)
    assert args.model == "patentclip-tiny" and args.force_quick_gelu and args.force_image_size == 96
    assert_same(sd, model)
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
