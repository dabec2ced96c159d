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
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

import open_clip
import timm

from patentclip.evaluation.export import final_model_config
from patentclip.launch.checkpoint_format import _read_params_txt as read_params_txt
from patentclip.launch import safe_load
from patentclip.launch.checkpoint_format import model_kwargs_from_params
from patentclip.plugins import timm_compat as tc
from patentclip.plugins.models import register_model_configs
from patentclip.plugins.timm_compat import LocalEntryNotFoundError, hf_constants, hf_hub_download

CLIP_CONFIG = tc.OPENCLIP_CONFIG_NAME
CLIP_WEIGHTS = (tc.OPENCLIP_SAFE_WEIGHTS_NAME, tc.OPENCLIP_WEIGHTS_NAME)   # the order open_clip prefers them in
TIMM_WEIGHTS = (tc.TIMM_SAFE_WEIGHTS_NAME, tc.TIMM_WEIGHTS_NAME)
#: model-config differences a run can take over from its starting weights: key path -> patentclip-train attribute
CONFIG_OVERRIDES = {("quick_gelu",): "force_quick_gelu", ("vision_cfg", "image_size"): "force_image_size",
                    ("text_cfg", "context_length"): "force_context_length"}
PREPROCESS_ARGS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
                   "resize_mode": "image_resize_mode"}
LOCAL_DIR = "local-dir:"
HF_HUB = "hf-hub:"


