"""``patentclip-train``: open_clip's training loop under a DeepSpeed engine.

One concern (the run's phases: build, run an epoch, end an epoch, stop and requeue, finish) in about 470 lines;
the step, the model, the arguments, the checkpoints and the signals live in their own modules.

It follows ``open_clip_train.main.main`` step by step (experiment name, log folder, logging, model factory,
seeding, tokenizer, data, cosine schedule, per-epoch train / evaluate / checkpoint) and reuses its pieces.
Only two things are replaced, where open_clip cannot be hooked: ``main`` (DeepSpeed needs the engine
instead of the DDP wrap, and its own checkpoints), and the training step (open_clip's hard-codes
``images, texts = batch``; the patent batch carries class ids and views for the patent losses).
"""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Dict, Optional, Tuple

import torch
from open_clip import get_input_dtype, get_tokenizer
from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
from open_clip_train.logger import setup_logging
from open_clip_train.main import random_seed
from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr

from patentclip.launch import checkpoint as ckpt
from patentclip.launch.args import parse_train_args
from patentclip.evaluation.during_training import evaluate_during_training
from patentclip.evaluation.extra_metrics import check_metric_names, metric_names
from patentclip.launch.diskspace import DiskFullError, quiet_failing_log_files, write_atomic
from patentclip.launch.model import (PatentTrainModule, head_state, load_head_state, load_loss_states, loss_states,
                                     lock_towers,
                                     make_logit_scale_nonscalar, optimizer_param_groups)
from patentclip.launch.distributed import deepspeed_config, init_deepspeed, relaunch_with_torchrun
from patentclip.launch.progress import StepLogger
from patentclip.launch.runlock import LocalLock, ObjectLease, RunLockError, RunLocks
from patentclip.launch.safe_load import UntrustedCheckpoint
from patentclip.launch.scalars import ScalarLog, report_backends
from patentclip.launch.signals import (EXIT_REQUEUE, RunAborted, StopSignal, mark_requeue, requeue_marker,
                                       synchronized)
from patentclip.launch.step import accumulate_batches, begin_step, train_step_accum
from patentclip.plugins.augment import rrc_aug_cfg, with_patent_augmentations
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.classes import ClassMismatch, load_class_table
from patentclip.plugins.data.stream import EmptyStream
from patentclip.plugins.data.tars import UnreadableShards
from patentclip.plugins.image_transport import transport_of
from patentclip.plugins.losses import LossSet, losses_need_logit_bias
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.pretrained import check_start, create_model_for_run, fetch_start
from patentclip.plugins.registry import DATASETS, import_plugin_modules
from patentclip.plugins.remote_io import is_remote


def gather_loader_states(dataloader, args) -> list:
    """Every rank's data-loader position, as a list indexed by rank (saved by rank 0 with the checkpoint)."""
    state = dataloader.state_dict() if hasattr(dataloader, "state_dict") else None
    if args.world_size > 1:
        states = [None] * args.world_size
        torch.distributed.all_gather_object(states, state)
        return states
    return [state]


