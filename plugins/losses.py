"""Loss plugins and the weighted combination the training step optimises.

A loss plugin is registered in ``LOSSES`` as an ``nn.Module`` class whose constructor takes explicit arguments
and whose classmethod ``from_args(args, class_table)`` is the one place that reads the flags (the contract:
``patentclip.plugins.contracts.Loss``); ``forward(features, batch)`` returns a dict of named, unweighted terms. ``features`` is the model's output
dict (``image_features``, ``text_features``, ``logit_scale`` ..., plus ``image2_features`` when the batch has
a second view), ``batch`` the pipeline's batch dict (``class_id``, ``image2``, ``has_view2`` ...). ``--loss``
selects terms and weights: ``--loss clip`` or ``--loss class_aware_contrastive=0.1,clip=1``;
``--loss-weighting uncertainty`` learns the weights instead (LLM-informed paper, eq. 3).

Registered losses (formulas and sources in docs/losses.md):

    clip                        open_clip's ClipLoss (symmetric InfoNCE), unchanged
    class_aware_contrastive     DesignCLIP LCACL: InfoNCE, sample i weighted by w_{c_i} ~ f_c^-beta
    multiview_contrastive       DesignCLIP LMVCL: InfoNCE between two views' image embeddings, same weights
    class_aware_classification  DesignCLIP LCACLS: attention-fusion head, class-weighted cross-entropy
    class_contrastive           LLM-informed L_cls (eq. 2): image-text pairs of the same class are positives
    category_contrastive        LLM-informed L_cat (eq. 2): pairs of the same head/tail category are positives
    siglip                      open_clip's SigLipLoss (sigmoid loss, learned logit bias), unchanged (--siglip)

Distributed use follows open_clip's ClipLoss exactly, for every loss: features are gathered across ranks
(``--gather-with-grad`` keeps the gradient through the gather), ``--local-loss`` computes each rank's rows
against the gathered columns. Class ids (and ``has_view2``) are gathered alongside the features, so class
positives and class weights see the global batch. Per-sample losses (the classification) use the same rows
as the contrastive ones (the gathered batch, or the local rows with ``--local-loss``), so every term has the
same gradient scaling in every mode.

One concern (the loss terms and their combination) in about 540 lines: the terms of a :class:`LossSet` share one
step's gathered ids, logits and log-softmax (``_ContrastiveBase``'s per-step cache), which split modules would share
through an import loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip import ClipLoss
from open_clip.loss import SigLipLoss, gather_features
from torch import nn

from patentclip.plugins.classes import ClassTable, balance_weights, check_class_ids
from patentclip.plugins.data.batch import CLASS_ID, HAS_VIEW2, IMAGE2
from patentclip.plugins.heads import AttentionFusionHead
from patentclip.plugins.registry import LOSSES
from patentclip.plugins.seeding import stable_int

WEIGHTINGS = ("fixed", "uncertainty")


def draw_seed(*parts) -> int:
    """A seed for a ``torch.Generator`` as a pure function of ``parts`` (e.g. salt, seed, step, rank): the
    project's seeded hash (``seeding.stable_int``)."""
    return stable_int(*parts)


def parse_loss_spec(spec: str) -> List[Tuple[str, float]]:
    """``"clip"`` -> [("clip", 1.0)]; ``"a=0.1,b=1"`` -> [("a", 0.1), ("b", 1.0)]."""
    terms = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, _, weight = part.partition("=")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"--loss: weight of {name!r} is not a number: {weight!r}") from None
        terms.append((name.strip(), w))
    if not terms:
        raise ValueError("--loss: no loss named")
    names = [n for n, _ in terms]
    if len(set(names)) != len(names):
        raise ValueError(f"--loss: a loss is named twice in {spec!r}")
    return terms


