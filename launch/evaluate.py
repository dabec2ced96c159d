"""``patentclip-eval``: evaluate a model on patent shards, as the papers measure it.

Metrics (definitions in :mod:`patentclip.launch.metrics`):
  * image->text and text->image Recall@1/5/10 (each drawing paired with its caption; DesignCLIP's tables)
  * zero-shot classification top-1/top-5 with class-name prompts (templates configurable), and balanced
    (mean per-class) top-1
  * image->image retrieval mAP, R@5, R@10, MRR@10 over the evaluation drawings, a hit being a drawing of the
    same class; the query's own patent (including the query itself) is excluded from its database.

Also run during training on ``--val-data`` after every ``--val-frequency`` epochs (tensorboard ``val/*``,
``checkpoints/results.jsonl`` as in open_clip).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

DEFAULT_TEMPLATES = (
    "a patent drawing of {}.",
    "ornamental design for {}.",
    "a line drawing of {}.",
    "{}.",
)

# the headline metrics printed in tables, in this order
HEADLINE = ("zeroshot_top1", "i2i_mAP", "i2i_R@10", "image_to_text_R@5", "text_to_image_R@5")


@torch.no_grad()
def extract_features(model, dataloader, device, input_dtype=torch.float32, max_batches: Optional[int] = None) -> Dict:
    """Run the model over an evaluation loader; L2-normalised features and the metadata of every drawing."""
    model.eval()
    out: Dict[str, List] = {"image_features": [], "text_features": [], "class_id": [], "grant_day": [],
                            "patent_id": [], "view": [], "key": []}
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        images = batch["image"].to(device=device, dtype=input_dtype)
        texts = batch["text"].to(device=device)
        feats = model(images, texts)
        out["image_features"].append(F.normalize(feats["image_features"].float(), dim=-1).cpu())
        out["text_features"].append(F.normalize(feats["text_features"].float(), dim=-1).cpu())
        out["class_id"].append(batch["class_id"].cpu())
        out["grant_day"].append(batch["grant_day"].cpu())
        for k in ("patent_id", "view", "key"):
            out[k].extend(batch[k])
    if not out["image_features"]:
        raise ValueError("the evaluation data yielded no samples")
    for k in ("image_features", "text_features", "class_id", "grant_day"):
        out[k] = torch.cat(out[k])
    return out


@torch.no_grad()
def zero_shot_classifier(model, tokenizer, class_names: Sequence[str], templates: Sequence[str], device,
                         input_dtype=torch.float32) -> torch.Tensor:
    from open_clip import build_zero_shot_classifier

    return build_zero_shot_classifier(model, tokenizer=tokenizer, classnames=list(class_names),
                                      templates=list(templates), num_classes_per_batch=10, device=device,
                                      use_tqdm=False).float().cpu()


def metrics_from_features(feats: Dict, classifier: torch.Tensor) -> Dict[str, float]:
    from patentclip.launch import metrics as M

    result: Dict[str, float] = {}
    result.update(M.image_text_recall(feats["image_features"], feats["text_features"], ks=(1, 5, 10)))
    zs = M.zero_shot_accuracy(feats["image_features"], classifier, feats["class_id"], topk=(1, 5),
                              num_classes=classifier.shape[1])
    result["zeroshot_top1"] = zs["top1"]
    if "top5" in zs:
        result["zeroshot_top5"] = zs["top5"]
    result["zeroshot_balanced_top1"] = zs["balanced_top1"]
    patent_index = {p: i for i, p in enumerate(sorted(set(feats["patent_id"])))}
    pids = torch.tensor([patent_index[p] for p in feats["patent_id"]], dtype=torch.long)
    rm = M.retrieval_metrics(feats["image_features"], feats["image_features"], feats["class_id"], feats["class_id"],
                             ks=(5, 10), mrr_k=10, query_patent_ids=pids, db_patent_ids=pids)
    for k, v in rm.items():
        result[f"i2i_{k}"] = v
    return {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) or torch.is_tensor(v)}


def evaluate_model(model, dataloader, class_table, tokenizer, device, input_dtype=torch.float32,
                   templates: Sequence[str] = DEFAULT_TEMPLATES) -> Dict[str, float]:
    feats = extract_features(model, dataloader, device, input_dtype)
    classifier = zero_shot_classifier(model, tokenizer, class_table.names, templates, device, input_dtype)
    result = metrics_from_features(feats, classifier)
    result["num_samples"] = float(len(feats["key"]))
    return result


def evaluate_during_training(engine, val_data, class_table, tokenizer, epoch, args, device, input_dtype,
                             writer=None) -> Dict[str, float]:
    """Rank 0 evaluates the engine's model on the validation split; other ranks return at once."""
    if args.rank != 0:
        return {}
    templates = args.eval_zeroshot_templates.split("|") if args.eval_zeroshot_templates else DEFAULT_TEMPLATES
    model = engine.module.clip
    was_training = model.training
    metrics = evaluate_model(model, val_data.dataloader, class_table, tokenizer, device, input_dtype, templates)
    model.train(was_training)
    logging.info(f"Eval Epoch: {epoch} " + "\t".join(f"{k}: {v:.4f}" for k, v in metrics.items()))
    if args.save_logs:
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar("val/" + k, v, epoch)
        with open(os.path.join(args.checkpoint_path, "results.jsonl"), "a+") as f:
            f.write(json.dumps({**metrics, "epoch": epoch}) + "\n")
    return metrics


