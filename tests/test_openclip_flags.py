"""Every open_clip_train flag is honoured by patentclip-train or refused at start (launch/openclip_flags.py,
docs/openclip_flags.md): the table covers open_clip's parser, the page is the table, every refused flag stops the
run with what to use instead, and the honoured ones are shown to act (the model and transform flags on the model
open_clip builds, the optimizer and schedule, the DeepSpeed config, the towers, the data flags on the loader,
--siglip, --torchcompile, and one CLI run for the loop, checkpoint and logging flags with wandb offline)."""
import ast
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import conftest
from conftest import read_jsonl, run_cli

from patentclip.launch import openclip_flags as OF
from patentclip.launch.args import default_args, parse_train_args
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.registry import DATASETS, LOSSES

REPO = Path(__file__).resolve().parents[1]
load_builtin_plugins()
register_model_configs()


# ---------------------------------------------------------------------------------------------------------------
# the table

def test_every_open_clip_flag_has_a_row():
    """Fails when open_clip adds, renames or drops a flag: the table must say what patentclip does with it."""
    dests = {a.dest for a in OF.openclip_parser_actions()}
    assert dests == set(OF.BY_DEST), (sorted(dests - set(OF.BY_DEST)), sorted(set(OF.BY_DEST) - dests))
    assert len(OF.FLAGS) == len(OF.BY_DEST)
    for flag in OF.FLAGS:
        assert flag.status in (OF.HONOURED, OF.REFUSED) and flag.what
        assert (flag.test if flag.status == OF.HONOURED else flag.instead), flag.dest


def test_docs_page_is_the_table():
    assert (REPO / "docs" / "openclip_flags.md").read_text() == OF.render_markdown()


def test_every_cited_test_exists():
    names = {}
    for flag in OF.FLAGS:
        if flag.status != OF.HONOURED:
            continue
        path, _, func = flag.test.partition("::")
        if path not in names:
            tree = ast.parse((REPO / path).read_text())
            names[path] = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert func in names[path], f"{flag.dest}: {flag.test} does not exist"


