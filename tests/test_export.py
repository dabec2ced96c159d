"""patentclip-export: the open_clip model folder, loaded by plain open_clip in a fresh process, gives the trainer's
embeddings; the classification head and classes travel with it; DeepSpeed folders, S3 URLs and training-time
architecture overrides."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import run_cli
from test_evaluate import trained_run

from patentclip.evaluation import loading as EL
from patentclip.evaluation import export as X
from patentclip.launch.checkpoint_format import model_kwargs_from_params


@pytest.fixture(scope="module")
def run_dir(synthetic_shards, tmp_path_factory):
    return trained_run(tmp_path_factory, synthetic_shards)


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "patentclip-tiny-test"
    r = run_cli("patentclip.evaluation.export", "--checkpoint", run_dir / "checkpoints" / "epoch_1.pt", "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, json.loads(r.stdout)


def drawings(synthetic_shards, n=6):
    """(png paths, captions) of a few synthetic drawings, straight from the manifest."""
    root = synthetic_shards["manifest"].parent
    paths, caps = [], []
    with open(synthetic_shards["manifest"]) as f:
        for line in f:
            rec = json.loads(line)
            d = rec["drawings"][0]
            paths.append(str(root / d["path"]))
            caps.append(d["captions"][0])
            if len(paths) == n:
                break
    return paths, caps


VANILLA = textwrap.dedent("""
    import json, sys
    import torch
    from PIL import Image
    import open_clip

    folder, paths, caps, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
    assert "patentclip-tiny" not in open_clip.list_models()          # nothing of patentclip is registered
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + folder)
    tokenizer = open_clip.get_tokenizer("local-dir:" + folder)
    model.eval()
    images = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokenizer(caps), normalize=True)
    assert not any(m == "patentclip" or m.startswith("patentclip.") for m in sys.modules), "patentclip was imported"
    torch.save({"images": images, "img": img, "txt": txt, "logit_scale": model.logit_scale.detach()}, out)