def format_table(rows: Dict[str, Dict[str, float]], keys: Sequence[str] = HEADLINE) -> str:
    """A plain-text table: one row per model, one column per metric (percentages)."""
    names = list(rows)
    w0 = max(8, *(len(n) for n in names))
    head = f"{'model':<{w0}}  " + "  ".join(f"{k:>18}" for k in keys)
    lines = [head, "-" * len(head)]
    for n in names:
        lines.append(f"{n:<{w0}}  " + "  ".join(
            f"{100 * rows[n][k]:>17.1f}%" if k in rows[n] else f"{'-':>18}" for k in keys))
    return "\n".join(lines)


def load_model_for_eval(model_name: str, checkpoint: Optional[str], pretrained: Optional[str], device):
    """An open_clip model with weights from an open_clip .pt, a DeepSpeed checkpoint folder, or none."""
    from open_clip import create_model_and_transforms

    from patentclip.launch.model import load_open_clip_state_dict
    from patentclip.plugins.models import register_model_configs

    register_model_configs()
    model, _, preprocess_val = create_model_and_transforms(model_name, pretrained, precision="fp32", device=device,
                                                           output_dict=True)
    if checkpoint and checkpoint != "untrained":
        if os.path.isdir(checkpoint):
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            from patentclip.launch.checkpoint import DS_SUBDIR, latest_tag
            ds_dir = checkpoint
            if os.path.isdir(os.path.join(checkpoint, DS_SUBDIR)):
                ds_dir = os.path.join(checkpoint, DS_SUBDIR)
            tag = latest_tag(ds_dir)
            if tag is None:
                ds_dir, tag = os.path.dirname(os.path.abspath(checkpoint)), os.path.basename(os.path.abspath(checkpoint))
            sd = get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag)
            sd = {k[len("clip."):]: v for k, v in sd.items() if k.startswith("clip.")}
        else:
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
            sd = ckpt.get("state_dict", ckpt)
        load_open_clip_state_dict(model, sd)
    model.to(device).eval()
    return model, preprocess_val


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patentclip-eval", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1] + """
Example:
  patentclip-eval --val-data 'shards/val/val-{000000..000001}.tar' --model patentclip-tiny \\
      --checkpoint logs/run/checkpoints/epoch_10.pt --out metrics.json
""")
    p.add_argument("--val-data", required=True, help="Evaluation shards (brace/:: patterns as in open_clip).")
    p.add_argument("--model", required=True, help="open_clip model name (patentclip-tiny, ViT-B-32, ...).")
    p.add_argument("--checkpoint", default=None,
                   help="Weights: an open_clip epoch_N.pt, a DeepSpeed checkpoint folder (run's checkpoints/ "
                        "or a tag folder), or 'untrained' for freshly initialised weights.")
    p.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai), for baselines.")
    p.add_argument("--classes-json", default=None, help="classes.json (default: beside the first val shard).")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--val-num-samples", type=int, default=None)
    p.add_argument("--templates", default=None, help="Zero-shot templates separated by '|', with {} for the class name.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the freshly initialised ('untrained') weights.")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="Write the metrics as JSON here.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    from open_clip import get_tokenizer

    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.registry import DATASETS, load_builtin_plugins

    load_builtin_plugins()
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    class_table = load_class_table(args.val_data, args.classes_json)
    model, preprocess = load_model_for_eval(args.model, args.checkpoint, args.pretrained, device)
    tokenizer = get_tokenizer(args.model)
    data_args = argparse.Namespace(val_data=args.val_data, val_num_samples=args.val_num_samples, seed=args.seed,
                                   batch_size=args.batch_size, workers=args.workers, world_size=1, rank=0,
                                   train_data=None, dataset_resampled=False)
    loader = DATASETS.get("patent-wds")(data_args, preprocess, False, tokenizer=tokenizer,
                                        class_table=class_table).dataloader
    templates = args.templates.split("|") if args.templates else DEFAULT_TEMPLATES
    metrics = evaluate_model(model, loader, class_table, tokenizer, device, templates=templates)
    print(format_table({args.checkpoint or args.pretrained or "model": metrics}))
    print(json.dumps(metrics, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(metrics, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
