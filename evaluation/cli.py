"""``patentclip-eval``: evaluate a model on patent shards, as the papers measure it.

Metrics (exact definitions in :mod:`patentclip.evaluation.metrics`, protocol in docs/evaluation.md):
  * image->image retrieval as "LLM-informed patent image retrieval" (sec. 3.4) defines it: mAP, R@5, R@10 and
    MRR@10 (also HitRate@K, P@K, per-class mAP) with the prior-art filter -- a query granted on day t_q
    searches only drawings granted before t_q -- for all classes and for head / tail classes separately
    (head = the 40% most frequent training classes, or classes.json's "category"). Relevance by class (the
    paper), by patent (DeepPatent's re-identification) or by the examiner's citations (the real prior art:
    :mod:`patentclip.evaluation.citations`), --relevance. The query's own patent is never a candidate in the
    class and citation settings; in the patent setting the query drawing itself is not. R@K is the paper's
    recall (relevant items in the top K / all relevant items); the hit rate is reported as HitRate@K.
  * image->text and text->image R@1/5/10 (each drawing with its caption; DesignCLIP / PatentCLIP tables)
  * zero-shot classification top-1/top-5 and balanced top-1 with class-name prompts (--templates), per class
  * linear-probe classification on frozen image features (DesignCLIP's fine-tuned setting): fitted on
    --probe-train-data, or k-fold cross-validated by patent on the evaluation split when none is given
  * the trained classification head's accuracy (image-only mode), when the checkpoint has one
Results for head / tail classes carry the prefixes i2i_head/ and i2i_tail/ (retrieval) and the suffixes _head /
_tail (classification: accuracy over the drawings of head / tail classes).

Also run during training on --val-data every --val-frequency epochs (tensorboard val/*, checkpoints/
results.jsonl as in open_clip). --report DIR writes an HTML page with figures (patentclip.evaluation.report).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional

import torch

from patentclip.evaluation import report as R
from patentclip.evaluation.index import eval_features
from patentclip.evaluation.citations import load_citations
from patentclip.evaluation.loading import LoadedModel, load_for_eval
from patentclip.evaluation.run import format_table, run_evaluation
from patentclip.evaluation.settings import DEFAULT_TEMPLATES, EvalSettings
from patentclip.launch.args import default_args
from patentclip.launch.safe_load import TRUST_FLAG, TRUST_HELP
from patentclip.plugins.classes import ClassTable, load_class_table
from patentclip.evaluation.extra_metrics import check_metric_names, metric_names
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.registry import DATASETS, import_plugin_modules


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="patentclip-eval", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1] + """
Examples:
  patentclip-eval --val-data 'shards/val/val-{000000..000001}.tar' \\
      --checkpoint logs/run/checkpoints/epoch_10.pt --out metrics.json
  patentclip-eval --val-data ... --checkpoint s3://bucket/run/checkpoints --baseline untrained --model patentclip-tiny \\
      --probe-train-data 'shards/train/train-{000000..000011}.tar' --report report/
