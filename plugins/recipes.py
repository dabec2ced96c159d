"""Training recipes: one flag (``--recipe NAME``) that sets the losses, their weighting, the sampler, the
frozen towers and the augmentations of a paper, plus the loss-weighting and head flags.

    patentclip-train --recipe designclip ...                      # DesignCLIP's settings
    patentclip-train --recipe designclip --loss-beta 1.0 ...      # ... but beta 1.0: a flag given wins

A recipe sets an argument only if its flag is not on the command line, so individual flags override it.
Every value and its source in the papers is in docs/losses.md. The recipes do not choose the batch size, the
learning rate or the schedule (they depend on the hardware and the backbone); the papers' own choices for those
are listed in docs/losses.md too. They do not choose the model either, except the two ArcFace baselines of the
LLM-informed paper's Table 1, which are defined by their backbone (``effnetb0-arcface``, ``swinv2b-arcface``:
the timm backbone with timm's ImageNet weights, ``--model`` / ``--pretrained-image``).

``launch/args.py`` calls :func:`add_recipe_args` on the plugin parser and :func:`apply_recipe` on the parsed
arguments.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
from typing import Dict, Iterable, Sequence, Set

# the CLIP text tower kept frozen and the LLM-informed paper's augmentations (flip, random crop, random erasing,
# GridMask): its own recipe and the ArcFace baselines it re-ran on its data
FROZEN_TEXT_LLM_INFORMED_AUGMENTATION: Dict[str, object] = {
    "lock_text": True,
    "lock_text_unlocked_layers": 0,
    "lock_text_freeze_layer_norm": True,
    "aug_hflip": 0.5,
    "aug_rrc_scale": 0.5,
    "aug_random_erasing": 0.5,
    "aug_gridmask": 0.5,
}

RECIPES: Dict[str, Dict[str, object]] = {
    # the baseline: open_clip's CLIP loss on the data's own class distribution
    "clip": {
        "loss": "clip",
        "loss_weighting": "fixed",
        "sampler": "natural",
        "lock_text": False,
        "aug_hflip": 0.0,
        "aug_rrc_scale": None,
        "aug_random_erasing": 0.0,
        "aug_gridmask": 0.0,
    },
    # DesignCLIP (Wang et al. 2025): L = 1.0 LCACLS + 0.1 LCACL + 0.2 LMVCL, beta = 1.2 for the loss weights
    # and for class-aware sampling; both towers trained
    "designclip": {
        "loss": "class_aware_classification=1.0,class_aware_contrastive=0.1,multiview_contrastive=0.2",
        "loss_weighting": "fixed",
        "loss_beta": 1.2,
        "sampler": "class_aware",
        "sampler_beta": 1.2,
        "lock_text": False,
        "aug_hflip": 0.0,
        "aug_rrc_scale": None,
        "aug_random_erasing": 0.0,
        "aug_gridmask": 0.0,
    },
    # LLM-informed patent image retrieval (Lo et al. 2024): L_clip + L_cls + L_cat with homoscedastic
    # uncertainty weighting (eq. 3), frozen CLIP text encoder, flip / random crop / random erasing / GridMask
    "llm-informed": {
        "loss": "clip,class_contrastive,category_contrastive",
        "loss_weighting": "uncertainty",
        "sampler": "natural",
        **FROZEN_TEXT_LLM_INFORMED_AUGMENTATION,
    },
    # ArcFace (Deng et al. 2019) on the image tower, one centre per patent (DeepPatent's re-identification
    # setting; LLM-informed paper, Table 1 baselines [6, 7]; DesignCLIP's "+ ArcFace on DeepPatent" stage when
    # started from a CLIP checkpoint with --pretrained). The text tower is not used: frozen and skipped.
    # Augmentations: the LLM-informed paper's (it re-ran these baselines on its data); s and m: ArcFace's own.
    "arcface": {
        "loss": "arcface",
        "loss_weighting": "fixed",
        "arcface_labels": "patent",
        "arcface_scale": 64.0,
        "arcface_margin": 0.5,
        "sampler": "natural",
        **FROZEN_TEXT_LLM_INFORMED_AUGMENTATION,
    },
}
# the LLM-informed paper's Table 1 baselines: EfficientNet-B0 + ArcFace [7], SwinV2-B + ArcFace [6], from timm's
# ImageNet weights
RECIPES["effnetb0-arcface"] = {**RECIPES["arcface"], "model": "patentclip-efficientnet-b0", "pretrained_image": True}
RECIPES["swinv2b-arcface"] = {**RECIPES["arcface"], "model": "patentclip-swinv2-b", "pretrained_image": True}


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """The recipe, loss-weighting and classification-head flags (added to patentclip-train's plugin parser)."""
    g = parser.add_argument_group("patentclip recipes, loss weighting and classification head (docs/losses.md)")
    g.add_argument("--recipe", choices=sorted(RECIPES), default=None,
                   help="Set losses, weighting, sampler, frozen towers and augmentations as a paper does: "
                        "clip (baseline), designclip (DesignCLIP), llm-informed (LLM-informed patent image "
                        "retrieval), arcface (ArcFace on the image tower, one centre per patent; with --pretrained "
                        "a CLIP checkpoint: DesignCLIP's second stage), effnetb0-arcface / swinv2b-arcface (the "
                        "LLM-informed paper's baselines: arcface on EfficientNet-B0 / SwinV2-B from timm's "
                        "ImageNet weights). Flags given on the command line override the recipe's values.")
    g.add_argument("--loss-weighting", choices=["fixed", "uncertainty"], default="fixed",
                   help="fixed: total = sum of --loss weights x terms; uncertainty: learned homoscedastic-"
                        "uncertainty weights, total = sum(w L exp(-s) + s), s logged as s_<loss> "
                        "(LLM-informed eq. 3). Default: %(default)s.")
    g.add_argument("--head-num-heads", type=int, default=4,
                   help="Attention heads of the class_aware_classification fusion head (must divide the "
                        "model's embed_dim). Default: %(default)s.")
    g.add_argument("--head-text-dropout", type=float, default=0.25,
                   help="Probability that the fusion head sees a training sample without its caption, so "
                        "that image-only classification (head.classify_image) is trained too; 0 = fused "
                        "only, as in DesignCLIP. Default: %(default)s.")
    g.add_argument("--multiview-single", choices=["keep", "drop"], default="keep",
                   help="multiview_contrastive on a patent with one drawing (its second image is another "
                        "augmentation of it): keep the pair as a positive, or drop its row. Default: %(default)s.")
    g.add_argument("--no-lock-text", action="store_true", default=False,
                   help="Train the text tower even if the recipe freezes it (the opposite of --lock-text).")


@functools.lru_cache(maxsize=1)
def _openclip_option_strings() -> frozenset:
    """open_clip_train's long flags (from its --help), to resolve the abbreviations its parser accepts."""
    from open_clip_train.params import parse_args as openclip_parse_args

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            openclip_parse_args(["--help"])
        except SystemExit:
            pass
    return frozenset(re.findall(r"(?<![\w-])(--[a-zA-Z0-9][\w-]*)", buf.getvalue()))


def flags_given(argv: Iterable[str]) -> Set[str]:
    """The long flags on a command line (``--flag`` or ``--flag=value``), with open_clip's abbreviations
    resolved as its parser resolves them (a unique prefix of one of its flags)."""
    known = _openclip_option_strings()
    given: Set[str] = set()
    for a in argv:
        if a == "--":
            break
        if not a.startswith("--"):
            continue
        name = a.split("=", 1)[0]
        given.add(name)
        if name not in known:
            matches = [k for k in known if k.startswith(name)]
            if len(matches) == 1:
                given.add(matches[0])
    return given


def flag_of(attr: str) -> str:
    return "--" + attr.replace("_", "-")


def apply_recipe(args: argparse.Namespace, argv: Sequence[str]) -> argparse.Namespace:
    """Apply ``args.recipe`` (if any): set each of its arguments whose flag is not in ``argv``.

    Records what it set in ``args.recipe_settings`` (written to params.txt with the other arguments)."""
    given = flags_given(argv)
    applied: Dict[str, object] = {}
    name = args.recipe
    if name:
        if name not in RECIPES:
            raise ValueError(f"--recipe {name!r}: unknown; recipes: {', '.join(sorted(RECIPES))}")
        for attr, value in RECIPES[name].items():
            if flag_of(attr) in given:
                continue
            if attr == "lock_text" and args.no_lock_text:
                continue
            setattr(args, attr, value)
            applied[attr] = value
    if args.no_lock_text:
        if "--lock-text" in given:
            raise ValueError("--lock-text and --no-lock-text contradict each other")
        args.lock_text = False
    args.recipe_settings = applied
    return args
