"""``patentclip-export``: a training checkpoint -> an open_clip model folder that vanilla open_clip loads.

    patentclip-export --checkpoint logs/run/checkpoints/epoch_10.pt --out patentclip-vitb32
    patentclip-export --checkpoint s3://bucket/runs/run/checkpoints --out patentclip-vitb32   # DeepSpeed, newest tag

The folder is what open_clip's ``push_to_hf_hub`` uploads, so it can be pushed to a model hub as it is
(``huggingface-cli upload <repo> <dir>``) and loaded back with ``hf-hub:<repo>``:

    open_clip_model.safetensors   the open_clip weights (0-dim logit_scale, exactly the CLIP state dict)
    open_clip_config.json         {"model_cfg": ..., "preprocess_cfg": ...} as open_clip writes it (written by
                                  open_clip's own ``save_config_for_hf``); the model config is included in full,
                                  so no patentclip config needs to be registered to load it; a "patentclip" key
                                  (ignored by open_clip) records the source checkpoint
    patentclip_head.safetensors   the classification head's weights (only when the model has one)
    patentclip_head.json          {"config": ...}: ``patentclip.plugins.heads.build_head(config)`` rebuilds it
    classes.json                  the training classes (id, code, name, count[, category]) the head's logits index
    README.md                     a model card (hub front matter: library_name open_clip)

Load it with plain open_clip::

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:patentclip-vitb32")
    tokenizer = open_clip.get_tokenizer("local-dir:patentclip-vitb32")

``--checkpoint`` accepts an open_clip ``epoch_N.pt``, a DeepSpeed checkpoint folder (a run's ``checkpoints/``,
its ``deepspeed/`` folder or one tag folder), an exported folder, or any of these at an fsspec URL
(``s3://...``; credentials and endpoint from the usual AWS variables), which is downloaded to a temporary
folder first (for a DeepSpeed folder only the newest tag).

This module also holds the checkpoint reader that ``patentclip-eval`` uses (:func:`read_checkpoint`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from patentclip.plugins.remote_io import is_remote

WEIGHTS_NAME = "open_clip_model.safetensors"   # open_clip.constants.HF_SAFE_WEIGHTS_NAME
CONFIG_NAME = "open_clip_config.json"          # open_clip.constants.HF_CONFIG_NAME
HEAD_WEIGHTS_NAME = "patentclip_head.safetensors"
HEAD_CONFIG_NAME = "patentclip_head.json"
CLASSES_NAME = "classes.json"
HEAD_KEY = "patentclip_head"                   # the key of the head in epoch_N.pt / DeepSpeed client state


# ----------------------------------------------------------------------------------------------------------------
# reading checkpoints
# ----------------------------------------------------------------------------------------------------------------
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
        import fsspec

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
    import fsspec

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

    for ds_rel in ("deepspeed", ""):
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
    local = os.path.join(dest, "checkpoint", "deepspeed", posixpath.basename(path) or "checkpoint")
    get_dir(path, local)
    return local


def _read_params_txt(run_dir: str) -> Dict[str, str]:
    """open_clip's ``params.txt`` of a run (``name: value`` lines), or {}."""
    p = os.path.join(run_dir, "params.txt")
    out = {}
    if os.path.isfile(p):
        with open(p) as f:
            for line in f:
                k, sep, v = line.rstrip("\n").partition(": ")
                if sep:
                    out[k.strip()] = v.strip()
    return out


def model_kwargs_from_params(params: Dict[str, str], model_name: Optional[str]) -> Dict:
    """The ``create_model_and_transforms`` overrides a run was trained with (from its params.txt): QuickGELU
    (forced, or implied by the pretrained tag, e.g. ViT-B-32/openai), image size, context length and the
    preprocessing of the pretrained tag or of --image-mean/--image-std/...; these are not in epoch_N.pt."""
    import ast

    def val(name):
        v = params.get(name)
        if v in (None, "None", ""):
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
    from patentclip.launch.checkpoint import DS_SUBDIR, latest_tag

    for d in (os.path.join(path, DS_SUBDIR), path):
        if os.path.isdir(d) and latest_tag(d):
            return d, latest_tag(d)
    if any(f.startswith("mp_rank_") for f in os.listdir(path)):
        ab = os.path.abspath(path)
        return os.path.dirname(ab), os.path.basename(ab)
    return None