class MissingWeights(SystemExit):
    """Starting weights that are neither on disk nor in the local cache, with the commands that fetch them.

    A ``SystemExit``: ``patentclip-train`` prints the message and stops (exit code 1) before making any folder."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class Fetch:
    """How one set of weights is fetched from a model-hub repository (the first of ``files`` that exists, plus
    every file of ``also``), and the commands that do it on a login node."""

    python_cmd: str
    hub_repo: str
    files: Sequence[str] = ()
    also: Sequence[str] = ()

    def cli_cmd(self, cache_dir: Optional[str]) -> str:
        cache = f" --cache-dir {cache_dir}" if cache_dir else ""
        return f"hf download {self.hub_repo} {' '.join([*self.also, self.files[0]])}{cache}"


@dataclass
class Weights:
    """One starting-weights source, resolved: ``file`` is the local file (None while missing)."""

    role: str                                    # "model", "image tower" or "text tower"
    spec: str                                    # what the user wrote
    kind: str                                    # "tag", "hf-hub", "local-dir", "file", "timm"
    file: Optional[str] = None
    fetch: Optional[Fetch] = None
    model_cfg: Optional[Dict] = None             # the architecture the weights were saved with, when known
    preprocess: Dict = field(default_factory=dict)
    quick_gelu: Optional[bool] = None
    looked_in: str = ""
    recorded_name: Optional[str] = None          # the model name recorded in an exported folder or a run

    @property
    def missing(self) -> bool:
        return self.file is None


@dataclass
class StartPlan:
    model: Optional[Weights] = None
    image: Optional[Weights] = None
    text: Optional[Weights] = None

    def sources(self) -> List[Weights]:
        return [w for w in (self.model, self.image, self.text) if w is not None]

    def missing(self) -> List[Weights]:
        return [w for w in self.sources() if w.missing]


def add_pretrained_args(parser: argparse.ArgumentParser) -> None:
    """The tower-weight flags (added to patentclip-train's plugin parser; ``--pretrained``, ``--pretrained-image``
    and ``--cache-dir`` are open_clip's own)."""
    g = parser.add_argument_group("patentclip starting weights (open_clip's --pretrained: a tag, hf-hub:ORG/REPO, "
                                  "local-dir:DIR or a checkpoint file; see patentclip.plugins.pretrained)")
    g.add_argument("--pretrained-image-source", default=None, metavar="SPEC",
                   help="Start a timm image tower from these weights (implies --pretrained-image): a timm tag "
                        "(resnet50.a1_in1k), hf-hub:timm/REPO, or a file with the backbone's timm state dict. "
                        "Default with --pretrained-image: the backbone's default timm weights.")
    g.add_argument("--pretrained-text", default=None, metavar="SPEC",
                   help="Start the text tower from a CLIP model's text tower: MODEL:TAG (ViT-B-32:openai), "
                        "hf-hub:ORG/REPO, local-dir:DIR or a checkpoint file. With --lock-text (the llm-informed "
                        "recipe) it stays frozen.")


# ----------------------------------------------------------------------------------------------------------------
# finding files
# ----------------------------------------------------------------------------------------------------------------
def hub_offline() -> bool:
    """True when the model hub is set offline (``HF_HUB_OFFLINE=1``, read by huggingface_hub at import)."""
    return bool(hf_constants.HF_HUB_OFFLINE)


def hub_cache_dir(cache_dir: Optional[str] = None) -> str:
    """The folder hub files are cached in: ``cache_dir`` (``--cache-dir``) or huggingface_hub's ``HF_HUB_CACHE``."""
    return str(cache_dir or hf_constants.HF_HUB_CACHE)


def cached_hub_file(repo: str, filename: str, cache_dir: Optional[str] = None) -> Optional[str]:
    """The local cache's copy of ``filename`` of ``repo`` (huggingface_hub's own lookup, never the network)."""
    try:
        return hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        return None


def _locate(fetch: Fetch, cache_dir: Optional[str]) -> Optional[str]:
    """The fetched file when everything ``fetch`` names is on disk, else None."""
    if any(cached_hub_file(fetch.hub_repo, f, cache_dir) is None for f in fetch.also):
        return None
    for f in fetch.files:
        path = cached_hub_file(fetch.hub_repo, f, cache_dir)
        if path is not None:
            return path
    return None


def _download(fetch: Fetch, cache_dir: Optional[str]) -> None:
    """Fetch with huggingface_hub (what open_clip and timm download with; online only)."""
    for f in fetch.also:
        hf_hub_download(repo_id=fetch.hub_repo, filename=f, cache_dir=cache_dir)
    errors = []
    for f in fetch.files:
        try:
            hf_hub_download(repo_id=fetch.hub_repo, filename=f, cache_dir=cache_dir)
            return
        except Exception as exc:  # the next alternative name (e.g. .bin when no .safetensors is published)
            errors.append(f"{f}: {exc}")
    raise RuntimeError(f"could not download {fetch.hub_repo}: " + "; ".join(errors))


def _py(s: str) -> str:
    return repr(str(s))


def _cache_kw(cache_dir: Optional[str]) -> str:
    return f", cache_dir={_py(cache_dir)}" if cache_dir else ""


# ----------------------------------------------------------------------------------------------------------------
# whole-model and text-tower sources (open_clip checkpoints)
# ----------------------------------------------------------------------------------------------------------------
def _read_json(path: str) -> Dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _folder_weights(folder: str) -> Optional[str]:
    for name in CLIP_WEIGHTS:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _apply_folder_config(w: Weights, cfg_path: str) -> None:
    cfg = _read_json(cfg_path)
    if "model_cfg" not in cfg:
        raise ValueError(f"{cfg_path}: no 'model_cfg' (not an open_clip model config)")
    w.model_cfg = cfg["model_cfg"]
    w.preprocess = {k: v for k, v in (cfg.get("preprocess_cfg") or {}).items() if k in PREPROCESS_ARGS}
    w.quick_gelu = bool(w.model_cfg.get("quick_gelu", False))
    w.recorded_name = (cfg.get("patentclip") or {}).get("model_name")


def resolve_clip_weights(spec: str, model_name: Optional[str], cache_dir: Optional[str] = None,
                         role: str = "model") -> Weights:
    """An open_clip checkpoint source (see the module docstring) -> :class:`Weights` (``file`` None when it is
    not on disk or in the cache yet). ``model_name``: the architecture a bare tag belongs to."""
    spec = str(spec)
    if spec.startswith(LOCAL_DIR):
        folder = os.path.abspath(os.path.expanduser(spec[len(LOCAL_DIR):]))
        cfg_path = os.path.join(folder, CLIP_CONFIG)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{spec}: no such folder")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{spec}: no {CLIP_CONFIG} in {folder} (not an open_clip model folder; "
                                    f"patentclip-export writes one)")
        w = Weights(role, spec, "local-dir", looked_in=folder)
        _apply_folder_config(w, cfg_path)
        w.file = _folder_weights(folder)
        if w.file is None:
            raise FileNotFoundError(f"{spec}: no weights file ({' or '.join(CLIP_WEIGHTS)}) in {folder}")
        return w
    if spec.startswith(HF_HUB):
        repo = spec[len(HF_HUB):].strip("/")
        if not repo:
            raise ValueError(f"{spec}: no repository after {HF_HUB!r}")
        fetch = Fetch(python_cmd=f"import open_clip; open_clip.create_model_and_transforms({_py(spec)}"
                                 f"{_cache_kw(cache_dir)})",
                      hub_repo=repo, files=CLIP_WEIGHTS, also=(CLIP_CONFIG,))
        w = Weights(role, spec, "hf-hub", fetch=fetch, looked_in=hub_cache_dir(cache_dir))
        w.file = _locate(fetch, cache_dir)
        if w.file is not None:
            _apply_folder_config(w, cached_hub_file(repo, CLIP_CONFIG, cache_dir))
        return w
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        w = Weights(role, spec, "file", file=os.path.abspath(path), looked_in=os.path.dirname(os.path.abspath(path)))
        _apply_run_params(w)
        return w
    if os.path.isdir(path):
        raise ValueError(f"{spec} is a folder: use local-dir:{spec} for an exported open_clip model folder, or "
                         f"--resume {spec} to continue a run from its DeepSpeed checkpoint")
    if not model_name:
        raise ValueError(f"{spec}: not a file; a pretrained tag needs its model (MODEL:TAG)")
    clean = model_name.replace("/", "-")
    cfg = open_clip.get_pretrained_cfg(clean, spec)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(clean)
        raise ValueError(f"{role} weights {spec!r}: not a file, not local-dir:/hf-hub:, and not a pretrained tag of "
                         f"{clean} (its tags: {', '.join(tags) or 'none'})")
    py = (f"import open_clip; open_clip.create_model_and_transforms({_py(clean)}, pretrained={_py(spec)}"
          f"{_cache_kw(cache_dir)})")
    hub = cfg.get("hf_hub", "")
    if cfg.get("file"):
        return Weights(role, f"{clean}:{spec}", "tag", file=cfg["file"], preprocess=_preprocess_of(cfg),
                       quick_gelu=bool(cfg.get("quick_gelu", False)))
    if not hub:
        raise ValueError(f"pretrained tag {clean}:{spec} is not on the model hub: download its file "
                         f"({cfg.get('url')}) and pass the file")
    repo, filename = os.path.split(hub)  # open_clip's rule: 'org/repo/' = the default file name
    fetch = Fetch(python_cmd=py, hub_repo=repo,
                  files=tc.openclip_weight_alternatives(filename or tc.OPENCLIP_WEIGHTS_NAME))
    looked = hub_cache_dir(cache_dir)
    w = Weights(role, f"{clean}:{spec}", "tag", fetch=fetch, preprocess=_preprocess_of(cfg),
                quick_gelu=bool(cfg.get("quick_gelu", False)), looked_in=looked)
    w.file = _locate(fetch, cache_dir)
    return w


