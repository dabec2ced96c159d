"""``patentclip-demo``: the whole product on the embedded default, on CPU, in a few minutes.

synthetic design patents -> manifest -> WebDataset shards -> 2-process DeepSpeed training of a tiny open_clip
model (``patentclip-tiny``, trained from scratch, nothing downloaded) -> evaluation of the trained model
against the same model untrained -> a metrics table and where the logs, checkpoints and tensorboard files are.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SPLITS = (("train", 0.8), ("val", 0.2))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", default="demo-run", help="Working folder (default: %(default)s).")
    p.add_argument("--num-patents", type=int, default=600, help="Synthetic patents (default: %(default)s).")
    p.add_argument("--num-classes", type=int, default=10, help="Design classes (default: %(default)s).")
    p.add_argument("--image-size", type=int, default=96, help="Drawing size in pixels (default: %(default)s).")
    p.add_argument("--samples-per-shard", type=int, default=200, help="Drawings per shard (default: %(default)s).")
    p.add_argument("--epochs", type=int, default=12, help="Training epochs (default: %(default)s).")
    p.add_argument("--batch-size", type=int, default=32, help="Batch size per rank (default: %(default)s).")
    p.add_argument("--lr", type=float, default=2e-3, help="Peak learning rate (default: %(default)s).")
    p.add_argument("--nproc", type=int, default=2, help="Training processes (default: %(default)s).")
    p.add_argument("--zero-stage", type=int, default=1, choices=[0, 1, 2], help="DeepSpeed ZeRO stage.")
    p.add_argument("--loss", default="class_aware_contrastive",
                   help="Loss spec passed to patentclip-train --loss (default: %(default)s).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="Data-loader workers per rank (default: %(default)s).")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from patentclip.shards.build import build_shards, shard_pattern
    from patentclip.shards.synth import generate_synthetic_patents

    print(f"[1/4] synthetic design patents -> {out / 'patents'}", flush=True)
    manifest = generate_synthetic_patents(out / "patents", num_patents=args.num_patents,
                                          num_classes=args.num_classes, image_size=args.image_size, seed=args.seed)
    print(f"[2/4] shards -> {out / 'shards'}", flush=True)
    build_shards(manifest, out / "shards", samples_per_shard=args.samples_per_shard, splits=SPLITS,
                          seed=args.seed)
    train_data, val_data = shard_pattern(out / "shards" / "train"), shard_pattern(out / "shards" / "val")
    print(f"      train: {train_data}\n      val:   {val_data}", flush=True)

    print(f"[3/4] training patentclip-tiny with DeepSpeed ZeRO-{args.zero_stage}, {args.nproc} processes",
          flush=True)
    from patentclip.launch.train import main as train_main

    name = f"demo-seed{args.seed}"
    logs = out / "logs"
    train_argv = ["--nproc-per-node", str(args.nproc), "--train-data", train_data, "--val-data", val_data,
                  "--model", "patentclip-tiny", "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                  "--lr", str(args.lr), "--warmup", "20", "--wd", "0.1", "--workers", str(args.workers),
                  "--loss", args.loss, "--zero-stage", str(args.zero_stage), "--seed", str(args.seed),
                  "--logs", str(logs), "--name", name, "--val-frequency", str(args.epochs),
                  "--log-every-n-steps", "10", "--resume", "latest", "--save-frequency", "4",
                  "--keep-checkpoints", "1"]
    rc = train_main(train_argv)
    if rc != 0:
        print(f"training failed (exit {rc}); see {logs / name / 'out.log'}", file=sys.stderr)
        return rc

    print("[4/4] evaluating the trained model and the same model untrained on the val split", flush=True)
    import torch
    from open_clip import get_tokenizer

    from patentclip.evaluation.loading import load_model_for_eval
    from patentclip.launch.args import default_args
    from patentclip.evaluation.run import evaluate_model, format_table
    from patentclip.plugins.classes import load_class_table
    from patentclip.plugins.models import register_model_configs
    from patentclip.plugins.builtin import load_builtin_plugins
    from patentclip.plugins.registry import DATASETS

    load_builtin_plugins()
    register_model_configs()
    device = torch.device("cpu")
    class_table = load_class_table(val_data)
    tokenizer = get_tokenizer("patentclip-tiny")
    ckpt_path = logs / name / "checkpoints" / f"epoch_{args.epochs}.pt"
    rows = {}
    for label, ckpt in (("untrained", "untrained"), ("trained", str(ckpt_path))):
        torch.manual_seed(args.seed)
        model, preprocess = load_model_for_eval("patentclip-tiny", ckpt, None, device)
        data_args = default_args(val_data=val_data, seed=args.seed, batch_size=64, workers=0)
        loader = DATASETS.get("patent-wds")(data_args, preprocess, False, tokenizer=tokenizer,
                                            class_table=class_table).dataloader
        rows[label] = evaluate_model(model, loader, class_table, tokenizer, device)
    with open(out / "metrics.json", "w") as f:
        json.dump(rows, f, indent=2)

    n_val = int(rows["trained"]["num_samples"])
    print(f"\nValidation split: {n_val} drawings, {len(class_table)} classes "
          f"(chance zero-shot top-1 = {100 / len(class_table):.1f}%)\n")
    print(format_table(rows))
    print(f"""
Built in {time.time() - t0:.0f} s.
  manifest     {manifest}
  shards       {out / 'shards'}  (build report: {out / 'shards' / 'build_report.json'})
  logs         {logs / name / 'out.log'}
  checkpoints  {logs / name / 'checkpoints'}
  tensorboard  tensorboard --logdir {logs / name / 'tensorboard'}
  metrics      {out / 'metrics.json'}""")
    gain = rows["trained"]["zeroshot_top1"] - rows["untrained"]["zeroshot_top1"]
    if gain <= 0:
        print("WARNING: the trained model does not beat the untrained one on zero-shot accuracy", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
