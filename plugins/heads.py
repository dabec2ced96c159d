"""Classification heads trained by the loss plugins (DesignCLIP's class-aware classification, LCACLS).

``AttentionFusionHead`` classifies a patent drawing from its CLIP image embedding and the embedding of its
caption, fused by attention (DesignCLIP section 3.2: "attention-based fusion" of the image and text features
before the classifier). The two embeddings become two tokens of a one-block pre-norm transformer:

    tokens   = [v + m_img, t + m_txt]                       (B, 2, D)   m_*: learned modality embeddings
    tokens  += MultiheadSelfAttention(LN(tokens))                         each token attends to both
    tokens  += MLP(LN(tokens))                                            only with mlp_ratio > 0
    pooled   = mean of the tokens present                    (B, D)
    logits   = Linear(LN(pooled))                            (B, num_classes)

The default has no MLP (``mlp_ratio=0``): the fusion is the attention itself, and the head stays cheap next to
the CLIP step (it is computed for every sample of every step).

Image-only classification (evaluation mode, no caption at hand): ``classify_image(v)`` runs the same block on
the image token alone (the text token is absent, so attention and pooling see only the image). To train that
mode as well, ``text_dropout`` hides the text token of each training sample with that probability (attention
key mask + pooling over the image token only); 0 trains the fused head only, as the paper describes.

Random draws (which captions are hidden, attention/MLP dropout) never come from a hidden state of the head:
``forward`` takes the mask (``text_hidden``) and/or the ``generator`` to draw from. The loss plugin passes a
mask drawn from (seed, step, rank) (``losses.ClassAwareClassification``), so a resumed run hides the same
captions as the uninterrupted one; called without either, the head draws from torch's global generator, which
the trainer seeds from (seed, step, rank) before every step (``launch/step.py: begin_step``).

The head lives in the loss plugin ``class_aware_classification`` (so it is trained, in the optimizer and in the
DeepSpeed checkpoints); ``epoch_N.pt`` carries it under ``"patentclip_head": {"config", "state_dict"}``:

    from patentclip.plugins.heads import load_head
    ckpt = torch.load("epoch_5.pt", map_location="cpu", weights_only=True)   # or patentclip.launch.safe_load.load
    head = load_head(ckpt["patentclip_head"]).eval()
    logits = head.classify_image(model.encode_image(images, normalize=True))     # (B, num_classes)
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

HEAD_FORMAT_VERSION = 1


class AttentionFusionHead(nn.Module):
    """Attention fusion of image and text embeddings, then a linear classifier (see the module docstring)."""

    def __init__(self, embed_dim: int, num_classes: int, num_heads: int = 4, mlp_ratio: float = 0.0,
                 dropout: float = 0.0, text_dropout: float = 0.0):
        super().__init__()
        if embed_dim <= 0 or num_classes <= 0:
            raise ValueError(f"AttentionFusionHead: embed_dim ({embed_dim}) and num_classes ({num_classes}) "
                             f"must be positive")
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"AttentionFusionHead: num_heads ({num_heads}) must divide embed_dim ({embed_dim})")
        if mlp_ratio < 0:
            raise ValueError(f"AttentionFusionHead: mlp_ratio must be >= 0, got {mlp_ratio}")
        if not 0.0 <= text_dropout < 1.0:
            raise ValueError(f"AttentionFusionHead: text_dropout must be in [0, 1), got {text_dropout}")
        self.embed_dim = int(embed_dim)
        self.num_classes = int(num_classes)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        self.text_dropout = float(text_dropout)
        self.modality = nn.Parameter(torch.zeros(2, embed_dim))  # [image, text] modality embeddings
        self.ln_attn = nn.LayerNorm(embed_dim)
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim)  # attention: query, key, value projections
        self.proj = nn.Linear(embed_dim, embed_dim)  # attention: output projection
        if mlp_ratio > 0:
            hidden = max(1, int(round(embed_dim * mlp_ratio)))
            self.ln_mlp = nn.LayerNorm(embed_dim)
            self.mlp = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, embed_dim))
        else:
            self.ln_mlp = self.mlp = None
        self.ln_out = nn.LayerNorm(embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.modality, std=0.02)

    def config(self) -> Dict:
        """Everything ``build_head`` needs to rebuild this head (JSON-serialisable)."""
        return {"type": "AttentionFusionHead", "version": HEAD_FORMAT_VERSION, "embed_dim": self.embed_dim,
                "num_classes": self.num_classes, "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                "dropout": self.dropout, "text_dropout": self.text_dropout}

    def _dropout(self, x: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
        """Inverted dropout with probability ``self.dropout`` drawn from ``generator`` (training mode only)."""
        if not (self.dropout and self.training):
            return x
        keep = torch.rand(x.shape, generator=generator, device=generator.device if generator is not None
                          else x.device) >= self.dropout
        return x * keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.dropout)

    def _attention(self, x: torch.Tensor, text_hidden: Optional[torch.Tensor],
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Multi-head self-attention over the tokens (B, T, D); a hidden text token is no key for any query."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        # softmax attention written with broadcasting: with 1-2 tokens, batched matmuls and the fused attention
        # kernels cost several times more than these few elementwise ops on the CPU
        scores = (q[:, :, :, None, :] * k[:, :, None, :, :]).sum(-1) * (q.shape[-1] ** -0.5)  # (B, H, T, T)
        if text_hidden is not None:
            hidden = torch.stack([torch.zeros_like(text_hidden), text_hidden], dim=1)[:, None, None, :]
            scores = scores.masked_fill(hidden, float("-inf"))
        attn = scores.softmax(dim=-1)
        attn = self._dropout(attn, generator)
        out = (attn[..., None] * v[:, :, None, :, :]).sum(-2)  # (B, H, T, dh)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def _block(self, tokens: torch.Tensor, text_hidden: Optional[torch.Tensor],
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """tokens (B, T, D); text_hidden (B,) bool: text token hidden for that sample (T == 2 only)."""
        tokens = tokens + self._attention(self.ln_attn(tokens), text_hidden, generator)
        if self.mlp is not None:
            fc1, act, _, fc2 = self.mlp
            tokens = tokens + fc2(self._dropout(act(fc1(self.ln_mlp(tokens))), generator))
        if tokens.shape[1] == 1:
            pooled = tokens[:, 0]
        elif text_hidden is None:
            pooled = tokens.mean(dim=1)
        else:
            keep = (~text_hidden).to(tokens.dtype)[:, None]
            pooled = (tokens[:, 0] + keep * tokens[:, 1]) / (1 + keep)
        return self.classifier(self.ln_out(pooled))

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                text_hidden: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Class logits (B, num_classes) from the fused image and text embeddings (B, D) each.

        In training mode with ``text_dropout > 0``: ``text_hidden`` (B,) bool says which samples are seen without
        their caption; if it is None it is drawn from ``generator`` (torch's global one if None). Attention and
        MLP dropout draw from ``generator`` too."""
        if image_features.shape != text_features.shape or image_features.shape[-1] != self.embed_dim:
            raise ValueError(f"AttentionFusionHead(embed_dim={self.embed_dim}): image {tuple(image_features.shape)}"
                             f" and text {tuple(text_features.shape)} features must both be (B, {self.embed_dim})")
        dtype = self.modality.dtype
        tokens = torch.stack([image_features.to(dtype) + self.modality[0],
                              text_features.to(dtype) + self.modality[1]], dim=1)
        if not (self.training and self.text_dropout > 0):
            text_hidden = None
        elif text_hidden is None:
            text_hidden = torch.rand(tokens.shape[0], generator=generator, device=generator.device
                                     if generator is not None else tokens.device) < self.text_dropout
        if text_hidden is not None:
            if text_hidden.shape != (tokens.shape[0],):
                raise ValueError(f"text_hidden must be ({tokens.shape[0]},) bool, got {tuple(text_hidden.shape)}")
            text_hidden = text_hidden.to(device=tokens.device, dtype=torch.bool)
        return self._block(tokens, text_hidden, generator)

    def classify_image(self, image_features: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes) from image embeddings alone (the documented evaluation mode).

        ``image_features``: the normalised CLIP image embeddings (``model.encode_image(x, normalize=True)``).
        """
        if image_features.ndim != 2 or image_features.shape[-1] != self.embed_dim:
            raise ValueError(f"AttentionFusionHead(embed_dim={self.embed_dim}): image features must be "
                             f"(B, {self.embed_dim}), got {tuple(image_features.shape)}")
        tokens = (image_features.to(self.modality.dtype) + self.modality[0])[:, None]
        return self._block(tokens, None)


def build_head(config: Dict) -> AttentionFusionHead:
    """An untrained head from ``config`` (what ``AttentionFusionHead.config()`` returned)."""
    cfg = dict(config)
    kind = cfg.pop("type", "AttentionFusionHead")
    version = cfg.pop("version", HEAD_FORMAT_VERSION)
    if kind != "AttentionFusionHead":
        raise ValueError(f"unknown classification head type {kind!r} (this patentclip knows AttentionFusionHead)")
    if int(version) > HEAD_FORMAT_VERSION:
        raise ValueError(f"classification head format version {version} is newer than this patentclip's "
                         f"({HEAD_FORMAT_VERSION}): update patentclip")
    return AttentionFusionHead(**cfg)


def load_head(state: Dict, map_location="cpu") -> AttentionFusionHead:
    """The trained head from ``{"config": ..., "state_dict": ...}`` (``epoch_N.pt["patentclip_head"]``)."""
    if not isinstance(state, dict) or "config" not in state or "state_dict" not in state:
        raise ValueError("not a patentclip classification head: expected {'config': ..., 'state_dict': ...} "
                         "(the 'patentclip_head' entry of an epoch_N.pt written by patentclip-train)")
    head = build_head(state["config"])
    head.load_state_dict({k: v.to(map_location) for k, v in state["state_dict"].items()})
    return head
