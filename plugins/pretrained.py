"""Where a run's starting weights come from: whole CLIP checkpoints, timm image towers and CLIP text towers,
found on the local disk or in the model hub's local cache before anything starts.

Users fine-tune pretrained models: PatentCLIP starts from OpenAI / LAION CLIP, the LLM-informed paper trains
timm image backbones (ResNet50, EfficientNet-B0, ViT-B-32, SwinV2-B) against CLIP's text encoder kept frozen.
``patentclip-train`` takes the starting weights from three flags:

``--pretrained SPEC`` (open_clip's flag, the whole model), SPEC one of
    * an open_clip pretrained tag of ``--model`` (``openai``, ``laion2b_s34b_b79k``; ``open_clip.list_pretrained()``),
    * ``hf-hub:ORG/REPO``: a model-hub repository as open_clip's ``push_to_hf_hub`` / ``patentclip-export`` write it
      (``open_clip_config.json`` + ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``),
    * ``local-dir:DIR``: such a folder on disk (what ``patentclip-export`` writes),
    * a local checkpoint file: open_clip's ``.pt`` / ``.bin`` / ``.safetensors``, or a run's ``epoch_N.pt``.
``--pretrained-image`` (open_clip's flag) / ``--pretrained-image-source SPEC``: the image tower of a model whose
    image tower is a timm backbone (``vision_cfg.timm_model_name``) starts from timm's pretrained weights: the
    backbone's default timm tag, or SPEC = another timm tag (``resnet50.a1_in1k``), ``hf-hub:timm/REPO``, or a local
    file with the backbone's timm state dict.
``--pretrained-text SPEC``: the text tower starts from a CLIP model's text tower: SPEC = ``MODEL:TAG``
    (``ViT-B-32:openai``, open_clip's ``list_pretrained(as_str=True)`` notation), ``hf-hub:ORG/REPO``,
    ``local-dir:DIR`` or a checkpoint file. Every text-tower weight of ``--model`` must be in the source with the
    same shape (the configs in ``plugins/model_configs`` carry CLIP's text configs for this).

Offline first. Compute nodes often have no internet, so every source is resolved to a local file before the run
builds anything: model-hub files from the hub's local cache (``HF_HUB_CACHE``, ``HF_HOME/hub``, or ``--cache-dir``;
open_clip's tags and timm's weights are model-hub repositories, and patentclip reads them from there only). With the hub set offline (``HF_HUB_OFFLINE=1``, what the SLURM scripts export) a file that is not
cached stops the run at once, before any log folder is made, with the exact command that fetches it on a login
node (:class:`MissingWeights`). Online, the first local rank of each node downloads them (huggingface_hub, as open_clip
and timm do) while the other ranks wait, and every rank then reads the cached file.

Loading is the libraries' own: open_clip's ``create_model`` loads the whole-model file (``pretrained=<file>``,
with the tag's preprocessing and QuickGELU setting applied as open_clip applies them to a tag); timm's
``create_model(pretrained=True, pretrained_cfg_overlay={"file": ...})`` loads the backbone (timm's filters and
classifier handling), whose weights are then copied into the tower; the text tower is copied key by key with
every key and shape checked (open_clip's own ``pretrained_text_path`` loads with ``strict=False`` and only logs
failures).

This module is a run's start: the plan of its sources (:class:`StartPlan`), the offline check and the download,
and the plan applied to the model (the weights' architecture and preprocessing taken over, the towers loaded, the
model created). Resolving one spec to a local file is :mod:`.pretrained_sources`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import open_clip
import timm
from patentclip.launch import safe_load
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.pretrained_sources import (CLIP_CONFIG, CLIP_WEIGHTS, CONFIG_OVERRIDES, PREPROCESS_ARGS,
                                                  MissingWeights, Weights, add_pretrained_args, download_weights,
                                                  hub_offline, resolve_clip_weights, resolve_timm_weights,
                                                  split_model_tag, timm_tower_name, timm_weights_problem)
from patentclip.plugins.recipes import flags_given

#: The starting weights' public names: the run's plan and its application (here) and the sources it resolves
#: (:mod:`.pretrained_sources`): ``patentclip.plugins.pretrained`` is the one import for both.
__all__ = ["StartPlan", "plan_start", "missing_message", "check_start", "fetch_start", "reconcile_config",
           "apply_preprocess", "text_keys", "load_text_tower", "load_timm_tower", "create_model_for_run",
           "CLIP_CONFIG", "CLIP_WEIGHTS", "MissingWeights", "Weights", "add_pretrained_args", "hub_offline",
           "resolve_clip_weights", "resolve_timm_weights", "split_model_tag", "timm_tower_name",
           "timm_weights_problem"]


@dataclass
class StartPlan:
    model: Optional[Weights] = None
    image: Optional[Weights] = None
    text: Optional[Weights] = None

    def sources(self) -> List[Weights]:
        return [w for w in (self.model, self.image, self.text) if w is not None]

    def missing(self) -> List[Weights]:
        return [w for w in self.sources() if w.missing]


def flag_given(args, flag: str) -> bool:
    return flag in flags_given(getattr(args, "argv", None) or [])


def plan_start(args) -> StartPlan:
    """Resolve ``--pretrained``, ``--pretrained-image[-source]`` and ``--pretrained-text`` of ``args`` (without
    downloading). Sets ``args.model`` from an exported folder when ``--model`` is not given."""
    register_model_configs()
    cache_dir = args.cache_dir
    plan = StartPlan()
    if args.pretrained:
        plan.model = resolve_clip_weights(args.pretrained, args.model, cache_dir, "model")
        recorded = plan.model.recorded_name
        if plan.model.model_cfg is not None and not flag_given(args, "--model") and recorded in open_clip.list_models():
            logging.info("--pretrained %s: model %s (recorded in the folder)", args.pretrained, recorded)
            args.model = recorded
    model_cfg = open_clip.get_model_config(args.model)
    if model_cfg is None:
        raise ValueError(f"unknown model {args.model!r}; registered models include "
                         f"{', '.join(m for m in open_clip.list_models() if m.startswith('patentclip'))} and open_clip's own")
    image_source = args.pretrained_image_source
    if args.pretrained_image or image_source:
        problem = timm_weights_problem(args)
        if problem:
            raise ValueError(problem)
        timm_name = timm_tower_name(model_cfg)
        if args.pretrained:
            raise ValueError("--pretrained-image with --pretrained: the whole-model checkpoint already holds an image "
                             "tower; give one of them")
        plan.image = resolve_timm_weights(timm_name, image_source, cache_dir)
    text_source = args.pretrained_text
    if text_source:
        src_model, tag = split_model_tag(text_source)
        plan.text = resolve_clip_weights(tag if src_model else text_source, src_model, cache_dir, "text tower")
    return plan


def missing_message(missing: Sequence[Weights], cache_dir: Optional[str], offline: bool) -> str:
    lines = [f"patentclip-train: {'these starting weights are' if len(missing) > 1 else 'the starting weights are'} "
             f"not on this machine{' and the model hub is offline (HF_HUB_OFFLINE=1)' if offline else ''}:"]
    for w in missing:
        f = w.fetch
        lines.append(f"  {w.role} {w.spec!r}: looked in {w.looked_in}")
    lines.append("Fetch them on a login node (a node with internet) into the same cache, i.e. with the same HF_HOME /"
                 " HF_HUB_CACHE on a shared filesystem" + (f" and --cache-dir {cache_dir}" if cache_dir else "")
                 + ", then submit again:")
    for w in missing:
        f = w.fetch
        lines.append(f"  python -c \"{f.python_cmd}\"")
        lines.append(f"  (or: {f.cli_cmd(cache_dir)})")
    return "\n".join(lines)


def check_start(args) -> StartPlan:
    """Before anything is built (no log folder yet): resolve every source; when one is missing and the hub is
    offline, stop with :class:`MissingWeights` (the login-node commands). Online, missing files are fetched by
    :func:`fetch_start` once the processes are up."""
    try:
        plan = plan_start(args)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"patentclip-train: {exc}") from None
    if plan.missing() and hub_offline():
        raise MissingWeights(missing_message(plan.missing(), args.cache_dir, offline=True))
    return plan


def fetch_start(plan: StartPlan, args) -> StartPlan:
    """Download what the plan misses (local rank 0 of each node, the others wait), then resolve again."""
    import torch.distributed as dist

    if not plan.missing():
        return plan
    if int(args.local_rank) == 0:
        for w in plan.missing():
            logging.info("Downloading the %s weights %s", w.role, w.spec)
            try:
                download_weights(w.fetch, args.cache_dir)
            except Exception as exc:
                logging.error("Download of %s failed: %s", w.spec, exc)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    plan = plan_start(args)
    if plan.missing():
        raise MissingWeights(missing_message(plan.missing(), args.cache_dir, offline=False))
    return plan


def _get(cfg: Dict, path: Sequence[str]):
    for p in path:
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(p)
    return cfg


def _flatten(cfg, prefix=()) -> Dict[Tuple[str, ...], object]:
    out = {}
    for k, v in (cfg or {}).items():
        if isinstance(v, dict):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _same(a, b) -> bool:
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return norm(a) == norm(b)


def reconcile_config(args, w: Weights) -> None:
    """The run takes the starting weights' architecture: QuickGELU, image size and context length become the
    run's ``--force-*`` settings (recorded in params.txt, so eval and export build the same model); any other
    difference between the weights' config and ``--model``'s is an error naming it."""
    if w.quick_gelu and not args.force_quick_gelu and not open_clip.get_model_config(args.model).get("quick_gelu", False):
        logging.info("%s weights %s were trained with QuickGELU: --force-quick-gelu", w.role, w.spec)
        args.force_quick_gelu = True
    if w.model_cfg is None:
        return
    ours = _flatten(open_clip.get_model_config(args.model))
    theirs = _flatten(w.model_cfg)
    diff = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if _same(a, b) or key == ("quick_gelu",) or key[-1] in ("timm_model_pretrained", "hf_model_pretrained"):
            continue
        if w.role == "text tower" and key[0] != "text_cfg" and key != ("embed_dim",):
            continue
        attr = CONFIG_OVERRIDES.get(key)
        if attr and w.role == "model":
            if not getattr(args, attr):
                logging.info("--pretrained %s: %s = %s (the folder's model) -> --%s", w.spec, ".".join(key), b,
                             attr.replace("_", "-"))
                setattr(args, attr, b)
            continue
        diff.append(f"{'.'.join(key)}: {args.model} has {a!r}, the weights {b!r}")
    if diff:
        raise ValueError(f"{w.role} weights {w.spec!r} do not fit --model {args.model}:\n  " + "\n  ".join(diff))


def apply_preprocess(args, w: Weights) -> None:
    """The image preprocessing that goes with the weights (tag / folder / timm config), unless given as flags."""
    for key, attr in PREPROCESS_ARGS.items():
        if key in w.preprocess and not flag_given(args, "--" + attr.replace("_", "-")):
            value = w.preprocess[key]
            setattr(args, attr, tuple(value) if isinstance(value, list) else value)


def text_keys(model: torch.nn.Module) -> List[str]:
    """The state-dict keys of a CLIP model's text tower (everything outside ``visual.`` and the logit scalars)."""
    return [k for k in model.state_dict() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")]


def load_text_tower(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str) -> List[str]:
    """Copy the text tower of ``state_dict`` (an open_clip CLIP state dict) into ``model``: every text key must be
    there with the same shape. Returns the keys copied."""
    if state_dict and next(iter(state_dict)).startswith("module."):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    keys = text_keys(model)
    own = model.state_dict()
    missing = [k for k in keys if k not in state_dict]
    shapes = [f"{k}: model {tuple(own[k].shape)}, source {tuple(state_dict[k].shape)}" for k in keys
              if k in state_dict and own[k].shape != state_dict[k].shape]
    if missing or shapes:
        raise ValueError(f"the text tower of {source} does not fit the model: "
                         + (f"{len(missing)} text weights missing (e.g. {missing[:5]}); " if missing else "")
                         + (f"{len(shapes)} of another shape ({'; '.join(shapes[:5])})" if shapes else "")
                         + ". The model config's text_cfg and embed_dim must be the source CLIP's.")
    merged = dict(own)
    for k in keys:
        merged[k] = state_dict[k].to(dtype=own[k].dtype)
    model.load_state_dict(merged, strict=True)
    return keys


def load_timm_tower(model: torch.nn.Module, timm_name: str, file: str, pool: Optional[str]) -> None:
    """Load timm weights from ``file`` into ``model.visual.trunk`` the way timm loads pretrained weights: timm
    builds the backbone with ``pretrained_cfg_overlay={"file": file}`` (its filters, classifier handling), the
    classifier is removed as open_clip's TimmModel removes it, and the weights are copied (every key)."""
    trunk = model.visual.trunk
    ref = timm.create_model(timm_name, pretrained=True, num_classes=0,
                            pretrained_cfg_overlay={"file": file, "source": "", "hf_hub_id": None, "url": None})
    ref.reset_classifier(0, **({"global_pool": pool} if pool else {}))
    # timm loads non-strictly when it drops a classifier: make sure every backbone parameter came from the file
    raw = timm.models.load_state_dict(file)
    absent = [n for n, _ in ref.named_parameters() if n not in raw]
    if absent:
        raise ValueError(f"{file}: {len(absent)} parameters of the {timm_name} backbone are not in the file "
                         f"(e.g. {absent[:5]}): not this backbone's timm weights")
    trunk.load_state_dict(ref.state_dict(), strict=True)


def create_model_for_run(args, device, plan: Optional[StartPlan] = None, **model_kwargs):
    """``open_clip.create_model_and_transforms`` for ``patentclip-train``, with the starting weights of ``plan``
    (:func:`plan_start`) and ``model_kwargs`` passed on (e.g. SigLIP's initial logit scale and bias): returns
    (model, preprocess_train, preprocess_val)."""
    plan = plan if plan is not None else plan_start(args)
    if plan.missing():
        raise MissingWeights(missing_message(plan.missing(), args.cache_dir, hub_offline()))
    for w in plan.sources():
        if w.role != "image tower":
            reconcile_config(args, w)
    for w in (plan.model, plan.image):
        if w is not None:
            apply_preprocess(args, w)
    model_cfg = open_clip.get_model_config(args.model)
    trust = args.trust_checkpoint
    # open_clip's reader of the whole-model file, weights-only like every patentclip load: a refusal names the file
    with safe_load.weights_only_loads(plan.model.file if plan.model else args.model, trust=trust):
        model, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            args.model, plan.model.file if plan.model else None, precision="fp32", device=device,
            force_quick_gelu=args.force_quick_gelu, force_custom_text=args.force_custom_text,
            force_patch_dropout=args.force_patch_dropout, force_image_size=args.force_image_size,
            force_context_length=args.force_context_length, image_mean=args.image_mean, image_std=args.image_std,
            image_interpolation=args.image_interpolation, image_resize_mode=args.image_resize_mode,
            aug_cfg=args.aug_cfg, pretrained_image=False, output_dict=True, cache_dir=args.cache_dir,
            weights_only=not trust, **model_kwargs)
    if plan.model:
        logging.info("Model %s starts from %s (%s)", args.model, plan.model.spec, plan.model.file)
    if plan.image:
        with safe_load.weights_only_loads(plan.image.file, trust=trust, trust_helps=False):  # timm: weights-only
            load_timm_tower(model, timm_tower_name(model_cfg), plan.image.file,
                            model_cfg["vision_cfg"].get("timm_pool"))
        logging.info("Image tower %s starts from timm weights %s (%s)", timm_tower_name(model_cfg), plan.image.spec,
                     plan.image.file)
    if plan.text:
        # open_clip's reader (safetensors, 'state_dict', 'module.'), weights-only like every patentclip load
        with safe_load.weights_only_loads(plan.text.file, trust=trust):
            sd = open_clip.factory.load_state_dict(plan.text.file, device="cpu", weights_only=not trust)
        n = load_text_tower(model, sd, plan.text.spec)
        logging.info("Text tower (%d tensors) starts from %s (%s)", len(n), plan.text.spec, plan.text.file)
    return model, preprocess_train, preprocess_val