def _apply_run_params(w: Weights) -> None:
    """A run's ``<run>/checkpoints/epoch_N.pt``: the model it was trained as, with the overrides (QuickGELU, image
    size, context length) and preprocessing of its ``params.txt``, read the way patentclip-export reads them --
    so that a second stage started from it builds the same architecture (e.g. an OpenAI-initialised stage 1
    trained with QuickGELU)."""
    params = read_params_txt(os.path.dirname(os.path.dirname(w.file)))
    name = params.get("model")
    if not name or name not in open_clip.list_models():
        return
    kwargs = model_kwargs_from_params(params, name)
    w.model_cfg = final_model_config(name, kwargs)
    w.quick_gelu = bool(w.model_cfg.get("quick_gelu", False))
    w.preprocess = {k: kwargs[attr] for k, attr in PREPROCESS_ARGS.items() if kwargs.get(attr) is not None}
    w.recorded_name = name


def _preprocess_of(cfg: Dict) -> Dict:
    return {k: cfg[k] for k in PREPROCESS_ARGS if cfg.get(k) is not None}


def split_model_tag(spec: str) -> Tuple[Optional[str], str]:
    """``"ViT-B-32:openai"`` -> ("ViT-B-32", "openai"); files, ``local-dir:`` and ``hf-hub:`` specs -> (None, spec)."""
    if spec.startswith((LOCAL_DIR, HF_HUB)) or os.path.exists(os.path.expanduser(spec)) or ":" not in spec:
        return None, spec
    model, _, tag = spec.rpartition(":")
    return model, tag


