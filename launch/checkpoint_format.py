"""The checkpoint format: what a patentclip checkpoint is on disk, and reading any of them back.

One concern (the format, for its writer and its readers) in about 480 lines: the one place that knows the format
reads its four layouts (open_clip file, DeepSpeed folder, exported folder, a remote copy of any of them).

Training writes checkpoints (:mod:`patentclip.launch.checkpoint`, the commit protocol), ``patentclip-export``
and ``patentclip-eval`` read them (:mod:`patentclip.evaluation`); this module is the one place that knows the
format, for all three. It imports nothing of training or evaluation.

A run's checkpoint folder (``<logs>/<name>/checkpoints``, or any fsspec URL)::

    epoch_<N>.pt            open_clip format {epoch, name, state_dict, model, classes[, patentclip_head]}: vanilla
                            open_clip loads it (logit_scale stored 0-dim, as open_clip has it)
    deepspeed/<tag>/        DeepSpeed engine state (mp_rank_*_model_states.pt, ZeRO partitions
                            *zero_pp_rank_*_optim_states.pt) plus ``meta.json`` {tag, epoch, step, files: {name:
                            size}, world_size, zero_stage}, written last
    deepspeed/latest        the tag of the newest COMPLETE checkpoint
    ../params.txt           open_clip's ``name: value`` list of the run's arguments (two levels above a tag's
                            epoch file); read only for checkpoints written before they carried ``model_args``

The DeepSpeed client state carries ``epoch``, ``step``, ``model`` (the open_clip model name), ``model_args`` (the
arguments that rebuild the model: pretrained tag, forced QuickGELU, image size, context length, preprocessing;
``epoch_N.pt`` carries them too), ``classes`` (the training class table) and ``patentclip_head: {config}`` (the
classification head's weights are the module's own ``criterion.*`` parameters). A checkpoint is read from what it
carries: nothing a later start writes into the run folder changes how it is read. An exported folder (``patentclip-export``) holds ``open_clip_model.safetensors``,
``open_clip_config.json`` (with a ``patentclip`` key), ``patentclip_head.safetensors`` / ``patentclip_head.json``
and ``classes.json``.

State dicts: DeepSpeed cannot hold 0-dim parameters, so the trained module stores ``logit_scale`` /
``logit_bias`` as shape [1]; :func:`open_clip_state_dict` gives back exactly open_clip's state dict and
:func:`load_open_clip_state_dict` loads either form.

:func:`read_checkpoint` reads any of these formats -- an ``epoch_N.pt``, a DeepSpeed folder (a run's
``checkpoints/``, its ``deepspeed/`` folder or one tag folder), an exported folder -- locally or at an fsspec URL
(downloaded first; for a DeepSpeed folder only the newest tag), into one :class:`Checkpoint`. Every ``.pt`` file,
DeepSpeed's included, is read weights-only (``launch/safe_load.py``): a planted pickle is refused, not run, unless
``trust`` (``--trust-checkpoint``).

Why one module of more than 400 lines: writing and reading must agree on every name and layout above; kept
together, a change to the format is one diff that cannot update the writer and forget the reader.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import fsspec
import torch
from torch import nn

from patentclip.launch import safe_load
from patentclip.plugins.remote_io import is_remote

DS_SUBDIR = "deepspeed"
META = "meta.json"
PARAMS_NAME = "params.txt"
HEAD_KEY = "patentclip_head"                   # the key of the head in epoch_N.pt / DeepSpeed client state
LOSSES_KEY = "patentclip_losses"               # the other loss plugins' state (arcface) in epoch_N.pt
WEIGHTS_NAME = "open_clip_model.safetensors"   # open_clip.constants.HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = "open_clip_config.json"          # open_clip.constants.HF_CONFIG_NAME
HEAD_WEIGHTS_NAME = "patentclip_head.safetensors"
HEAD_CONFIG_NAME = "patentclip_head.json"
CLASSES_NAME = "classes.json"
LOGIT_SCALARS = ("logit_scale", "logit_bias")
MODEL_ARGS_KEY = "model_args"                  # in epoch_N.pt and the DeepSpeed client state
#: The run arguments that rebuild the model (``create_model_and_transforms``), stored in every checkpoint.
MODEL_ARGS = ("model", "pretrained", "force_quick_gelu", "force_custom_text", "force_patch_dropout",
              "force_image_size", "force_context_length", "image_mean", "image_std", "image_interpolation",
              "image_resize_mode")


def _fs(url: str):
    return fsspec.core.url_to_fs(url)


def deepspeed_dir(checkpoint_path: str) -> str:
    return os.path.join(checkpoint_path, DS_SUBDIR)


def latest_tag(ds_dir: str) -> Optional[str]:
    """The tag named by ``latest`` in a local or remote DeepSpeed folder, if that tag is complete."""
    fs, path = _fs(ds_dir)
    try:
        tag = fs.cat_file(posixpath.join(path, "latest")).decode().strip()
    except (FileNotFoundError, OSError):
        return None
    return tag if tag and tag_complete(ds_dir, tag) else None


def read_meta(ds_dir: str, tag: str) -> Optional[Dict]:
    fs, path = _fs(ds_dir)
    try:
        return json.loads(fs.cat_file(posixpath.join(path, tag, META)).decode())
    except (FileNotFoundError, OSError, ValueError):
        return None


def tag_complete(ds_dir: str, tag: str) -> bool:
    """Every file listed in the tag's meta.json exists with its size. Tags written by DeepSpeed alone (no
    meta.json, e.g. older runs) count as complete when they hold model states."""
    fs, path = _fs(ds_dir)
    meta = read_meta(ds_dir, tag)
    try:
        sizes = {posixpath.basename(p["name"]): int(p["size"]) for p in fs.ls(posixpath.join(path, tag), detail=True)}
    except (FileNotFoundError, OSError):
        return False
    if meta is None:
        return any(n.endswith("model_states.pt") for n in sizes)
    return all(sizes.get(n) == s for n, s in meta["files"].items())


def open_clip_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The model's state dict as vanilla open_clip has it (0-dim logit_scale/logit_bias), on CPU, fp32."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.float()
        if k in LOGIT_SCALARS and v.ndim == 1 and v.numel() == 1:
            v = v.reshape(())
        sd[k] = v
    return sd


def load_open_clip_state_dict(model: nn.Module, sd: Dict[str, torch.Tensor]) -> None:
    """Load an open_clip state dict (0-dim or [1] logit_scale, with or without a ``module.`` prefix)."""
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    fixed = {}
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape and own[k].numel() == v.numel() == 1:
            v = v.reshape(own[k].shape)
        fixed[k] = v
    model.load_state_dict(fixed)


def model_args(args) -> Dict:
    """The arguments that rebuild a run's model (:data:`MODEL_ARGS`), JSON values: every checkpoint stores them."""
    out = {}
    for k in MODEL_ARGS:
        v = getattr(args, k)
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def open_clip_checkpoint(clip: nn.Module, *, epoch: int, name: str, model_name: str, classes: List[Dict],
                         head_state: Optional[Dict] = None, model_args: Optional[Dict] = None) -> Dict:
    """The content of ``epoch_<N>.pt``: what vanilla open_clip loads, plus the model name and its construction
    arguments (:func:`model_args`), the training classes and the classification head (``{"config",
    "state_dict"}``) when the loss set has one."""
    oc = {"epoch": epoch, "name": name, "state_dict": open_clip_state_dict(clip), "model": model_name,
          "classes": classes}
    if model_args is not None:
        oc[MODEL_ARGS_KEY] = model_args
    if head_state:
        oc[HEAD_KEY] = head_state
    return oc