""")


def trainer_embeddings(checkpoint, paths, caps):
    from PIL import Image

    m = EL.load_for_eval(str(checkpoint), None, None, "cpu")
    images = torch.stack([m.preprocess(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        feats = m.model(images, m.tokenizer(caps))
    return m, images, feats


def test_export_folder_layout(exported, run_dir, synthetic_shards):
    out, summary = exported
    files = set(os.listdir(out))
    assert {"open_clip_model.safetensors", "open_clip_config.json", "patentclip_head.safetensors",
            "patentclip_head.json", "classes.json", "README.md"} <= files
    assert not any(f.startswith(".export-") for f in files)
    cfg = json.loads((out / "open_clip_config.json").read_text())
    from patentclip.plugins.models import MODEL_CONFIG_DIR

    tiny = json.loads((MODEL_CONFIG_DIR / "patentclip-tiny.json").read_text())
    assert cfg["model_cfg"] == tiny  # the full architecture travels with the weights
    assert set(cfg["preprocess_cfg"]) >= {"mean", "std", "interpolation", "resize_mode"}
    assert cfg["patentclip"]["model_name"] == "patentclip-tiny" and cfg["patentclip"]["epoch"] == 1
    classes = json.loads((out / "classes.json").read_text())
    train = json.loads((synthetic_shards["train_dir"] / "classes.json").read_text())
    fields = ("id", "code", "name", "count")
    assert [{k: c[k] for k in fields} for c in classes] == [{k: c[k] for k in fields} for c in train]
    head_cfg = json.loads((out / "patentclip_head.json").read_text())["config"]
    assert head_cfg["num_classes"] == len(classes) and head_cfg["embed_dim"] == cfg["model_cfg"]["embed_dim"]
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: open_clip" in card and "local-dir:" in card
    assert summary["head"] is True and summary["num_classes"] == len(classes)


def test_vanilla_open_clip_in_a_fresh_process_gives_the_trainers_embeddings(exported, run_dir, synthetic_shards,
                                                                            tmp_path):
    out, _ = exported
    paths, caps = drawings(synthetic_shards)
    res = tmp_path / "vanilla.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", VANILLA, str(out), json.dumps(paths), json.dumps(caps), str(res)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    vanilla = torch.load(res)
    m, images, feats = trainer_embeddings(run_dir / "checkpoints" / "epoch_1.pt", paths, caps)
    assert torch.equal(vanilla["images"], images)  # same preprocessing
    torch.testing.assert_close(vanilla["img"], feats["image_features"], rtol=0, atol=1e-5)
    torch.testing.assert_close(vanilla["txt"], feats["text_features"], rtol=0, atol=1e-5)
    assert float(vanilla["logit_scale"].exp()) == pytest.approx(float(feats["logit_scale"]), rel=1e-6)
    # the images differ, so equal embeddings are not a coincidence of a constant model
    assert (feats["image_features"][0] - feats["image_features"][1]).abs().max() > 1e-3


def test_exported_head_and_reloading_the_folder(exported, run_dir, synthetic_shards):
    from safetensors.torch import load_file

    from patentclip.plugins.heads import load_head

    out, _ = exported
    ckpt = torch.load(run_dir / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=False)
    paths, caps = drawings(synthetic_shards)
    m, images, feats = trainer_embeddings(run_dir / "checkpoints" / "epoch_1.pt", paths, caps)
    head = load_head({"config": json.loads((out / "patentclip_head.json").read_text())["config"],
                      "state_dict": load_file(out / "patentclip_head.safetensors")}).eval()
    ref = load_head(ckpt["patentclip_head"]).eval()
    with torch.no_grad():
        torch.testing.assert_close(head.classify_image(feats["image_features"]),
                                   ref.classify_image(feats["image_features"]), rtol=0, atol=0)
    # patentclip-eval / export read the folder back: same model, head and classes
    m2, images2, feats2 = trainer_embeddings(out, paths, caps)
    assert m2.name == "patentclip-tiny" and m2.head is not None and len(m2.classes) == len(ckpt["classes"])
    torch.testing.assert_close(feats2["image_features"], feats["image_features"], rtol=0, atol=1e-6)


def test_export_from_deepspeed_folder_and_from_s3(exported, run_dir, s3_server, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    out, _ = exported
    ref = load_file(out / "open_clip_model.safetensors")
    ref_head = load_file(out / "patentclip_head.safetensors")

    def same_export(folder):
        got = load_file(folder / "open_clip_model.safetensors")
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
        head = load_file(folder / "patentclip_head.safetensors")
        for k in ref_head:
            torch.testing.assert_close(head[k], ref_head[k], rtol=0, atol=0, msg=k)

    # a DeepSpeed checkpoint folder (fp32 master weights; the head's config from the epoch_N.pt of the same tag)
    ds_out = tmp_path / "from-ds"
    assert X.main(["--checkpoint", str(run_dir / "checkpoints"), "--out", str(ds_out)]) == 0
    same_export(ds_out)

    # the run's checkpoint folder in S3 (as --checkpoint-dir s3://... lays it out): the .pt and the DeepSpeed folder
    s3_server.make_bucket("ckpts")
    fs = s3_server.filesystem()
    ck = run_dir / "checkpoints"
    fs.put_file(str(ck / "epoch_1.pt"), "ckpts/run/epoch_1.pt")
    for root, _, files in os.walk(ck / "deepspeed"):
        for fn in files:
            rel = os.path.relpath(os.path.join(root, fn), ck)
            fs.put_file(os.path.join(root, fn), f"ckpts/run/{rel}")
    env = {**os.environ, **s3_server.env()}
    r = run_cli("patentclip.evaluation.export", "--checkpoint", "s3://ckpts/run", "--out", tmp_path / "from-s3", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(r.stdout)["source"] == "s3://ckpts/run"  # stdout is the JSON summary only
    same_export(tmp_path / "from-s3")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    for url in ("s3://ckpts/run/epoch_1.pt", "s3://ckpts/run/deepspeed", "s3://ckpts/run/deepspeed/epoch_1"):
        name = url.rsplit("/", 1)[1]
        assert X.main(["--checkpoint", url, "--out", str(tmp_path / name)]) == 0, url
        same_export(tmp_path / name)
    assert X.main(["--checkpoint", "s3://ckpts/missing.pt", "--out", str(tmp_path / "x")]) == 2


def test_training_overrides_reach_the_config(run_dir, tmp_path):
    """QuickGELU (forced, or implied by an OpenAI-pretrained tower) is not in open_clip's state dict: export reads
    the checkpoint's model_args (or, for a checkpoint written before it carried them, the run's params.txt), and
    vanilla open_clip then builds the same network."""
    import open_clip

    from patentclip.launch.checkpoint_format import load_open_clip_state_dict
    from patentclip.plugins.models import register_model_configs

    fake_run = tmp_path / "run"
    (fake_run / "checkpoints").mkdir(parents=True)
    (fake_run / "params.txt").write_text("model: patentclip-tiny\npretrained: None\nforce_quick_gelu: True\n"
                                         "image_mean: None\n")
    ckpt = torch.load(run_dir / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_args"]["force_quick_gelu"] is False
    older = {k: v for k, v in ckpt.items() if k != "model_args"}  # an older checkpoint: params.txt decides
    torch.save(older, fake_run / "checkpoints" / "epoch_1.pt")
    out = tmp_path / "qg"
    assert X.main(["--checkpoint", str(fake_run / "checkpoints" / "epoch_1.pt"), "--out", str(out)]) == 0
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["quick_gelu"] is True
    # a checkpoint with its model_args: they decide, whatever params.txt beside it says
    torch.save({**ckpt, "model_args": {**ckpt["model_args"], "force_quick_gelu": True}},
               fake_run / "checkpoints" / "epoch_1.pt")
    (fake_run / "params.txt").write_text("model: patentclip-tiny\nforce_quick_gelu: False\n")
    out2 = tmp_path / "qg2"
    assert X.main(["--checkpoint", str(fake_run / "checkpoints" / "epoch_1.pt"), "--out", str(out2)]) == 0
    assert json.loads((out2 / "open_clip_config.json").read_text())["model_cfg"]["quick_gelu"] is True
    vanilla = open_clip.create_model(f"local-dir:{out}").eval()
    register_model_configs()
    ref = open_clip.create_model("patentclip-tiny", force_quick_gelu=True).eval()
    load_open_clip_state_dict(ref, ckpt["state_dict"])
    plain = open_clip.create_model("patentclip-tiny").eval()
    load_open_clip_state_dict(plain, ckpt["state_dict"])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(vanilla.encode_image(x), ref.encode_image(x), rtol=0, atol=1e-6)
        assert (vanilla.encode_image(x) - plain.encode_image(x)).abs().max() > 1e-4  # QuickGELU matters
    # the pretrained tag's own settings: OpenAI ViT-B-32 implies QuickGELU and its preprocessing
    kw = model_kwargs_from_params({"pretrained": "openai"}, "ViT-B-32")
    assert kw["force_quick_gelu"] is True and kw["image_interpolation"] == "bicubic"


def test_export_errors(run_dir, tmp_path):
    ckpt = torch.load(run_dir / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=False)
    bare = {"epoch": 1, "state_dict": ckpt["state_dict"]}  # a vanilla open_clip checkpoint: no model, no classes
    torch.save(bare, tmp_path / "bare.pt")
    assert X.main(["--checkpoint", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "o")]) == 2
    assert X.main(["--checkpoint", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "o"),
                   "--model", "patentclip-tiny"]) == 2  # still no class table
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(ckpt["classes"]))
    assert X.main(["--checkpoint", str(tmp_path / "bare.pt"), "--out", str(tmp_path / "o"),
                   "--model", "patentclip-tiny", "--classes-json", str(classes)]) == 0
    assert not (tmp_path / "o" / "patentclip_head.json").exists()
    assert X.main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "o")]) == 2


def test_loading_an_epoch_file_says_loaded_not_random_and_records_the_absolute_path(synthetic_shards, tmp_path):
    """patentclip-export and patentclip-eval on an epoch_N.pt: no "Model initialized randomly" (open_clip logs it
    while the model is built, before the checkpoint's weights are loaded) but the load itself; and the export's
    open_clip_config.json names the checkpoint by its absolute path though --checkpoint was relative."""
    import open_clip

    from patentclip.launch.checkpoint_format import open_clip_state_dict
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    torch.manual_seed(4)
    model = open_clip.create_model("patentclip-tiny")
    classes = json.loads((synthetic_shards["train_dir"] / "classes.json").read_text())
    classes = classes["classes"] if isinstance(classes, dict) else classes
    (tmp_path / "run").mkdir()
    torch.save({"epoch": 1, "name": "t", "state_dict": open_clip_state_dict(model), "model": "patentclip-tiny",
                "classes": classes}, tmp_path / "run" / "epoch_1.pt")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    r = subprocess.run([sys.executable, "-m", "patentclip.evaluation.export", "--checkpoint", "run/epoch_1.pt", "--out",
                        "folder"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "initialized randomly" not in log and "Loaded the weights of patentclip-tiny from" in log
    config = json.loads((tmp_path / "folder" / "open_clip_config.json").read_text())
    assert config["patentclip"]["source"] == str(tmp_path / "run" / "epoch_1.pt")
    r = subprocess.run([sys.executable, "-m", "patentclip.evaluation.cli", "--val-data", synthetic_shards["val"],
                        "--checkpoint", "run/epoch_1.pt", "--workers", "0", "--linear-probe", "off", "--out", "m.json"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert "initialized randomly" not in log and "Loaded the weights of patentclip-tiny from" in log
