"""The model being trained: an open_clip CLIP plus the loss plugins' parameters, as one module.

DeepSpeed trains one ``nn.Module``. ``PatentTrainModule`` holds the open_clip model under ``.clip`` and the
``LossSet`` under ``.criterion`` (so loss parameters, e.g. learned loss weights or a classification head,
are trained, checkpointed and restored with the model). ``head_state`` gives the classification head that
``epoch_N.pt`` carries beside the open_clip weights, ``loss_states`` the other loss plugins' state (arcface) under
``"patentclip_losses"`` (the file format: :mod:`patentclip.launch.checkpoint_format`).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from patentclip.plugins.data.batch import IMAGE2
from patentclip.plugins.losses import LossSet


def make_logit_scale_nonscalar(model: nn.Module) -> None:
    """DeepSpeed cannot broadcast or clip 0-dim parameters: store ``logit_scale`` (and ``logit_bias``) as shape [1].

    The forward pass is unchanged (broadcasting); :func:`patentclip.launch.checkpoint_format.open_clip_state_dict`
    turns them back to 0-dim.
    """
    for name in ("logit_scale", "logit_bias"):
        p = getattr(model, name, None)
        if isinstance(p, nn.Parameter) and p.ndim == 0:
            setattr(model, name, nn.Parameter(p.detach().reshape(1).clone(), requires_grad=p.requires_grad))


FEATURE_SCALARS = ("logit_scale", "logit_bias")


def merge_batches(batches: Sequence[Dict]) -> Dict:
    """Micro-batches -> one batch (tensors concatenated, lists joined; other entries: the last one's)."""
    if len(batches) == 1:
        return batches[0]
    out = {}
    for k, v in batches[-1].items():
        vals = [b[k] for b in batches if k in b]
        if len(vals) != len(batches):
            raise KeyError(f"micro-batches to accumulate differ: {k!r} is missing from some of them")
        if torch.is_tensor(v) and v.ndim > 0:
            out[k] = torch.cat(vals, dim=0)
        elif isinstance(v, list):
            out[k] = [x for val in vals for x in val]
        else:
            out[k] = v
    return out


class PatentTrainModule(nn.Module):
    """open_clip model + loss plugins; ``forward(images, texts, batch) -> (loss, terms, features)``.

    ``features`` is open_clip's output dict, plus ``image2_features`` (the other view's normalised image
    embeddings) when the batch has ``image2``. Two extra modes serve open_clip's ``--accum-freq`` feature
    cache (see :func:`patentclip.launch.step.train_step_accum`):

    * ``features_only=True``: return the features only (the caching pass, run under ``torch.no_grad``).
    * ``accum={"features": [cached features of each micro-batch], "batch": merged batch, "index": j}``: the
      loss is computed over all micro-batches, micro-batch j's features being recomputed with gradient.
      ``loss_param_grad=False`` makes the parameters that act on the whole accumulated batch (``logit_scale``,
      ``logit_bias`` and the criterion's own parameters) constants in this pass, so that over the
      ``accum_freq`` passes they receive their gradient exactly once, as with one big batch.
    """

    def __init__(self, clip_model: nn.Module, criterion: LossSet):
        super().__init__()
        self.clip = clip_model
        self.criterion = criterion

    def compute_features(self, images: torch.Tensor, texts: torch.Tensor, batch: Dict) -> Dict:
        # losses that use no text embeddings (arcface) skip the text tower: text_features is then None
        features = self.clip(images, texts if self.criterion.needs_text else None)
        if IMAGE2 in batch:
            features["image2_features"] = self.clip.encode_image(batch[IMAGE2], normalize=True)
        return features

    def forward(self, images: torch.Tensor, texts: torch.Tensor, batch: Dict, accum: Optional[Dict] = None,
                features_only: bool = False, loss_param_grad: bool = True):
        features = self.compute_features(images, texts, batch)
        if features_only:
            return features
        loss_features, loss_batch = features, batch
        if accum is not None:
            j, cached = accum["index"], accum["features"]
            loss_features = {k: v for k, v in features.items() if k in FEATURE_SCALARS}
            for key, val in features.items():
                if key not in FEATURE_SCALARS and val is not None:
                    loss_features[key] = torch.cat([c[key] for c in cached[:j]] + [val]
                                                   + [c[key] for c in cached[j + 1:]], dim=0)
            loss_batch = accum["batch"]
        if loss_param_grad:
            total, terms = self.criterion(loss_features, loss_batch)
        else:
            for key in FEATURE_SCALARS:
                if key in loss_features:
                    loss_features[key] = loss_features[key].detach()
            params = {n: p.detach() for n, p in self.criterion.named_parameters()}
            total, terms = torch.func.functional_call(self.criterion, params, (loss_features, loss_batch),
                                                      strict=False)
        return total, terms, features


def find_heads(module: nn.Module) -> List[nn.Module]:
    """The classification heads (``AttentionFusionHead``) inside a module (e.g. a PatentTrainModule)."""
    from patentclip.plugins.heads import AttentionFusionHead

    return [m for m in module.modules() if isinstance(m, AttentionFusionHead)]


def head_state(module: nn.Module) -> Optional[Dict]:
    """``{"config", "state_dict"}`` of the classification head to store in ``epoch_N.pt`` under
    ``"patentclip_head"`` (None when no loss has a head). ``module``: the PatentTrainModule (or the engine)."""
    module = getattr(module, "module", module)
    heads = find_heads(module)
    if not heads:
        return None
    if len(heads) > 1:
        raise ValueError(f"{len(heads)} classification heads in the model; epoch_N.pt stores one")
    head = heads[0]
    sd = {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu())
          for k, v in head.state_dict().items()}
    return {"config": head.config(), "state_dict": sd}