@dataclass
class Checkpoint:
    """What a checkpoint holds, whatever its format."""

    state_dict: Dict[str, torch.Tensor]          # open_clip state dict (CLIP only)
    model_name: Optional[str] = None             # open_clip model name used in training ("patentclip-tiny")
    model_kwargs: Dict = field(default_factory=dict)  # create_model_and_transforms overrides used in training
    head: Optional[Dict] = None                  # {"config": ..., "state_dict": ...} of the classification head
    classes: Optional[List[Dict]] = None         # the training class table (id, code, name, count[, category])
    epoch: Optional[int] = None
    source: str = ""                             # what was read
    kind: str = ""                               # "open_clip", "deepspeed" or "export"
    local_dir: Optional[str] = None              # for kind == "export": the folder (load it with local-dir:)


def _head_builder() -> Callable[[Dict], torch.nn.Module]:
    """``patentclip.plugins.heads.build_head`` (imported late: the head plugin is optional)."""
    try:
        from patentclip.plugins.heads import build_head
    except ImportError as exc:
        raise RuntimeError(f"the checkpoint has a classification head, but patentclip.plugins.heads cannot be "
                           f"imported ({exc})") from exc
    return build_head


def build_head_module(head: Dict, builder: Optional[Callable] = None) -> torch.nn.Module:
    """The head of a checkpoint as a module in eval mode (``builder`` defaults to plugins.heads.build_head)."""
    module = (builder or _head_builder())(head["config"])
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in head["state_dict"].items()})
    return module.float().eval()


