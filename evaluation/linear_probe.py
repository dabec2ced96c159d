"""Linear-probe classification on frozen image features (DesignCLIP's "fine-tuned" classification setting).

A multinomial logistic regression ``softmax(x W + b)`` is fitted on frozen image features by full-batch L-BFGS
(torch; CPU or GPU, memory ``O(N x D)``), minimising

    mean_i CE(x_i W + b, y_i) + (l2 / 2) * ||W||_F^2          (the bias is not penalised)

which is scikit-learn's ``LogisticRegression(C=1 / (l2 * N))`` objective (tests/test_evaluate.py checks the
two against each other). The features are standardised first (every dimension to mean 0 and variance 1 over
the training features, the same transform applied to the test features), so that one ``l2`` grid suits every
model. ``l2`` is chosen from :data:`L2_GRID` by the held-out cross-entropy on 20% of the *training patents*
(all drawings of a patent on the same side, so views of one design do not leak), then the probe is refitted on
all training features with that ``l2``.

Two protocols (``patentclip-eval`` reports which one in ``settings.linear_probe``):

* ``train-split``: fit on the training split's features (``--probe-train-data``), test on the evaluation split.
* ``cross-validation``: without training features (the in-training evaluation), k-fold cross-validation on the
  evaluation split, folds by patent; every drawing is classified by the probe fitted on the other folds.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from patentclip.evaluation.metrics import classification_accuracy

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1e-4,
                            max_iter: int = 300, tol: float = 1e-8,
                            init: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fit ``W (D, C)``, ``b (C,)`` by L-BFGS on the device of ``x`` (float64 on CPU, float32 on GPU), starting
    from zeros or from ``init`` (a warm start, e.g. the solution for a larger ``l2``)."""
    dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    x = x.to(dtype)
    y = y.to(device=x.device, dtype=torch.long)
    n, d = x.shape
    if n == 0:
        raise ValueError("no training samples for the linear probe")
    if init is None:
        w = torch.zeros(d, num_classes, dtype=dtype, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, dtype=dtype, device=x.device, requires_grad=True)
    else:
        w = init[0].detach().to(x.device, dtype).clone().requires_grad_(True)
        b = init[1].detach().to(x.device, dtype).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=tol * 1e-3,
                            history_size=20, line_search_fn="strong_wolfe")
    onehot = F.one_hot(y, num_classes).to(dtype)

    def closure():
        # loss and its gradient in closed form (no autograd: several times cheaper for this small problem)
        with torch.no_grad():
            z = x @ w + b
            logp = torch.log_softmax(z, dim=1)
            loss = -(logp * onehot).sum() / n + 0.5 * l2 * (w * w).sum()
            g = (logp.exp() - onehot) / n
            w.grad = x.T @ g + l2 * w
            b.grad = g.sum(0)
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def probe_logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (x.to(w.dtype) @ w + b).float()


def standardizer(x: torch.Tensor):
    """(mean, std) of every feature dimension over ``x`` (std floored, so constant dimensions stay 0)."""
    x = x.double() if x.device.type == "cpu" else x.float()
    mean = x.mean(0, keepdim=True)
    std = x.std(0, unbiased=False, keepdim=True).clamp_min(1e-6)
    return mean, std


def _standardize(x: torch.Tensor, stats) -> torch.Tensor:
    mean, std = stats
    return (x.to(mean.dtype) - mean) / std


def _group_split(groups: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """A bool mask selecting about ``fraction`` of the groups (all members of a group together)."""
    uniq, inv = torch.unique(groups, return_inverse=True)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(uniq.numel(), generator=g)
    n_sel = max(1, int(round(fraction * uniq.numel()))) if uniq.numel() > 1 else 0
    chosen = torch.zeros(uniq.numel(), dtype=torch.bool)
    chosen[perm[:n_sel]] = True
    return chosen[inv]


def select_l2(x: torch.Tensor, y: torch.Tensor, groups: Optional[torch.Tensor], num_classes: int,
              grid: Sequence[float] = L2_GRID, holdout: float = 0.2, seed: int = 0) -> float:
    """The ``l2`` of ``grid`` with the lowest held-out cross-entropy (``x``: standardised features; the held-out
    part is ``holdout`` of the groups)."""
    if len(grid) == 1:
        return float(grid[0])
    groups = torch.arange(x.shape[0]) if groups is None else groups.cpu()
    val = _group_split(groups, holdout, seed)
    if val.all() or not val.any():
        return float(sorted(grid)[len(grid) // 2])
    val_d = val.to(x.device)
    yv = y[val_d].to(x.device).long()
    best, best_loss = None, math.inf
    wb = None
    for l2 in sorted(grid, reverse=True):  # strongest regularisation first, each fit warm-starts the next
        wb = fit_logistic_regression(x[~val_d], y[~val_d], num_classes, l2, init=wb)
        loss = float(F.cross_entropy(probe_logits(x[val_d], *wb).double(), yv))
        if loss < best_loss - 1e-12:
            best, best_loss = l2, loss
    return float(best)


def linear_probe_train_test(train_x, train_y, test_x, test_y, num_classes: int, *, train_groups=None,
                            grid: Sequence[float] = L2_GRID, seed: int = 0) -> Dict[str, object]:
    """Fit on the (standardised) training features, ``l2`` chosen on held-out training patents; report
    accuracy on the test features: :func:`~patentclip.evaluation.metrics.classification_accuracy` keys plus ``l2``."""
    stats = standardizer(train_x)
    xs = _standardize(train_x, stats)
    l2 = select_l2(xs, train_y, train_groups, num_classes, grid, seed=seed)
    w, b = fit_logistic_regression(xs, train_y, num_classes, l2)
    logits = probe_logits(_standardize(test_x.to(xs.device), stats), w, b)
    out = classification_accuracy(logits, test_y, num_classes=num_classes)
    out["l2"] = l2
    return out


def linear_probe_cross_validation(x, y, groups, num_classes: int, *, folds: int = 2,
                                  grid: Sequence[float] = L2_GRID, seed: int = 0) -> Dict[str, object]:
    """k-fold cross-validation by group (patent): every sample is classified by the probe fitted (as in
    :func:`linear_probe_train_test`) on the other folds; then accuracy over all samples."""
    groups = groups.cpu()
    uniq, inv = torch.unique(groups, return_inverse=True)
    if uniq.numel() < 2:
        raise ValueError("cross-validated linear probe needs at least 2 patents")
    folds = min(folds, uniq.numel())
    g = torch.Generator().manual_seed(seed)
    fold_of_group = torch.empty(uniq.numel(), dtype=torch.long)
    fold_of_group[torch.randperm(uniq.numel(), generator=g)] = torch.arange(uniq.numel()) % folds
    fold = fold_of_group[inv].to(x.device)
    logits = torch.zeros(x.shape[0], num_classes, device=x.device)
    l2s = []
    for f in range(folds):
        test = fold == f
        stats = standardizer(x[~test])
        xs = _standardize(x[~test], stats)
        l2 = select_l2(xs, y[~test], groups[(~test).cpu()], num_classes, grid, seed=seed)
        w, b = fit_logistic_regression(xs, y[~test], num_classes, l2)
        logits[test] = probe_logits(_standardize(x[test], stats), w, b).to(logits.device)
        l2s.append(l2)
    out = classification_accuracy(logits, y, num_classes=num_classes)
    out["l2"] = float(sorted(l2s)[len(l2s) // 2])  # the median fold's choice, for the record
    return out
