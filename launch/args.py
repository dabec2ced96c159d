"""Command-line flags of ``patentclip-train``: open_clip_train's own flags plus the plugin flags.

The plugin flags are parsed first (``allow_abbrev=False``, so ``--model`` is never taken as a prefix of a
longer plugin flag), the rest goes unchanged to ``open_clip_train.params.parse_args``, which stays strict.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, Sequence

from open_clip_train.params import parse_args as openclip_parse_args

from patentclip.launch.openclip_flags import check_openclip_flags
from patentclip.plugins.losses import parse_loss_spec
from patentclip.plugins.recipes import add_recipe_args, apply_recipe, flags_given

DESCRIPTION = """\
Train a CLIP model on design-patent shards with open_clip's training loop under DeepSpeed.

Every open_clip_train flag (listed below the plugin flags) either keeps its meaning (--train-data, --val-data,
--model, --pretrained, --batch-size, --epochs, --lr, --warmup, --precision, --logs, --name, --resume latest,
--local-loss, --gather-with-grad, --siglip, --torchcompile, --report-to wandb ...) or, where patentclip cannot
honour it (--horovod, --distill-model, --remote-sync ...), stops the run at start and says what to use instead:
docs/openclip_flags.md. Logs, tensorboard files and checkpoints go where open_clip puts them:
<logs>/<name>/{out.log, params.txt, tensorboard/, checkpoints/}.

Examples:
  patentclip-train --train-data 'shards/train/train-{000000..000007}.tar' --val-data 'shards/val/val-000000.tar' \\
      --model patentclip-tiny --batch-size 32 --epochs 10 --loss class_aware_contrastive --workers 1
  patentclip-train --nproc-per-node 2 ...       # 2 local processes (torchrun); under srun/torchrun omit it