def _sibling_fetcher(url: str, local: str, dest: str) -> Callable[[str], None]:
    """Downloads the remote counterpart of a local path near ``local`` (the copy of ``url``), if it exists and the
    local path is inside ``dest``."""
    def get(local_path: str) -> None:
        if not os.path.abspath(local_path).startswith(os.path.abspath(dest) + os.sep):
            return
        rel = os.path.relpath(os.path.abspath(local_path), os.path.abspath(local))
        fs, root = fsspec.core.url_to_fs(url)
        remote = posixpath.normpath(posixpath.join(root.rstrip("/"), *rel.split(os.sep)))
        if fs.isfile(remote):
            logging.info("Downloading %s for the classification head's config", remote)
            fs.get(remote, local_path)

    return get


def fetch(url: str, dest: str) -> str:
    """Download a checkpoint at an fsspec URL into ``dest``; returns the local path to read.

    A file is copied as it is. For a folder with a DeepSpeed ``latest`` (a run's ``checkpoints/``, its
    ``deepspeed/`` folder) only ``latest`` and the newest tag are copied; any other folder (a tag folder, an
    exported model folder) is copied whole.
    """
    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if not fs.exists(path):
        raise FileNotFoundError(f"--checkpoint {url}: not found")
    local = os.path.join(dest, posixpath.basename(path) or "checkpoint")
    if fs.isfile(path):
        fs.get(path, local)
        return local

    def get_dir(rpath, lpath):
        os.makedirs(lpath, exist_ok=True)
        for f in fs.find(rpath):
            rel = posixpath.relpath(f, rpath)
            os.makedirs(os.path.dirname(os.path.join(lpath, rel)), exist_ok=True)
            fs.get(f, os.path.join(lpath, rel))

    for ds_rel in (DS_SUBDIR, ""):
        ds = posixpath.join(path, ds_rel) if ds_rel else path
        latest = posixpath.join(ds, "latest")
        if fs.isfile(latest):
            tag = fs.cat_file(latest).decode().strip()
            ldir = os.path.join(local, ds_rel) if ds_rel else local
            os.makedirs(ldir, exist_ok=True)
            fs.get(latest, os.path.join(ldir, "latest"))
            get_dir(posixpath.join(ds, tag), os.path.join(ldir, tag))
            return local
    # a tag folder or an exported folder: nested two levels down, so that the tag's epoch_N.pt (two levels up
    # in a run's layout, see _sibling_fetcher) lands inside ``dest`` too
    local = os.path.join(dest, "checkpoint", DS_SUBDIR, posixpath.basename(path) or "checkpoint")
    get_dir(path, local)
    return local


