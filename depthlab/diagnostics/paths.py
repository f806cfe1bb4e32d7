"""paths: gradient through paths of length k (Veit, Wilber, Belongie 2016, arXiv 1605.06431, Sec. 6).

A net of n residual blocks is a sum of 2^n paths. One forward pass, then per random set S of k blocks one backward
gated by hooks on ``block.branch`` / ``block.shortcut``: ``mode="single_path"`` (default; our reading of Sec. 6:
the branch only in S, the shortcut only elsewhere) or ``"subset"`` (both in S). Magnitude: the batch mean of
||d loss_i / d x_i||; the total contribution of the length-k paths is C(n, k) x magnitude.
Details: docs/diagnostics.md, section paths.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "paths"
MODES = ("single_path", "subset")


class _GradGate(torch.autograd.Function):
    """Identity in forward; backward multiplies by ``gates.factor[idx]`` (read at backward time)."""

    @staticmethod
    def forward(ctx, y, gates, idx):
        ctx.gates, ctx.idx = gates, idx
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.gates.factor[ctx.idx], None, None


class _Gates:
    def __init__(self, size: int):
        self.factor = [1.0] * size


def residual_blocks(model: nn.Module) -> list:
    """The blocks that split paths: enabled blocks with a shortcut; ValueError if there are none."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("paths needs a model with `blocks`, an ordered nn.ModuleList of depth units "
                         "(a depthlab model: build_model)")
    res = [b for b in blocks if getattr(b, "has_shortcut", False) and getattr(b, "enabled", True)]
    for b in res:
        if not (hasattr(b, "branch") and hasattr(b, "shortcut")):
            raise ValueError(f"paths needs residual blocks with `branch` and `shortcut`, got {type(b).__name__}")
    if not res:
        raise ValueError("paths needs residual blocks (has_shortcut=True): a plain net has a single "
                         "path, so there are no paths of varying length")
    return res


def _objective(out: torch.Tensor, y: Optional[torch.Tensor], target: str) -> torch.Tensor:
    if target == "loss":
        if y is None:
            raise ValueError("target='loss' needs labels y")
        return F.cross_entropy(out, y.to(out.device), reduction="sum")
    if target == "logit_sum":
        return out.sum()
    raise ValueError(f"target must be 'loss' or 'logit_sum', got {target!r}")


def effective_range(ks: Sequence[int], contribution: Sequence[float], mass: float = 0.9):
    """The shortest contiguous run of ``ks`` whose share of sum(contribution) is >= ``mass``
    (ties: the lowest start); returns (k_lo, k_hi)."""
    c = np.asarray(contribution, dtype=np.float64)
    total = c.sum()
    if not total > 0:
        return int(ks[0]), int(ks[-1])
    best = (0, len(c) - 1)
    for i in range(len(c)):
        acc = 0.0
        for j in range(i, len(c)):
            acc += c[j]
            if acc >= mass * total - 1e-12 * total:
                if j - i < best[1] - best[0]:
                    best = (i, j)
                break
    return int(ks[best[0]]), int(ks[best[1]])


