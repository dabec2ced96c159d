"""``patentclip-train``: open_clip's training loop under a DeepSpeed engine.

It follows ``open_clip_train.main.main`` step by step (experiment name, log folder, logging, model factory,
seeding, tokenizer, data, cosine schedule, per-epoch train / evaluate / checkpoint) and reuses its pieces.
Only two things are replaced, where open_clip cannot be hooked: ``main`` (DeepSpeed needs the engine
instead of the DDP wrap, and its own checkpoints), and the training step (open_clip's hard-codes
``images, texts = batch``; the patent batch carries class ids and views for the patent losses).
"""
from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from datetime import datetime

import fsspec
import torch

from patentclip.launch.args import parse_train_args, strip_flag
from patentclip.launch.checkpoint import is_remote
from patentclip.launch.signals import EXIT_REQUEUE, StopSignal, synchronized


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
    import uuid

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    argv = strip_flag(args.argv, "--nproc-per-node")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=args.nproc_per_node, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=0,
                          monitor_interval=1)
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "patentclip.launch.train", *argv)
    except ChildFailedError as exc:
        print(f"patentclip-train: a rank failed:\n{exc}", file=sys.stderr)
        return 1
    return 0


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


def requeue_marker(args) -> str:
    """File the trainer writes when it stopped on a signal after a committed checkpoint: run me again."""
    return os.path.join(args.logs, args.name, "requeue")