def load_head_state(module: nn.Module, state: Optional[Dict]) -> bool:
    """Load a ``"patentclip_head"`` entry into the module's head (before the DeepSpeed engine is built).

    For ``--resume epoch_N.pt``; a DeepSpeed resume restores the head with the rest of the module. Returns
    False (and changes nothing) when the module has no head or ``state`` is None; a head of another shape is
    an error."""
    module = getattr(module, "module", module)
    heads = find_heads(module)
    if not heads or state is None:
        return False
    head = heads[0]
    if dict(state["config"]) != head.config():
        diff = {k: (state["config"].get(k), v) for k, v in head.config().items() if state["config"].get(k) != v}
        raise ValueError(f"the checkpoint's classification head differs from this run's (checkpoint, run): {diff}")
    head.load_state_dict({k: v.to(dtype=head.state_dict()[k].dtype) for k, v in state["state_dict"].items()})
    return True


def loss_states(module: nn.Module) -> Optional[Dict]:
    """``{loss name: state}`` of the loss plugins that define ``checkpoint_state()`` (e.g. arcface's centres and
    label table), stored in ``epoch_N.pt`` under ``"patentclip_losses"`` (the DeepSpeed checkpoint holds them in
    the module state). None when no loss has any."""
    module = getattr(module, "module", module)
    out = {name: loss.checkpoint_state() for name, loss in module.criterion.losses.items()
           if hasattr(loss, "checkpoint_state")}
    return out or None


def load_loss_states(module: nn.Module, states: Optional[Dict]) -> List[str]:
    """For ``--resume epoch_N.pt``: give the loss plugins their ``"patentclip_losses"`` state back (before the
    engine is built). Returns the names loaded; a plugin of this run without saved state starts fresh (logged)."""
    module = getattr(module, "module", module)
    loaded = []
    for name, loss in module.criterion.losses.items():
        if not hasattr(loss, "load_checkpoint_state"):
            continue
        if states and name in states:
            loss.load_checkpoint_state(states[name])
            loaded.append(name)
        else:
            logging.info("loss %s: no saved state in the checkpoint; it starts fresh", name)
    return loaded


def lock_towers(model, args) -> None:
    """Freeze the towers open_clip's --lock-image / --lock-text ask for (before the optimizer sees them)."""
    if args.lock_image:
        model.lock_image_tower(unlocked_groups=args.lock_image_unlocked_groups,
                               freeze_bn_stats=args.lock_image_freeze_bn_stats)
    if args.lock_text:
        model.lock_text_tower(unlocked_layers=args.lock_text_unlocked_layers,
                              freeze_layer_norm=args.lock_text_freeze_layer_norm)


def optimizer_param_groups(module: nn.Module, weight_decay: float):
    """open_clip's two AdamW groups: no weight decay on gains, biases, norms and logit_scale."""
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": weight_decay},
    ]
