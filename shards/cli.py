"""``patentclip-shards``: synthetic design patents; patent drawings packed into WebDataset shards; shard checks."""
from __future__ import annotations

import argparse
import json
import os
import sys

from patentclip.plugins.registry import import_plugin_modules
from patentclip.shards.build import build_shards, shard_pattern, summary
from patentclip.shards.importers import ImportOptions, formats
from patentclip.shards.output import storage_options_from
from patentclip.shards.images import DEFAULT_TRAIN_IMAGE_SIZE, storage_side
from patentclip.shards.inspect import format_findings, inspect_shards
from patentclip.shards.synth import generate_synthetic_patents


def add_import_arguments(g) -> None:
    """The importers' flags (docs/importers.md) on an argparse group: shared by ``build`` and ``patentclip-caption``,
    which must see the same drawings under the same keys."""
    g.add_argument("--images-root", default=None, help="folder the image paths are relative to (default: the "
                                                       "input file's folder)")
    g.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                   help="a folder besides the input's (or --images-root) that drawings may lie in; repeatable. An "
                        "image path that resolves elsewhere (a symlink pointing out of the data folder, an absolute "
                        "path) is refused and reported (outside_root)")
    g.add_argument("--locarno-table", default=None, metavar="FILE",
                   help="patent id -> Locarno class (CSV/TSV with header, JSON object or JSON Lines)")
    g.add_argument("--locarno-id-column", default="patent_id", help="(default: %(default)s)")
    g.add_argument("--locarno-class-column", default="class", help="(default: %(default)s)")
    g.add_argument("--class-names", default=None, metavar="FILE", help="Locarno code -> class name table")
    g.add_argument("--missing-class", choices=["skip", "other"], default="skip",
                   help="patents without a class: skip and report (default), or put them in 99-00 and report")
    g.add_argument("--default-date", default=None, metavar="YYYY-MM-DD",
                   help="grant date for patents whose input has none (reported); without it they are skipped")
    g.add_argument("--dp2-image", choices=["subfigure", "figure"], default="subfigure",
                   help="DeepPatent2: the segmented subfigure_file (default) or the whole figure_file")
    for col, default, what in (("path", "full_path", "image path"), ("class", "cat", "class (Locarno code or name)"),
                               ("id", None, "patent id (default: the patent number in the path)"),
                               ("date", None, "grant date"), ("title", None, "title"), ("view", None, "view"),
                               ("caption", None, "caption"), ("class-name", None, "class name")):
        g.add_argument(f"--{col}-column", default=default, help=f"CSV: column of the {what}"
                       + (f" (default: {default})" if default else ""))
    g.add_argument("--delimiter", default=None, help="CSV delimiter (default: tab if the header has one, else ',')")
    g.add_argument("--uspto-images", choices=["figures", "sheets", "both"], default="figures",
                   help="USPTO: the figures cut from the drawing sheets (default), the whole sheets, or both")
    g.add_argument("--no-ocr", action="store_true",
                   help="USPTO: do not read the FIG. labels with tesseract; figures are numbered in reading order")
    g.add_argument("--segment-cache", default=None, metavar="DIR",
                   help="USPTO: cache of the sheet segmentation, so that a rerun does not segment again "
                        "(default: $XDG_CACHE_HOME/patentclip/uspto-segments; 'none' for no cache)")