def refused(argv, capsys) -> str:
    """What parse_train_args prints when it refuses ``argv`` (exit code 2, nothing started)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        parse_train_args(["--train-data", "x.tar", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err


def refusing_value(action, flag):
    """A command-line value that the table refuses (store_true flags: none)."""
    if action.nargs == 0:
        return []
    candidates = list(action.choices or []) + ["7", "x", "s3://bucket/x"]
    for value in candidates:
        typed = action.type(value) if action.type and value not in (action.choices or []) else value
        try:
            if flag.refused(typed, action.default):
                return [value]
        except (TypeError, ValueError):
            continue
    raise AssertionError(f"no refused value found for {action.dest}")


def test_refused_flags_stop_at_start_and_say_what_to_use_instead(capsys):
    refused_actions = [a for a in OF.openclip_parser_actions() if OF.BY_DEST[a.dest].status == OF.REFUSED]
    assert len(refused_actions) >= 15
    for action in refused_actions:
        flag = OF.BY_DEST[action.dest]
        message = refused([action.option_strings[0], *refusing_value(action, flag)], capsys)
        assert action.option_strings[0] in message and flag.instead in message, message
    # left at (or set to) an accepted value, nothing is refused
    args = parse_train_args(["--train-data", "x.tar", "--dataset-type", "webdataset", "--opt", "adamw"])
    assert args.dataset_type == "webdataset"
    assert "--loss-dist-impl bidir: applies to the siglip loss only" in refused(["--loss-dist-impl", "bidir"],
                                                                                 capsys)
    assert "CoCa's captioning decoder" in refused(["--model", "coca_ViT-B-32"], capsys)
    # every problem in one message
    both = refused(["--horovod", "--trace"], capsys)
    assert "--horovod" in both and "--trace" in both
    with pytest.raises(SystemExit, match="unknown nonsense"):
        from patentclip.launch.scalars import report_backends
        report_backends("tensorboard,nonsense")


# ---------------------------------------------------------------------------------------------------------------
# model, transforms, towers

def test_model_flags_reach_open_clip():
    """open_clip builds the model and transforms the flags ask for (make_model is the trainer's factory; the
starting-weight flags --pretrained, --pretrained-image and --cache-dir: tests/test_pretrained.py)."""
    import open_clip
    from open_clip.transformer import QuickGELU
    from torchvision import transforms as T

    from patentclip.launch.train import make_model

    args = default_args(model="patentclip-tiny", force_image_size=[48], force_context_length=20,
                        force_quick_gelu=True, force_patch_dropout=0.5, force_custom_text=True,
                        image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], image_interpolation="bilinear",
                        image_resize_mode="squash", aug_cfg={"scale": (0.5, 1.0)})
    model, train_tf, val_tf = make_model(args, torch.device("cpu"))
    assert isinstance(model, open_clip.CustomTextCLIP)
    assert tuple(model.visual.image_size) == (48, 48) and model.context_length == 20
    assert any(isinstance(m, QuickGELU) for m in model.modules())
    assert model.visual.patch_dropout.prob == 0.5
    norms = [t for t in val_tf.transforms if isinstance(t, T.Normalize)]
    assert tuple(norms[0].mean) == (0.1, 0.2, 0.3) and tuple(norms[0].std) == (0.4, 0.5, 0.6)
    resizes = [t for t in val_tf.transforms if isinstance(t, T.Resize)]
    assert resizes[0].interpolation == T.InterpolationMode.BILINEAR and resizes[0].size == (48, 48)  # squash
    crops = [t for t in train_tf.transforms if isinstance(t, T.RandomResizedCrop)]
    assert crops and crops[0].scale == (0.5, 1.0)


def test_tower_flags(capsys):
    """--lock-image/--lock-text (with unlocked groups/layers, frozen norms), --grad-checkpointing; --use-bn-sync
    converts batch norms on several GPU ranks and is refused on CPU."""
    import open_clip
    from torchvision.ops.misc import FrozenBatchNorm2d

    from patentclip.launch.train import apply_model_flags

    def tiny():
        torch.manual_seed(0)
        return open_clip.create_model("patentclip-tiny", output_dict=True)

    m = tiny()
    apply_model_flags(m, default_args(lock_image=True, lock_text=True, lock_text_unlocked_layers=2,
                                      lock_text_freeze_layer_norm=True, grad_checkpointing=True))
    assert not any(p.requires_grad for p in m.visual.parameters())
    blocks = m.transformer.resblocks
    assert not any(p.requires_grad for p in blocks[0].parameters()) and not m.token_embedding.weight.requires_grad
    # open_clip's groups from the end: the projection, then the last block with the final layer norm
    assert m.text_projection.requires_grad and all(p.requires_grad for p in blocks[-1].parameters())
    assert m.visual.transformer.grad_checkpointing and m.transformer.grad_checkpointing
    # open_clip 3.3 cannot leave the layer norms of a locked text tower trainable: said at start, not mid-build
    assert "add --lock-text-freeze-layer-norm" in refused(["--lock-text"], capsys)
    m = tiny()
    apply_model_flags(m, default_args(lock_image=True, lock_image_unlocked_groups=1))
    assert any(p.requires_grad for p in m.visual.parameters())
    assert not all(p.requires_grad for p in m.visual.parameters())
    # batch-norm statistics frozen with the locked tower (a ResNet image tower)
    rn = open_clip.create_model("RN50")
    apply_model_flags(rn, default_args(lock_image=True, lock_image_freeze_bn_stats=True))
    assert any(isinstance(x, FrozenBatchNorm2d) for x in rn.visual.modules())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in rn.visual.modules())
    rn = open_clip.create_model("RN50")
    apply_model_flags(rn, default_args(use_bn_sync=True, world_size=2, device="cuda:0"))
    assert any(isinstance(x, torch.nn.SyncBatchNorm) for x in rn.visual.modules())
    with pytest.raises(SystemExit, match="--use-bn-sync needs GPUs"):
        apply_model_flags(open_clip.create_model("RN50"), default_args(use_bn_sync=True, world_size=2, device="cpu"))


def test_torchcompile_trains_the_compiled_model(monkeypatch):
    """--torchcompile compiles the CLIP model in place (torch.compile; the test uses the aot_eager backend: the
    same graph capture and autograd tracing, no C++ code generation): the state dict keeps its keys, the compiled
    forward runs (dynamo compiled frames) and gives the eager losses and gradients."""
    import open_clip
    import torch._dynamo

    from patentclip.launch.train import COMPILE_BACKEND_ENV, apply_model_flags

    torch.manual_seed(0)
    eager = open_clip.create_model("patentclip-tiny", output_dict=True)
    compiled = open_clip.create_model("patentclip-tiny", output_dict=True)
    compiled.load_state_dict(eager.state_dict())
    keys = list(compiled.state_dict())
    monkeypatch.setenv(COMPILE_BACKEND_ENV, "aot_eager")
    torch._dynamo.reset()
    apply_model_flags(compiled, default_args(torchcompile=True))
    assert list(compiled.state_dict()) == keys
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(4, 3, 64, 64, generator=g), torch.randint(1, 400, (4, 40), generator=g)
    grads = []
    for m in (eager, compiled):
        out = m(images, texts)
        loss = (out["image_features"] @ out["text_features"].T).logsumexp(-1).mean()
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                                      for n, p in m.named_parameters()}))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert set(grads[0][1]) == set(grads[1][1]) and sum(bool(g.any()) for g in grads[1][1].values()) > 20
    for n, g0 in grads[0][1].items():
        assert torch.allclose(g0, grads[1][1][n], atol=1e-5, rtol=1e-4), n
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------------------------
# optimizer, schedule, DeepSpeed config, process group

def test_optimizer_and_schedule_flags():
    from patentclip.launch.train import make_optimizer, make_scheduler

    module = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    args = default_args(lr=0.3, beta1=0.8, beta2=0.95, eps=1e-5, wd=0.05, warmup=2, epochs=2)
    opt = make_optimizer(module, args)
    assert isinstance(opt, torch.optim.AdamW)
    for group in opt.param_groups:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-5 and group["lr"] == 0.3
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, 0.05]
    assert [tuple(p.shape) for p in opt.param_groups[1]["params"]] == [(4, 4)]  # only the matrix decays

    def lrs(**kw):
        a = default_args(lr=0.3, warmup=2, epochs=2, **kw)
        sched = make_scheduler(a, make_optimizer(module, a), steps_per_epoch=5)
        return [sched(step) for step in range(10)]

    cos = lrs(lr_scheduler="cosine")
    assert cos[:2] == [0.15, 0.3] and cos[2] == 0.3 and abs(cos[9] - 0.3 * 0.5 * (1 + math.cos(math.pi * 7 / 8))) < 1e-12
    assert lrs(lr_scheduler="const")[2:] == [0.3] * 8
    cool = lrs(lr_scheduler="const-cooldown", epochs_cooldown=1, lr_cooldown_end=0.1, lr_cooldown_power=2.0)
    assert cool[2:5] == [0.3] * 3  # cooldown over the last epoch (5 steps)
    assert [round(x, 12) for x in cool[5:]] == [round((1 - e / 5) ** 2 * 0.2 + 0.1, 12) for e in range(5)]
    with pytest.raises(SystemExit, match="needs --epochs-cooldown"):
        lrs(lr_scheduler="const-cooldown")


def test_deepspeed_config_flags():
    from patentclip.launch.train import deepspeed_config

    for precision, key in (("bf16", "bf16"), ("amp_bf16", "bf16"), ("pure_bf16", "bf16"), ("fp16", "fp16"),
                           ("amp", "fp16"), ("fp32", None)):
        cfg = deepspeed_config(default_args(precision=precision, zero_stage=1))
        assert cfg["bf16"]["enabled"] == (key == "bf16") and cfg["fp16"]["enabled"] == (key == "fp16"), precision
    cfg = deepspeed_config(default_args(grad_clip_norm=0.7, accum_freq=3, batch_size=5, zero_stage=2))
    assert cfg["gradient_clipping"] == 0.7 and cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_micro_batch_size_per_gpu"] == 5 and cfg["zero_optimization"]["stage"] == 2
    assert deepspeed_config(default_args(zero_stage=0))["gradient_clipping"] == 0.0  # open_clip: no clipping


def test_dist_flags_reach_the_process_group(tmp_path):
    """--dist-url and --dist-backend: the trainer's setup (open_clip's init_distributed_device) initialises the
    process group with them (2 SLURM-style ranks in child processes, a tcp:// rendezvous that no environment
    variable names; open_clip passes rank and world size to a tcp:// init under SLURM). --no-set-device-rank is
    read by the same function and acts on CUDA devices only."""
    code = (
        "import sys, torch.distributed as dist\n"
        "from patentclip.launch.args import parse_train_args\n"
        "from patentclip.launch.train import setup_run\n"
        "args = parse_train_args(sys.argv[1:])\n"
        "setup_run(args)\n"
        "print('BACKEND', dist.get_backend(), args.distributed, args.world_size, args.rank, args.no_set_device_rank)\n"
        "dist.destroy_process_group()\n")
    url = f"tcp://127.0.0.1:{conftest_free_port()}"
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items()
               if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env.update(SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2")
        procs.append(subprocess.Popen([sys.executable, "-c", code, "--train-data", "x.tar", "--logs", str(tmp_path),
                                       "--name", "d", "--dist-url", url, "--dist-backend", "gloo",
                                       "--no-set-device-rank"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    outs = [p.communicate(timeout=300) for p in procs]
    for rank, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, err[-3000:]
        assert f"BACKEND gloo True 2 {rank} True" in out


def test_device_flag_picks_the_trainers_device(tmp_path):
    """--device: patentclip-train's setup (open_clip's init_distributed_device) puts the run on it: --device cpu
    gives a CPU run; the default cuda on a machine without a GPU falls back to the CPU (gloo), as it must for the
    CPU tests and a login node. (On a GPU machine, --device cuda picks cuda:<local rank>; CUDA is not tested here.)"""
    code = (
        "import os, sys, torch\n"
        "from patentclip.launch.args import parse_train_args\n"
        "from patentclip.launch.train import setup_run\n"
        "args = parse_train_args(sys.argv[1:])\n"
        "device, locks = setup_run(args)\n"
        "print('DEVICE', device, args.device, os.environ.get('DS_ACCELERATOR'), torch.cuda.is_available())\n")
    for i, flags in enumerate((["--device", "cpu"], [])):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DS_ACCELERATOR")}
        r = subprocess.run([sys.executable, "-c", code, "--train-data", "x.tar", "--logs", str(tmp_path), "--name",
                            f"d{i}", *flags], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        line = next(x for x in r.stdout.splitlines() if x.startswith("DEVICE"))
        if line.endswith("False"):  # no GPU here
            assert line == "DEVICE cpu cpu cpu False", line
        else:
            assert line.split()[1].startswith("cpu" if flags else "cuda"), line


def conftest_free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------------
# data flags

def test_upsampling_factors_weight_the_sources(synthetic_shards):
    """--train-data A::B with --dataset-resampled and --train-data-upsampling-factors 1::0 draws from A only."""
    import open_clip

    table_path = synthetic_shards["train"]
    from patentclip.plugins.classes import load_class_table

    table = load_class_table(table_path)
    _, pre, _ = open_clip.create_model_and_transforms("patentclip-tiny")
    tok = open_clip.get_tokenizer("patentclip-tiny")
    source_a, source_b = table_path, synthetic_shards["val"]
    keys_b = {k for b in DATASETS.get("patent-wds")(conftest.data_args(source_b), pre, True, tokenizer=tok,
                                                    class_table=table).dataloader for k in b["key"]}
    args = conftest.data_args(f"{source_a}::{source_b}", dataset_resampled=True, train_num_samples=80,
                              train_data_upsampling_factors="1::0")
    keys = [k for b in DATASETS.get("patent-wds")(args, pre, True, tokenizer=tok, class_table=table).dataloader
            for k in b["key"]]
    assert len(keys) == 80 and not set(keys) & keys_b
    args.train_data_upsampling_factors = "0::1"
    keys = [k for b in DATASETS.get("patent-wds")(args, pre, True, tokenizer=tok, class_table=table).dataloader
            for k in b["key"]]
    assert set(keys) <= keys_b


def test_val_num_samples_limits_validation(synthetic_shards):
    import open_clip

    from patentclip.plugins.classes import load_class_table

    table = load_class_table(synthetic_shards["train"])
    _, _, pre = open_clip.create_model_and_transforms("patentclip-tiny")
    tok = open_clip.get_tokenizer("patentclip-tiny")
    full = DATASETS.get("patent-wds")(conftest.data_args(val=synthetic_shards["val"]), pre, False, tokenizer=tok,
                                      class_table=table).dataloader
    part = DATASETS.get("patent-wds")(conftest.data_args(val=synthetic_shards["val"], val_num_samples=10), pre,
                                      False, tokenizer=tok, class_table=table).dataloader
    assert part.num_samples == 10 < full.num_samples


# ---------------------------------------------------------------------------------------------------------------
# --siglip

def test_siglip_is_open_clips_sigmoid_loss(capsys):
    """--siglip selects the registered loss siglip (open_clip's SigLipLoss, same number) and builds the model with
    open_clip's SigLIP logit scale and bias; it conflicts with a multi-loss recipe or a --loss without siglip."""
    from open_clip.loss import SigLipLoss

    from patentclip.launch.train import make_model

    args = parse_train_args(["--train-data", "x.tar", "--siglip"])
    assert args.loss == "siglip" and args.siglip
    g = torch.Generator().manual_seed(0)
    v, t = F.normalize(torch.randn(6, 8, generator=g), dim=-1), F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale, bias = torch.tensor([7.0]), torch.tensor([-3.0])
    got = LOSSES.build("siglip", default_args(), None)({"image_features": v, "text_features": t,
                                                        "logit_scale": scale, "logit_bias": bias}, {})["siglip"]
    assert torch.equal(got, SigLipLoss()(v, t, scale, bias))
    with pytest.raises(KeyError, match="logit_bias"):
        LOSSES.build("siglip", default_args(), None)({"image_features": v, "text_features": t,
                                                      "logit_scale": scale}, {})
    model, _, _ = make_model(default_args(model="patentclip-tiny", siglip=True), torch.device("cpu"))
    assert torch.allclose(model.logit_scale, torch.tensor([math.log(10)])) and float(model.logit_bias) == -10.0
    assert "--recipe designclip has several losses" in refused(["--siglip", "--recipe", "designclip"], capsys)
    assert "has no siglip term" in refused(["--siglip", "--loss", "clip"], capsys)
    assert parse_train_args(["--train-data", "x.tar", "--siglip", "--loss", "siglip,class_contrastive=0.5"]).siglip


# ---------------------------------------------------------------------------------------------------------------
# one CLI run: loop, checkpoint and logging flags, wandb offline

def wandb_history(run_file: Path):
    """The history rows of an offline wandb run file (W&B's record log: 32 KiB blocks of records with a 7-byte
    header, crc32 / length / type; each record a wandb_internal_pb2.Record)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, records, buf = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            records.append(buf + chunk)
    rows, run = [], None
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in rec.history.item})
        elif kind == "run":
            run = rec.run
    return rows, run


@pytest.fixture(scope="module")
def flags_run(synthetic_shards, tmp_path_factory):
    logs = tmp_path_factory.mktemp("flags")
    r = run_cli("patentclip.launch.train", "--train-data", synthetic_shards["train"], "--val-data",
                synthetic_shards["val"], "--model", "patentclip-tiny", "--batch-size", "16", "--epochs", "3",
                "--lr", "1e-3", "--warmup", "2", "--workers", "0", "--logs", logs, "--name", "flags", "--seed", "0",
                "--skip-scheduler", "--save-frequency", "2", "--save-most-recent", "--delete-previous-checkpoint",
                "--log-local", "--debug", "--val-frequency", "2", "--zeroshot-frequency", "3",
                "--log-every-n-steps", "3", "--report-to", "tensorboard,wandb", "--wandb-notes", "flag test",
                "--wandb-project-name", "patentclip-tests", env={"WANDB_MODE": "offline"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return logs / "flags"


def test_loop_flags_in_one_run(flags_run):
    run = flags_run
    ck = run / "checkpoints"
    # --save-frequency 2 (+ the last epoch), --delete-previous-checkpoint, --save-most-recent
    assert sorted(p.name for p in (ck / "deepspeed").iterdir() if p.is_dir()) == ["epoch_2", "epoch_3"]
    assert sorted(p.name for p in ck.glob("*.pt")) == ["epoch_3.pt", "epoch_latest.pt"]
    last = torch.load(ck / "epoch_3.pt", map_location="cpu", weights_only=False)
    latest = torch.load(ck / "epoch_latest.pt", map_location="cpu", weights_only=False)
    assert latest["epoch"] == 3 and all(torch.equal(v, last["state_dict"][k]) for k, v in latest["state_dict"].items())
    # --log-local: every rank's own log (open_clip's name, out-<rank>); --debug: DEBUG lines
    assert (run / "out-0").is_file() and not (run / "out.log").exists()
    log = (run / "out-0").read_text()
    assert "| DEBUG |" in log and "DeepSpeed config:" in log
    # --log-every-n-steps 3: progress lines at batches 0, 3, 6, ... and the last of each epoch
    steps = read_jsonl(run / "train_steps.jsonl")
    per_epoch = len(steps) // 3
    expected = len([i for i in range(per_epoch) if i % 3 == 0 or i + 1 == per_epoch]) * 3
    assert log.count("Train Epoch:") == expected
    # --skip-scheduler: the lr stays at --lr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    lrs = [e.value for e in acc.Scalars("train/lr")]
    assert lrs and all(lr == pytest.approx(1e-3) for lr in lrs)
    # --val-frequency 2: validation after epochs 2 and 3 (the last); --zeroshot-frequency 3: zero-shot in epoch 3
    results = read_jsonl(ck / "results.jsonl")
    assert [r["epoch"] for r in results] == [2, 3]
    assert "zeroshot_top1" not in results[0] and "zeroshot_top1" in results[1]
    assert "i2i_mAP" in results[0]


def test_wandb_logs_the_tensorboard_scalars(flags_run):
    """--report-to tensorboard,wandb: the offline wandb run holds every tensorboard scalar with the same values at
    the same step (train/*, data/*) or epoch (val/*), in --wandb-project-name, with --wandb-notes."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(flags_run / "tensorboard"))
    acc.Reload()
    runs = list((flags_run / "wandb").glob("offline-run-*/run-flags.wandb"))
    assert len(runs) == 1
    rows, run = wandb_history(runs[0])
    assert run.project == "patentclip-tests" and run.notes == "flag test" and run.run_id == "flags"
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/lr", "data/skipped_samples", "val/i2i_mAP"} <= set(tags)
    for tag in tags:
        axis = "epoch" if tag.startswith("val/") else "step"
        logged = {row[axis]: row[tag] for row in rows if tag in row}
        board = {e.step: e.value for e in acc.Scalars(tag)}
        assert set(logged) == set(board), tag
        for x, value in board.items():
            assert logged[x] == pytest.approx(value, rel=1e-6, abs=1e-7), (tag, x)