def quiet_library_loggers() -> None:
    """open_clip's setup_logging lowers every existing logger to INFO; keep torch's and DeepSpeed's internals at
    WARNING so the log shows the training, as open_clip does for torch.compile."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch", "DeepSpeed", "deepspeed")):
            logging.getLogger(name).setLevel(logging.WARNING)


def lock_run(args, log_base_path: str) -> Optional[RunLocks]:
    """Rank 0 takes the run's locks (``launch/runlock.py``: the run folder, a separate local checkpoint folder,
    a remote checkpoint folder's lease) before anything is written into the run; every rank learns the outcome,
    and a run owned by another live process is refused on every rank with the owner named."""
    locks, error = None, None
    if args.rank == 0:
        folders = [LocalLock(log_base_path)]
        if os.path.abspath(args.checkpoint_path) != os.path.abspath(os.path.join(log_base_path, "checkpoints")):
            folders.append(LocalLock(args.checkpoint_path))
        if is_remote(args.checkpoint_dir):
            folders.append(ObjectLease(args.checkpoint_dir))
        try:
            locks = RunLocks(folders, stale_after=args.lock_stale_after, run=log_base_path).acquire()
        except (RunLockError, OSError) as exc:
            error = f"patentclip-train: {exc}"
    if args.distributed:
        error = broadcast_object(args, error)
    if error:
        raise SystemExit(error)
    if locks is not None:
        atexit.register(locks.release)  # also on an error or SystemExit before finish(); kill -9 leaves it stale
    return locks


def setup_run(args) -> Tuple[torch.device, Optional[RunLocks]]:
    """Distributed init, experiment name, the run's lock and log folders, as open_clip_train.main does it."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if args.device.startswith("cuda"):
            args.device = "cpu"
    if not args.precision_given:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.precision in ("fp16", "amp", "pure_fp16") and not args.device.startswith("cuda"):
        raise SystemExit(f"--precision {args.precision} needs a GPU; on CPU use fp32 or bf16")
    if not args.train_data:
        raise SystemExit("--train-data is required (patentclip-eval evaluates without training)")

    device = init_distributed_device(args)
    if args.name is None:
        date_str = datetime.now().strftime("%Y_%m_%d-%H_%M_%S")
        if args.distributed:
            date_str = broadcast_object(args, date_str)
        args.name = "-".join([date_str, f"model_{args.model.replace('/', '-')}", f"lr_{args.lr}",
                              f"b_{args.batch_size}", f"j_{args.workers}", f"p_{args.precision}"])
    resume_latest = args.resume == "latest"
    if args.resume and not resume_latest:  # refuse a ZeRO stage that cannot read it before making any folder
        ckpt.resolve_zero_stage(args, ckpt.resolve_resume(args))
    log_base_path = os.path.join(args.logs, args.name)
    args.checkpoint_path = os.path.join(log_base_path, "checkpoints")
    if args.checkpoint_dir and not is_remote(args.checkpoint_dir):
        args.checkpoint_path = args.checkpoint_dir
    locks = lock_run(args, log_base_path)
    args.log_path = None
    if is_master(args, local=args.log_local):
        os.makedirs(log_base_path, exist_ok=True)
        args.log_path = os.path.join(log_base_path, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            raise SystemExit(f"Experiment {log_base_path} already exists: use --name to start a new one or "
                             f"--resume latest to continue it")
    args.log_level = logging.DEBUG if args.debug else logging.INFO
    setup_logging(args.log_path, args.log_level)
    quiet_failing_log_files()  # a full disk: one line on stderr, not a traceback per log record
    quiet_library_loggers()
    for taken in (locks.took_over if locks is not None else []):
        logging.warning("%s", taken)
    backends = report_backends(args.report_to)
    args.tensorboard, args.wandb = "tensorboard" in backends, "wandb" in backends
    args.tensorboard_path = os.path.join(log_base_path, "tensorboard") if args.tensorboard and args.rank == 0 else ""
    os.makedirs(args.checkpoint_path, exist_ok=True)
    if args.tensorboard_path:
        os.makedirs(args.tensorboard_path, exist_ok=True)
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and args.rank == 0
    if args.rank == 0 and os.path.exists(requeue_marker(args)):
        os.remove(requeue_marker(args))
    return device, locks


@dataclass
class Run:
    """Everything the phases of a run share, made once by :func:`build_run`."""

    args: argparse.Namespace
    device: torch.device
    engine: object
    data: Dict
    class_table: object
    tokenizer: object
    store: ckpt.CheckpointStore
    scheduler: Callable
    stopper: StopSignal
    input_dtype: torch.dtype
    steps_per_epoch: int
    start_epoch: int = 0
    start_step: int = 0
    loader_state: Optional[Dict] = None
    writer: Optional[object] = None
    step_log: Optional[object] = None
    metrics: Dict = field(default_factory=dict)
    locks: Optional[RunLocks] = None


def make_model(args, device, start=None):
    """open_clip's model factory with the run's flags and starting weights (``start``: plugins/pretrained.py), and
    the patent augmentations on the train transform."""
    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    rrc_aug_cfg(args)
    random_seed(args.seed, 0)
    model_kwargs = {}
    if args.siglip:  # open_clip_train.main's SigLIP initial values (and a learned logit bias)
        model_kwargs = {"init_logit_scale": math.log(10), "init_logit_bias": -10}
    model, preprocess_train, preprocess_val = create_model_for_run(args, device, start, **model_kwargs)
    make_logit_scale_nonscalar(model)
    return model, with_patent_augmentations(preprocess_train, args), preprocess_val


#: torch.compile backend of --torchcompile (tests use aot_eager: the same graph capture without code generation)
COMPILE_BACKEND_ENV = "PATENTCLIP_COMPILE_BACKEND"


def apply_model_flags(model, args) -> None:
    """open_clip's flags that change the model before the optimizer sees it, in open_clip_train.main's order:
    --lock-image/--lock-text, --grad-checkpointing, --use-bn-sync (several ranks), --torchcompile (in place,
    ``nn.Module.compile``: the state dict keeps its keys, so checkpoints are unchanged)."""
    lock_towers(model, args)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
    if args.use_bn_sync and args.world_size > 1:
        if not args.device.startswith("cuda"):
            raise SystemExit("--use-bn-sync needs GPUs (torch's SyncBatchNorm runs on CUDA only); drop it on CPU")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # converts the batch-norm layers in place
    if args.torchcompile:
        backend = os.environ.get(COMPILE_BACKEND_ENV, "inductor")
        logging.info("Compiling the model (torch.compile, backend %s)", backend)
        model.compile(backend=backend)


def make_optimizer(module, args) -> torch.optim.Optimizer:
    """open_clip's AdamW (--lr, --beta1, --beta2, --eps, --wd; no decay on gains, biases, norms, logit scale)."""
    return torch.optim.AdamW(optimizer_param_groups(module, args.wd), lr=args.lr, betas=(args.beta1, args.beta2),
                             eps=args.eps)


def write_params(args) -> None:
    """``params.txt`` (open_clip's record of the arguments) and the same lines in the log (rank 0).

    Written once the model, the engine and any checkpoint being resumed are loaded (a start that fails before
    leaves the file of the run's earlier start as it was), and atomically (a full disk cannot truncate it)."""
    lines = [f"{name}: {getattr(args, name)}" for name in sorted(vars(args))]
    for line in lines:
        logging.info("  %s", line)
    write_atomic(os.path.join(args.logs, args.name, "params.txt"), "".join(line + "\n" for line in lines))


def check_checkpoint_space(args, store: ckpt.CheckpointStore, module) -> None:
    """Refuse, on every rank, a run whose checkpoint folder has no room for one checkpoint (rank 0 checks)."""
    error = None
    if args.rank == 0:
        try:
            store.check_space(ckpt.estimate_checkpoint_bytes(module, args.zero_stage))
        except (ckpt.CheckpointError, OSError) as exc:
            error = f"patentclip-train: {exc}"
    if args.distributed:
        error = broadcast_object(args, error)
    if error:
        raise SystemExit(error)


def make_scheduler(args, optimizer, steps_per_epoch: int) -> Callable:
    """open_clip's learning-rate schedule (``--lr-scheduler``) over the run's optimizer steps."""
    total_steps = steps_per_epoch * args.epochs
    if args.lr_scheduler == "cosine":
        return cosine_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.lr_scheduler == "const":
        return const_lr(optimizer, args.lr, args.warmup, total_steps)
    if args.epochs_cooldown is None:
        raise SystemExit("--lr-scheduler const-cooldown needs --epochs-cooldown")
    return const_lr_cooldown(optimizer, args.lr, args.warmup, total_steps, steps_per_epoch * args.epochs_cooldown,
                             args.lr_cooldown_power, args.lr_cooldown_end)


def build_run(args) -> Run:
    """Phase 1: process group and folders, model, loss plugins, DeepSpeed engine, resume, data, schedule."""
    register_model_configs()
    load_builtin_plugins()
    import_plugin_modules(args.plugins.split(","))
    check_metric_names(metric_names(args.eval_metrics))  # before any folder is made
    if not args.siglip and losses_need_logit_bias(args.loss):
        args.siglip = True  # the model gets a learned logit bias and open_clip's SigLIP initial values
    start = check_start(args)  # starting weights on disk or in the hub cache; offline and missing: stop here
    device, locks = setup_run(args)
    start = fetch_start(start, args)
    deepspeed = init_deepspeed(args, device)
    class_table = load_class_table(args.train_data, args.classes_json)
    logging.info("%d classes from %s", len(class_table), class_table.source)

    model, preprocess_train, preprocess_val = make_model(args, device, start)
    store = ckpt.CheckpointStore(args, fence=locks.verify if locks is not None else None)
    resume_target = ckpt.resolve_resume(args, store)
    args.zero_stage = ckpt.resolve_zero_stage(args, resume_target)
    start_epoch, start_step, oc = 0, 0, None
    if resume_target and resume_target[0] == "open_clip":
        start_epoch, oc = ckpt.load_weights_before_engine(model, resume_target, trust=args.trust_checkpoint)
    random_seed(args.seed, args.rank)
    apply_model_flags(model, args)

    criterion = LossSet(args.loss, args, class_table)
    if criterion.needs_second_view and not args.multiview:
        logging.info("a selected loss needs a second view: multi-view pairs switched on")
        args.multiview = True
    module = PatentTrainModule(model, criterion).to(device)
    if oc is not None:  # the classification head travels in epoch_N.pt
        load_head_state(module, oc.get("patentclip_head"))
        load_loss_states(module, oc.get("patentclip_losses"))
    check_checkpoint_space(args, store, module)

    ds_config = deepspeed_config(args)
    logging.debug("DeepSpeed config: %s", json.dumps(ds_config))
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=make_optimizer(module, args), config=ds_config)
    logging.info("DeepSpeed engine: ZeRO stage %d, %s, world size %d", args.zero_stage,
                 "bf16" if engine.bfloat16_enabled() else ("fp16" if engine.fp16_enabled() else "fp32"),
                 args.world_size)
    loader_state = None
    if resume_target and resume_target[0] == "deepspeed":
        start_epoch, start_step, client_state = ckpt.restore_engine(engine, resume_target, store)
        states = client_state.get("loader") or []
        loader_state = states[args.rank] if args.rank < len(states) else (states[0] if states else None)
        if states and len(states) != args.world_size:
            loader_state = {**(states[0] or {}), "world_size": len(states)}
    elif args.resume == "latest":
        logging.info("--resume latest: no checkpoint in %s yet, starting from scratch", args.checkpoint_path)
    if args.rank == 0:  # only now: a start that failed before leaves the run's params.txt as it was
        logging.info("Model:\n%s", model)
        write_params(args)

    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    build_dataset = DATASETS.get(args.patent_dataset)
    data = {"train": build_dataset(args, preprocess_train, True, epoch=start_epoch, tokenizer=tokenizer,
                                   class_table=class_table)}
    if args.val_data:
        data["val"] = build_dataset(args, preprocess_val, False, epoch=start_epoch, tokenizer=tokenizer,
                                    class_table=class_table)
    steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq  # optimizer steps, as open_clip
    # the schedule sets the lr of the optimizer DeepSpeed steps (ZeRO wraps the client optimizer)
    scheduler = make_scheduler(args, engine.optimizer, steps_per_epoch)

    writer = ScalarLog.open(args)
    step_log = open(os.path.join(args.logs, args.name, "train_steps.jsonl"), "a") if args.save_logs else None
    input_dtype = torch.bfloat16 if engine.bfloat16_enabled() else (
        torch.float16 if engine.fp16_enabled() else get_input_dtype("fp32"))
    stopper = StopSignal().install()
    if locks is not None:  # another process took the run over: stop at the next step, without a checkpoint
        locks.on_lost = stopper.fail
    return Run(args=args, device=device, engine=engine, data=data, class_table=class_table, tokenizer=tokenizer,
               store=store, scheduler=scheduler, stopper=stopper, input_dtype=input_dtype,
               steps_per_epoch=steps_per_epoch, start_epoch=start_epoch, start_step=start_step,
               loader_state=loader_state, writer=writer, step_log=step_log, locks=locks)


