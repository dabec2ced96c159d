"""Where starting weights come from: a ``--pretrained*`` spec resolved to a local file (on disk or in the model
hub's local cache) with the architecture and preprocessing that go with it, and the download of a missing one.
The specs and the offline-first rule are described in :mod:`patentclip.plugins.pretrained`."""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple


import open_clip

from patentclip.evaluation.export import final_model_config
from patentclip.launch.checkpoint_format import _read_params_txt as read_params_txt
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


def download_weights(fetch: Fetch, cache_dir: Optional[str]) -> None:
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
