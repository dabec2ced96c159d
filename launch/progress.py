"""Training progress: open_clip's log lines, the tensorboard scalars and ``train_steps.jsonl`` (one line per step
with every loss term, which the exact-resume checks compare)."""
from __future__ import annotations

import json
import logging
import math
from typing import Dict

from open_clip_train.train import AverageMeter

from patentclip.plugins.data.batch import KEY


class StepLogger:
    """open_clip's progress lines (every ``--log-every-n-steps``), the tensorboard scalars, and one line per
    step in ``train_steps.jsonl`` (every loss term, for exact-resume checks)."""

    def __init__(self, run, epoch: int, dataloader):
        self.run, self.epoch, self.dataloader = run, epoch, dataloader
        self.sample_digits = math.ceil(math.log(dataloader.num_samples + 1, 10))
        self.losses_m, self.batch_time_m, self.data_time_m = {}, AverageMeter(), AverageMeter()

    def log(self, step: int, i: int, batch_count: int, micro, values: Dict[str, float], features) -> None:
        run, args = self.run, self.run.args
        if run.step_log is not None:
            run.step_log.write(json.dumps({"step": step, "epoch": self.epoch, **values}) + "\n")
            run.step_log.flush()
        if args.rank != 0 or not (i % args.log_every_n_steps == 0 or batch_count == run.steps_per_epoch):
            return
        n = sum(len(b[KEY]) for b in micro)
        num_samples = batch_count * args.batch_size * args.accum_freq * args.world_size
        percent_complete = 100.0 * batch_count / run.steps_per_epoch
        for k, v in values.items():
            self.losses_m.setdefault(k, AverageMeter()).update(v, n)
        logit_scale = features["logit_scale"].detach().float().mean().item()
        loss_log = " ".join(f"{k.capitalize()}: {m.val:#.5g} ({m.avg:#.5g})" for k, m in self.losses_m.items())
        sps = args.batch_size * args.accum_freq * args.world_size / self.batch_time_m.val
        lr = run.engine.optimizer.param_groups[0]["lr"]
        logging.info(
            f"Train Epoch: {self.epoch} [{num_samples:>{self.sample_digits}}/{self.dataloader.num_samples} "
            f"({percent_complete:.0f}%)] Data (t): {self.data_time_m.avg:.3f} Batch (t): {self.batch_time_m.avg:.3f}, "
            f"{sps:#g}/s LR: {lr:5f} Logit Scale: {logit_scale:.3f} " + loss_log)
        if run.writer is not None:
            log_data = {"data_time": self.data_time_m.val, "batch_time": self.batch_time_m.val,
                        "samples_per_second": sps, "scale": logit_scale, "lr": lr, **values}
            for name, val in log_data.items():
                run.writer.add_scalar("train/" + name, val, step)
            run.writer.add_scalar("data/skipped_samples", self.dataloader.skipped, step)
        self.batch_time_m.reset()
        self.data_time_m.reset()