def _read_params_txt(run_dir: str) -> Dict[str, str]:
    """open_clip's ``params.txt`` of a run (``name: value`` lines), or {}."""
    p = os.path.join(run_dir, PARAMS_NAME)
    out = {}
    if os.path.isfile(p):
        with open(p) as f:
            for line in f:
                k, sep, v = line.rstrip("\n").partition(": ")
                if sep:
                    out[k.strip()] = v.strip()
    return out


def model_kwargs_from_params(params: Dict, model_name: Optional[str]) -> Dict:
    """The ``create_model_and_transforms`` overrides a run was trained with (from the checkpoint's ``model_args``,
    or the strings of an older run's params.txt): QuickGELU (forced, or implied by the pretrained tag, e.g.
    ViT-B-32/openai), image size, context length and the preprocessing of the pretrained tag or of
    --image-mean/--image-std/..."""
    def val(name):
        v = params.get(name)
        if not isinstance(v, str):
            return v
        if v in ("None", ""):
            return None
        try:
            return ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v

    kw: Dict = {}
    tag_cfg = {}
    pretrained = val("pretrained")
    if pretrained and model_name:
        import open_clip

        tag_cfg = open_clip.get_pretrained_cfg(model_name, str(pretrained)) or {}
    if val("force_quick_gelu") or tag_cfg.get("quick_gelu"):
        kw["force_quick_gelu"] = True
    if val("force_custom_text"):
        kw["force_custom_text"] = True
    fis = val("force_image_size")
    if isinstance(fis, (list, tuple)) and len(fis) == 1:
        fis = fis[0]
    if fis:
        kw["force_image_size"] = fis
    if val("force_context_length"):
        kw["force_context_length"] = int(val("force_context_length"))
    for name, tag_key in (("image_mean", "mean"), ("image_std", "std"), ("image_interpolation", "interpolation"),
                          ("image_resize_mode", "resize_mode")):
        v = val(name)
        if v is None:
            v = tag_cfg.get(tag_key)
        if v is not None:
            kw[name] = tuple(v) if isinstance(v, list) else v
    return kw


def _model_kwargs(stored: Optional[Dict], model_name: Optional[str], beside: str, where: str) -> Dict:
    """The model's construction overrides from the checkpoint's own ``model_args``; a checkpoint written before it
    carried them falls back on the run's params.txt (two levels above ``beside``), and says so."""
    if isinstance(stored, dict):
        return model_kwargs_from_params(stored, model_name)
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(beside)))
    if os.path.isfile(os.path.join(run_dir, PARAMS_NAME)):
        logging.info("%s carries no model_args (written by an older patentclip): the model's construction "
                     "arguments are read from %s", where, os.path.join(run_dir, PARAMS_NAME))
    return model_kwargs_from_params(_read_params_txt(run_dir), model_name)


def _class_list(classes) -> Optional[List[Dict]]:
    if not classes:
        return None
    return [dict(c) if isinstance(c, dict) else dict(c.__dict__) for c in classes]


def _find_head_state(sd: Dict[str, torch.Tensor], config: Dict, builder: Optional[Callable]) -> Optional[Dict]:
    """The head's weights inside a DeepSpeed module state: the ``criterion.`` sub-dict whose keys are exactly
    the keys of ``build_head(config)`` under one prefix."""
    want = set((builder or _head_builder())(config).state_dict())
    prefixes = set()
    for k in sd:
        if not k.startswith("criterion."):
            continue
        for w in want:
            if k.endswith("." + w):
                prefixes.add(k[: -len(w)])
    for p in sorted(prefixes, key=len):
        if all(p + w in sd for w in want):
            return {w: sd[p + w] for w in want}
    return None


