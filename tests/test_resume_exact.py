"""Exact resume through the CLI, 2 ranks over gloo, for every recipe and every registered loss, with the three kinds
of stop a run meets on a cluster:

* ``usr1``:  SIGUSR1 to both ranks in epoch 0 (SLURM's time-limit warning) -> checkpoint, exit 3 (requeue);
* ``kill9``: kill -9 of the launcher and every rank after a periodic checkpoint in epoch 1 (a node lost);
  the steps after that checkpoint are lost and done again;
* ``term1``: SIGTERM to rank 1 only (a preempted task) -> both ranks stop, checkpoint, exit 3.

Each configuration runs once uninterrupted (the reference) and once as a chain of runs, each stopped by the next
kind of stop of the configuration and continued with ``--resume latest``. Every step logged by any run of the chain
(every loss term, the learned weights, the total) must equal the reference's step bit for bit (fp32, CPU). 2
data-loader workers, flips, random erasing and GridMask on. The local launcher must report a stop as a stop (exit
3), not a failure.

One slow test: the smallest data that still has several steps per epoch; every configuration meets all three
kinds of stop in one chain (usr1 in epoch 0, kill9 after the periodic checkpoint of epoch 1, term1 in the last
epoch); together the configurations use every recipe and every loss in the registry (checked against ``RECIPES``
and ``LOSSES.names()``). 30 launches of 2 ranks: measured 88 s for one configuration's five launches on 2 idle
cores (about 9 minutes in all), 15 minutes for five configurations on a busy machine; hence its own timeout.
The recipes defined by a full-size timm backbone run it at test size (``patentclip-tiny-efficientnet``,
``patentclip-tiny-swinv2``) from a timm state-dict file written here."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_jsonl, shard_pattern

from patentclip.launch.args import parse_train_args
from patentclip.plugins import fault_points
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.losses import parse_loss_spec
from patentclip.plugins.recipes import RECIPES
from patentclip.plugins.registry import LOSSES

load_builtin_plugins()

EPOCHS = 3
SAVE_EVERY = 4
AUGS = ["--aug-hflip", "0.5", "--aug-random-erasing", "0.5", "--aug-gridmask", "0.5"]
STOPS = ("usr1", "kill9", "term1")
#: name, flags ({effnet}, {swin}: timm weight files of the fixture), stops of the chain. The clip recipe's run adds
#: siglip, the one registered loss no recipe uses (it also gives the model its learned logit bias).
CONFIGS = [
    ("designclip", ["--recipe", "designclip", "--loss-weighting", "uncertainty", "--head-text-dropout", "0.3",
                    *AUGS], STOPS),
    ("llm-informed", ["--recipe", "llm-informed"], STOPS),
    ("clip+siglip", ["--recipe", "clip", "--loss", "clip=1,siglip=0.5", *AUGS], STOPS),
    ("arcface", ["--recipe", "arcface"], STOPS),
    ("effnetb0-arcface", ["--recipe", "effnetb0-arcface", "--model", "patentclip-tiny-efficientnet",
                          "--pretrained-image-source", "{effnet}"], STOPS),
    ("swinv2b-arcface", ["--recipe", "swinv2b-arcface", "--model", "patentclip-tiny-swinv2",
                         "--pretrained-image-source", "{swin}", "--plugins", "patentclip.plugins.timm_backbones"],
     STOPS),
]


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """State-dict files of the test-size timm backbones (what --pretrained-image-source reads)."""
    import importlib

    import timm
    import torch

    importlib.import_module("patentclip.plugins.timm_backbones")  # registers patentclip_tiny_swinv2 with timm

    root = tmp_path_factory.mktemp("timm_weights")
    out = {}
    for key, name in (("effnet", "test_efficientnet"), ("swin", "patentclip_tiny_swinv2")):
        torch.manual_seed(1)
        torch.save(timm.create_model(name).state_dict(), root / f"{key}.pth")
        out[key] = str(root / f"{key}.pth")
    return out


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """16 patents x 4 views of 4 classes at 32 px, 8 drawings per shard: 6-7 steps of 2 x 4 per epoch."""
    from patentclip.shards.build import build_shards
    from patentclip.shards.synth import generate_synthetic_patents

    root = tmp_path_factory.mktemp("resume_exact")
    manifest = generate_synthetic_patents(root / "patents", num_patents=16, num_classes=4, image_size=32, seed=0,
                                          min_patents_per_class=3)
    build_shards(manifest, root / "shards", samples_per_shard=8, seed=0, progress=False)
    return shard_pattern(root / "shards" / "train")


def argv(train, logs, name, flags):
    return ["--nproc-per-node", "2", "--train-data", train, "--model", "patentclip-tiny", "--batch-size", "4",
            "--epochs", str(EPOCHS), "--lr", "1e-3", "--warmup", "2", "--workers", "2", "--logs", str(logs),
            "--name", name, "--seed", "3", "--precision", "fp32", "--val-frequency", "0",
            "--save-every-n-steps", str(SAVE_EVERY), "--log-every-n-steps", "100", "--resume", "latest", *flags]


def launch(args, extra_env=None):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "patentclip.launch.train", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def rank_pids(launcher: subprocess.Popen) -> dict:
    """{rank: pid} of the launcher's rank processes (RANK from their environment)."""
    out = {}
    for pid in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(pid)
    return out


def wait_for(launcher, what, cond, timeout=400):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if launcher.poll() is not None:
            pytest.fail(f"the run ended (code {launcher.returncode}) before {what}:\n" + launcher.stdout.read()[-4000:])
        time.sleep(0.05)
    launcher.kill()
    pytest.fail(f"timed out waiting for {what}")