def save(run: Run, epoch: int, step: int, tag: Optional[str] = None) -> None:
    """A checkpoint of the engine, the data-loader positions of every rank and the classification head."""
    run.store.save(run.engine, epoch=epoch, step=step, class_table=run.class_table,
                   loader_states=gather_loader_states(run.data["train"].dataloader, run.args), tag=tag,
                   head_state=head_state(run.engine.module), loss_states=loss_states(run.engine.module))


def run_epoch(run: Run, epoch: int) -> Tuple[int, int, bool]:
    """Phase 2: the optimizer steps of one epoch (from the resume position in the first one).

    Returns ``(batches done in this epoch, global step of the last one, stopped by a signal)``. A signal stops
    at the next step boundary; a mid-epoch checkpoint (``--save-every-n-steps`` or the stop) is written here.
    """
    args = run.args
    if args.rank == 0:
        logging.info(f"Start epoch {epoch}")
    run.engine.train()
    run.data["train"].set_epoch(epoch)
    dataloader = run.data["train"].dataloader
    first_batch = max(0, run.start_step - run.steps_per_epoch * epoch) if epoch == run.start_epoch else 0
    if first_batch and run.loader_state is not None and int(run.loader_state.get("epoch", -1)) == epoch:
        dataloader.load_state_dict(run.loader_state)
        logging.info("Resuming epoch %d at batch %d of %d", epoch, first_batch, run.steps_per_epoch)
    logger = StepLogger(run, epoch, dataloader)
    batch_count, step, stop = first_batch, run.steps_per_epoch * epoch + first_batch - 1, False
    end = time.time()
    micro_batches = accumulate_batches(synchronized(dataloader, run.device), args.accum_freq)
    for i, micro in enumerate(micro_batches, start=first_batch):
        step = run.steps_per_epoch * epoch + i
        if not args.skip_scheduler:
            run.scheduler(step)
        logger.data_time_m.update(time.time() - end)
        begin_step(run.engine, args, step)
        total_loss, terms, features = train_step_accum(run.engine, micro, args, run.device, run.input_dtype,
                                                       transport_of(dataloader))
        logger.batch_time_m.update(time.time() - end)
        end = time.time()
        batch_count = i + 1
        values = {k: v.detach().float().item() for k, v in {**terms, "loss": total_loss}.items()}
        logger.log(step, i, batch_count, micro, values, features)
        stop = run.stopper.should_stop(run.device)
        if batch_count < run.steps_per_epoch and (stop or (args.save_every_n_steps and
                                                           (step + 1) % args.save_every_n_steps == 0)):
            save(run, epoch, step + 1, tag=f"step_{step + 1}")
        if stop:
            break
    return batch_count, step, stop


