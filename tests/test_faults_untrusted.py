"""Untrusted checkpoint files (issue 15): a planted pickle must not run under patentclip-train --resume,
patentclip-eval or patentclip-export; DeepSpeed's own files load weights-only with exactly the types they need."""
import json
import os

import pytest
import torch

from conftest import run_cli
from patentclip.launch import safe_load


class Planted:
    """A pickle that runs a command when loaded with full pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker, **content):
    torch.save({"epoch": 1, "state_dict": {}, **content, "x": Planted(marker)}, path)
    return path


def test_a_planted_pickle_is_refused_and_named(tmp_path):
    evil = plant(tmp_path / "epoch_1.pt", tmp_path / "ran")
    with pytest.raises(safe_load.UntrustedCheckpoint, match=r"epoch_1.pt: refused: it asks for posix.system"):
        safe_load.load(evil, str(evil))
    assert not (tmp_path / "ran").exists()
    # what patentclip itself writes loads: tensors, numpy RNG state, DeepSpeed's types
    import numpy as np
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(2), "rng": np.random.get_state(), "scaler": LossScaler(1.0),
                "stage": ZeroStageEnum(1)}, ok)
    got = safe_load.load(ok, str(ok))
    assert got["stage"] == ZeroStageEnum(1) and got["scaler"].cur_scale == 1.0
    # DeepSpeed's own torch.load(weights_only=False) calls are made weights-only inside weights_only_loads
    with pytest.raises(safe_load.UntrustedCheckpoint, match="refused"):
        with safe_load.weights_only_loads(str(evil)):
            torch.load(evil, weights_only=False)
    assert not (tmp_path / "ran").exists() and safe_load.FORCE_ENV not in os.environ
    # the explicit flag for a trusted file
    safe_load.load(evil, str(evil), trust=True)
    assert (tmp_path / "ran").exists()


def train_argv(shards, logs, name, resume, *extra):
    return ["--train-data", shards["train"], "--model", "patentclip-tiny", "--batch-size", "8", "--epochs", "1",
            "--train-num-samples", "8", "--workers", "0", "--val-frequency", "0", "--logs", str(logs), "--name", name,
            "--resume", str(resume), *extra]


@pytest.mark.slow
def test_train_resume_refuses_planted_open_clip_and_deepspeed_files(synthetic_shards, tmp_path):
    evil = plant(tmp_path / "epoch_1.pt", tmp_path / "ran-pt")
    r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, tmp_path, "a", evil))
    assert r.returncode == 1 and "refused: it asks for posix.system" in r.stderr and "--trust-checkpoint" in r.stderr
    assert not (tmp_path / "ran-pt").exists()
    # a DeepSpeed folder whose model states were replaced: DeepSpeed's own load is weights-only too
    ds = tmp_path / "ds"
    (ds / "epoch_1").mkdir(parents=True)
    plant(ds / "epoch_1" / "mp_rank_00_model_states.pt", tmp_path / "ran-ds", module={})
    (ds / "latest").write_text("epoch_1")
    (ds / "epoch_1" / "meta.json").write_text(json.dumps({"tag": "epoch_1", "epoch": 1, "step": 1, "zero_stage": 0,
                                                          "world_size": 1, "files": {
                                                              "mp_rank_00_model_states.pt": os.path.getsize(
                                                                  ds / "epoch_1" / "mp_rank_00_model_states.pt")}}))
    r = run_cli("patentclip.launch.train", *train_argv(synthetic_shards, tmp_path, "b", ds))
    assert r.returncode == 1
    assert f"{ds / 'epoch_1'}: refused: it asks for posix.system" in r.stderr
    assert not (tmp_path / "ran-ds").exists()


@pytest.mark.slow
def test_eval_and_export_refuse_planted_files(synthetic_shards, tmp_path):
    """patentclip-export and patentclip-eval read every file weights-only: a planted epoch_N.pt, and a DeepSpeed
    ZeRO folder whose optimizer partition is planted (read by DeepSpeed's zero_to_fp32, made weights-only)."""
    evil = plant(tmp_path / "epoch_1.pt", tmp_path / "ran")
    r = run_cli("patentclip.evaluation.export", "--checkpoint", evil, "--out", tmp_path / "out", timeout=300)
    assert r.returncode == 2 and "epoch_1.pt: refused: it asks for posix.system" in r.stderr
    r = run_cli("patentclip.evaluation.cli", "--val-data", synthetic_shards["val"], "--checkpoint", evil,
                "--workers", "0", timeout=300)
    assert r.returncode == 2 and "refused: it asks for posix.system" in r.stderr
    tag = tmp_path / "ds" / "epoch_1"
    tag.mkdir(parents=True)
    torch.save({"module": {"clip.logit_scale": torch.ones(1)}, "model": "patentclip-tiny", "epoch": 1,
                "buffer_names": [], "param_shapes": [{"clip.logit_scale": torch.Size([1])}],
                "shared_params": {}, "ds_version": "0.19.8"}, tag / "mp_rank_00_model_states.pt")
    plant(tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp_path / "ran")
    r = run_cli("patentclip.evaluation.export", "--checkpoint", tag, "--out", tmp_path / "out", timeout=300)
    assert r.returncode == 2 and f"{tag}: refused: it asks for posix.system" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("flag", ["--pretrained", "--pretrained-text", "--pretrained-image-source"])
def test_planted_starting_weights_are_refused_and_named(flag, tmp_path):
    """patentclip-train's starting weights are read by open_clip (--pretrained, --pretrained-text) and timm
    (--pretrained-image-source): a planted file is refused naming it, like a checkpoint (it used to end in torch's
    raw UnpicklingError, naming no file and suggesting weights_only=False); --trust-checkpoint loads it in full
    where the reader allows it (open_clip's), and timm's reader never does, which the refusal says."""
    from patentclip.launch.args import parse_train_args
    from patentclip.plugins import pretrained as P
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    evil = plant(tmp_path / "evil.pt", tmp_path / "ran")
    model = "patentclip-tiny-efficientnet" if flag == "--pretrained-image-source" else "patentclip-tiny"

    def build(*extra):
        args = parse_train_args(["--train-data", "x.tar", "--model", model, flag, str(evil), *extra])
        return P.create_model_for_run(args, "cpu", P.plan_start(args))

    with pytest.raises(safe_load.UntrustedCheckpoint, match=r"evil.pt: refused: it asks for posix.system") as exc:
        build()
    assert not (tmp_path / "ran").exists()
    if flag == "--pretrained-image-source":
        assert "--trust-checkpoint does not apply" in str(exc.value)
        with pytest.raises(safe_load.UntrustedCheckpoint, match="does not apply"):
            build("--trust-checkpoint")
        assert not (tmp_path / "ran").exists()
    else:
        assert "pass --trust-checkpoint to load it anyway" in str(exc.value)
        with pytest.raises(Exception):  # trusted: the file is unpickled in full (its code runs), then not a model
            build("--trust-checkpoint")
        assert (tmp_path / "ran").exists()


def test_a_planted_pretrained_file_for_evaluation_is_refused_and_named(tmp_path):
    """patentclip-eval --model M --pretrained FILE (open_clip's reader): refused naming the file, not torch's raw
    error; trusted, it is unpickled in full."""
    from patentclip.evaluation.loading import load_for_eval

    evil = plant(tmp_path / "evil.pt", tmp_path / "ran")
    with pytest.raises(safe_load.UntrustedCheckpoint, match=r"evil.pt: refused: it asks for posix.system"):
        load_for_eval(None, "patentclip-tiny", str(evil), "cpu")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(Exception):
        load_for_eval(None, "patentclip-tiny", str(evil), "cpu", trust=True)
    assert (tmp_path / "ran").exists()


DS_SAVE = r'''
import os, sys
import torch
import deepspeed
from patentclip.launch import safe_load
from patentclip.launch.args import default_args
from patentclip.launch.checkpoint import rng_state
from patentclip.launch.train import deepspeed_config, make_optimizer

deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
deepspeed.init_distributed(dist_backend="gloo", verbose=False)
out = sys.argv[1]
for stage in (0, 1, 2):
    for precision in ("fp32", "bf16"):
        args = default_args(precision=precision, zero_stage=stage, batch_size=4, lr=1e-3, wd=0.1)
        torch.manual_seed(0)
        module = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
        engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(module, args),
                                               config=deepspeed_config(args))
        x = torch.randn(4, 8, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
        engine.backward(engine(x).float().pow(2).mean())
        engine.step()
        tag = f"zero{stage}_{precision}"
        engine.save_checkpoint(out, tag=tag, client_state={"rng": [rng_state()], "epoch": 1, "step": 1})
        with safe_load.weights_only_loads(os.path.join(out, tag)):  # as restore_engine reads it on --resume
            path, client = engine.load_checkpoint(out, tag=tag)
        assert path is not None and client["step"] == 1, (tag, path)
'''


def test_deepspeed_files_need_exactly_the_allowed_types(tmp_path):
    """DeepSpeed's own state files, as patentclip-train writes them (its optimizer and DeepSpeed config, its RNG
    client state) in ZeRO stages 0, 1 and 2, fp32 and bf16, in a real process: each loads back weights-only
    (DeepSpeed's own load_checkpoint under weights_only_loads, and safe_load.load of every file), and the globals
    they need beyond PyTorch's weights-only defaults are exactly safe_load.safe_globals(): with any one of them
    left out some file is refused (so none is admitted that no file needs), and every GLOBAL the files name is
    allowed. (The allowlist's second name of numpy's _reconstruct is for files written under numpy 1.)"""
    import pickle
    import subprocess
    import sys

    from s3_server import free_port

    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", DS_SAVE, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    files = sorted(tmp_path.glob("zero*/*.pt"))
    assert {f.parent.name for f in files} == {f"zero{s}_{p}" for s in (0, 1, 2) for p in ("fp32", "bf16")}
    assert any("optim_states" in f.name for f in files)
    named = set()
    for f in files:
        named |= set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f)))
        safe_load.load(f, str(f), map_location="cpu")
    allowed = safe_load.safe_globals()
    names = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in allowed}
    assert named <= names, sorted(named - names)
    for g in allowed:
        if isinstance(g, tuple):  # numpy 1's name of _reconstruct: no file here is written under numpy 1
            continue
        refused = []
        for f in files:
            try:
                with torch.serialization.safe_globals([o for o in allowed if o is not g]):
                    torch.load(f, map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                refused.append(f.name)
        assert refused, f"no DeepSpeed or patentclip file needs {g}: it should not be allowed"


def test_a_file_that_is_no_pickle_is_named_as_damaged_not_as_a_type(tmp_path):
    """Bytes that are no checkpoint at all (a damaged download) are refused with the unpickler's reason, not as a
    type the file asked for."""
    junk = tmp_path / "epoch_2.pt"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(safe_load.UntrustedCheckpoint) as exc:
        safe_load.load(junk, str(junk))
    msg = str(exc.value)
    assert msg.startswith(f"{junk}: refused: the weights-only unpickler stopped at ") and "damaged" in msg
    assert "asks for" not in msg


def test_index_and_search_read_their_model_weights_only(synthetic_shards, tmp_path):
    """patentclip-index (build) and patentclip-search (an index's model) refuse a planted checkpoint by name;
    --trust-checkpoint is theirs too, for a file the user trusts."""
    from patentclip.evaluation import index_build, search

    evil = plant(tmp_path / "epoch_1.pt", tmp_path / "ran")
    r = run_cli("patentclip.evaluation.index_build", "build", "--data", synthetic_shards["val"], "--out",
                tmp_path / "index", "--checkpoint", evil, "--workers", "0", "--quiet", timeout=300)
    assert r.returncode != 0 and "epoch_1.pt: refused: it asks for posix.system" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "ran").exists()
    r = run_cli("patentclip.evaluation.index_build", "build", "--data", synthetic_shards["val"], "--out",
                tmp_path / "index", "--checkpoint", evil, "--workers", "0", "--quiet", "--trust-checkpoint",
                timeout=300)
    assert (tmp_path / "ran").exists()  # trusted: loaded the old way (and this one's pickle ran)
    index_args = index_build.build_parser().parse_args(["add", "i", "--data", "d", "--trust-checkpoint"])
    assert index_args.trust_checkpoint
    for parser in (search.build_parser(), search.serve_parser()):
        assert "--trust-checkpoint" in parser.format_help()
