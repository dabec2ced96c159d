"""The in-training evaluation: every ``--val-frequency`` epochs rank 0 evaluates the engine's model on
``--val-data`` (:func:`evaluate_during_training`; the zero-shot metrics every ``--zeroshot-frequency`` epochs and in the
last, as open_clip), logs the metrics, writes them to tensorboard (``val/*``) and to
``checkpoints/results.jsonl`` as open_clip does."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict

from patentclip.evaluation.classification import find_classification_head
from patentclip.evaluation.extra_metrics import metric_names
from patentclip.evaluation.run import evaluate_model
from patentclip.evaluation.settings import DEFAULT_TEMPLATES, EvalSettings


def evaluate_during_training(engine, val_data, class_table, tokenizer, epoch, args, device, input_dtype,
                             writer=None) -> Dict[str, float]:
    """Rank 0 evaluates the engine's model on the validation split; other ranks return at once.

    ``class_table`` is the training class table, so head / tail classes follow the training frequencies. The
    classification head, when the loss set has one, is evaluated too; the linear probe is cross-validated on
    the validation split (2 folds by patent).
    """
    if args.rank != 0:
        return {}
    templates = args.eval_zeroshot_templates.split("|") if args.eval_zeroshot_templates else DEFAULT_TEMPLATES
    # open_clip's --zeroshot-frequency: zero-shot metrics every N-th epoch and the last (0: never)
    zero_shot = args.zeroshot_frequency > 0 and (epoch % args.zeroshot_frequency == 0 or epoch == args.epochs)
    settings = EvalSettings(templates=tuple(templates), seed=args.seed, zero_shot=zero_shot,
                            extra_metrics=metric_names(args.eval_metrics))
    model = engine.module.clip
    head = find_classification_head(getattr(engine.module, "criterion", None))
    was_training = model.training
    head_was_training = head.training if head is not None else False
    try:
        metrics = evaluate_model(model, val_data.dataloader, class_table, tokenizer, device, input_dtype,
                                 settings=settings, head=head)
    finally:
        model.train(was_training)
        if head is not None:
            head.train(head_was_training)
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if args.save_logs:
        if writer is not None:
            for k, v in metrics.items():
                if math.isfinite(v):
                    writer.add_scalar("val/" + k, v, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps({**metrics, "epoch": epoch}) + "\n")
    return metrics