def import_options_from(args):
    """:class:`ImportOptions` from the flags of :func:`add_import_arguments`."""
    return ImportOptions(images_root=args.images_root, allowed_roots=tuple(args.allow_root),
                         locarno_table=args.locarno_table,
                         locarno_id_column=args.locarno_id_column, locarno_class_column=args.locarno_class_column,
                         class_names=args.class_names, missing_class=args.missing_class,
                         default_date=args.default_date, image_field=args.dp2_image, path_column=args.path_column,
                         class_column=args.class_column, id_column=args.id_column, date_column=args.date_column,
                         title_column=args.title_column, view_column=args.view_column,
                         caption_column=args.caption_column, class_name_column=args.class_name_column,
                         delimiter=args.delimiter, uspto_images=args.uspto_images, ocr=not args.no_ocr,
                         segment_cache=args.segment_cache)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-shards", description=__doc__, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write seeded synthetic design patents and their manifest",
                       description="Seeded synthetic design patents: long-tailed Locarno-like classes, each patent an "
                                   "object of its class's parametric 3-D family drawn in several views (black lines "
                                   "on white), with title, captions, patent number and grant date. Writes the "
                                   "drawings and OUT/manifest.jsonl (format: docs/manifest.md).")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-patents", type=int, default=400, help="number of patents (default: %(default)s)")
    s.add_argument("--num-classes", type=int, default=12, help="number of design classes (default: %(default)s)")
    s.add_argument("--views", default="front,side,top,perspective",
                   help="comma-separated views, one drawing each (default: %(default)s)")
    s.add_argument("--image-size", type=int, default=128, help="drawing size in pixels (default: %(default)s)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")

    b = sub.add_parser(
        "build", help="pack patent drawings into WebDataset shards",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pack design-patent drawings into WebDataset shards split by patent, with sizes.json, "
                    "classes.json, build_report.json and build_report.txt.\n\n"
                    "Inputs (--format): the project's manifest (docs/manifest.md), DeepPatent2 figure JSON, DeepPatent "
                    "split lists, a CSV, or the USPTO's design grants (XML + TIFF sheets, cut into figures) "
                    "(docs/importers.md). Output: a folder or any fsspec URL (s3://bucket/prefix; "
                    "endpoint, credentials and region from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, "
                    "AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION / AWS_PROFILE, or the flags below).\n\n"
                    "The shards are the same for any --workers. A rerun of the same command after a crash or Ctrl-C "
                    "keeps the complete shards and rebuilds the rest. Bad records, drawings and captions are skipped "
                    "or repaired and reported, never dropped silently; exit status 1 only when nothing was written.")
    b.add_argument("--format", dest="input_format", default="manifest",
                   choices=formats(), help="input format, a registered importer (default: manifest)")
    b.add_argument("--plugins", default="",
                   help="comma-separated Python modules to import first: they register their own input formats "
                        "(docs/extending.md)")
    b.add_argument("--manifest", "--input", dest="inputs", action="append", required=True, metavar="FILE",
                   help="input file; repeat for several (DeepPatent2 JSON files, DeepPatent lists, CSVs; uspto: "
                        "folders, per-patent zips, weekly .tar archives)")
    b.add_argument("--out", required=True, help="output folder or URL (one sub-folder per split)")
    b.add_argument("--samples-per-shard", type=int, default=1000,
                   help="maximum drawings per shard; a patent is never split (default: %(default)s)")
    b.add_argument("--split", action="append", default=None, metavar="NAME=FRACTION",
                   help="a split and its fraction of the patents, by a seeded hash of the patent id; repeat "
                        "(default: train=0.8 and val=0.2)")
    b.add_argument("--split-date", default=None, metavar="YYYY-MM-DD",
                   help="temporal split: patents granted before this date are split by --split, patents granted on "
                        "or after it go to the --query-split (prior-art search evaluation)")
    b.add_argument("--query-split", default="query", help="split name for --split-date (default: %(default)s)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and order hashes (default: %(default)s)")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="encoding processes (default: the number of CPUs, %(default)s)")
    g = b.add_argument_group("images")
    g.add_argument("--image-format", choices=["png", "jpg", "webp"], default="png",
                   help="image encoding (default: png, lossless)")
    g.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality 1-100 (default: 92 / 90)")
    g.add_argument("--image-mode", choices=["L", "RGB"], default="L",
                   help="colour mode of the written drawings: L (8-bit grey, default: patent drawings are line art; "
                        "readers convert to RGB on load) or RGB (keeps colour); transparency is flattened onto white")
    g.add_argument("--train-image-size", type=int, default=DEFAULT_TRAIN_IMAGE_SIZE,
                   help="the largest image size (px) the shards will be trained at: drawings are stored with a "
                        "longest side of this times 8/7, the margin of the random crop (default: %(default)s -> "
                        "256 px; 336 -> 384). Larger drawings cost every loader worker decode and resize time for "
                        "pixels the model never sees")
    g.add_argument("--max-side", type=int, default=None,
                   help="shrink drawings whose longest side exceeds this many pixels, 0 = never; overrides "
                        "--train-image-size (default: from --train-image-size)")
    g = b.add_argument_group("captions")
    g.add_argument("--captions", default=None, metavar="JSONL",
                   help="JSON Lines {\"key\": <patent_id>_<NN> or image path, \"captions\": [...]} joined to the "
                        "drawings (e.g. LLM-written captions)")
    g.add_argument("--captions-join", choices=["replace", "prepend", "append"], default="replace",
                   help="what the captions file does to a drawing's own captions (default: replace)")
    g.add_argument("--caption-templates", default=None, metavar="FILE",
                   help="caption templates, one per line or a JSON list, for drawings without captions "
                        "(fields: {title} {object} {a_object} {view} {class_name} {class_code} {caption} {patent_id})")
    g.add_argument("--max-caption-chars", type=int, default=1000,
                   help="longer captions are cut at a word boundary and reported, 0 = no limit (default: %(default)s)")
    add_import_arguments(b.add_argument_group("importers (docs/importers.md)"))
    g = b.add_argument_group("object storage")
    g.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: AWS_ENDPOINT_URL)")
    g.add_argument("--region", default=None, help="S3 region (default: AWS_DEFAULT_REGION)")
    g.add_argument("--profile", default=None, help="AWS credentials profile (default: AWS_PROFILE / environment)")
    b.add_argument("--contact-sheet", type=int, default=48, metavar="N",
                   help="write build_report_contact_sheet.png, the first N drawings as written into the shards, "
                        "to look at (0 = none; default: %(default)s)")
    b.add_argument("--no-resume", action="store_true", help="rebuild every shard even if a previous run completed it")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    i = sub.add_parser("inspect", help="validate shards and print their contents",
                       description="Validate shards: every member decodes, keys are consistent, no patent is split "
                                   "across shards or splits, counts match sizes.json, class ids match classes.json. "
                                   "Prints the class histogram, views and grant dates. Exit status 1 on problems.")
    i.add_argument("shards", help="a build's output folder, a split folder, a brace pattern, or their URLs")
    i.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="checking processes (default: %(default)s)")
    i.add_argument("--json", dest="json_out", default=None, metavar="FILE", help="also write the findings as JSON")
    i.add_argument("--max-problems", type=int, default=50, help="problems printed (default: %(default)s)")
    for flag in ("--endpoint-url", "--region", "--profile"):
        i.add_argument(flag, default=None, help="as for build")
    return p


