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
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from patentclip.evaluation.loading import build_model
from patentclip.launch.checkpoint_format import (CLASSES_NAME, CONFIG_NAME, HEAD_CONFIG_NAME, HEAD_WEIGHTS_NAME,
                                               WEIGHTS_NAME, Checkpoint, build_head_module, read_checkpoint)
from patentclip.launch.safe_load import TRUST_FLAG, TRUST_HELP


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
    p.add_argument(TRUST_FLAG, action="store_true", help=TRUST_HELP)
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
            ck = read_checkpoint(args.checkpoint, work, trust=args.trust_checkpoint)
            summary = export(ck, args.out, args.model, args.classes_json, args.license, metrics)
        except (FileNotFoundError, ValueError, RuntimeError) as exc:
            print(f"patentclip-export: {exc}", file=sys.stderr)
            return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
