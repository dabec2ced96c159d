"""``patentclip-shards``: synthetic design patents, and manifests packed into WebDataset shards."""
from __future__ import annotations

import argparse
import json
import sys


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

    b = sub.add_parser("build", help="pack a manifest into WebDataset shards",
                       description="Pack a manifest (JSON Lines, docs/manifest.md) into WebDataset shards split by "
                                   "patent, with sizes.json, classes.json and build_report.json. Bad records and "
                                   "unreadable drawings are reported with line number and reason and skipped.")
    b.add_argument("--manifest", required=True, help="manifest.jsonl")
    b.add_argument("--out", required=True, help="output folder (one sub-folder per split)")
    b.add_argument("--samples-per-shard", type=int, default=1000,
                   help="maximum drawings per shard; a patent is never split (default: %(default)s)")
    b.add_argument("--split", action="append", default=None, metavar="NAME=FRACTION",
                   help="a split and its fraction of the patents; repeat (default: train=0.8 and val=0.2)")
    b.add_argument("--seed", type=int, default=0, help="seed of the split and order hashes (default: %(default)s)")
    b.add_argument("--image-format", choices=["png", "jpg"], default="png", help="image encoding (default: png)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
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
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from patentclip.shards.synth import generate_synthetic_patents

        views = tuple(v.strip() for v in args.views.split(",") if v.strip())
        path = generate_synthetic_patents(args.out, num_patents=args.num_patents, num_classes=args.num_classes,
                                          views=views, image_size=args.image_size, seed=args.seed, progress=True)
        print(path)
        return 0
    from patentclip.shards.build import build_shards, shard_pattern, summary

    report = build_shards(args.manifest, args.out, samples_per_shard=args.samples_per_shard,
                          splits=parse_splits(args.split), seed=args.seed, image_format=args.image_format,
                          progress=not args.no_progress)
    print(summary(report))
    for split, names in report["shards"].items():
        if names:
            print(f"{split}: {shard_pattern(f'{args.out}/{split}', names)}")
    if sum(report["drawings_written"].values()) == 0:
        print("nothing was written: see build_report.json", file=sys.stderr)
        return 1
    print(f"report: {json.dumps(str(args.out))[1:-1]}/build_report.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