def class_balance_weights(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-class loss weights: the class table's balance weights ``w_c = f_c^-beta`` (normalised so their mean
    over the training samples is 1: :func:`patentclip.plugins.classes.balance_weights`), float32.

    DesignCLIP weights a sample of class c by ``1 / f_c^beta`` (f_c: class frequency). Scaling all weights by
    one constant so that ``sum_c p_c w_c = 1`` (``p_c = f_c``) keeps the loss on the scale of the CLIP loss,
    identical to it at beta = 0, and independent of the batch. Classes without training samples get the
    largest weight of any present class (they cannot occur in training batches anyway).
    """
    w = balance_weights(counts, beta)
    present = torch.as_tensor(counts) > 0
    if (~present).any():
        w[~present] = w[present].max()
    return w.to(torch.float32)


def class_categories(class_table: ClassTable) -> torch.Tensor:
    """Head/tail category of every class for L_cat: LongTensor (num_classes,), 0 = head, 1 = tail -- the class
    table's head/tail split (:meth:`patentclip.plugins.classes.ClassTable.head_mask`: classes.json's
    ``category`` when every class has one, else the top 40% of the classes by training count are head)."""
    return (~class_table.head_mask()).long()


def gather_no_grad(t: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size <= 1:
        return t
    parts = [torch.zeros_like(t) for _ in range(world_size)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


@dataclass(frozen=True)
class Gather:
    """How features are gathered across ranks, as open_clip's ``ClipLoss`` does it (``--local-loss``,
    ``--gather-with-grad``); the defaults are one process."""

    world_size: int = 1
    rank: int = 0
    local_loss: bool = False
    gather_with_grad: bool = False

    @classmethod
    def from_args(cls, args) -> "Gather":
        return cls(world_size=args.world_size, rank=args.rank, local_loss=args.local_loss,
                   gather_with_grad=args.gather_with_grad)


class _ContrastiveBase(nn.Module):
    """Shares open_clip's ClipLoss logits (gather, local loss) across the contrastive plugins.

    Within one ``LossSet`` forward the plugins share a cache (``self._shared``, set by the LossSet): the
    gathered features, the logits and their log-softmax for a pair of embeddings, and the checked and gathered
    class ids are computed once per step, however many plugins use them. A plugin called on its own computes
    them itself; the numbers are the same either way.
    """

    needs_second_view = False
    _shared: Optional[Dict] = None

    def __init__(self, class_table: ClassTable, gather: Gather = Gather()):
        super().__init__()
        self.world_size = gather.world_size
        self.rank = gather.rank
        self.local_loss = gather.local_loss
        self.gather_with_grad = gather.gather_with_grad
        self.num_classes = len(class_table)
        self.class_source = class_table.source
        self.clip = ClipLoss(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad,
                             cache_labels=True, rank=self.rank, world_size=self.world_size)

    @classmethod
    def from_args(cls, args, class_table: ClassTable):
        """The registered factory: the only place that reads the flags."""
        return cls(class_table, Gather.from_args(args))

    def _memo(self, key, compute):
        cache = self._shared
        if cache is None:
            return compute()
        key = (key, self.world_size, self.rank, self.local_loss, self.gather_with_grad)
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def pair_logits(self, features: Dict, a: str = "image_features", b: str = "text_features"):
        """open_clip's ``(logits_per_a, logits_per_b)`` for the embeddings ``features[a]``, ``features[b]``."""
        return self._memo(("logits", a, b), lambda: self.clip.get_logits(features[a], features[b],
                                                                          features["logit_scale"]))

    def pair_log_probs(self, features: Dict, a: str = "image_features", b: str = "text_features"):
        """Row-wise log-softmax of :meth:`pair_logits` (what ``F.cross_entropy`` computes inside)."""
        return self._memo(("log_probs", a, b),
                          lambda: tuple(F.log_softmax(x, dim=-1) for x in self.pair_logits(features, a, b)))

    def class_ids(self, batch: Dict, device) -> torch.Tensor:
        """The batch's class ids (long, on ``device``), checked against classes.json."""
        def compute():
            if CLASS_ID not in batch:
                raise KeyError(f"loss {type(self).__name__} needs batch[{CLASS_ID!r}] (the patent pipeline has it)")
            cls = batch[CLASS_ID].to(device=device, dtype=torch.long)
            check_class_ids(cls, self.num_classes, self.class_source)
            return cls
        return self._memo((CLASS_ID, str(device)), compute)

    def row_values(self, t: torch.Tensor, name: Optional[str] = None) -> torch.Tensor:
        """Per-sample values of the logit rows: local with --local-loss, else gathered over the ranks."""
        if self.world_size > 1 and not self.local_loss:
            return self.col_values(t, name)
        return t

    def col_values(self, t: torch.Tensor, name: Optional[str] = None) -> torch.Tensor:
        """Per-sample values of the logit columns: always gathered over the ranks (``name``: cache it)."""
        if self.world_size <= 1:
            return t
        if name is None:
            return gather_no_grad(t, self.world_size)
        return self._memo(("gathered", name), lambda: gather_no_grad(t, self.world_size))

    # kept for plugins written against the first version
    def row_class_ids(self, class_id: torch.Tensor) -> torch.Tensor:
        return self.row_values(class_id)

    def class_weighted_nll(self, features: Dict, batch: Dict, weights: torch.Tensor, a: str, b: str,
                           row_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``1/N sum_i m_i w_{c_i} (CE(logits_per_a_i, i) + CE(logits_per_b_i, i)) / 2`` over the logit rows."""
        lp_a, lp_b = self.pair_log_probs(features, a, b)
        labels = self.clip.get_ground_truth(lp_a.device, lp_a.shape[0])
        cls = self.row_values(self.class_ids(batch, lp_a.device), CLASS_ID)
        w = weights.to(device=lp_a.device, dtype=lp_a.dtype)[cls]
        if row_mask is not None:
            w = w * row_mask.to(w.dtype)
        per_sample = (F.nll_loss(lp_a, labels, reduction="none") + F.nll_loss(lp_b, labels, reduction="none")) / 2
        return (w * per_sample).mean()


@LOSSES.register("clip")
class CLIPContrastive(_ContrastiveBase):
    """open_clip's symmetric InfoNCE (``ClipLoss``), unchanged: the same numbers as vanilla open_clip."""

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        if self._shared is None:
            return {"clip": self.clip(features["image_features"], features["text_features"], features["logit_scale"])}
        # inside a LossSet: ClipLoss.forward's formula on the shared log-probabilities (cross_entropy is
        # nll_loss of log_softmax: the same numbers)
        lp_i, lp_t = self.pair_log_probs(features)
        labels = self.clip.get_ground_truth(lp_i.device, lp_i.shape[0])
        return {"clip": (F.nll_loss(lp_i, labels) + F.nll_loss(lp_t, labels)) / 2}


@LOSSES.register("class_aware_contrastive")
class ClassAwareContrastive(_ContrastiveBase):
    """DesignCLIP's class-aware contrastive loss LCACL.

    The symmetric image-text InfoNCE of CLIP in which the terms of sample i (its image->text row and its
    text->image row) are weighted by ``w_{c_i}`` from :func:`class_balance_weights` with ``--loss-beta``:

        L = 1/N sum_i w_{c_i} * ( CE(s * v_i . T, i) + CE(s * t_i . V, i) ) / 2

    N is the number of rows (the global batch, or the local batch with --local-loss).
    """

    def __init__(self, class_table: ClassTable, beta: float, gather: Gather = Gather()):
        super().__init__(class_table, gather)
        self.beta = float(beta)
        self.register_buffer("class_weights", class_balance_weights(class_table.counts(), self.beta),
                             persistent=False)

    @classmethod
    def from_args(cls, args, class_table: ClassTable):
        return cls(class_table, args.loss_beta, Gather.from_args(args))

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        return {"class_aware_contrastive": self.class_weighted_nll(features, batch, self.class_weights,
                                                                   "image_features", "text_features")}


@LOSSES.register("multiview_contrastive")
class MultiviewContrastive(ClassAwareContrastive):
    """DesignCLIP's multi-view image contrastive loss LMVCL.

    InfoNCE between the anchor view's image embeddings ``v`` and the other view's ``v'`` of the same patents
    (``features["image2_features"]``), symmetric, with the class-aware weights of LCACL:

        L = 1/N sum_i m_i w_{c_i} * ( CE(s * v_i . V', i) + CE(s * v'_i . V, i) ) / 2

    s is the model's learned logit scale (1/tau). ``m_i`` handles patents with a single drawing
    (``has_view2 = 0``, whose second image is another augmentation of the same drawing): with
    ``--multiview-single keep`` (default) m_i = 1, the augmented pair is a positive as in SimCLR; with
    ``drop`` m_i = 0, the row adds nothing (its embeddings still serve as negatives of the other rows).
    """

    needs_second_view = True

    def __init__(self, class_table: ClassTable, beta: float, single: str = "keep", gather: Gather = Gather()):
        super().__init__(class_table, beta, gather)
        self.single = str(single)
        if self.single not in ("keep", "drop"):
            raise ValueError(f"--multiview-single must be 'keep' or 'drop', got {self.single!r}")

    @classmethod
    def from_args(cls, args, class_table: ClassTable):
        return cls(class_table, args.loss_beta, args.multiview_single, Gather.from_args(args))

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        if "image2_features" not in features:
            raise KeyError("multiview_contrastive needs the second view of each patent (features['image2_features']"
                           f" from batch[{IMAGE2!r}]): run the data pipeline in multi-view mode (args.multiview)")
        mask = None
        if self.single == "drop" and HAS_VIEW2 in batch:
            device = features["image_features"].device
            mask = self.row_values(batch[HAS_VIEW2].to(device=device, dtype=torch.long), HAS_VIEW2) != 0
        return {"multiview_contrastive": self.class_weighted_nll(features, batch, self.class_weights,
                                                                 "image_features", "image2_features", mask)}


def model_embed_dim(args) -> int:
    """The CLIP embedding dimension: ``args.embed_dim`` if set, else the open_clip config of ``args.model``."""
    dim = getattr(args, "embed_dim", None)
    if dim:
        return int(dim)
    model = getattr(args, "model", None)
    cfg = None
    if model:
        import open_clip

        from patentclip.plugins.models import register_model_configs

        register_model_configs()
        cfg = open_clip.get_model_config(model)
    if not cfg or "embed_dim" not in cfg:
        raise ValueError(f"class_aware_classification: cannot tell the embedding size of model {model!r}; "
                         f"set args.embed_dim")
    return int(cfg["embed_dim"])


@LOSSES.register("class_aware_classification")
class ClassAwareClassification(_ContrastiveBase):
    """DesignCLIP's class-aware classification loss LCACLS.

    An :class:`~patentclip.plugins.heads.AttentionFusionHead` classifies each sample from its image and text
    embeddings fused by attention; the cross-entropy of sample i is weighted by ``w_{c_i}`` (``--loss-beta``):

        L = 1/N sum_i w_{c_i} * CE(head(v_i, t_i), c_i)

    The head is a submodule of this loss (hence of ``PatentTrainModule.criterion``): its parameters are in
    the optimizer and in the checkpoints. Rows are the same as the contrastive losses' (gathered over ranks,
    or local with ``--local-loss``). Image-only evaluation: ``head.classify_image(v)`` (see heads.py).

    Which samples the head sees without their caption (``text_dropout``) is a pure function of (seed, step,
    rows): a generator seeded from (seed, step) for the gathered rows (the same mask on every rank, as one
    process with the global batch would draw), and from (seed, step, rank) for the local rows of
    ``--local-loss``. The trainer tells the loss the step (``set_step``) before every optimizer step, so the
    micro-batch passes of ``--accum-freq`` share one mask and a resumed run draws what the uninterrupted one
    drew. Outside the trainer (no ``set_step``), each training forward counts as the next step.
    """

    def __init__(self, class_table: ClassTable, beta: float, embed_dim: int, num_heads: int = 4,
                 text_dropout: float = 0.0, gather: Gather = Gather(), seed: int = 0):
        super().__init__(class_table, gather)
        self.beta = float(beta)
        self.seed = int(seed)
        self.register_buffer("class_weights", class_balance_weights(class_table.counts(), self.beta),
                             persistent=False)
        self.head = AttentionFusionHead(int(embed_dim), len(class_table), num_heads=int(num_heads),
                                        text_dropout=float(text_dropout))
        self.step: Optional[int] = None  # set by the trainer (set_step)
        self._calls = 0  # training forwards, the step when nobody sets one

    @classmethod
    def from_args(cls, args, class_table: ClassTable):
        return cls(class_table, args.loss_beta, model_embed_dim(args), args.head_num_heads, args.head_text_dropout,
                   Gather.from_args(args), seed=args.seed)

    def set_step(self, step: int) -> None:
        """The optimizer step the next forward passes belong to (called by the trainer before each step)."""
        self.step = int(step)

    def draw_generator(self) -> torch.Generator:
        """The CPU generator of this step's draws: seeded from (seed, step) for gathered rows, plus the rank for
        the local rows of ``--local-loss``."""
        step = self.step if self.step is not None else self._calls
        rows = f"rank{self.rank}" if (self.local_loss and self.world_size > 1) else "global"
        return torch.Generator().manual_seed(draw_seed("head_text_dropout", self.seed, step, rows))

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        v, t = features["image_features"], features["text_features"]
        cls = self.row_values(self.class_ids(batch, v.device), CLASS_ID)
        if self.world_size > 1 and not self.local_loss:
            v, t = self._memo(("rows", "image_features", "text_features"), lambda: gather_features(
                v, t, local_loss=False, gather_with_grad=self.gather_with_grad, rank=self.rank,
                world_size=self.world_size))
        hidden, gen = None, None
        if self.training:
            gen = self.draw_generator()
            self._calls += 1
            if self.head.text_dropout > 0:
                hidden = torch.rand(v.shape[0], generator=gen) < self.head.text_dropout
        logits = self.head(v, t, text_hidden=hidden, generator=gen).float()
        w = self.class_weights[cls]
        return {"class_aware_classification": (w * F.cross_entropy(logits, cls, reduction="none")).mean()}


class _GroupContrastive(_ContrastiveBase):
    """Image-text contrastive loss whose positives are all pairs of the same group (LLM-informed eq. 2).

    For image row i and text row i (``g``: the group of a sample, ``P``: columns of the same group)

        L = 1/N sum_i ( -1/|P_i| sum_{j in P_i} log softmax_k(s v_i . t_k)_j
                        -1/|P_i| sum_{j in P_i} log softmax_k(s t_i . v_k)_j ) / 2

    i.e. eq. 2 averaged over the batch and halved, so that with all groups distinct it is exactly ``clip``.
    Column groups are gathered from every rank, row groups are the rows' own.
    """

    term = ""

    def group_table(self, class_table: ClassTable) -> torch.Tensor:
        raise NotImplementedError

    def __init__(self, class_table: ClassTable, gather: Gather = Gather()):
        super().__init__(class_table, gather)
        self.register_buffer("groups", self.group_table(class_table).to(torch.long), persistent=False)

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        lp_i, lp_t = self.pair_log_probs(features)
        cls_cols = self.col_values(self.class_ids(batch, lp_i.device), CLASS_ID)
        g_cols = self.groups.to(cls_cols.device)[cls_cols]
        if self.world_size > 1 and self.local_loss:
            n = lp_i.shape[0]
            g_rows = g_cols[self.rank * n:(self.rank + 1) * n]
        else:
            g_rows = g_cols
        positives = (g_rows[:, None] == g_cols[None, :]).to(lp_i.dtype)
        count = positives.sum(dim=-1)
        loss = (-(positives * lp_i).sum(dim=-1) / count - (positives * lp_t).sum(dim=-1) / count) / 2
        return {self.term: loss.mean()}


@LOSSES.register("class_contrastive")
class ClassContrastive(_GroupContrastive):
    """LLM-informed L_cls: an image and a caption of the same Locarno class are a positive pair."""

    term = "class_contrastive"

    def group_table(self, class_table: ClassTable) -> torch.Tensor:
        return torch.arange(len(class_table))


@LOSSES.register("category_contrastive")
class CategoryContrastive(_GroupContrastive):
    """LLM-informed L_cat: an image and a caption of the same category (head or tail class) are positive."""

    term = "category_contrastive"

    def group_table(self, class_table: ClassTable) -> torch.Tensor:
        return class_categories(class_table)


@LOSSES.register("siglip")
class SigLIP(nn.Module):
    """open_clip's ``SigLipLoss`` (Zhai et al. 2023), unchanged: the same numbers as ``open_clip_train --siglip``.

        L = -1/B sum_i sum_j log sigmoid(z_ij (s v_i . t_j + b)),   z_ij = 1 if i == j else -1

    over this rank's images against the texts of every rank (open_clip exchanges the text features between
    neighbouring ranks, ``--loss-dist-impl`` bidir/shift/reduce/gather). ``b`` is the model's learned
    ``logit_bias``: the trainer builds the model with one (and open_clip's SigLIP initial values, logit scale
    ln 10 and bias -10) when this loss is selected, as ``--siglip`` does.
    """

    needs_second_view = False
    needs_logit_bias = True

    def __init__(self, gather: Gather = Gather(), dist_impl: Optional[str] = None):
        super().__init__()
        self.loss = SigLipLoss(rank=gather.rank, world_size=gather.world_size, dist_impl=dist_impl)

    @classmethod
    def from_args(cls, args, class_table: ClassTable):
        return cls(Gather.from_args(args), args.loss_dist_impl)

    def forward(self, features: Dict, batch: Dict) -> Dict[str, torch.Tensor]:
        if features.get("logit_bias") is None:
            raise KeyError("loss siglip needs the model's logit_bias (features['logit_bias']): build the model with "
                           "init_logit_bias, as patentclip-train does with --siglip or --loss siglip")
        return {"siglip": self.loss(features["image_features"], features["text_features"], features["logit_scale"],
                                    features["logit_bias"])}


def losses_need_logit_bias(spec: str) -> bool:
    """True when a loss named in ``spec`` (``--loss``) needs a model with a learned logit bias (SigLIP)."""
    return any(getattr(LOSSES.get(name), "needs_logit_bias", False) for name, _ in parse_loss_spec(spec))


class LossSet(nn.Module):
    """The combination of the selected loss plugins; its parameters (heads, learned weights) are trained.

    ``weighting="fixed"``: ``total = sum_k lambda_k L_k`` with the weights of ``--loss``.
    ``weighting="uncertainty"`` (LLM-informed eq. 3, Kendall et al.): ``total = sum_k (lambda_k L_k exp(-s_k)
    + s_k)`` with a learned log-variance ``s_k`` per plugin (initialised to 0, trained, checkpointed, and
    returned as the term ``s_<name>`` so it is logged); eq. 3 is the case lambda_k = 1.

    ``forward`` returns ``(total, terms)``: ``terms`` has every plugin's unweighted terms (and the ``s_*``).
    """

    def __init__(self, spec: str, args, class_table: ClassTable, weighting: Optional[str] = None):
        super().__init__()
        self.terms = parse_loss_spec(spec)
        self.losses = nn.ModuleDict({name: LOSSES.build(name, args, class_table) for name, _ in self.terms})
        self.weights = dict(self.terms)
        self.weighting = weighting or args.loss_weighting
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"--loss-weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        if self.weighting == "uncertainty":
            # shape [1], not 0-dim: DeepSpeed cannot broadcast 0-dim parameters
            self.log_vars = nn.ParameterDict({name: nn.Parameter(torch.zeros(1)) for name, _ in self.terms})
        else:
            self.log_vars = None

    @property
    def needs_second_view(self) -> bool:
        """True when a selected loss needs the second view, ``IMAGE2`` (the trainer then sets ``args.multiview``)."""
        return any(getattr(loss, "needs_second_view", False) for loss in self.losses.values())

    def set_step(self, step: int) -> None:
        """Tell every loss that draws random numbers (it defines ``set_step``) which optimizer step comes next."""
        for loss in self.losses.values():
            if hasattr(loss, "set_step"):
                loss.set_step(step)

    @property
    def needs_text(self) -> bool:
        """False when no selected loss uses the text embeddings (``needs_text = False`` on the plugin, e.g.
        ``arcface``): the training step then does not run the text tower."""
        return any(getattr(loss, "needs_text", True) for loss in self.losses.values())

    def forward(self, features: Dict, batch: Dict) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        parts: Dict[str, torch.Tensor] = {}
        total = None
        shared: Dict = {}  # logits, log-probabilities, gathered ids: computed once per step (_ContrastiveBase)
        try:
            outs = []
            for name, loss in self.losses.items():
                if isinstance(loss, _ContrastiveBase):
                    loss._shared = shared
                outs.append((name, loss(features, batch)))
        finally:
            for loss in self.losses.values():
                if isinstance(loss, _ContrastiveBase):
                    loss._shared = None
        for name, out in outs:
            subtotal = None
            for key, value in out.items():
                parts[key] = value
                subtotal = value if subtotal is None else subtotal + value
            weighted = self.weights[name] * subtotal
            if self.log_vars is not None:
                s = self.log_vars[name].reshape(())
                weighted = weighted * torch.exp(-s) + s
                parts[f"s_{name}"] = s.detach().clone()  # the value this step used (the step updates s in place)
            total = weighted if total is None else total + weighted
        return total, parts
