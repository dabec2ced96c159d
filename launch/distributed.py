"""Processes and the DeepSpeed engine's setting: the local multi-process launch (``--nproc-per-node``), the
process group DeepSpeed uses, and the DeepSpeed config derived from the flags.

A run is started one of three ways: by ``srun``/``torchrun`` (one process per rank, ``RANK`` etc. set), or by
``patentclip-train --nproc-per-node N`` outside them, which relaunches itself as N local ranks with torchrun's
launcher (:func:`relaunch_with_torchrun`) and returns the ranks' exit code: 0, the requeue code 3 when the run
stopped on a signal with a committed checkpoint (:func:`stopped_with_checkpoint`), 1 when a rank failed.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import uuid
from typing import Dict

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from patentclip.launch.args import strip_flag
from patentclip.launch.signals import EXIT_REQUEUE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def relaunch_with_torchrun(args) -> int:
    """``--nproc-per-node N`` outside torchrun/srun: start N local ranks with torchrun's launcher and wait.

    Uses ``torch.distributed.launcher.api.elastic_launch`` (what the ``torchrun`` command runs) rather than
    the torchrun command line, whose parser would take open_clip flags such as ``--logs`` as abbreviations
    of its own.
    """
    argv = strip_flag(args.argv, "--nproc-per-node")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc_per_node, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
                          monitor_interval=1)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "patentclip.launch.train", *argv)
    except ChildFailedError as exc:
        codes = {rank: failure.exitcode for rank, failure in exc.failures.items()}
        if stopped_with_checkpoint(codes):
            print(f"patentclip-train: the run stopped on a signal after writing and committing a checkpoint "
                  f"(ranks exited with {EXIT_REQUEUE}, the requeue code); continue it with the same command and "
                  f"--resume latest", file=sys.stderr)
            return EXIT_REQUEUE
        print(f"patentclip-train: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    return 0


def stopped_with_checkpoint(exit_codes: Dict[int, int]) -> bool:
    """True when the ranks' non-zero exits are a stop, not a failure: some rank exited with the requeue code and
    every other one either did too or was ended by a signal. A rank exits with the requeue code only after the
    stop checkpoint is committed and the requeue marker written, both collective (``signals.stop_and_requeue``),
    so the run is resumable; the torchrun agent then sends SIGTERM to the ranks still exiting, which can end them
    by the signal (Python restores the default handlers as it shuts down). A rank that exited with any other
    code failed."""
    codes = list(exit_codes.values())
    return EXIT_REQUEUE in codes and all(code == EXIT_REQUEUE or code < 0 for code in codes)


def deepspeed_config(args) -> dict:
    bf16 = args.precision in ("bf16", "amp_bf16", "amp_bfloat16", "pure_bf16")
    fp16 = args.precision in ("fp16", "amp", "pure_fp16")
    cfg = {
        "train_micro_batch_size_per_gpu": args.batch_size,
        "gradient_accumulation_steps": args.accum_freq,
        "zero_optimization": {"stage": args.zero_stage},
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": fp16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }
    # DeepSpeed clips at 1.0 unless told otherwise; open_clip clips only with --grad-clip-norm
    cfg["gradient_clipping"] = args.grad_clip_norm if args.grad_clip_norm is not None else 0.0
    if args.deepspeed_config:
        with open(args.deepspeed_config) as f:
            user = json.load(f)
        for k, v in user.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k].update(v)
            else:
                cfg[k] = v
    return cfg


def init_deepspeed(args, device):
    """The process group DeepSpeed uses: open_clip's when distributed, else a 1-rank group."""
    # imported here, not at the top: DeepSpeed picks its accelerator on import, after setup_run has set
    # DS_ACCELERATOR for a CPU run
    import deepspeed
    import torch.distributed as dist

    if device.type == "cpu":
        # skip JIT-compiling the shared-memory comm op on CPU (about 40 s); gloo does the work
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo", verbose=False)
    return deepspeed