"""


def _zero_stage(value: str):
    """--zero-stage: 'auto' or 0/1/2."""
    if value == "auto":
        return value
    if value in ("0", "1", "2"):
        return int(value)
    raise argparse.ArgumentTypeError(f"invalid ZeRO stage {value!r}: choose auto, 0, 1 or 2")


def build_plugin_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-train", description=DESCRIPTION, add_help=False,
                                allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("patentclip plugin flags")
    g.add_argument("--patent-dataset", default="patent-wds",
                   help="Dataset plugin that streams the shards (registered name; default: %(default)s).")
    g.add_argument("--sampler", default="natural",
                   help="Sampler plugin (registered name) deciding how often each class is drawn "
                        "(default: %(default)s = the data's own distribution).")
    g.add_argument("--sampler-beta", type=float, default=1.0,
                   help="beta of the class_aware sampler: each sample of class c is drawn with weight f_c^-beta "
                        "(0 = natural distribution, 1 = class-balanced; DesignCLIP uses 1.2). Default: %(default)s.")
    g.add_argument("--shuffle-group-shards", type=int, default=4,
                   help="Shards per shuffle group: examples are shuffled within groups of this many shards per "
                        "data-loader worker (the unit of exact resume). Default: %(default)s.")
    g.add_argument("--multiview", action="store_true",
                   help="Pair every drawing with another view of the same patent (batch keys image2/view2/"
                        "has_view2). Switched on automatically when a selected loss needs it.")
    g.add_argument("--image-transport", choices=["uint8", "float"], default="uint8",
                   help="How images travel from the data-loader workers to the step: uint8 (default) stops the "
                        "workers at the uint8 pixels (one channel for grey drawings) and normalises them on the "
                        "device, the same tensors at a twelfth of the bytes; float runs all of open_clip's "
                        "preprocess in the workers. Random erasing is drawn in the workers and painted on the "
                        "device; a preprocess that erases with random values always uses float.")
    g.add_argument("--aug-hflip", type=float, default=0.0, help="Horizontal flip probability (default 0).")
    g.add_argument("--aug-rrc-scale", type=float, default=None,
                   help="Random resized crop scale range (S, 1) for open_clip's train transform (open_clip's "
                        "default is (0.9, 1)).")
    g.add_argument("--aug-random-erasing", type=float, default=0.0, help="Random erasing probability (default 0).")
    g.add_argument("--aug-gridmask", type=float, default=0.0, help="GridMask probability (default 0).")
    g.add_argument("--loss", default="clip",
                   help="Loss terms and weights, e.g. 'clip' or 'class_aware_contrastive=0.1,clip=1' "
                        "(registered names; default: %(default)s).")
    g.add_argument("--loss-beta", type=float, default=1.0,
                   help="beta of the class-aware loss weights w_c ~ f_c^-beta (DesignCLIP; 0 = plain CLIP). "
                        "Default: %(default)s.")
    g.add_argument("--classes-json", default=None,
                   help="classes.json of the training shards (default: the one beside the first train shard).")
    g.add_argument("--caption-choice", choices=["random", "first"], default="random",
                   help="Which of a drawing's captions to use each time it is seen: a deterministic draw from "
                        "(seed, epoch, key), or always the first. Default: %(default)s.")
    g.add_argument("--zero-stage", type=_zero_stage, default="auto", metavar="{auto,0,1,2}",
                   help="DeepSpeed ZeRO stage (0: plain data parallel, 1: optimizer states partitioned, "
                        "2: + gradients). 'auto': when resuming a DeepSpeed checkpoint, the stage it was written "
                        "with; otherwise 1 with several ranks and 0 with one (a single rank has nothing to "
                        "partition, and ZeRO's flat buffers and fp64 gradient norm cost ~10%% of a small model's "
                        "step there). Default: %(default)s.")
    g.add_argument("--save-every-n-steps", type=int, default=0,
                   help="Also checkpoint every N optimizer steps mid-epoch (DeepSpeed state + data-loader position, "
                        "for exact resume). 0 = only at epoch ends (open_clip's --save-frequency). Default: 0.")
    g.add_argument("--checkpoint-dir", default=None,
                   help="Where checkpoints go: a local folder or any fsspec URL (s3://bucket/run ...; endpoint, "
                        "credentials and region from the standard AWS environment variables). Remote checkpoints "
                        "are staged in <logs>/<name>/checkpoints, uploaded by every rank, verified, and only then "
                        "named by 'latest'. Default: <logs>/<name>/checkpoints.")
    g.add_argument("--keep-checkpoints", type=int, default=0,
                   help="Keep only the newest K DeepSpeed checkpoints (0 = keep all). Default: 0.")
    g.add_argument("--deepspeed-config", default=None,
                   help="A DeepSpeed JSON config merged over the one patentclip derives from the flags.")
    g.add_argument("--plugins", default="",
                   help="Comma-separated Python modules to import before training; they register their own "
                        "datasets/samplers/losses (see patentclip.plugins.registry).")
    g.add_argument("--nproc-per-node", type=int, default=1,
                   help="Start this many local processes with torchrun (CPU: gloo, GPU: NCCL). Leave at 1 "
                        "when already launched by torchrun or srun.")
    g.add_argument("--eval-zeroshot-templates", default=None,
                   help="Zero-shot prompt templates separated by '|', with {} for the class name "
                        "(default: patentclip.launch.evaluate.DEFAULT_TEMPLATES).")
    add_recipe_args(p)  # --recipe, --loss-weighting, classification-head flags (patentclip.plugins.recipes)
    return p


def _print_help(plugin_parser: argparse.ArgumentParser) -> None:
    plugin_parser.print_help()
    print("\nopen_clip_train flags (honoured, or refused at start with what to use instead: "
          "docs/openclip_flags.md):\n")
    sys.stdout.flush()
    try:
        openclip_parse_args(["--help"])
    except SystemExit:
        pass


def parse_train_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv: List[str] = list(sys.argv[1:] if argv is None else argv)
    plugin_parser = build_plugin_parser()
    if "-h" in argv or "--help" in argv:
        _print_help(plugin_parser)
        raise SystemExit(0)
    plugin_args, rest = plugin_parser.parse_known_args(argv)
    precision_given = any(a == "--precision" or a.startswith("--precision=") for a in rest)
    report_given = any(a == "--report-to" or a.startswith("--report-to=") for a in rest)
    args = openclip_parse_args(rest)
    if not report_given:
        args.report_to = "tensorboard"  # patentclip logs tensorboard scalars unless told otherwise
    for k, v in vars(plugin_args).items():
        setattr(args, k, v)
    args.precision_given = precision_given
    args.argv = argv
    apply_recipe(args, argv)  # --recipe NAME: its settings, except for flags given on the command line
    resolve_siglip(args, flags_given(argv))
    check_openclip_flags(args)
    return args


def resolve_siglip(args: argparse.Namespace, given) -> None:
    """open_clip's ``--siglip``: the image-text loss is SigLIP (registered loss ``siglip``) and the model gets a
    learned logit bias. Without ``--loss`` it selects ``--loss siglip`` (with no recipe or ``--recipe clip``);
    with ``--loss`` the spec must name ``siglip``. (``--loss siglip`` without ``--siglip`` builds the same model:
    the trainer asks the selected losses, ``losses.losses_need_logit_bias``.)"""
    if not args.siglip:
        return
    if "--loss" not in given:
        if args.recipe not in (None, "clip"):
            raise SystemExit(f"--siglip replaces the image-text loss of --recipe clip; --recipe {args.recipe} has "
                             f"several losses: name them with --loss (e.g. --loss siglip,...)")
        args.loss = "siglip"
        args.recipe_settings.pop("loss", None)
    elif "siglip" not in [name for name, _ in parse_loss_spec(args.loss)]:
        raise SystemExit(f"--siglip but --loss {args.loss!r} has no siglip term: add siglip to --loss or drop "
                         f"--siglip")


def default_args(**overrides) -> argparse.Namespace:
    """Every flag at its parser default (open_clip's and the plugins'), for one process (rank 0 of 1), with
    ``overrides`` set: what a plugin's factory sees when it is built outside a run (tests, notebooks)."""
    args = openclip_parse_args([])
    for k, v in vars(build_plugin_parser().parse_args([])).items():
        setattr(args, k, v)
    args.report_to = "tensorboard"
    args.world_size, args.rank, args.local_rank, args.distributed = 1, 0, 0, False
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


def strip_flag(argv: Sequence[str], flag: str) -> List[str]:
    """argv without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out
