"""Command-line flags of ``patentclip-train``: open_clip_train's own flags plus the plugin flags.

The plugin flags are parsed first (``allow_abbrev=False``, so ``--model`` is never taken as a prefix of a
longer plugin flag), the rest goes unchanged to ``open_clip_train.params.parse_args``, which stays strict.

Then :func:`validate_train_args` checks every value at start, before a process is launched or a folder made:
each plugin flag and each open_clip flag the trainer uses against its range (:data:`RULES`), the registered
names (--patent-dataset, --sampler, --loss), the files (--deepspeed-config), and the open_clip flags this trainer
does not honour (the table of every open_clip flag: ``launch/openclip_flags.py``, docs/openclip_flags.md). All
problems are listed at once, each with its flag, and the exit code is 2 (a usage error, as argparse's own).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from open_clip_train.params import parse_args as openclip_parse_args

from patentclip.launch.openclip_flags import openclip_flag_problems
from patentclip.launch.safe_load import TRUST_FLAG, TRUST_HELP
from patentclip.plugins.arcface import add_arcface_args
from patentclip.plugins.builtin import load_builtin_plugins
from patentclip.plugins.data.tars import DEFAULT_MAX_UNREADABLE
from patentclip.plugins.losses import parse_loss_spec
from patentclip.plugins.pretrained import add_pretrained_args, timm_weights_problem
from patentclip.plugins.recipes import add_recipe_args, apply_recipe, flag_of, flags_given
from patentclip.plugins.registry import DATASETS, LOSSES, SAMPLERS, import_plugin_modules

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
    g.add_argument("--max-unreadable-shards", type=float, default=DEFAULT_MAX_UNREADABLE, metavar="FRACTION",
                   help="A shard that is not a tar, is empty or is missing is skipped and logged with its URL; when "
                        "more than this fraction of a data-loader worker's shards in an epoch are (one is always "
                        "tolerated), the run ends naming them. Default: %(default)s.")
    g.add_argument("--multiview", action="store_true",
                   help="Pair every drawing with another view of the same patent (batch keys image2/view2/"
                        "has_view2). Switched on automatically when a selected loss needs it.")
    g.add_argument("--image-transport", choices=["uint8", "float"], default="uint8",
                   help="How images travel from the data-loader workers to the step: uint8 (default) stops the "
                        "workers at the uint8 pixels (one channel for grey drawings) and normalises them on the "
                        "device, the same tensors at a twelfth of the bytes; float runs all of open_clip's "
                        "preprocess in the workers. Random erasing is drawn in the workers and painted on the "
                        "device; a preprocess that erases with random values always uses float.")
    g.add_argument("--image-resize", choices=["pil", "tensor"], default="pil",
                   help="How the training drawings are cropped and resized in the data-loader workers: pil "
                        "(default) is open_clip's own path; tensor runs the same crop (same random boxes) with "
                        "torch's antialiased bicubic on the uint8 pixels: not bit for bit open_clip's, and only "
                        "faster where torch's resize beats Pillow's (not on a 2-core Xeon: docs/benchmarks.md). "
                        "Needs --image-transport uint8 and a preprocess without colour augmentation; otherwise "
                        "refused.")
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
    g.add_argument("--lock-stale-after", type=float, default=120.0, metavar="SECONDS",
                   help="The run holds a lock (<logs>/<name>/run.lock; run.lease in a remote --checkpoint-dir) with "
                        "a heartbeat every quarter of this time; a second start of the same run is refused while "
                        "the lock is live and takes it over once its heartbeat is this old, its process is gone "
                        "(same host) or it is an earlier run of the same SLURM job. Default: %(default)s.")
    g.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
    g.add_argument("--deepspeed-config", default=None,
                   help="A DeepSpeed JSON config merged over the one patentclip derives from the flags.")
    g.add_argument("--plugins", default="",
                   help="Comma-separated Python modules to import before training; they register their own "
                        "datasets/samplers/losses (see patentclip.plugins.registry).")
    g.add_argument("--nproc-per-node", type=int, default=1,
                   help="Start this many local processes with torchrun (CPU: gloo, GPU: NCCL). Leave at 1 "
                        "when already launched by torchrun or srun.")
    g.add_argument("--eval-metrics", default="",
                   help="Comma-separated registered extra metrics (patentclip.evaluation.extra_metrics) added to "
                        "the per-epoch validation; --plugins can register your own (docs/extending.md).")
    g.add_argument("--eval-zeroshot-templates", default=None,
                   help="Zero-shot prompt templates separated by '|', with {} for the class name "
                        "(default: patentclip.evaluation.settings.DEFAULT_TEMPLATES).")
    add_recipe_args(p)  # --recipe, --loss-weighting, classification-head flags (patentclip.plugins.recipes)
    add_pretrained_args(p)  # --pretrained-image-source, --pretrained-text (patentclip.plugins.pretrained)
    add_arcface_args(p)  # --arcface-labels, --arcface-scale, --arcface-margin (patentclip.plugins.arcface)
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


def _int_at_least(lo: int) -> Callable:
    def check(v):
        return None if isinstance(v, int) and v >= lo else f"must be an integer >= {lo}"
    return check


def _number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
            optional: bool = False) -> Callable:
    """A finite number in [lo, hi] (open ends where asked); None allowed when ``optional``."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    what = f"must be a number in {left}{lo:g}, {hi:g}{right}" if hi != math.inf else \
        f"must be a number {'>' if lo_open else '>='} {lo:g}"

    def check(v):
        if v is None and optional:
            return None
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return what
        if v < lo or (lo_open and v == lo) or v > hi or (hi_open and v == hi):
            return what
        return None
    return check