def steps_of(run_dir):
    path = run_dir / "train_steps.jsonl"
    return read_jsonl(path) if path.exists() else []


def latest_tag(run_dir):
    path = run_dir / "checkpoints" / "deepspeed" / "latest"
    return path.read_text().strip() if path.exists() else None


def stopped_run(train, logs, name, flags, stop, steps_per_epoch):
    """One run of the chain, stopped by ``stop``; returns its output."""
    run_dir = logs / name
    before = len(steps_of(run_dir))
    tag = f"step_{2 * SAVE_EVERY}"  # kill9's checkpoint: the ranks are held right after committing it
    gate = logs / f"{name}.hold"
    hold = fault_points.arm(gate, "commit", f"deepspeed/{tag}") if stop == "kill9" else None
    p = launch(argv(train, logs, name, flags), hold)
    new_steps = lambda: [s["step"] for s in steps_of(run_dir)[before:]]  # noqa: E731
    if stop == "usr1":  # both ranks, early in epoch 0
        wait_for(p, "step 1", lambda: 1 in new_steps())
        pids = rank_pids(p)
        assert len(pids) == 2, pids
        for pid in pids.values():
            os.kill(pid, signal.SIGUSR1)
    elif stop == "kill9":  # everything, once a periodic checkpoint of epoch 1 is committed
        assert steps_per_epoch < 2 * SAVE_EVERY < 2 * steps_per_epoch
        wait_for(p, f"checkpoint {tag}", lambda: fault_points.reached(gate))
        assert latest_tag(run_dir) == tag
        ranks = rank_pids(p)
        assert len(ranks) == 2, ranks
        for pid in ranks.values():  # torchrun starts every rank in a session of its own, with its loader workers
            os.killpg(pid, signal.SIGKILL)
        os.killpg(p.pid, signal.SIGKILL)
        out = p.communicate(timeout=120)[0]
        assert p.returncode == -signal.SIGKILL
        return out
    else:  # SIGTERM to rank 1 only, in the last epoch
        first = 2 * steps_per_epoch
        wait_for(p, f"step {first}", lambda: any(s >= first for s in new_steps()))
        os.kill(rank_pids(p)[1], signal.SIGTERM)
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 3, out[-4000:]
    assert "stopped on a signal after writing and committing a checkpoint" in out
    assert "a rank failed" not in out and "FAILED" not in out
    return out


def losses_of(flags):
    args = parse_train_args(["--train-data", "x", *flags])
    return {name for name, _ in parse_loss_spec(args.loss)}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_recipe_and_loss_resumes_bit_for_bit_after_every_kind_of_stop(small_shards, timm_weights, tmp_path):
    configs = [(name, [f.format(**timm_weights) for f in flags], stops) for name, flags, stops in CONFIGS]
    assert {f[f.index("--recipe") + 1] for _, f, _ in configs if "--recipe" in f} == set(RECIPES)
    assert set().union(*(losses_of(f) for _, f, _ in configs)) == set(LOSSES.names())
    assert all(tuple(stops) == STOPS for _, _, stops in configs)  # every recipe and loss meets every kind of stop
    for name, flags, stops in configs:
        logs = tmp_path / name
        ref = launch(argv(small_shards, logs, "ref", flags))
        out = ref.communicate(timeout=600)[0]
        assert ref.returncode == 0, out[-4000:]
        reference = {s["step"]: s for s in steps_of(logs / "ref")}
        steps_per_epoch = len(reference) // EPOCHS
        assert sorted(reference) == list(range(EPOCHS * steps_per_epoch)) and steps_per_epoch >= 5
        for stop in stops:
            stopped_run(small_shards, logs, "chain", flags, stop, steps_per_epoch)
        done = launch(argv(small_shards, logs, "chain", flags))
        out = done.communicate(timeout=600)[0]
        assert done.returncode == 0, out[-4000:]
        chain = steps_of(logs / "chain")
        assert {s["step"] for s in chain} == set(reference), name
        assert len(chain) >= len(reference)  # steps run after the kill -9's checkpoint are done again
        for s in chain:  # every step of every run, every loss term, bit for bit
            assert s == reference[s["step"]], (name, s["step"], s, reference[s["step"]])
        log = (logs / "chain" / "out.log").read_text()
        assert log.count("Resumed DeepSpeed checkpoint") == len(stops)


def test_the_launcher_tells_a_stop_from_a_failure():
    """Exit codes of the ranks that ended non-zero: a stop when one exited with the requeue code (its checkpoint is
    committed on every rank by then) and the others did too or were ended by the launcher's signal."""
    from patentclip.launch.distributed import stopped_with_checkpoint

    assert stopped_with_checkpoint({0: 3, 1: 3}) and stopped_with_checkpoint({0: 3, 1: -15})
    assert stopped_with_checkpoint({1: 3})
    for codes in ({0: 1, 1: -15}, {0: -9}, {0: 3, 1: 1}, {}):
        assert not stopped_with_checkpoint(codes), codes


def test_checkpoint_size_estimate_takes_a_module_with_extra_state():
    """The start-time disk check sizes a checkpoint from the module's state dict, which holds a module's extra
    state as it is (the arcface loss's label table is a dict): it counted it as a tensor and stopped the run."""
    import torch

    from patentclip.launch.checkpoint import estimate_checkpoint_bytes

    class WithLabels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(10, 10)

        def get_extra_state(self):
            return {"labels": ["USD0900001", "USD0900002"]}

        def set_extra_state(self, state):
            pass

    assert estimate_checkpoint_bytes(WithLabels(), 0) > 110 * 4