""")
    g = p.add_argument_group("model and data")
    g.add_argument("--val-data", required=True, help="Evaluation shards (brace/:: patterns as in open_clip).")
    g.add_argument("--model", default=None,
                   help="open_clip model name (patentclip-tiny, ViT-B-32, ...); default: the one the checkpoint "
                        "records.")
    g.add_argument("--checkpoint", default=None,
                   help="Weights: an open_clip epoch_N.pt, a DeepSpeed checkpoint folder (a run's checkpoints/ or "
                        "a tag folder), a patentclip-export folder, any of these at an s3:// (fsspec) URL, or "
                        "'untrained' for freshly initialised weights (seeded by --seed).")
    g.add_argument("--pretrained", default=None, help="open_clip pretrained tag (e.g. openai), for baselines.")
    g.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    g.add_argument("--classes-json", default=None, help="classes.json (default: beside the first val shard).")
    g.add_argument("--train-classes-json", default=None,
                   help="classes.json of the training split: its counts define head/tail classes (default: the "
                        "training class table stored in the checkpoint, else --classes-json's counts).")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--val-num-samples", type=int, default=None)
    g.add_argument("--seed", type=int, default=0, help="Seed of 'untrained' weights, probe splits and examples.")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--out", default=None,
                   help="Write JSON here: the metrics (top level), 'per_class' and 'settings' (and 'baseline').")
    g = p.add_argument_group("retrieval")
    g.add_argument("--relevance", choices=["class", "patent", "citation"], default="class",
                   help="A result is relevant if it shows the query's Locarno class (the LLM-informed paper), "
                        "the query's patent (DeepPatent re-identification), or a patent the examiner cited against "
                        "the query's patent (the citations_examiner field that --format uspto shards carry: the "
                        "real prior art). Default: %(default)s.")
    g.add_argument("--prior-art", choices=["auto", "on", "off"], default="auto",
                   help="Prior-art filter: only drawings granted strictly before the query's patent are searched. "
                        "auto = on for --relevance class and citation, off for patent. Default: %(default)s.")
    g.add_argument("--retrieval-db", default=None,
                   help="Shards of the database to search (default: the evaluation drawings themselves).")
    g.add_argument("--retrieval-index", default=None,
                   help="A patentclip-index folder as the database: its stored vectors, embedded once by "
                        "`patentclip-index build` (split over ranks, resumable) with this model (checked), instead of "
                        "embedding --retrieval-db here. With float16 vectors (the index default) the metrics differ "
                        "from --retrieval-db's in the last digits (docs/search.md); float32 vectors give the same.")
    g.add_argument("--ks", default="5,10", help="Cut-offs K of R@K / HitRate@K / P@K. Default: %(default)s.")
    g.add_argument("--mrr-k", type=int, default=10, help="K of MRR@K. Default: %(default)s.")
    g.add_argument("--max-chunk-mb", type=int, default=1024,
                   help="Memory of one retrieval chunk (queries x database scores and masks). Default: %(default)s.")
    g.add_argument("--ranking", choices=["count", "sort", "topk"], default="count",
                   help="How rows are ranked: count (mAP by counting, top K by torch.topk, no full sort), sort (a "
                        "full stable sort of every row: the reference, same results), topk (R@K, HitRate@K, P@K "
                        "and MRR@K only, no mAP: cheapest at scale). Default: %(default)s.")
    g = p.add_argument_group("classification")
    g.add_argument("--templates", default=None, help="Zero-shot templates separated by '|', with {} for the class name.")
    g.add_argument("--linear-probe", choices=["auto", "off"], default="auto",
                   help="auto: fit on --probe-train-data if given, else cross-validate on the evaluation split.")
    g.add_argument("--probe-train-data", default=None, help="Training shards for the linear probe.")
    g.add_argument("--probe-folds", type=int, default=2, help="Folds of the cross-validated probe.")
    g = p.add_argument_group("report")
    g.add_argument("--report", default=None, help="Write an HTML report with PNG figures into this folder.")
    g.add_argument("--baseline", default=None,
                   help="A baseline to compare with in the table and report: a checkpoint (as --checkpoint), "
                        "'untrained', or 'pretrained:<tag>' for an open_clip pretrained model.")
    g.add_argument("--baseline-model", default=None, help="Model name of the baseline (default: --model's).")
    g.add_argument("--report-examples", type=int, default=6, help="Retrieval examples in the report.")
    g.add_argument("--report-top-k", type=int, default=5, help="Results shown per retrieval example.")
    g.add_argument("--map-method", choices=["pca", "tsne"], default="pca",
                   help="2-D embedding map: PCA (torch) or t-SNE (needs scikit-learn).")
    g.add_argument("--map-points", type=int, default=3000, help="At most this many drawings in the embedding map.")
    g = p.add_argument_group("extra metrics (docs/extending.md)")
    g.add_argument("--metrics", default="",
                   help="Comma-separated registered extra metrics to compute besides the built-in ones.")
    g.add_argument("--plugins", default="",
                   help="Comma-separated Python modules to import first: they register their own metrics.")
    return p


def _loader(shards, preprocess, tokenizer, class_table, args):
    data_args = default_args(val_data=shards, val_num_samples=args.val_num_samples, seed=args.seed,
                             batch_size=args.batch_size, workers=args.workers)
    return DATASETS.get("patent-wds")(data_args, preprocess, False, tokenizer=tokenizer,
                                      class_table=class_table).dataloader


def _evaluate_cli_model(loaded: LoadedModel, class_table, settings, args, device, is_head, train_counts, examples,
                        db_features=None):
    loader = _loader(args.val_data, loaded.preprocess, loaded.tokenizer, class_table, args)
    db_loader = _loader(args.retrieval_db, loaded.preprocess, loaded.tokenizer, class_table, args) \
        if args.retrieval_db else None
    probe_loader = _loader(args.probe_train_data, loaded.preprocess, loaded.tokenizer, class_table, args) \
        if args.probe_train_data and settings.linear_probe != "off" else None
    citations = load_citations(args.val_data) if settings.relevance == "citation" else None
    return run_evaluation(loaded.model, loader, class_table, loaded.tokenizer, device, torch.float32, settings,
                          head=loaded.head, is_head=is_head, train_counts=train_counts, db_loader=db_loader,
                          db_features=db_features, probe_train_loader=probe_loader, examples=examples,
                          example_k=args.report_top_k, citations=citations)


def _check_classes(class_table, classes: Optional[List[Dict]], what: str) -> None:
    if classes is None:
        return
    if len(classes) != len(class_table):
        raise ValueError(f"{what} was trained on {len(classes)} classes, the evaluation classes.json has "
                         f"{len(class_table)}")
    diff = [c["id"] for c in classes if class_table.classes[int(c["id"])].name != c.get("name")]
    if diff:
        logging.warning("%s: class names differ from %s for ids %s", what, class_table.source, diff[:10])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    load_builtin_plugins()
    try:
        import_plugin_modules(args.plugins.split(","))
        extra = metric_names(args.metrics)
        check_metric_names(extra)
        settings = EvalSettings(relevance=args.relevance, prior_art=args.prior_art,
                                ks=tuple(int(k) for k in args.ks.split(",") if k.strip()), mrr_k=args.mrr_k,
                                templates=tuple(args.templates.split("|")) if args.templates else DEFAULT_TEMPLATES,
                                linear_probe=args.linear_probe, probe_folds=args.probe_folds,
                                max_chunk_bytes=args.max_chunk_mb << 20, ranking=args.ranking, seed=args.seed,
                                extra_metrics=extra)
    except (ValueError, KeyError, ImportError) as exc:
        print(f"patentclip-eval: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 2
    if args.retrieval_index and (args.retrieval_db or args.baseline):
        print("patentclip-eval: --retrieval-index holds one model's vectors: it cannot be combined with "
              "--retrieval-db or a --baseline (evaluate those against --retrieval-db)", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    class_table = load_class_table(args.val_data, args.classes_json)
    with tempfile.TemporaryDirectory(prefix="patentclip-eval-") as work:
        torch.manual_seed(args.seed)
        try:
            loaded = load_for_eval(args.checkpoint, args.model, args.pretrained, device, work,
                                   trust=args.trust_checkpoint)
            _check_classes(class_table, loaded.classes, loaded.source)
            db_features = eval_features(args.retrieval_index, loaded.model, class_table.codes) \
                if args.retrieval_index else None
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"patentclip-eval: {exc}", file=sys.stderr)
            return 2
        # head / tail classes: the class table's split of the training counts (and categories, when given)
        if args.train_classes_json:
            train_table = ClassTable.load(args.train_classes_json)
        elif loaded.classes is not None:
            train_table = ClassTable.from_dicts(loaded.classes, loaded.source)
        else:
            logging.warning("no training class counts (no --train-classes-json, none in the checkpoint): head/tail "
                            "classes follow the evaluation split's counts in %s", class_table.source)
            train_table = class_table
        train_counts = train_table.counts()
        is_head = class_table.head_mask(train_counts, train_table.categories())
        n_examples = args.report_examples if args.report else 0
        try:
            result = _evaluate_cli_model(loaded, class_table, settings, args, device, is_head, train_counts,
                                         n_examples, db_features)
        except ValueError as exc:  # e.g. --relevance citation on shards without citations
            print(f"patentclip-eval: {exc}", file=sys.stderr)
            return 2
        label = os.path.basename(str(args.checkpoint).rstrip("/")) if args.checkpoint else loaded.source
        rows = {label: result.metrics}
        baseline = None
        if args.baseline:
            bname = args.baseline_model or args.model or loaded.name
            torch.manual_seed(args.seed)
            try:
                if args.baseline.startswith("pretrained:"):
                    bl = load_for_eval(None, bname, args.baseline.split(":", 1)[1], device, work)
                else:
                    bl = load_for_eval(args.baseline, bname, None, device, work, trust=args.trust_checkpoint)
            except (FileNotFoundError, ValueError, RuntimeError) as exc:
                print(f"patentclip-eval: --baseline: {exc}", file=sys.stderr)
                return 2
            baseline = _evaluate_cli_model(bl, class_table, settings, args, device, is_head, train_counts, 0)
            blabel = "baseline: " + (os.path.basename(args.baseline.rstrip("/")) or args.baseline)
            rows[blabel] = baseline.metrics
    print(format_table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(R.metrics_document(result, baseline, {"name": loaded.name, "source": loaded.source},
                                         args.baseline), f, indent=2)
    if args.report:
        loader = _loader(args.val_data, loaded.preprocess, loaded.tokenizer, class_table, args)
        db_loader = _loader(args.retrieval_db, loaded.preprocess, loaded.tokenizer, class_table, args) \
            if args.retrieval_db else None
        keys = {e["key"] for e in result.examples} | {r["key"] for e in result.examples for r in e["results"]}
        images = R.collect_images([loader] + ([db_loader] if db_loader is not None else []), keys, loaded.preprocess)
        page = R.write_report(args.report, result, class_table, baseline=baseline, images=images,
                              title=f"patentclip evaluation: {label}", model_label=label,
                              baseline_label=(f"baseline ({args.baseline})" if args.baseline else None),
                              map_method=args.map_method, map_points=args.map_points)
        print(f"report: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