def _read_deepspeed(path: str, builder: Optional[Callable], fetch_sibling: Optional[Callable] = None) -> Checkpoint:
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
        raw = torch.load(os.path.join(tag_dir, states[0]), map_location="cpu", weights_only=False)
        client = {k: v for k, v in raw.items() if k not in ("module", "optimizer", "lr_scheduler", "buffer_names",
                                                            "param_shapes", "frozen_param_shapes",
                                                            "shared_params", "frozen_param_fragments")}
        module_state = raw.get("module")
        del raw
    if any("zero_pp_rank_" in f and f.endswith("optim_states.pt") for f in os.listdir(tag_dir)):
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
            head_info = torch.load(sibling, map_location="cpu", weights_only=False).get(HEAD_KEY)
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
    params = _read_params_txt(os.path.dirname(os.path.dirname(os.path.abspath(ds_dir))))
    return Checkpoint(state_dict=sd, model_name=model_name, model_kwargs=model_kwargs_from_params(params, model_name),
                      head=head, classes=_class_list(client.get("classes")), epoch=client.get("epoch"),
                      source=tag_dir, kind="deepspeed")


def _read_open_clip_file(path: str) -> Checkpoint:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not an open_clip checkpoint (a dict with a state_dict)")
    sd = ckpt.get("state_dict", ckpt)
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    model_name = ckpt.get("model")
    params = _read_params_txt(os.path.dirname(os.path.dirname(os.path.abspath(path))))
    head = ckpt.get(HEAD_KEY)
    if head is not None and (not isinstance(head, dict) or "config" not in head or "state_dict" not in head):
        raise ValueError(f"{path}: '{HEAD_KEY}' must be {{'config': ..., 'state_dict': ...}}")
    return Checkpoint(state_dict={k: v for k, v in sd.items() if torch.is_tensor(v)}, model_name=model_name,
                      model_kwargs=model_kwargs_from_params(params, model_name), head=head,
                      classes=_class_list(ckpt.get("classes")), epoch=ckpt.get("epoch"), source=path,
                      kind="open_clip")


class _RandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded for model ... Model initialized randomly" record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def weights_loaded_after():
    """While a model is built whose weights are loaded right after (from a checkpoint): open_clip's factory logs
    that it initialised the model randomly, which would be false for what the user gets, so that one record is
    dropped (open_clip logs it on the root logger)."""
    drop = _RandomInitWarning()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def read_checkpoint(path: str, workdir: Optional[str] = None, head_builder: Optional[Callable] = None) -> Checkpoint:
    """Read any patentclip checkpoint (see the module docstring); remote URLs are fetched into ``workdir``
    (a temporary folder the caller keeps until it is done; required for remote paths)."""
    path = str(path)
    if path.startswith("local-dir:"):
        path = path[len("local-dir:"):]
    if is_remote(path):
        if workdir is None:
            raise ValueError("reading a remote checkpoint needs a workdir to download it to")
        logging.info("Downloading checkpoint %s", path)
        local = fetch(path, workdir)
        if os.path.isdir(local) and not os.path.isfile(os.path.join(local, CONFIG_NAME)):
            ck = _read_deepspeed(local, head_builder, _sibling_fetcher(path, local, workdir))
        else:
            ck = read_checkpoint(local, None, head_builder)
        ck.source = path
        return ck
    if path.startswith("file://"):
        path = path[len("file://"):]
    path = os.path.abspath(path)  # recorded as the source: it must name the file from any working directory
    if os.path.isfile(path):
        return _read_open_clip_file(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, CONFIG_NAME)):
            return _read_export_dir(path)
        return _read_deepspeed(path, head_builder)
    raise FileNotFoundError(f"--checkpoint {path}: no such file or folder")


# ----------------------------------------------------------------------------------------------------------------
# building the model of a checkpoint
# ----------------------------------------------------------------------------------------------------------------
def final_model_config(model_name: str, model_kwargs: Dict) -> Dict:
    """The model config open_clip builds ``model_name`` from, with the training overrides applied the way
    ``open_clip.create_model`` applies them (what open_clip_config.json must contain)."""
    import copy

    import open_clip

    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model_name!r}")
    cfg = copy.deepcopy(cfg)
    if model_kwargs.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    if model_kwargs.get("force_image_size") is not None:
        cfg["vision_cfg"]["image_size"] = model_kwargs["force_image_size"]
    if model_kwargs.get("force_context_length") is not None:
        cfg["text_cfg"]["context_length"] = model_kwargs["force_context_length"]
    if model_kwargs.get("force_custom_text"):
        cfg["custom_text"] = True
    return cfg