def end_epoch(run: Run, completed_epoch: int, stop: bool) -> None:
    """Phase 3: validation (``--val-frequency``) and the epoch-end checkpoint (``--save-frequency``, the last
    epoch, or a stop)."""
    args = run.args
    if "val" in run.data and args.val_frequency and (completed_epoch % args.val_frequency == 0
                                                     or completed_epoch == args.epochs):
        run.metrics = evaluate_during_training(run.engine, run.data["val"], run.class_table, run.tokenizer,
                                               completed_epoch, args, run.device, run.input_dtype, run.writer)
    if args.distributed:
        torch.distributed.barrier()
    if stop or completed_epoch == args.epochs or (args.save_frequency > 0 and
                                                  completed_epoch % args.save_frequency == 0):
        save(run, completed_epoch, run.steps_per_epoch * completed_epoch)


def stop_and_requeue(run: Run, where: str) -> int:
    """The one way a run ends on a stop signal: its checkpoint is committed, so leave the requeue marker and
    return the requeue exit code (``launch/signals.py``)."""
    who = run.stopper.received or "a signal on another rank"
    logging.info("Stopped by %s %s; checkpoint written, exiting with code %d (requeue)", who, where, EXIT_REQUEUE)
    mark_requeue(run.args, f"stopped by {who} {where}")
    return EXIT_REQUEUE