def _optional(check: Callable) -> Callable:
    return lambda v: None if v is None else check(v)


def _image_size(v):
    vals = v if isinstance(v, (list, tuple)) else [v]
    return None if v is None or (vals and all(isinstance(x, int) and x >= 1 for x in vals)) else \
        "must be one or two integers >= 1"


def _choice(*names) -> Callable:
    return lambda v: None if v in names else f"must be one of {', '.join(names)}"


#: (attribute, check) for every plugin flag and every open_clip flag patentclip-train depends on; a check returns
#: None or what is wrong.
RULES: Tuple[Tuple[str, Callable], ...] = (
    # open_clip's flags
    ("batch_size", _int_at_least(1)),
    ("epochs", _int_at_least(1)),
    ("workers", _int_at_least(0)),
    ("accum_freq", _int_at_least(1)),
    ("lr", _number(0)),
    ("warmup", _int_at_least(0)),
    ("wd", _number(0)),
    ("beta1", _number(0, 1, hi_open=True)),
    ("beta2", _number(0, 1, hi_open=True)),
    ("eps", _number(0, lo_open=True)),
    ("grad_clip_norm", _number(0, lo_open=True, optional=True)),
    ("lr_scheduler", _choice("cosine", "const", "const-cooldown")),
    ("epochs_cooldown", _optional(_int_at_least(0))),
    ("lr_cooldown_power", _number(0, lo_open=True)),
    ("lr_cooldown_end", _number(0)),
    ("save_frequency", _int_at_least(0)),
    ("val_frequency", _int_at_least(0)),
    ("log_every_n_steps", _int_at_least(1)),
    ("train_num_samples", _optional(_int_at_least(1))),
    ("val_num_samples", _optional(_int_at_least(1))),
    ("seed", _int_at_least(0)),
    ("force_image_size", _image_size),
    ("force_context_length", _optional(_int_at_least(1))),
    ("force_patch_dropout", _number(0, 1, hi_open=True, optional=True)),
    ("lock_image_unlocked_groups", _int_at_least(0)),
    ("lock_text_unlocked_layers", _int_at_least(0)),
    # plugin flags
    ("sampler_beta", _number(0)),
    ("loss_beta", _number(0)),
    ("shuffle_group_shards", _int_at_least(1)),
    ("max_unreadable_shards", _number(0, 1)),
    ("aug_hflip", _number(0, 1)),
    ("aug_random_erasing", _number(0, 1)),
    ("aug_gridmask", _number(0, 1)),
    ("aug_rrc_scale", _number(0, 1, lo_open=True, optional=True)),
    ("save_every_n_steps", _int_at_least(0)),
    ("keep_checkpoints", _int_at_least(0)),
    ("nproc_per_node", _int_at_least(1)),
    ("lock_stale_after", _number(0, lo_open=True)),
    ("head_num_heads", _int_at_least(1)),
    ("head_text_dropout", _number(0, 1, hi_open=True)),
)