# ----------------------------------------------------------------------------------------------------------------
# timm image towers
# ----------------------------------------------------------------------------------------------------------------
def timm_tower_name(model_cfg: Optional[Dict]) -> Optional[str]:
    return ((model_cfg or {}).get("vision_cfg") or {}).get("timm_model_name")


def timm_weights_problem(args) -> Optional[str]:
    """Why ``--pretrained-image`` / ``--pretrained-image-source`` cannot apply to ``--model`` (None when they can or
    are not given): timm weights fit timm towers only (open_clip ignores ``--pretrained-image`` elsewhere)."""
    if not (args.pretrained_image or args.pretrained_image_source) or str(args.model).startswith(HF_HUB):
        return None
    register_model_configs()
    cfg = open_clip.get_model_config(args.model)
    if cfg is None or timm_tower_name(cfg) is not None:
        return None  # an unknown model is reported where the model is made
    flag = "--pretrained-image-source" if args.pretrained_image_source else "--pretrained-image"
    return (f"{flag}: {args.model}'s image tower is not a timm backbone (no vision_cfg.timm_model_name); timm image "
            f"weights apply to timm towers only (patentclip-resnet50, patentclip-swinv2-b ...)")


def resolve_timm_weights(timm_name: str, spec: Optional[str], cache_dir: Optional[str] = None) -> Weights:
    """The pretrained weights of timm backbone ``timm_name``: its default tag (``spec`` None), another tag of it,
    ``hf-hub:timm/REPO``, or a file. timm fetches hub files from the hub cache, URL-only weights into torch's hub
    cache (``torch.hub.get_dir()/checkpoints``)."""
    if spec and os.path.isfile(os.path.expanduser(spec)):
        path = os.path.abspath(os.path.expanduser(spec))
        return Weights("image tower", spec, "file", file=path, looked_in=os.path.dirname(path))
    if spec and spec.startswith(HF_HUB):
        repo = spec[len(HF_HUB):].strip("/")
        name = f"{HF_HUB}{repo}"
        cfg = {"hf_hub_id": repo}
    else:
        name = spec or timm_name
        arch = name.split(".", 1)[0]
        if arch != timm_name:
            raise ValueError(f"--pretrained-image-source {spec!r} is for {arch}, but the image tower is {timm_name}")
        cfg = tc.timm_pretrained_cfg(name)
        if cfg is None:
            raise ValueError(f"timm has no pretrained weights for {name!r}; give --pretrained-image-source a file "
                             f"with the backbone's state dict")
    py = f"import timm; timm.create_model({_py(name)}, pretrained=True{_cache_kw(cache_dir)})"
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise ValueError(f"timm weights {name!r} are not on the model hub: download them ({cfg.get('url')}) and "
                         f"pass --pretrained-image-source FILE")
    fname = cfg.get("hf_hub_filename")
    fetch = Fetch(python_cmd=py, hub_repo=hub_id, files=(fname,) if fname else TIMM_WEIGHTS)
    looked = hub_cache_dir(cache_dir)
    w = Weights("image tower", name, "timm", fetch=fetch, looked_in=looked,
                preprocess={k: (tuple(cfg[k]) if isinstance(cfg[k], (list, tuple)) else cfg[k])
                            for k in ("mean", "std", "interpolation") if cfg.get(k) is not None})
    w.file = _locate(fetch, cache_dir)
    return w


# ----------------------------------------------------------------------------------------------------------------
# the plan of a run
# ----------------------------------------------------------------------------------------------------------------
def _given(args, flag: str) -> bool:
    from patentclip.plugins.recipes import flags_given

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
        if plan.model.model_cfg is not None and not _given(args, "--model") and recorded in open_clip.list_models():
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
                _download(w.fetch, args.cache_dir)
            except Exception as exc:
                logging.error("Download of %s failed: %s", w.spec, exc)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    plan = plan_start(args)
    if plan.missing():
        raise MissingWeights(missing_message(plan.missing(), args.cache_dir, offline=False))
    return plan


# ----------------------------------------------------------------------------------------------------------------
# applying the plan
# ----------------------------------------------------------------------------------------------------------------
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
        if key in w.preprocess and not _given(args, "--" + attr.replace("_", "-")):
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