def finish(run: Run) -> None:
    """Phase 4: close the logs, write ``summary.json`` and leave the process group."""
    args = run.args
    if run.step_log is not None:
        run.step_log.close()
    if run.writer is not None:
        run.writer.close()
    if args.rank == 0:
        summary = {"name": args.name, "log_dir": os.path.join(args.logs, args.name),
                   "checkpoints": args.checkpoint_path, "tensorboard": args.tensorboard_path,
                   "metrics": run.metrics}
        with open(os.path.join(args.logs, args.name, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        logging.info("Done: logs, checkpoints and tensorboard files in %s", os.path.join(args.logs, args.name))
    run.stopper.uninstall()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    if run.locks is not None:
        run.locks.release()


def train(args) -> int:
    """Build the run, then epochs of steps, each followed by validation and a checkpoint, until the last epoch
    or a stop signal (checkpoint, requeue marker, exit code ``EXIT_REQUEUE``)."""
    run = build_run(args)
    exit_code = 0
    for epoch in range(run.start_epoch, args.epochs):
        batch_count, step, stop = run_epoch(run, epoch)
        if stop and batch_count < run.steps_per_epoch:
            exit_code = stop_and_requeue(run, f"after step {step}")
            break
        end_epoch(run, epoch + 1, stop)
        if stop and epoch + 1 < args.epochs:
            exit_code = stop_and_requeue(run, f"at the end of epoch {epoch + 1}")
            break
        if args.distributed:
            torch.distributed.barrier()
    finish(run)
    return exit_code


#: Faults that end a run with their message and exit code 1, no traceback: each says what happened, where, and
#: what was kept (docs/faults.md).
CLEAN_FAULTS = (ckpt.CheckpointError, DiskFullError, RunLockError, RunAborted, UntrustedCheckpoint, EmptyStream,
                UnreadableShards, ClassMismatch)


def main(argv=None) -> int:
    args = parse_train_args(argv)
    if args.nproc_per_node > 1 and not any(v in os.environ for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK")):
        return relaunch_with_torchrun(args)
    try:
        return train(args)
    except CLEAN_FAULTS as exc:
        logging.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