def parse_splits(items):
    if not items:
        return (("train", 0.8), ("val", 0.2))
    out = []
    for it in items:
        name, sep, frac = it.partition("=")
        try:
            out.append((name.strip(), float(frac)))
        except ValueError:
            raise SystemExit(f"--split {it!r}: expected NAME=FRACTION, e.g. train=0.8") from None
        if not sep or not name.strip():
            raise SystemExit(f"--split {it!r}: expected NAME=FRACTION, e.g. train=0.8")
    return tuple(out)


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--plugins", default="")
    import_plugin_modules(pre.parse_known_args(argv)[0].plugins.split(","))  # before --format's choices are listed
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        views = tuple(v.strip() for v in args.views.split(",") if v.strip())
        path = generate_synthetic_patents(args.out, num_patents=args.num_patents, num_classes=args.num_classes,
                                          views=views, image_size=args.image_size, seed=args.seed, progress=True)
        print(path)
        return 0
    so = storage_options_from(args.endpoint_url, args.region, args.profile)
    if args.command == "inspect":
        findings = inspect_shards(args.shards, workers=args.workers, storage_options=so)
        print(format_findings(findings, max_problems=args.max_problems))
        if args.json_out:
            with open(args.json_out, "w", encoding="utf-8") as f:
                json.dump(findings, f, indent=1, ensure_ascii=False)
        return 1 if findings["problems"] else 0

    try:
        iopts = import_options_from(args)
        max_side = args.max_side if args.max_side is not None else storage_side(args.train_image_size)
        report = build_shards(args.inputs if len(args.inputs) > 1 else args.inputs[0], args.out,
                              samples_per_shard=args.samples_per_shard, splits=parse_splits(args.split),
                              seed=args.seed, image_format=args.image_format, progress=not args.no_progress,
                              workers=max(1, args.workers), input_format=args.input_format, import_options=iopts,
                              split_date=args.split_date, query_split=args.query_split, max_side=max_side,
                              image_mode=args.image_mode, quality=args.quality, captions=args.captions,
                              captions_join=args.captions_join, templates_file=args.caption_templates,
                              max_caption_chars=args.max_caption_chars, storage_options=so,
                              resume=not args.no_resume, contact_sheet=max(0, args.contact_sheet))
    except KeyboardInterrupt as exc:
        print(f"\n{exc or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"patentclip-shards build: {exc}", file=sys.stderr)
        return 2
    print(summary(report))
    for split, names in report["shards"].items():
        if names:
            print(f"{split}: {shard_pattern(report['out_dir'] + '/' + split, names)}")
    if sum(report["drawings_written"].values()) == 0:
        print("nothing was written: see build_report.json", file=sys.stderr)
        return 1
    print(f"report: {report['out_dir']}/build_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