#: open_clip flags whose feature patentclip-train does not have, refused rather than silently ignored.
def validate_train_args(args: argparse.Namespace, argv: Sequence[str] = ()) -> List[str]:
    """Every problem with the flags, as ``--flag VALUE: what is wrong`` lines (empty: all fine)."""
    problems = []
    for attr, check in RULES:
        value = getattr(args, attr)
        why = check(value)
        if why:
            shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            problems.append(f"{flag_of(attr)} {shown}: {why}")
    problems += openclip_flag_problems(args)  # the open_clip flags patentclip-train refuses (docs/openclip_flags.md)
    timm_problem = timm_weights_problem(args)  # timm image weights on a tower that is not timm's
    if timm_problem:
        problems.append(timm_problem)
    if args.image_resize == "tensor" and args.image_transport != "uint8":
        problems.append(f"--image-resize tensor: resizes the uint8 pixels, needs --image-transport uint8 (not "
                        f"{args.image_transport})")
    if args.epochs_cooldown is not None and isinstance(args.epochs, int) and args.epochs_cooldown >= args.epochs:
        problems.append(f"--epochs-cooldown {args.epochs_cooldown}: must be less than --epochs {args.epochs}")
    if args.eval_zeroshot_templates is not None:
        bad = [t for t in args.eval_zeroshot_templates.split("|") if "{}" not in t]
        if bad:
            problems.append(f"--eval-zeroshot-templates: every template needs {{}} for the class name: {bad[:3]}")
    if args.deepspeed_config:
        try:
            with open(args.deepspeed_config) as f:
                if not isinstance(json.load(f), dict):
                    raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            problems.append(f"--deepspeed-config {args.deepspeed_config}: {exc}")
    problems += _registered_name_problems(args)
    return problems


def _registered_name_problems(args: argparse.Namespace) -> List[str]:
    """--plugins importable, and --patent-dataset, --sampler, --loss registered (the registries say what is)."""
    load_builtin_plugins()
    try:
        import_plugin_modules([m for m in args.plugins.split(",") if m])
    except Exception as exc:
        return [f"--plugins {args.plugins}: {type(exc).__name__}: {exc}"]
    problems = []
    for flag, registry, name in (("--patent-dataset", DATASETS, args.patent_dataset),
                                 ("--sampler", SAMPLERS, args.sampler)):
        if name not in registry:
            problems.append(f"{flag} {name}: unknown; registered: {', '.join(registry.names())}")
    try:
        for name, _ in parse_loss_spec(args.loss):
            if name not in LOSSES:
                problems.append(f"--loss {args.loss}: unknown loss {name!r}; registered: {', '.join(LOSSES.names())}")
    except ValueError as exc:
        problems.append(str(exc))
    return problems


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
    problems = resolve_siglip(args, flags_given(argv)) + validate_train_args(args, argv)
    if problems:
        print("patentclip-train: invalid flags (nothing was started):\n" + "\n".join(f"  {p}" for p in problems)
              + "\n(patentclip-train --help explains every flag)", file=sys.stderr)
        raise SystemExit(2)
    return args


def resolve_siglip(args: argparse.Namespace, given) -> List[str]:
    """open_clip's ``--siglip``: the image-text loss is SigLIP (registered loss ``siglip``) and the model gets a
    learned logit bias. Without ``--loss`` it selects ``--loss siglip`` (with no recipe or ``--recipe clip``);
    with ``--loss`` the spec must name ``siglip``. (``--loss siglip`` without ``--siglip`` builds the same model:
    the trainer asks the selected losses, ``losses.losses_need_logit_bias``.) Returns the problems, if any."""
    if not args.siglip:
        return []
    if "--loss" not in given:
        if args.recipe not in (None, "clip"):
            return [f"--siglip: it replaces the image-text loss of --recipe clip; --recipe {args.recipe} has several "
                    f"losses: name them with --loss (e.g. --loss siglip,...)"]
        args.loss = "siglip"
        args.recipe_settings.pop("loss", None)
    elif "siglip" not in [name for name, _ in parse_loss_spec(args.loss)]:
        return [f"--siglip: --loss {args.loss!r} has no siglip term: add siglip to --loss or drop --siglip"]
    return []


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


def args_as_json(args: argparse.Namespace) -> dict:
    """Every argument, by name, as JSON can hold it (``repr`` of the values it cannot): what a checkpoint's
    metadata and the wandb run's config record."""
    out = {}
    for k, v in sorted(vars(args).items()):
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = repr(v)
    return out


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