def input_gradients(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                    chosen_sets: Sequence[Sequence[int]] = ((),), mode: str = "single_path",
                    target: str = "loss") -> list:
    """d objective / d x for each set of chosen residual-block indices (into ``residual_blocks``),
    from one forward pass; a list of tensors shaped like ``x``. Model in eval mode, float32 with
    autocast off; mode and hooks are restored/removed."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    res = residual_blocks(model)
    n = len(res)
    gates = _Gates(2 * n)  # [2i]: branch of block i, [2i + 1]: its shortcut
    device = next((p.device for p in model.parameters()), x.device)
    modes = [(m, m.training) for m in model.modules()]
    handles = []

    def gate_hook(idx):
        return lambda module, inputs, output: _GradGate.apply(output, gates, idx)

    try:
        model.eval()
        for i, b in enumerate(res):
            handles.append(b.branch.register_forward_hook(gate_hook(2 * i)))
            handles.append(b.shortcut.register_forward_hook(gate_hook(2 * i + 1)))
        with torch.autocast(device.type, enabled=False):
            xb = x.detach().to(device, torch.float32).requires_grad_(True)
            obj = _objective(model(xb), y, target)
            grads = []
            for s, chosen in enumerate(chosen_sets):
                chosen = set(int(c) for c in chosen)
                if any(not 0 <= c < n for c in chosen):
                    raise ValueError(f"chosen block indices must be in [0, {n}), got {sorted(chosen)}")
                for i in range(n):
                    on = i in chosen
                    gates.factor[2 * i] = 1.0 if on else 0.0
                    gates.factor[2 * i + 1] = 0.0 if (on and mode == "single_path") else 1.0
                (g,) = torch.autograd.grad(obj, xb, retain_graph=s < len(chosen_sets) - 1)
                grads.append(g.detach())
    finally:
        for h in handles:
            h.remove()
        for m, training in modes:
            m.training = training
    return grads


def path_gradients(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                   ks: Optional[Sequence[int]] = None, num_samples: int = 10, seed: int = 0,
                   mode: str = "single_path", target: str = "loss", mass: float = 0.9) -> dict:
    """Gradient magnitude at the input through paths of length k, for k in ``ks`` (default 0..n).

    Returns ``{n, ks, magnitude (mean over samples of the batch-mean per-example norm), magnitude_sd,
    counts C(n, k), contribution = counts * magnitude, distribution (contribution / its sum over
    ks), effective_range (k_lo, k_hi) holding ``mass`` of it, mode, target}``. k = 0 and k = n have
    one set; other k draw ``num_samples`` random sets (``numpy`` generator, ``seed``)."""
    n = len(residual_blocks(model))
    ks = list(range(n + 1)) if ks is None else [int(k) for k in ks]
    if not ks or any(not 0 <= k <= n for k in ks):
        raise ValueError(f"ks must be a non-empty list in [0, {n}], got {ks!r}")
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
    rng = np.random.default_rng(seed)
    sets, owner = [], []
    for j, k in enumerate(ks):
        reps = 1 if k in (0, n) else int(num_samples)
        for _ in range(reps):
            sets.append(sorted(rng.choice(n, size=k, replace=False).tolist()))
            owner.append(j)
    grads = input_gradients(model, x, y, sets, mode, target)
    norms = [float(g.flatten(1).norm(dim=1).mean()) for g in grads]
    per_k = [[v for v, o in zip(norms, owner) if o == j] for j in range(len(ks))]
    magnitude = np.array([np.mean(v) for v in per_k])
    counts = np.array([math.comb(n, k) for k in ks], dtype=np.float64)
    contribution = counts * magnitude
    total = contribution.sum()
    return {"n": n, "ks": ks, "magnitude": magnitude, "magnitude_sd": np.array([np.std(v) for v in per_k]),
            "counts": counts, "contribution": contribution,
            "distribution": contribution / total if total > 0 else np.zeros_like(contribution),
            "effective_range": effective_range(ks, contribution, mass), "mode": mode, "target": target}


@DIAGNOSTICS.register(QUANTITY,
                      description="gradient magnitude carried by paths of each length k through the blocks (Veit "
                                  "et al. 2016)")
def compute(model: nn.Module, data, batch_size: int = 32, ks: Optional[Sequence[int]] = None,
            num_samples: int = 10, seed: int = 0, mode: str = "single_path", target: str = "loss",
            mass: float = 0.9, **unknown) -> list:
    """``path_gradients`` on the first ``batch_size`` test examples (``data.test_x/test_y``).
    Records (layer None): ``ks``, ``magnitude``, ``magnitude_sd``, ``counts``, ``contribution``,
    ``distribution``, ``effective_range`` ([k_lo, k_hi]), ``num_blocks``; the per-k lists carry
    ``ks`` as ``x``."""
    if unknown:
        raise TypeError(f"paths: unknown options {sorted(unknown)}; valid: batch_size, ks, num_samples, "
                        "seed, mode, target, mass")
    x, y = getattr(data, "test_x", None), getattr(data, "test_y", None)
    if x is None or len(x) == 0:
        raise ValueError("paths needs data.test_x")
    x, y = x[:batch_size], (None if y is None else y[:batch_size])
    r = path_gradients(model, x, y, ks, num_samples, seed, mode, target, mass)
    axis = {"x": r["ks"], "x_label": "k (path length: residual branches on the path)"}
    return [record(QUANTITY, "num_blocks", float(r["n"])), record(QUANTITY, "ks", r["ks"]),
            record(QUANTITY, "magnitude", r["magnitude"], **axis),
            record(QUANTITY, "magnitude_sd", r["magnitude_sd"], **axis),
            record(QUANTITY, "counts", r["counts"], **axis),
            record(QUANTITY, "contribution", r["contribution"], **axis),
            record(QUANTITY, "distribution", r["distribution"], **axis),
            record(QUANTITY, "effective_range", list(r["effective_range"]), x=["k_lo", "k_hi"],
                   x_label=f"ends of the shortest k range holding {mass:.0%} of the contribution")]