def _read_export_dir(path: str) -> Checkpoint:
    from safetensors.torch import load_file

    with open(os.path.join(path, CONFIG_NAME)) as f:
        cfg = json.load(f)
    meta = cfg.get("patentclip", {})
    weights = os.path.join(path, WEIGHTS_NAME)
    sd = load_file(weights) if os.path.isfile(weights) else {}
    head = None
    if os.path.isfile(os.path.join(path, HEAD_CONFIG_NAME)):
        with open(os.path.join(path, HEAD_CONFIG_NAME)) as f:
            head_cfg = json.load(f)
        head = {"config": head_cfg["config"], "state_dict": load_file(os.path.join(path, HEAD_WEIGHTS_NAME))}
    classes = None
    if os.path.isfile(os.path.join(path, CLASSES_NAME)):
        with open(os.path.join(path, CLASSES_NAME)) as f:
            classes = json.load(f)
    return Checkpoint(state_dict=sd, model_name=meta.get("model_name"), head=head, classes=classes,
                      epoch=meta.get("epoch"), source=path, kind="export", local_dir=os.path.abspath(path))


def _resolve_deepspeed(path: str):
    """(ds_dir, tag) of a DeepSpeed checkpoint folder, or None."""
    for d in (os.path.join(path, DS_SUBDIR), path):
        if os.path.isdir(d) and latest_tag(d):
            return d, latest_tag(d)
    if any(f.startswith("mp_rank_") for f in os.listdir(path)):
        ab = os.path.abspath(path)
        return os.path.dirname(ab), os.path.basename(ab)
    return None


def _read_deepspeed(path: str, builder: Optional[Callable], fetch_sibling: Optional[Callable] = None,
                    trust: bool = False) -> Checkpoint:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    found = _resolve_deepspeed(path)
    if found is None:
        raise FileNotFoundError(
            f"--checkpoint {path}: not a checkpoint (expected an open_clip .pt file, a DeepSpeed checkpoint folder "
            f"with a 'latest' file or mp_rank_* files, or an exported folder with {CONFIG_NAME})")
    ds_dir, tag = found
    tag_dir = os.path.join(ds_dir, tag)
    client, module_state = {}, None
    states = sorted(f for f in os.listdir(tag_dir) if f.startswith("mp_rank_") and f.endswith("model_states.pt"))
    if states:
        raw = safe_load.load(os.path.join(tag_dir, states[0]), os.path.join(tag_dir, states[0]), trust=trust,
                             map_location="cpu")
        client = {k: v for k, v in raw.items() if k not in ("module", "optimizer", "lr_scheduler", "buffer_names",
                                                            "param_shapes", "frozen_param_shapes",
                                                            "shared_params", "frozen_param_fragments")}
        module_state = raw.get("module")
        del raw
    if any("zero_pp_rank_" in f and f.endswith("optim_states.pt") for f in os.listdir(tag_dir)):
        with safe_load.weights_only_loads(tag_dir, trust=trust):  # DeepSpeed's own torch.load calls too
            full = get_fp32_state_dict_from_zero_checkpoint(ds_dir, tag)  # the fp32 master weights (ZeRO 1/2)
    elif module_state is not None:  # ZeRO stage 0: the module's own weights are the whole state
        full = {k: (v.float() if v.is_floating_point() else v) for k, v in module_state.items()}
    else:
        raise FileNotFoundError(f"{tag_dir}: no DeepSpeed model or optimizer states")
    del module_state
    sd = {k[len("clip."):]: v for k, v in full.items() if k.startswith("clip.")}
    head = None
    head_info = client.get(HEAD_KEY)
    if not (isinstance(head_info, dict) and head_info.get("config") is not None):
        # the head's config is in the epoch_N.pt written beside the DeepSpeed folder (same tag)
        sibling = os.path.join(os.path.dirname(os.path.abspath(ds_dir)), f"{tag}.pt")
        has_head = any(k.startswith("criterion.") and k.endswith("classifier.weight") for k in full)
        if has_head and not os.path.isfile(sibling) and fetch_sibling is not None:
            fetch_sibling(sibling)
        if os.path.isfile(sibling):
            head_info = safe_load.load(sibling, sibling, trust=trust, map_location="cpu").get(HEAD_KEY)
            if isinstance(head_info, dict):
                head_info = {"config": head_info.get("config")}
        elif has_head:
            logging.warning("%s: the module has a classifier under criterion.* but the checkpoint does not say how "
                            "to build it (no '%s' config in the client state or in %s); the head is ignored",
                            tag_dir, HEAD_KEY, sibling)
    if isinstance(head_info, dict) and head_info.get("config") is not None:
        head_sd = head_info.get("state_dict") or _find_head_state(full, head_info["config"], builder)
        if head_sd is None:
            raise ValueError(f"{tag_dir}: the client state describes a classification head but its weights are not "
                             f"among the module's criterion.* parameters")
        head = {"config": head_info["config"], "state_dict": head_sd}
    model_name = client.get("model")
    kwargs = _model_kwargs(client.get(MODEL_ARGS_KEY), model_name, ds_dir, tag_dir)
    return Checkpoint(state_dict=sd, model_name=model_name, model_kwargs=kwargs,
                      head=head, classes=_class_list(client.get("classes")), epoch=client.get("epoch"),
                      source=tag_dir, kind="deepspeed")


