"""ArcFace (additive angular margin) loss plugin ``arcface`` and its label space.

Deng et al., *ArcFace: Additive Angular Margin Loss for Deep Face Recognition* (CVPR 2019); for patents the
re-identification baselines of the LLM-informed paper's Table 1 (EfficientNet-B0 + ArcFace, SwinV2-B + ArcFace,
its refs [6, 7]) and DesignCLIP's "DesignCLIP + ArcFace on DeepPatent" fine-tuning. Definition, with ``x_i`` the
image embedding of sample i (``features["image_features"]``), ``W_c`` the learned centre of label c, both
normalised, ``y_i`` the label of sample i, ``s`` = ``--arcface-scale``, ``m`` = ``--arcface-margin`` (radians):

    cos_ic  = <x_i / |x_i|, W_c / |W_c|>,   theta_i = arccos(cos_iy_i)
    logit_ic = s * cos_ic                                  for c != y_i
    logit_iy = s * cos(theta_i + m)      if theta_i + m <= pi   (i.e. cos_iy >= -cos m)
             = s * (cos_iy - m sin m)    otherwise (insightface's fallback that keeps the target logit
                                           decreasing in theta; pytorch-metric-learning's ArcFaceLoss does the same)
    L = 1/B sum_i CE(logit_i, y_i)

``cos(theta + m)`` is computed as ``cos_iy cos m - sin_iy sin m`` with ``sin_iy = sqrt(1 - cos_iy^2)``, which has
a finite gradient where ``arccos`` has none (cos = +-1). Checked against a brute-force per-sample reference and
against pytorch-metric-learning's ``ArcFaceLoss`` (``tests/test_arcface.py``).

Labels (``--arcface-labels``):

* ``patent`` (default, DeepPatent's re-identification setting): every patent of the training shards is a label;
  the drawings of one patent are pulled to its centre. The label space is a :class:`LabelTable` of the sorted
  patent ids of the training shards, built once at the start (rank 0 lists the shards' json metadata -- a tar
  read of each shard, or ``--arcface-label-table FILE`` names a precomputed JSON list -- and sends it to the
  other ranks), written to ``<logs>/<name>/arcface_labels.json``, and stored with the centres in every
  checkpoint. A resumed run rebuilds it and checks it against the checkpoint's: shards with other patents are an
  error, not silently re-mapped centres. A patent missing from the table in a batch is an error naming it.
* ``class``: the Locarno class (``class_id``; the table is ``classes.json``'s codes).

The centres are a parameter of the loss module (``criterion.losses.arcface.centres``): trained with the model,
saved in the DeepSpeed checkpoint (with the label table as the module's extra state) and in ``epoch_N.pt``
under ``"patentclip_losses"``. Each rank averages over its own rows; DeepSpeed's gradient averaging over ranks
then gives the gradient of the mean over the global batch (the loss has no cross-sample term).

Use: alone (``--recipe arcface``; the papers' CNN / Swin + ArcFace baselines ``--recipe effnetb0-arcface`` /
``swinv2b-arcface``), or as a second stage on a CLIP checkpoint's image tower
(``--recipe arcface --pretrained <stage 1>/epoch_N.pt``). The text tower is not used by the loss: the recipes
freeze it, and the training step then skips the text encoder (``needs_text = False``).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tarfile
from typing import Dict, Iterable, List, Optional, Sequence

import fsspec
import open_clip
import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip_train.data import expand_urls
from torch import nn

from patentclip.plugins import remote_io
from patentclip.plugins.classes import ClassTable
from patentclip.plugins.registry import LOSSES

LABEL_KINDS = ("patent", "class")
LABELS_FILE = "arcface_labels.json"


def add_arcface_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("arcface loss (patentclip.plugins.arcface; docs/losses.md)")
    g.add_argument("--arcface-labels", choices=LABEL_KINDS, default="patent",
                   help="What a centre stands for: each patent of the training shards (re-identification, "
                        "DeepPatent's setting) or each class. Default: %(default)s.")
    g.add_argument("--arcface-scale", type=float, default=64.0,
                   help="s: logits are s * cos (ArcFace's 64 by default).")
    g.add_argument("--arcface-margin", type=float, default=0.5,
                   help="m: additive angular margin on the target class, in radians (ArcFace's 0.5 = 28.6 degrees).")
    g.add_argument("--arcface-label-table", default=None, metavar="FILE",
                   help="A JSON list of the training patents' ids (the label table), instead of listing them from "
                        "the training shards at the start (which reads every shard once; worth it to skip on very "
                        "large remote shard sets). A run writes its table to <logs>/<name>/arcface_labels.json.")


# ----------------------------------------------------------------------------------------------------------------
# the label space
# ----------------------------------------------------------------------------------------------------------------
class LabelTable:
    """Names (patent ids or class codes) -> label index; ``kind`` says which."""

    def __init__(self, kind: str, names: Sequence[str], source: str = "<memory>"):
        if kind not in LABEL_KINDS:
            raise ValueError(f"label kind must be one of {LABEL_KINDS}, got {kind!r}")
        self.kind, self.names, self.source = kind, [str(n) for n in names], source
        self.index = {n: i for i, n in enumerate(self.names)}
        if len(self.index) != len(self.names):
            raise ValueError(f"{source}: the label table names a {kind} twice")
        if not self.names:
            raise ValueError(f"{source}: the {kind} label table is empty")

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelTable) and (self.kind, self.names) == (other.kind, other.names)

    def lookup(self, names: Iterable[str]) -> torch.Tensor:
        out, unknown = [], []
        for n in names:
            i = self.index.get(str(n))
            if i is None:
                unknown.append(str(n))
            out.append(-1 if i is None else i)
        if unknown:
            raise ValueError(f"{len(unknown)} {self.kind}(s) of the batch are not in the ArcFace label table "
                             f"({self.source}, {len(self)} {self.kind}s), e.g. {sorted(set(unknown))[:5]}: the label "
                             f"table must list every {self.kind} of the training shards")
        return torch.tensor(out, dtype=torch.long)

    def to_json(self) -> Dict:
        return {"kind": self.kind, "names": self.names}

    @classmethod
    def from_json(cls, data: Dict, source: str = "<checkpoint>") -> "LabelTable":
        return cls(data["kind"], data["names"], source)

    @classmethod
    def of_classes(cls, class_table: ClassTable) -> "LabelTable":
        return cls("class", class_table.codes, class_table.source)

    @classmethod
    def load_patents(cls, path: str) -> "LabelTable":
        with fsspec.open(path, "r") as f:
            data = json.load(f)
        names = data["names"] if isinstance(data, dict) else data
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path}: expected a JSON list of patent ids (or {{'names': [...]}})")
        return cls("patent", sorted(set(names)), path)


def patent_of(key: str, meta: Dict) -> str:
    """A drawing's patent: its json ``patent_id``, else the sample key without its ``_NN`` drawing suffix (the
    same rule as the patent-wds pipeline)."""
    return str(meta.get("patent_id") or key.rsplit("_", 1)[0])


def _member_key(name: str) -> Optional[str]:
    base = os.path.basename(name)
    return name[: len(name) - len(base)] + base.split(".", 1)[0] if "." in base else None


def shard_patents(url: str) -> List[str]:
    """The patent ids of one shard, in order of first appearance, from its ``.json`` members (read through the
    pipeline's shard opener, with its retries for remote URLs)."""
    stream = remote_io.open_shard(url)
    seen: Dict[str, None] = {}
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                key = _member_key(member.name)
                if key is None or not member.isfile():
                    continue
                if member.name.endswith(".json"):
                    try:
                        meta = json.loads(tar.extractfile(member).read().decode("utf-8"))
                    except (ValueError, UnicodeDecodeError) as exc:
                        raise ValueError(f"{url}: member {member.name}: unreadable json ({exc})") from None
                    seen.setdefault(patent_of(key, meta if isinstance(meta, dict) else {}), None)
    finally:
        try:
            stream.close()
        except Exception:
            pass
    return list(seen)


def patent_table_from_shards(train_data: str, progress: bool = True) -> LabelTable:
    """The sorted patent ids of all training shards (``--train-data`` as open_clip expands it)."""
    urls, _ = expand_urls(train_data)
    ids = set()
    it = urls
    if progress:
        from tqdm import tqdm

        it = tqdm(urls, desc="ArcFace label table: listing patents", unit="shard", leave=False)
    for url in it:
        ids.update(shard_patents(url))
    return LabelTable("patent", sorted(ids), f"{len(urls)} shard(s) of --train-data")


def build_label_table(args, class_table: ClassTable) -> LabelTable:
    """The run's label table: the classes, or the training patents (rank 0 builds, the others receive it)."""
    if args.arcface_labels == "class":
        return LabelTable.of_classes(class_table)
    table = None
    rank = getattr(args, "rank", 0)
    if rank == 0:
        if args.arcface_label_table:
            table = LabelTable.load_patents(args.arcface_label_table)
        else:
            table = patent_table_from_shards(args.train_data)
    if getattr(args, "world_size", 1) > 1 and dist.is_initialized():
        box = [table.to_json() if table is not None else None, table.source if table is not None else ""]
        dist.broadcast_object_list(box, src=0)
        table = LabelTable.from_json(box[0], box[1])
    logging.info("ArcFace labels: %d patents (%s)", len(table), table.source)
    log_dir = os.path.join(args.logs, args.name) if getattr(args, "logs", None) and getattr(args, "name", None) else None
    if rank == 0 and log_dir and os.path.isdir(log_dir):
        with open(os.path.join(log_dir, LABELS_FILE), "w") as f:
            json.dump(table.to_json(), f)
    return table


# ----------------------------------------------------------------------------------------------------------------
# the loss
# ----------------------------------------------------------------------------------------------------------------
def arcface_logits(embeddings: torch.Tensor, centres: torch.Tensor, labels: torch.Tensor, scale: float,
                   margin: float) -> torch.Tensor:
    """ArcFace logits (B, C) of the module docstring (embeddings and centres need not be normalised)."""
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(centres, dim=-1).t()
    target = cos.gather(1, labels[:, None]).squeeze(1)
    sin = torch.sqrt((1.0 - target * target).clamp_min(0.0))
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    with_margin = torch.where(target >= -cos_m, target * cos_m - sin * sin_m, target - margin * sin_m)
    logits = cos.scatter(1, labels[:, None], with_margin[:, None])
    return scale * logits


@LOSSES.register("arcface")
class ArcFaceLoss(nn.Module):
    """``arcface``: additive angular margin softmax over learned label centres (module docstring)."""

    needs_text = False

    def __init__(self, args, class_table: ClassTable, table: Optional[LabelTable] = None):
        super().__init__()
        self.scale = float(args.arcface_scale)
        self.margin = float(args.arcface_margin)
        if self.scale <= 0:
            raise ValueError(f"--arcface-scale must be > 0, got {self.scale}")
        if not 0 <= self.margin < math.pi / 2:
            raise ValueError(f"--arcface-margin must be in [0, pi/2) radians, got {self.margin}")
        self.table = table if table is not None else build_label_table(args, class_table)
        centres = torch.empty(len(self.table), _embed_dim(args))
        nn.init.xavier_uniform_(centres)
        self.centres = nn.Parameter(centres)

    def labels(self, batch: Dict, device) -> torch.Tensor:
        if self.table.kind == "class":
            if "class_id" not in batch:
                raise KeyError("arcface with --arcface-labels class needs batch['class_id']")
            labels = batch["class_id"].to(device=device, dtype=torch.long)
            bad = (labels < 0) | (labels >= len(self.table))
            if bool(bad.any()):
                raise ValueError(f"class ids {sorted(set(labels[bad].tolist()))[:5]} are outside the ArcFace label "
                                 f"table ({len(self.table)} classes of {self.table.source})")
            return labels
        if "patent_id" not in batch:
            raise KeyError("arcface with --arcface-labels patent needs batch['patent_id'] (the patent pipeline's)")
        return self.table.lookup(batch["patent_id"]).to(device)

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        x = features["image_features"]
        labels = self.labels(batch, x.device)
        logits = arcface_logits(x, self.centres.to(x.dtype), labels, self.scale, self.margin)
        return {"arcface": F.cross_entropy(logits.float(), labels)}

    # the label table travels with the centres in every state dict (DeepSpeed's module state, epoch_N.pt)
    def get_extra_state(self):
        return {"table": self.table.to_json(), "scale": self.scale, "margin": self.margin}

    def set_extra_state(self, state) -> None:
        saved = LabelTable.from_json(state["table"])
        if saved != self.table:
            only_saved = sorted(set(saved.names) - set(self.table.names))[:5]
            only_ours = sorted(set(self.table.names) - set(saved.names))[:5]
            raise ValueError(
                f"the checkpoint's ArcFace label table ({len(saved)} {saved.kind}s) differs from this run's "
                f"({len(self.table)} {self.table.kind}s from {self.table.source}): only in the checkpoint "
                f"{only_saved}, only in this run {only_ours}. Train on the same shards (or pass the checkpoint's "
                f"table with --arcface-label-table) to continue this run.")

    def checkpoint_state(self) -> Dict:
        """What ``epoch_N.pt`` stores under ``"patentclip_losses"]["arcface"]``."""
        return {"table": self.table.to_json(), "scale": self.scale, "margin": self.margin,
                "centres": self.centres.detach().cpu().float().clone()}

    def load_checkpoint_state(self, state: Dict) -> None:
        self.set_extra_state(state)
        with torch.no_grad():
            self.centres.copy_(state["centres"].to(self.centres))


def _embed_dim(args) -> int:
    cfg = open_clip.get_model_config(args.model)
    if cfg is None:
        raise ValueError(f"arcface: cannot tell the embedding width of model {args.model!r}")
    return int(cfg["embed_dim"])