def mark_requeue(args, reason: str) -> None:
    """After the stop checkpoint is committed: leave the requeue marker (rank 0), then a barrier, so that no
    rank exits (and makes srun kill the others) before the marker exists."""
    if args.rank == 0:
        with open(requeue_marker(args), "w") as f:
            f.write(reason + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


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


def setup_run(args) -> torch.device:
    """Distributed init, experiment name and log folders, as open_clip_train.main does it."""
    from open_clip_train.distributed import broadcast_object, init_distributed_device, is_master
    from open_clip_train.logger import setup_logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if args.device.startswith("cuda"):
            args.device = "cpu"
    if not args.precision_given:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.precision in ("fp16", "amp", "pure_fp16") and not args.device.startswith("cuda"):
        raise SystemExit(f"--precision {args.precision} needs a GPU; on CPU use fp32 or bf16")
    if args.accum_freq < 1:
        raise SystemExit("--accum-freq must be >= 1")
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
        from patentclip.launch import checkpoint as ckpt
        ckpt.resolve_zero_stage(args, ckpt.resolve_resume(args))
    log_base_path = os.path.join(args.logs, args.name)
    args.log_path = None
    if is_master(args, local=args.log_local):
        os.makedirs(log_base_path, exist_ok=True)
        args.log_path = os.path.join(log_base_path, f"out-{args.rank}" if args.log_local else "out.log")
        if os.path.exists(args.log_path) and not resume_latest:
            raise SystemExit(f"Experiment {log_base_path} already exists: use --name to start a new one or "
                             f"--resume latest to continue it")
    args.log_level = logging.DEBUG if args.debug else logging.INFO
    setup_logging(args.log_path, args.log_level)
    quiet_library_loggers()
    args.tensorboard = "tensorboard" in args.report_to or "all" in args.report_to
    args.checkpoint_path = os.path.join(log_base_path, "checkpoints")
    if args.checkpoint_dir and not is_remote(args.checkpoint_dir):
        args.checkpoint_path = args.checkpoint_dir
    args.tensorboard_path = os.path.join(log_base_path, "tensorboard") if args.tensorboard and args.rank == 0 else ""
    os.makedirs(args.checkpoint_path, exist_ok=True)
    if args.tensorboard_path:
        os.makedirs(args.tensorboard_path, exist_ok=True)
    args.save_logs = bool(args.logs) and args.logs.lower() != "none" and args.rank == 0
    if args.rank == 0 and os.path.exists(requeue_marker(args)):
        os.remove(requeue_marker(args))
    return device


def init_deepspeed(args, device):
    """The process group DeepSpeed uses: open_clip's when distributed, else a 1-rank group."""
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


def train(args) -> int:
    from open_clip import create_model_and_transforms, get_input_dtype, get_tokenizer
    from open_clip_train.main import random_seed
    from open_clip_train.scheduler import const_lr, const_lr_cooldown, cosine_lr
    from open_clip_train.train import AverageMeter

    from patentclip.launch import checkpoint as ckpt
    from patentclip.evaluation.during_training import evaluate_during_training
    from patentclip.launch.step import accumulate_batches, train_step_accum
    from patentclip.launch.model import (PatentTrainModule, head_state, load_head_state, lock_towers,
                                         make_logit_scale_nonscalar, optimizer_param_groups)
    from patentclip.plugins.augment import rrc_aug_cfg, with_patent_augmentations
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.losses import LossSet
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.registry import DATASETS, import_plugin_modules, load_builtin_plugins

    register_model_configs()
    load_builtin_plugins()
    import_plugin_modules(args.plugins.split(","))
    device = setup_run(args)
    deepspeed = init_deepspeed(args, device)
    is_master = args.rank == 0

    class_table = load_class_table(args.train_data, args.classes_json)
    logging.info("%d classes from %s", len(class_table), class_table.source)

    if isinstance(args.force_image_size, (tuple, list)) and len(args.force_image_size) == 1:
        args.force_image_size = args.force_image_size[0]
    rrc_aug_cfg(args)
    random_seed(args.seed, 0)
    model, preprocess_train, preprocess_val = create_model_and_transforms(
        args.model, args.pretrained, precision="fp32", device=device,
        force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
        force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
        force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
        image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
        aug_cfg=args.aug_cfg, pretrained_image=args.pretrained_image, output_dict=True, cache_dir=args.cache_dir)
    make_logit_scale_nonscalar(model)
    preprocess_train = with_patent_augmentations(preprocess_train, args)
    store = ckpt.CheckpointStore(args)
    resume_target = ckpt.resolve_resume(args, store)
    args.zero_stage = ckpt.resolve_zero_stage(args, resume_target)
    start_epoch, start_step = 0, 0
    if resume_target and resume_target[0] == "open_clip":
        start_epoch = ckpt.load_weights_before_engine(model, resume_target)
    random_seed(args.seed, args.rank)
    lock_towers(model, args)
    if args.grad_checkpointing:
        model.set_grad_checkpointing()

    criterion = LossSet(args.loss, args, class_table)
    if getattr(criterion, "needs_second_view", False) and not args.multiview:
        logging.info("a selected loss needs a second view: multi-view pairs switched on")
        args.multiview = True
    module = PatentTrainModule(model, criterion).to(device)
    if resume_target and resume_target[0] == "open_clip":  # the classification head travels in epoch_N.pt
        with fsspec.open(resume_target[1], "rb") as f:
            oc = torch.load(f, map_location="cpu", weights_only=False)
        load_head_state(module, oc.get("patentclip_head") if isinstance(oc, dict) else None)
    if is_master:
        logging.info("Model:\n%s", model)
        with open(os.path.join(args.logs, args.name, "params.txt"), "w") as f:
            for name in sorted(vars(args)):
                logging.info(f"  {name}: {getattr(args, name)}")
                f.write(f"{name}: {getattr(args, name)}\n")

    optimizer = torch.optim.AdamW(optimizer_param_groups(module, args.wd), lr=args.lr,
                                  betas=(args.beta1, args.beta2), eps=args.eps)
    ds_config = deepspeed_config(args)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
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

    tokenizer = get_tokenizer(args.model, cache_dir=args.cache_dir, context_length=args.force_context_length)
    build_dataset = DATASETS.get(args.patent_dataset)
    data = {"train": build_dataset(args, preprocess_train, True, epoch=start_epoch, tokenizer=tokenizer,
                                   class_table=class_table)}
    if args.val_data:
        data["val"] = build_dataset(args, preprocess_val, False, epoch=start_epoch, tokenizer=tokenizer,
                                    class_table=class_table)

    steps_per_epoch = data["train"].dataloader.num_batches // args.accum_freq  # optimizer steps, as open_clip
    total_steps = steps_per_epoch * args.epochs
    # the schedule sets the lr of the optimizer DeepSpeed steps (ZeRO wraps the client optimizer)
    sched_opt = engine.optimizer
    if args.lr_scheduler == "cosine":
        scheduler = cosine_lr(sched_opt, args.lr, args.warmup, total_steps)
    elif args.lr_scheduler == "const":
        scheduler = const_lr(sched_opt, args.lr, args.warmup, total_steps)
    else:
        if args.epochs_cooldown is None:
            raise SystemExit("--lr-scheduler const-cooldown needs --epochs-cooldown")
        scheduler = const_lr_cooldown(sched_opt, args.lr, args.warmup, total_steps,
                                      steps_per_epoch * args.epochs_cooldown, args.lr_cooldown_power,
                                      args.lr_cooldown_end)

    writer = None
    if args.save_logs and args.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(args.tensorboard_path)
    step_log = open(os.path.join(args.logs, args.name, "train_steps.jsonl"), "a") if args.save_logs else None

    input_dtype = torch.bfloat16 if engine.bfloat16_enabled() else (
        torch.float16 if engine.fp16_enabled() else get_input_dtype("fp32"))
    metrics = {}
    step = start_step
    exit_code = 0
    stop = False
    stopper = StopSignal().install()
    for epoch in range(start_epoch, args.epochs):
        if is_master:
            logging.info(f"Start epoch {epoch}")
        engine.train()
        data["train"].set_epoch(epoch)
        dataloader = data["train"].dataloader
        first_batch = max(0, start_step - steps_per_epoch * epoch) if epoch == start_epoch else 0
        if first_batch and loader_state is not None and int(loader_state.get("epoch", -1)) == epoch:
            dataloader.load_state_dict(loader_state)
            logging.info("Resuming epoch %d at batch %d of %d", epoch, first_batch, steps_per_epoch)
        sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
        losses_m, batch_time_m, data_time_m = {}, AverageMeter(), AverageMeter()
        batch_count = first_batch
        end = time.time()
        micro_batches = accumulate_batches(synchronized(dataloader, device), args.accum_freq)
        for i, micro in enumerate(micro_batches, start=first_batch):
            step = steps_per_epoch * epoch + i
            if not args.skip_scheduler:
                scheduler(step)
            data_time_m.update(time.time() - end)
            total_loss, terms, features = train_step_accum(engine, micro, args, device, input_dtype)

            batch_time_m.update(time.time() - end)
            end = time.time()
            batch_count = i + 1
            terms = {**terms, "loss": total_loss}
            values = {k: v.detach().float().item() for k, v in terms.items()}
            if step_log is not None:
                step_log.write(json.dumps({"step": step, "epoch": epoch, **values}) + "\n")
                step_log.flush()
            if is_master and (i % args.log_every_n_steps == 0 or batch_count == steps_per_epoch):
                n = sum(len(b["key"]) for b in micro)
                num_samples = batch_count * args.batch_size * args.accum_freq * args.world_size
                percent_complete = 100.0 * batch_count / steps_per_epoch
                for k, v in values.items():
                    losses_m.setdefault(k, AverageMeter()).update(v, n)
                logit_scale = features["logit_scale"].detach().float().mean().item()
                loss_log = " ".join(f"{k.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for k, m in losses_m.items())
                sps = args.batch_size * args.accum_freq * args.world_size / batch_time_m.val
                logging.info(
                    f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{dataloader.num_samples} "
                    f"({percent_complete:.0f}%)] Data (t): {data_time_m.avg:.3f} Batch (t): {batch_time_m.avg:.3f}, "
                    f"{sps:#g}/s LR: {engine.optimizer.param_groups[0]['lr']:5f} Logit Scale: {logit_scale:.3f} "
                    + loss_log)
                if writer is not None:
                    log_data = {"data_time": data_time_m.val, "batch_time": batch_time_m.val,
                                "samples_per_second": sps, "scale": logit_scale,
                                "lr": engine.optimizer.param_groups[0]["lr"], **values}
                    for name, val in log_data.items():
                        writer.add_scalar("train/" + name, val, step)
                    writer.add_scalar("data/skipped_samples", dataloader.skipped, step)
                batch_time_m.reset()
                data_time_m.reset()
            stop = stopper.should_stop(device)
            if batch_count < steps_per_epoch and (stop or (args.save_every_n_steps and
                                                           (step + 1) % args.save_every_n_steps == 0)):
                store.save(engine, epoch=epoch, step=step + 1, class_table=class_table,
                           loader_states=gather_loader_states(dataloader, args), tag=f"step_{step + 1}",
                           head_state=head_state(engine.module))
            if stop:
                break
        if stop and batch_count < steps_per_epoch:
            logging.info("Stopped by %s after step %d; checkpoint written, exiting with code %d (requeue)",
                         stopper.received or "a signal on another rank", step, EXIT_REQUEUE)
            mark_requeue(args, f"stopped by {stopper.received or 'a signal on another rank'} after step {step}")
            exit_code = EXIT_REQUEUE
            break
        completed_epoch = epoch + 1
        step = steps_per_epoch * completed_epoch

        if "val" in data and args.val_frequency and (completed_epoch % args.val_frequency == 0
                                                     or completed_epoch == args.epochs):
            metrics = evaluate_during_training(engine, data["val"], class_table, tokenizer, completed_epoch, args,
                                               device, input_dtype, writer)
        if args.distributed:
            torch.distributed.barrier()
        if stop or completed_epoch == args.epochs or (args.save_frequency > 0 and
                                                      completed_epoch % args.save_frequency == 0):
            store.save(engine, epoch=completed_epoch, step=step, class_table=class_table,
                       loader_states=gather_loader_states(dataloader, args), head_state=head_state(engine.module))
        if stop and completed_epoch < args.epochs:
            logging.info("Stopped by %s at the end of epoch %d; checkpoint written, exiting with code %d (requeue)",
                         stopper.received or "a signal on another rank", completed_epoch, EXIT_REQUEUE)
            mark_requeue(args, f"stopped by {stopper.received or 'a signal on another rank'} after epoch "
                               f"{completed_epoch}")
            exit_code = EXIT_REQUEUE
            break
        if args.distributed:
            torch.distributed.barrier()

    if step_log is not None:
        step_log.close()
    if writer is not None:
        writer.close()
    if is_master:
        summary = {"name": args.name, "log_dir": os.path.join(args.logs, args.name),
                   "checkpoints": args.checkpoint_path, "tensorboard": args.tensorboard_path, "metrics": metrics}
        with open(os.path.join(args.logs, args.name, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        logging.info("Done: logs, checkpoints and tensorboard files in %s", os.path.join(args.logs, args.name))
    stopper.uninstall()
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return exit_code


def main(argv=None) -> int:
    args = parse_train_args(argv)
    if args.nproc_per_node > 1 and not any(v in os.environ for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK")):
        return relaunch_with_torchrun(args)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())