def build_model(ck: Checkpoint, model_name: Optional[str] = None, device="cpu"):
    """(open_clip model with the checkpoint's weights, eval preprocess, tokenizer, model name), in eval mode."""
    import open_clip

    from patentclip.launch.model import load_open_clip_state_dict
    from patentclip.plugins.models import register_model_configs

    if ck.kind == "export":
        ident = f"local-dir:{ck.local_dir}"
        model, _, preprocess = open_clip.create_model_and_transforms(ident, device=device, output_dict=True)
        return model.eval(), preprocess, open_clip.get_tokenizer(ident), ck.model_name or ident
    register_model_configs()
    name = model_name or ck.model_name
    if not name:
        raise ValueError(f"{ck.source} does not record its model name: pass --model")
    if model_name and ck.model_name and model_name != ck.model_name:
        logging.warning("--model %s, but the checkpoint was trained as %s", model_name, ck.model_name)
    with weights_loaded_after():
        model, _, preprocess = open_clip.create_model_and_transforms(name, precision="fp32", device="cpu",
                                                                     output_dict=True, **ck.model_kwargs)
    load_open_clip_state_dict(model, ck.state_dict)
    logging.info("Loaded the weights of %s from %s", name, ck.source)
    ctx = ck.model_kwargs.get("force_context_length")
    tokenizer = open_clip.get_tokenizer(name, context_length=ctx) if ctx else open_clip.get_tokenizer(name)
    return model.to(device).eval(), preprocess, tokenizer, name


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------
def model_card(name: str, ck: Checkpoint, model_name: str, classes: Optional[List[Dict]], license: str,
               metrics: Optional[Dict] = None) -> str:
    lines = ["---", "tags:", "- clip", "- open_clip", "- patentclip", "- design-patents", "library_name: open_clip",
             "pipeline_tag: zero-shot-image-classification", f"license: {license}", "---",
             f"# {name}", "",
             f"A CLIP model of design-patent drawings trained with patentclip (open_clip architecture "
             f"`{model_name}`{f', epoch {ck.epoch}' if ck.epoch is not None else ''}).", "",
             "## Usage", "", "```python", "import open_clip", "",
             f"model, _, preprocess = open_clip.create_model_and_transforms('hf-hub:<org>/{name}')",
             f"tokenizer = open_clip.get_tokenizer('hf-hub:<org>/{name}')",
             "# or, from this folder: open_clip.create_model_and_transforms('local-dir:<folder>')", "```", ""]
    if ck.head is not None:
        lines += ["The Locarno classification head (image-only mode at inference) is stored beside the weights:",
                  "", "```python", "import json", "from safetensors.torch import load_file",
                  "from patentclip.plugins.heads import build_head", "",
                  f"head = build_head(json.load(open('{HEAD_CONFIG_NAME}'))['config'])",
                  f"head.load_state_dict(load_file('{HEAD_WEIGHTS_NAME}'))",
                  "logits = head.classify_image(model.encode_image(images, normalize=True))",
                  f"# class i of the logits is entry i of {CLASSES_NAME}", "```", ""]
    if classes:
        lines += ["## Classes", "", f"{len(classes)} classes ({CLASSES_NAME}: id, Locarno code, name, training count).",
                  ""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                lines.append(f"| {k} | {v:.4f} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def export(ck: Checkpoint, out_dir: str, model_name: Optional[str] = None, classes_json: Optional[str] = None,
           license: str = "mit", metrics: Optional[Dict] = None, head_builder: Optional[Callable] = None) -> Dict:
    """Write the open_clip model folder of ``ck`` into ``out_dir``; returns a summary dict."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    model, _, tokenizer, name = build_model(ck, model_name, "cpu")
    if ck.kind == "export":
        cfg = open_clip.get_model_config(f"local-dir:{ck.local_dir}")
    else:
        cfg = final_model_config(name, ck.model_kwargs)
    classes = ck.classes
    if classes_json:
        from patentclip.plugins.classes import ClassTable

        ClassTable.load(classes_json)  # validates
        import fsspec

        with fsspec.open(classes_json, "r") as f:
            data = json.load(f)
        classes = data["classes"] if isinstance(data, dict) and "classes" in data else data
    if classes is None:
        raise ValueError(f"{ck.source} carries no class table: pass --classes-json (the training shards' classes.json)")
    if ck.head is not None:
        head = build_head_module(ck.head, head_builder)  # fails loudly if the weights do not fit the config
        with torch.no_grad():
            n_out = head.classify_image(torch.zeros(1, cfg["embed_dim"])).shape[-1]
        if n_out != len(classes):
            raise ValueError(f"the classification head has {n_out} outputs but the class table {len(classes)} classes")

    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=out_dir)
    try:
        sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(sd, os.path.join(tmp, WEIGHTS_NAME), metadata={"format": "pt"})
        save_config_for_hf(model, Path(tmp) / CONFIG_NAME, model_config=cfg)
        with open(os.path.join(tmp, CONFIG_NAME)) as f:
            full_cfg = json.load(f)
        full_cfg["patentclip"] = {"model_name": name, "epoch": ck.epoch, "source": ck.source,
                                  "head": HEAD_WEIGHTS_NAME if ck.head is not None else None,
                                  "classes": CLASSES_NAME}
        with open(os.path.join(tmp, CONFIG_NAME), "w") as f:
            json.dump(full_cfg, f, indent=2)
        if hasattr(tokenizer, "save_pretrained"):  # HF tokenizers travel with the model, as push_to_hf_hub does
            tokenizer.save_pretrained(tmp)
        if ck.head is not None:
            save_file({k: v.detach().float().contiguous() if v.is_floating_point() else v.contiguous()
                       for k, v in ck.head["state_dict"].items()}, os.path.join(tmp, HEAD_WEIGHTS_NAME),
                      metadata={"format": "pt"})
            with open(os.path.join(tmp, HEAD_CONFIG_NAME), "w") as f:
                json.dump({"config": ck.head["config"], "builder": "patentclip.plugins.heads.build_head"}, f,
                          indent=2)
        with open(os.path.join(tmp, CLASSES_NAME), "w") as f:
            json.dump(classes, f, indent=1)
        with open(os.path.join(tmp, "README.md"), "w") as f:
            f.write(model_card(os.path.basename(os.path.abspath(out_dir)), ck, name, classes, license, metrics))
        written = sorted(os.listdir(tmp))
        umask = os.umask(0)
        os.umask(umask)
        for fn in written:
            os.chmod(os.path.join(tmp, fn), 0o666 & ~umask)  # safetensors writes 0600; a model folder is shared
            os.replace(os.path.join(tmp, fn), os.path.join(out_dir, fn))
        # files a previous export wrote that this one does not (e.g. a head) must not linger
        for stale in (HEAD_WEIGHTS_NAME, HEAD_CONFIG_NAME):
            if stale not in written and os.path.exists(os.path.join(out_dir, stale)):
                os.remove(os.path.join(out_dir, stale))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": os.path.abspath(out_dir), "model_name": name, "epoch": ck.epoch, "source": ck.source,
            "files": written, "head": ck.head is not None, "num_classes": len(classes)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="patentclip-export", allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description=__doc__.split("\n", 1)[1])
    p.add_argument("--checkpoint", required=True,
                   help="epoch_N.pt, a DeepSpeed checkpoint folder, an exported folder, or an s3:// (fsspec) URL "
                        "of one of these.")
    p.add_argument("--out", required=True, help="Folder to write (created; files of the same names replaced).")
    p.add_argument("--model", default=None, help="open_clip model name, when the checkpoint does not record it.")
    p.add_argument("--classes-json", default=None,
                   help="classes.json to ship (default: the training class table stored in the checkpoint).")
    p.add_argument("--license", default="mit", help="License in the model card's front matter.")
    p.add_argument("--metrics-json", default=None, help="patentclip-eval --out JSON to list in the model card.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s | %(levelname)s | %(message)s")
    metrics = None
    if args.metrics_json:
        with open(args.metrics_json) as f:
            metrics = {k: v for k, v in json.load(f).items() if isinstance(v, (int, float))}
    # stdout carries the JSON summary only: libraries' chatter (DeepSpeed prints) goes to stderr
    with tempfile.TemporaryDirectory(prefix="patentclip-export-") as work, contextlib.redirect_stdout(sys.stderr):
        try:
            ck = read_checkpoint(args.checkpoint, work)
            summary = export(ck, args.out, args.model, args.classes_json, args.license, metrics)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"patentclip-export: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
