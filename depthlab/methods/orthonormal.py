"""Orthonormality regulariser among filters (Xie, Xiong, Pu 2017, "All You Need is Beyond a Good
Init", arXiv 1703.01827).

Each conv weight is read as a matrix ``W_l`` of shape ``C_out x (C_in k k)`` (one filter per row)
and the filters are pushed towards an orthonormal set:

    R = lambda / 2 * sum_l || W_l W_l^T - I ||_F^2          (the exact constant is unverified)

When ``C_out > C_in k k`` the rows cannot be orthonormal, so ``W_l^T W_l - I`` (orthonormal
columns) is used: the identity always has the smaller dimension. The paper uses ``R`` in place of
plain weight decay on those weights. Gradient (wide case): ``dR/dW = 2 lambda (W W^T - I) W``.

Weights of the same shape are stacked and handled with one batched matmul.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple, Union

import torch
from torch import nn

from depthlab.methods.base import TrainingMethod, register
from depthlab.registry import Option

NamedWeights = List[Tuple[str, torch.Tensor]]


def orthonormal_weights(model: nn.Module, include_linear: bool = False) -> NamedWeights:
    """``[(name, weight)]`` of every conv (``nn.Conv1d/2d/3d``) in ``model.named_modules()`` order,
    plus every ``nn.Linear`` when ``include_linear``. Names are parameter names
    (``stem.conv.weight``). A grouped conv is regularised as one ``C_out x (C_in/groups k k)``
    matrix."""
    kinds = (nn.modules.conv._ConvNd, nn.Linear) if include_linear else (nn.modules.conv._ConvNd,)
    return [(f"{name}.weight" if name else "weight", m.weight) for name, m in model.named_modules()
            if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor)]


def orthonormality_penalty(model_or_weights: Union[nn.Module, Iterable], lam: float,
                           include_linear: bool = False) -> torch.Tensor:
    """``lam / 2 * sum_l ||W_l W_l^T - I||_F^2`` (Xie et al. 2017; ``W^T W`` when ``W`` is tall).

    ``model_or_weights``: a module (its ``orthonormal_weights``), or an iterable of weights or of
    ``(name, weight)`` pairs. Returns a 0-dim tensor on the weights' device, differentiable w.r.t.
    the weights; the dtype is the first weight's. ``lam`` must be finite and >= 0.
    """
    lam = float(lam)
    if not lam >= 0.0 or lam == float("inf"):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    weights = [w for _, w in _named(model_or_weights, include_linear)]
    if not weights:
        return torch.zeros(())
    total = sum(sq.sum().to(weights[0].dtype) for _, sq in _squared_residuals(weights))
    return total * (lam / 2.0)


def orthonormality_per_layer(model_or_weights: Union[nn.Module, Iterable],
                             include_linear: bool = False) -> "OrderedDict[str, float]":
    """``{name: ||W W^T - I||_F}`` (``W^T W`` for tall ``W``), for diagnostics; no gradient, one
    device sync for all layers. Unnamed weights are called ``"0"``, ``"1"``, ..."""
    named = _named(model_or_weights, include_linear)
    if not named:
        return OrderedDict()
    with torch.no_grad():
        norms = [None] * len(named)
        for idx, sq in _squared_residuals([w for _, w in named]):
            for i, v in zip(idx, sq.double().sqrt().cpu().tolist()):
                norms[i] = v
    return OrderedDict((name, v) for (name, _), v in zip(named, norms))


def _named(model_or_weights, include_linear: bool) -> NamedWeights:
    if isinstance(model_or_weights, nn.Module):
        return orthonormal_weights(model_or_weights, include_linear)
    named = []
    for i, item in enumerate(model_or_weights):
        if isinstance(item, torch.Tensor):
            named.append((str(i), item))
        else:
            name, w = item
            named.append((str(name), w))
    for name, w in named:
        if w.dim() < 2:
            raise ValueError(f"weight {name!r} has shape {tuple(w.shape)}; need at least 2 dims (C_out, ...)")
    return named


def _squared_residuals(weights: List[torch.Tensor]):
    """Yield ``(indices, ||G - I||_F^2 per weight)`` per group of equal shape, dtype and device:
    one batched matmul per group. ``G = W W^T`` (wide) or ``W^T W`` (tall)."""
    groups: Dict[tuple, List[int]] = {}
    for i, w in enumerate(weights):
        groups.setdefault((tuple(w.shape), w.dtype, w.device), []).append(i)
    for (shape, dtype, device), idx in groups.items():
        rows = shape[0]
        mats = torch.stack([weights[i].reshape(rows, -1) for i in idx])  # (n, C_out, C_in k k)
        cols = mats.shape[-1]
        if rows <= cols:
            gram = mats @ mats.transpose(-1, -2)  # (n, C_out, C_out)
        else:
            gram = mats.transpose(-1, -2) @ mats  # (n, C_in k k, C_in k k)
        eye = torch.eye(gram.shape[-1], dtype=dtype, device=device)
        yield idx, (gram - eye).pow(2).sum(dim=(-2, -1))  # (n,)


@register
class Orthonormality(TrainingMethod):
    """Xie et al. 2017: ``lambda/2 sum ||W W^T - I||_F^2`` over the conv weights, added to the loss."""

    name = "orthonormal"
    title = "orthonormality regulariser among conv filters (replaces weight decay on them)"
    source = "Xie, Xiong, Pu 2017, arXiv 1703.01827"
    options = {
        "orthonormal": Option(float, 0.0, "lambda of the regulariser; 0: off",
                              check=lambda v: None if v >= 0 else f"(lambda) must be >= 0, got {v}"),
        "orthonormal_replaces_wd": Option(bool, True, "no weight decay on the regularised conv weights"),
    }

    example = {"orthonormal": 1e-3}

    def setup(self, model) -> None:
        self.weights = orthonormal_weights(model)  # found once, not re-walked every step

    def param_groups(self, model, groups: List[dict]) -> List[dict]:
        """The paper uses the regulariser in place of weight decay: the regularised weights move to
        a group of their own with ``weight_decay=0``."""
        if not self.cfg.orthonormal_replaces_wd:
            return groups
        reg = {id(w) for _, w in self.weights}
        out = [{**g, "params": [p for p in g["params"] if id(p) not in reg]} for g in groups]
        return out + [{"params": [p for g in groups for p in g["params"] if id(p) in reg], "weight_decay": 0.0}]

    def penalty(self, model):
        return orthonormality_penalty(self.weights, self.cfg.orthonormal)
