"""Recipes (--recipe clip / designclip / llm-informed): what each sets, that individual flags win, and a short
training run per recipe on the synthetic shards that lowers every logged loss term."""

import pytest
import torch

from conftest import read_jsonl, run_cli

from patentclip.launch.args import parse_train_args
from patentclip.plugins.recipes import RECIPES, apply_recipe, flags_given

BASE = ["--train-data", "x.tar", "--model", "patentclip-tiny"]
LOSS_TERMS = {
    "clip": {"clip"},
    "designclip": {"class_aware_classification", "class_aware_contrastive", "multiview_contrastive"},
    "llm-informed": {"clip", "class_contrastive", "category_contrastive"},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_sets_all_its_values(name):
    base = BASE[:2] if "model" in RECIPES[name] else BASE  # the ArcFace baselines choose their backbone
    args = parse_train_args(base + ["--recipe", name])
    for attr, value in RECIPES[name].items():
        assert getattr(args, attr) == value, attr
    assert args.recipe_settings == RECIPES[name]


def test_the_papers_settings():
    d = parse_train_args(BASE + ["--recipe", "designclip"])
    assert d.loss == "class_aware_classification=1.0,class_aware_contrastive=0.1,multiview_contrastive=0.2"
    assert (d.loss_beta, d.sampler, d.sampler_beta, d.loss_weighting, d.lock_text) == (1.2, "class_aware", 1.2,
                                                                                        "fixed", False)
    m = parse_train_args(BASE + ["--recipe", "llm-informed"])
    assert m.loss == "clip,class_contrastive,category_contrastive" and m.loss_weighting == "uncertainty"
    assert m.lock_text and m.lock_text_freeze_layer_norm and m.lock_text_unlocked_layers == 0
    assert (m.aug_hflip, m.aug_rrc_scale, m.aug_random_erasing, m.aug_gridmask) == (0.5, 0.5, 0.5, 0.5)
    c = parse_train_args(BASE + ["--recipe", "clip"])
    assert c.loss == "clip" and c.sampler == "natural" and not c.lock_text
    plain = parse_train_args(BASE)
    assert plain.recipe is None and plain.loss == "clip" and plain.recipe_settings == {}


def test_flags_on_the_command_line_override_the_recipe():
    a = parse_train_args(BASE + ["--recipe", "designclip", "--loss-beta", "1.0", "--sampler=natural",
                                 "--loss", "class_aware_contrastive"])
    assert (a.loss_beta, a.sampler, a.loss) == (1.0, "natural", "class_aware_contrastive")
    assert a.sampler_beta == 1.2 and "loss_beta" not in a.recipe_settings
    b = parse_train_args(BASE + ["--recipe", "llm-informed", "--aug-gridmask", "0", "--lock-text-unlocked-layers",
                                 "2", "--loss-weighting", "fixed"])
    assert (b.aug_gridmask, b.lock_text_unlocked_layers, b.loss_weighting) == (0.0, 2, "fixed")
    assert b.lock_text and b.aug_hflip == 0.5
    # open_clip's parser accepts unique prefixes of its flags: so does the override check
    c = parse_train_args(BASE + ["--recipe", "llm-informed", "--lock-text-unl", "1"])
    assert c.lock_text_unlocked_layers == 1 and "lock_text_unlocked_layers" not in c.recipe_settings
    assert "--lock-text-unlocked-layers" in flags_given(["--lock-text-unl", "1"])
    # a recipe's store_true can be switched off
    d = parse_train_args(BASE + ["--recipe", "llm-informed", "--no-lock-text"])
    assert d.lock_text is False
    with pytest.raises(ValueError, match="contradict"):
        parse_train_args(BASE + ["--lock-text", "--no-lock-text"])
    with pytest.raises(SystemExit):
        parse_train_args(BASE + ["--recipe", "nope"])
    ns = parse_train_args(BASE)
    ns.recipe = "nope"
    with pytest.raises(ValueError, match="unknown"):
        apply_recipe(ns, [])


def test_recipe_losses_build():
    import argparse

    from patentclip.launch.args import default_args
    from patentclip.plugins.classes import ClassInfo, ClassTable
    from patentclip.plugins.losses import LossSet
    from patentclip.plugins.builtin import load_builtin_plugins

    load_builtin_plugins()
    table = ClassTable([ClassInfo(i, str(i), str(i), 10 - i) for i in range(5)])
    for name, terms in LOSS_TERMS.items():
        a = parse_train_args(BASE + ["--recipe", name])
        ns = argparse.Namespace(**{**vars(a), "world_size": 1, "rank": 0})
        s = LossSet(ns.loss, ns, table)
        assert set(s.losses) == terms
        assert s.needs_second_view == (name == "designclip")
        assert (s.log_vars is not None) == (name == "llm-informed")
    d = LossSet(RECIPES["designclip"]["loss"], default_args(model="patentclip-tiny", loss_beta=1.2), table)
    assert d.weights == {"class_aware_classification": 1.0, "class_aware_contrastive": 0.1,
                         "multiview_contrastive": 0.2}


# -- short training runs ---------------------------------------------------------------------------------------

def train_argv(shards, logs, name, recipe, epochs, *extra):
    return ["--train-data", shards["train"], "--model", "patentclip-tiny", "--batch-size", "8",
            "--epochs", str(epochs), "--lr", "2e-3", "--warmup", "2", "--workers", "0", "--logs", str(logs),
            "--name", name, "--seed", "0", "--log-every-n-steps", "4", "--recipe", recipe, *extra]


def start_cli(module, *argv):
    """``python -m module argv`` started in the background, one torch thread (several runs share the cores)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", module, *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.fixture(scope="module")
def recipe_runs(synthetic_shards, tmp_path_factory):
    """One 2-epoch run per recipe and a --accum-freq 2 run, all at once (each single-threaded)."""
    logs = tmp_path_factory.mktemp("recipes")
    procs = {recipe: start_cli("patentclip.launch.train", *train_argv(synthetic_shards, logs, recipe, recipe, 2))
             for recipe in sorted(LOSS_TERMS)}  # the ArcFace recipes run in tests/test_arcface.py
    procs["accum"] = start_cli("patentclip.launch.train", *train_argv(
        synthetic_shards, logs, "accum", "designclip", 1, "--accum-freq", "2", "--batch-size", "4",
        "--train-num-samples", "96"))
    runs, outputs = {}, {}
    for name, p in procs.items():
        outputs[name] = p.communicate(timeout=600)[0]
        runs[name] = (logs / name, p.returncode, outputs[name])
    for name in LOSS_TERMS:
        _, rc, out = runs[name]
        assert rc == 0, out[-4000:]
    return {name: r[0] for name, r in runs.items()} | {"accum_result": runs["accum"]}


def quarter_means(steps, key):
    values = [s[key] for s in steps]
    n = max(2, len(values) // 4)
    return sum(values[:n]) / n, sum(values[-n:]) / n


@pytest.mark.parametrize("recipe", sorted(LOSS_TERMS))
def test_short_training_lowers_every_loss_term(recipe_runs, recipe):
    run = recipe_runs[recipe]
    steps = read_jsonl(run / "train_steps.jsonl")
    assert len(steps) >= 20
    terms = LOSS_TERMS[recipe] | {"loss"}
    assert terms <= set(steps[0])
    for key in terms:
        first, last = quarter_means(steps, key)
        assert last < first, f"{recipe}: {key} did not go down ({first:.4f} -> {last:.4f})"
    if recipe == "llm-informed":
        for key in ("s_clip", "s_class_contrastive", "s_category_contrastive"):
            assert steps[0][key] == 0.0 and abs(steps[-1][key]) > 1e-3, key  # learned from 0
    params = (run / "params.txt").read_text()
    assert f"recipe: {recipe}" in params


def test_designclip_run_trains_and_checkpoints_the_head(recipe_runs):
    from patentclip.plugins.heads import load_head

    run = recipe_runs["designclip"]
    params = (run / "params.txt").read_text()
    assert "multiview: True" in params and "sampler: class_aware" in params
    ckpt = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)
    head = load_head(ckpt["patentclip_head"]).eval()
    assert head.num_classes == 5 and head.embed_dim == 64
    ds = torch.load(run / "checkpoints" / "deepspeed" / "epoch_2" / "mp_rank_00_model_states.pt",
                    map_location="cpu", weights_only=False)["module"]
    key = "criterion.losses.class_aware_classification.head.classifier.weight"
    assert torch.equal(ds[key].float(), ckpt["patentclip_head"]["state_dict"]["classifier.weight"])
    # image-only classification with the trained CLIP image tower and the head (the documented eval mode)
    import open_clip

    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    model = open_clip.create_model("patentclip-tiny", pretrained=str(run / "checkpoints" / "epoch_2.pt")).eval()
    with torch.no_grad():
        logits = head.classify_image(model.encode_image(torch.rand(3, 3, 64, 64), normalize=True))
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()


def test_llm_informed_run_keeps_the_text_tower_frozen(recipe_runs):
    from open_clip import create_model
    from open_clip_train.main import random_seed

    from patentclip.plugins.models import register_model_configs

    run = recipe_runs["llm-informed"]
    register_model_configs()
    random_seed(0, 0)  # what patentclip-train does before creating the model
    init = create_model("patentclip-tiny").state_dict()
    trained = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)["state_dict"]
    text_keys = [k for k in init if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")]
    assert text_keys and all(torch.equal(init[k], trained[k]) for k in text_keys)
    assert not torch.equal(init["visual.proj"], trained["visual.proj"])
    assert not torch.equal(init["logit_scale"].reshape(()), trained["logit_scale"])
    # the learned loss weights are in the DeepSpeed state (so a resume restores them)
    ds = torch.load(run / "checkpoints" / "deepspeed" / "epoch_2" / "mp_rank_00_model_states.pt",
                    map_location="cpu", weights_only=False)["module"]
    last = read_jsonl(run / "train_steps.jsonl")[-1]
    s = float(ds["criterion.log_vars.clip"])
    assert s != 0.0 and abs(s - last["s_clip"]) < 0.05


def test_resume_restores_head_and_loss_weights(recipe_runs, synthetic_shards):
    """--resume latest continues the designclip run: the classification loss carries on from where it was (the
    head is restored), not from an untrained head's."""
    run = recipe_runs["designclip"]
    before = read_jsonl(run / "train_steps.jsonl")
    r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, run.parent, "designclip", "designclip", 3,
                                                         "--resume", "latest"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = read_jsonl(run / "train_steps.jsonl")[len(before):]
    assert after and after[0]["step"] == before[-1]["step"] + 1
    untrained = sum(s["class_aware_classification"] for s in before[:4]) / 4
    resumed = sum(s["class_aware_classification"] for s in after[:4]) / 4
    assert resumed < untrained * 0.8, (untrained, resumed)


def test_accum_freq_run(recipe_runs, synthetic_shards):
    """--accum-freq 2 (open_clip's feature cache under DeepSpeed) with the designclip losses: runs, logs one line
    per optimizer step (each over 2 micro-batches of 4), every term finite. Needs launch/train.py to build the
    DeepSpeed config with gradient_accumulation_steps = accum_freq and to step with train_step_accum."""
    run, rc, out = recipe_runs["accum_result"]
    assert rc == 0, out[-4000:]
    steps = read_jsonl(run / "train_steps.jsonl")
    assert [s["step"] for s in steps] == list(range(12))  # 96 samples / (2 micro-batches x 4)
    assert LOSS_TERMS["designclip"] <= set(steps[0])
    assert all(all(v == v and abs(v) != float("inf") for v in s.values()) for s in steps)
