"""The real path at tiny size: shards -> 2-process DeepSpeed training (gloo) -> checkpoints -> resume -> eval,
and vanilla open_clip on the same shards and checkpoints."""
import json

import pytest
import torch

from conftest import read_jsonl, run_cli


def train_argv(shards, logs, name, epochs, *extra):
    return ["--train-data", shards["train"], "--val-data", shards["val"], "--model", "patentclip-tiny",
            "--batch-size", "8", "--epochs", str(epochs), "--lr", "1e-3", "--warmup", "5", "--workers", "1",
            "--logs", str(logs), "--name", name, "--seed", "0", "--log-every-n-steps", "5", *extra]


@pytest.fixture(scope="module")
def two_process_run(synthetic_shards, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    r = run_cli("patentclip.launch.train", "--nproc-per-node", "2",
                *train_argv(synthetic_shards, logs, "e2e", 2, "--loss", "class_aware_contrastive=1,clip=0.5"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return logs / "e2e", r


def test_two_process_training_writes_open_clip_layout(two_process_run):
    run, _ = two_process_run
    assert (run / "out.log").is_file() and (run / "params.txt").is_file()
    params = (run / "params.txt").read_text()
    assert "world_size: 2" in params and "zero_stage: 1" in params
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    ck = run / "checkpoints"
    assert (ck / "epoch_1.pt").is_file() and (ck / "epoch_2.pt").is_file()
    assert (ck / "deepspeed" / "latest").read_text().strip() == "epoch_2"
    results = read_jsonl(ck / "results.jsonl")
    assert results[-1]["epoch"] == 2
    for key in ("image_to_text_R@1", "text_to_image_R@10", "zeroshot_top1", "i2i_mAP"):
        assert 0.0 <= results[-1][key] <= 1.0
    steps = read_jsonl(run / "train_steps.jsonl")
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert all({"loss", "clip", "class_aware_contrastive"} <= set(s) for s in steps)
    assert abs(steps[0]["loss"] - (steps[0]["class_aware_contrastive"] + 0.5 * steps[0]["clip"])) < 1e-4


def test_tensorboard_scalars(two_process_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = two_process_run
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/clip", "train/class_aware_contrastive", "train/lr", "val/zeroshot_top1",
            "val/i2i_mAP"} <= tags


def test_resume_latest_continues_from_last_checkpoint(two_process_run, synthetic_shards):
    run, _ = two_process_run
    logs = run.parent
    before = read_jsonl(run / "train_steps.jsonl")
    r = run_cli("patentclip.launch.train", "--nproc-per-node", "2",
                *train_argv(synthetic_shards, logs, "e2e", 3, "--loss", "class_aware_contrastive=1,clip=0.5",
                            "--resume", "latest"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (run / "out.log").read_text()
    assert "Resumed DeepSpeed checkpoint" in log and "epoch_2 (epoch 2" in log
    after = read_jsonl(run / "train_steps.jsonl")[len(before):]
    assert after and {s["epoch"] for s in after} == {2}
    assert after[0]["step"] == before[-1]["step"] + 1
    assert (run / "checkpoints" / "deepspeed" / "latest").read_text().strip() == "epoch_3"


def test_an_existing_run_is_not_overwritten_without_resume(two_process_run, synthetic_shards):
    run, _ = two_process_run
    r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, run.parent, "e2e", 1))
    assert r.returncode != 0 and "already exists" in (r.stdout + r.stderr)


def test_eval_cli_on_checkpoint(two_process_run, synthetic_shards, tmp_path):
    run, _ = two_process_run
    out = tmp_path / "m.json"
    r = run_cli("patentclip.evaluation.cli", "--val-data", synthetic_shards["val"], "--model", "patentclip-tiny",
                "--checkpoint", run / "checkpoints" / "epoch_2.pt", "--workers", "0", "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(out.read_text())
    assert m["num_samples"] > 0 and "i2i_mAP" in m and "zeroshot_top1" in m
    # the DeepSpeed checkpoint folder gives the same weights, hence the same metrics
    out2 = tmp_path / "m2.json"
    r = run_cli("patentclip.evaluation.cli", "--val-data", synthetic_shards["val"], "--model", "patentclip-tiny",
                "--checkpoint", run / "checkpoints" / "deepspeed" / "epoch_2", "--workers", "0", "--out", out2)
    assert r.returncode == 0, r.stderr[-3000:]
    m2 = json.loads(out2.read_text())
    for k in ("i2i_mAP", "zeroshot_top1", "image_to_text_R@5"):
        assert abs(m[k] - m2[k]) < 1e-6


def test_vanilla_open_clip_loads_the_checkpoint(two_process_run):
    import open_clip

    from patentclip.plugins.models import register_model_configs

    run, _ = two_process_run
    register_model_configs()
    ckpt = torch.load(run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=False)
    assert {"epoch", "name", "state_dict"} <= set(ckpt) and ckpt["state_dict"]["logit_scale"].ndim == 0
    model, _, _ = open_clip.create_model_and_transforms(
        "patentclip-tiny", pretrained=str(run / "checkpoints" / "epoch_2.pt"))
    sd = model.state_dict()
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(sd[k], v), k


def test_vanilla_open_clip_trains_on_the_shards(synthetic_shards, tmp_path):
    """`python -m open_clip_train.main --dataset-type webdataset` on patentclip shards (+ the documented fix)."""
    r = run_cli("patentclip.launch.openclip_vanilla", "--train-data", synthetic_shards["train"],
                "--dataset-type", "webdataset", "--model", "patentclip-tiny", "--batch-size", "8", "--epochs", "1",
                "--precision", "fp32", "--workers", "1", "--logs", tmp_path, "--name", "vanilla", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "vanilla" / "checkpoints" / "epoch_1.pt").is_file()
    assert "Contrastive_loss" in (tmp_path / "vanilla" / "out.log").read_text()


def test_seeded_runs_repeat(synthetic_shards, tmp_path):
    losses = []
    for name in ("a", "b"):
        r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, tmp_path, name, 1, "--workers", "0",
                                                           "--val-frequency", "0"))
        assert r.returncode == 0, r.stderr[-3000:]
        losses.append([s["loss"] for s in read_jsonl(tmp_path / name / "train_steps.jsonl")])
    assert losses[0] == losses[1] and len(losses[0]) > 1


def test_uint8_and_float_image_transports_train_identically(synthetic_shards, tmp_path):
    """The step normalises (and erases) the uint8 pixels on the device exactly as the float pipeline does in the
    workers: the same losses, step for step, with flips, GridMask and random erasing on."""
    losses = {}
    for transport in ("uint8", "float"):
        r = run_cli("patentclip.launch.train", *train_argv(
            synthetic_shards, tmp_path, transport, 1, "--workers", "0", "--val-frequency", "0",
            "--image-transport", transport, "--aug-hflip", "0.5", "--aug-gridmask", "0.5",
            "--aug-random-erasing", "0.5"))
        assert r.returncode == 0, r.stderr[-3000:]
        losses[transport] = [s["loss"] for s in read_jsonl(tmp_path / transport / "train_steps.jsonl")]
    assert losses["uint8"] == losses["float"] and len(losses["uint8"]) > 1


def test_one_rank_run_resumes_on_two_ranks_with_its_zero_stage(synthetic_shards, tmp_path):
    """--zero-stage auto: ZeRO-0 on one rank (nothing to partition); resuming a mid-epoch checkpoint on two ranks
    keeps the stage it was written with (its optimizer sits whole in the model-states file), continues the step
    count and says it resumes at the same fraction of the epoch. An explicit stage that cannot read it is
    refused before anything is built."""
    base = ["--workers", "0", "--val-frequency", "0", "--save-every-n-steps", "3"]
    r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, tmp_path, "grow", 1, *base))
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "grow"
    ds = run / "checkpoints" / "deepspeed"
    assert "zero_stage: 0" in (run / "params.txt").read_text()
    meta = json.loads((ds / "step_3" / "meta.json").read_text())
    assert meta["zero_stage"] == 0 and meta["world_size"] == 1 and meta["step"] == 3
    before = read_jsonl(run / "train_steps.jsonl")
    assert len(before) > 4

    refused = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, tmp_path, "grown", 1, *base,
                                                              "--zero-stage", "1", "--resume", ds / "step_3"))
    assert refused.returncode != 0
    assert "written with ZeRO stage 0" in refused.stderr and "--zero-stage 0" in refused.stderr
    assert not (tmp_path / "grown").exists()  # refused before any folder was made: the corrected rerun can use it

    r = run_cli("patentclip.launch.train", "--nproc-per-node", "2",
                *train_argv(synthetic_shards, tmp_path, "grown", 1, *base, "--resume", ds / "step_3"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    grown = tmp_path / "grown"
    log = (grown / "out.log").read_text()
    assert "ZeRO stage 0, as the checkpoint being resumed" in log
    assert "DeepSpeed engine: ZeRO stage 0, fp32, world size 2" in log
    assert "at the same fraction" in r.stderr + r.stdout + log
    after = read_jsonl(grown / "train_steps.jsonl")
    assert after and {s["epoch"] for s in after} == {0} and after[0]["step"] == 3
