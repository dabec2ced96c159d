"""Argument checks and small reductions shared by the metric functions (tensors in, clear errors out).

``as_tensor`` / ``feature_matrix`` / ``vector`` turn array-likes into tensors on the wanted device and check
shapes and dtypes (features 2-D and float32 or wider, per-item vectors 1-D of the right length and integer unless
told); ``cutoffs`` checks a list of K; ``mean`` is a float64 mean that is NaN for an empty tensor.
"""
from __future__ import annotations

import torch

NAN = float("nan")


def as_tensor(x, device=None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    return x.to(device) if device is not None else x


def feature_matrix(x, name: str, device=None) -> torch.Tensor:
    x = as_tensor(x, device)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n, dim), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    return x


def vector(x, n: int, name: str, device, *, integer: bool = True) -> torch.Tensor:
    x = as_tensor(x, device)
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def cutoffs(ks, name: str = "ks") -> tuple:
    if isinstance(ks, int):
        ks = (ks,)
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"{name} must be positive integers, got {ks}")
    return ks


def mean(x: torch.Tensor) -> float:
    return float(x.double().mean()) if x.numel() else NAN