def _read_open_clip_file(path: str, trust: bool = False) -> Checkpoint:
    ckpt = safe_load.load(path, path, trust=trust, map_location="cpu")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not an open_clip checkpoint (a dict with a state_dict)")
    sd = ckpt.get("state_dict", ckpt)
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model_name = ckpt.get("model")
    kwargs = _model_kwargs(ckpt.get(MODEL_ARGS_KEY), model_name, path, path)
    head = ckpt.get(HEAD_KEY)
    if head is not None and (not isinstance(head, dict) or "config" not in head or "state_dict" not in head):
        raise ValueError(f"{path}: '{HEAD_KEY}' must be {{'config': ..., 'state_dict': ...}}")
    return Checkpoint(state_dict={k: v for k, v in sd.items() if torch.is_tensor(v)}, model_name=model_name,
                      model_kwargs=kwargs, head=head,
                      classes=_class_list(ckpt.get("classes")), epoch=ckpt.get("epoch"), source=path,
                      kind="open_clip")


def read_checkpoint(path: str, workdir: Optional[str] = None, head_builder: Optional[Callable] = None,
                    trust: bool = False) -> Checkpoint:
    """Read any patentclip checkpoint (see the module docstring); remote URLs are fetched into ``workdir``
    (a temporary folder the caller keeps until it is done; required for remote paths). ``trust``: load its
    pickles in full (only for a file the user trusts); otherwise weights-only."""
    path = str(path)
    if path.startswith("local-dir:"):
        path = path[len("local-dir:"):]
    if is_remote(path):
        if workdir is None:
            raise ValueError("reading a remote checkpoint needs a workdir to download it to")
        logging.info("Downloading checkpoint %s", path)
        local = fetch(path, workdir)
        if os.path.isdir(local) and not os.path.isfile(os.path.join(local, CONFIG_NAME)):
            ck = _read_deepspeed(local, head_builder, _sibling_fetcher(path, local, workdir), trust)
        else:
            ck = read_checkpoint(local, None, head_builder, trust)
        ck.source = path
        return ck
    if path.startswith("file://"):
        path = path[len("file://"):]
    path = os.path.abspath(path)  # recorded as the source: it must name the checkpoint from any working directory
    if os.path.isfile(path):
        return _read_open_clip_file(path, trust)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            return _read_export_dir(path)
        return _read_deepspeed(path, head_builder, trust=trust)
    raise FileNotFoundError(f"--checkpoint {path}: no such file or folder")
