"""Shattered gradients (Balduzzi et al. 2017, arXiv 1702.08591): gradient correlation between nearby inputs decays
fast with depth in plain ReLU nets (white noise) and slowly in ResNets (brown noise).

(a) the scalar setting, ``scalar_shattering``: a 1 -> width -> ... -> 1 ReLU MLP, the ACF of dy/dx over evenly
spaced inputs and the gradient correlation matrix across inits; (b) image models, ``line_shattering`` and
``compute``: d logit / dt along x0 + t v. ACF: r(k) = sum_t gc_t gc_{t+k} / sum_t gc_t^2 (g centred; all ones
for a constant sequence). The paper's constants are unverified readings (docs/methods.md, section "Shattering").
Details: docs/diagnostics.md, section shattering.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "shattering"


# ---------------------------------------------------------------- autocorrelation and references

def autocorrelation(seq) -> np.ndarray:
    """Normalised ACF of a 1-D sequence at lags 0..n-1 (see the module docstring), via a
    zero-padded FFT in float64. Accepts a list, numpy array or tensor; returns a numpy array."""
    g = torch.as_tensor(np.asarray(seq, dtype=np.float64).reshape(-1))
    n = g.numel()
    if n == 0:
        raise ValueError("autocorrelation needs a non-empty sequence")
    gc = g - g.mean()
    energy = float((gc * gc).sum())
    scale = max(float(g.abs().max()), 1e-300)
    if energy <= (1e-24 * n) * scale * scale:  # constant up to rounding: perfectly correlated
        return np.ones(n)
    spec = torch.fft.rfft(gc, n=2 * n)
    acf = torch.fft.irfft(spec * spec.conj(), n=2 * n)[:n]
    return (acf / acf[0]).numpy()


def _noise_summary(seq: np.ndarray) -> dict:
    acf = autocorrelation(seq)
    return {"sequence": seq, "acf": acf, "lag1": float(acf[1]) if len(acf) > 1 else 1.0}


def white_noise(n: int = 256, seed: int = 0) -> dict:
    """White-noise reference (i.i.d. standard normal): ``{sequence, acf, lag1}``; lag-1 ~ 0."""
    return _noise_summary(np.random.default_rng(seed).standard_normal(n))


def brown_noise(n: int = 256, seed: int = 0) -> dict:
    """Brown-noise reference (cumulative sum of white noise): ``{sequence, acf, lag1}``; lag-1 ~ 1."""
    return _noise_summary(np.cumsum(np.random.default_rng(seed).standard_normal(n)))


def gradient_correlation(gradients) -> Optional[np.ndarray]:
    """C_ij = correlation across inits (rows) of the gradients at inputs i and j (columns);
    ``(num_inits, n) -> (n, n)``; ``None`` for fewer than two inits; zero-variance entries 0."""
    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim != 2 or g.shape[0] < 2:
        return None
    gc = g - g.mean(axis=0, keepdims=True)
    cov = gc.T @ gc
    sd = np.sqrt(np.diag(cov))
    denom = np.outer(sd, sd)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(denom > 0, cov / np.where(denom > 0, denom, 1.0), 0.0)
    return corr


def summarise(gradients) -> dict:
    """Per-sequence ACFs and lag-1 values of ``gradients`` (R, n), their mean and sd over R, and
    the gradient correlation matrix."""
    g = np.asarray(gradients, dtype=np.float64).reshape(-1, np.shape(gradients)[-1])
    acfs = np.stack([autocorrelation(row) for row in g])
    lag1 = acfs[:, 1] if g.shape[1] > 1 else np.ones(len(g))
    return {"gradients": g, "acf": acfs, "acf_mean": acfs.mean(0), "acf_sd": acfs.std(0),
            "lag1": lag1, "lag1_mean": float(lag1.mean()), "lag1_sd": float(lag1.std()),
            "correlation": gradient_correlation(g)}


# ---------------------------------------------------------------- (a) the scalar setting

class BatchStatNorm(nn.Module):
    """Train-mode BN without affine or state: (h - mean) / sqrt(var + eps) over the batch of inputs.
    ``detach_stats=True`` treats the batch mean and variance as constants in backward."""

    def __init__(self, eps: float = 1e-5, detach_stats: bool = True):
        super().__init__()
        self.eps, self.detach_stats = eps, detach_stats

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (N, width) -> (N, width)
        mean, var = h.mean(0, keepdim=True), h.var(0, unbiased=False, keepdim=True)
        if self.detach_stats:
            mean, var = mean.detach(), var.detach()
        return (h - mean) / torch.sqrt(var + self.eps)


class ScalarMLP(nn.Module):
    """1 -> width -> ... -> 1 ReLU net; ``depth`` = number of width x width-or-input weight layers
    followed by a ReLU (``depth = 1``: one hidden layer).

    plain:     h <- relu(W h + b)               (the first one maps 1 -> width)
    residual:  h_0 = W_0 x + b_0 (no ReLU), then depth - 1 blocks  h <- h + relu(N(W h + b))
               with N = BatchNorm1d if ``batchnorm`` else the identity (one weight layer per block,
               the "x + relu(BN(W x))" reading of the paper's resnet; unverified)
    plain + batchnorm: h <- relu(BN(W h + b)).
    BN is ``BatchStatNorm``: it always normalises with the statistics of the batch of inputs
    (train-mode BN over the ``n_points`` inputs, no affine, no state). ``exact_bn=False`` (default)
    treats those statistics as constants in backward, so the points are independent and one batched
    backward gives dy/dx (the derivative of the function the net computes on this batch); with
    ``exact_bn=True`` the gradient flows through the statistics too (see ``scalar_gradients``).
    Weights He-normal (std sqrt(2 / fan_in)), biases N(0, bias_std^2): without
    random biases a scalar ReLU net is positively homogeneous and dy/dx only takes two values.
    """

    def __init__(self, depth: int, width: int = 200, residual: bool = False, batchnorm: bool = False,
                 bias_std: float = 1.0, generator: Optional[torch.Generator] = None,
                 exact_bn: bool = False):
        super().__init__()
        if int(depth) < 1 or int(width) < 1:
            raise ValueError(f"depth and width must be positive, got depth={depth!r}, width={width!r}")
        self.depth, self.residual, self.batchnorm = int(depth), bool(residual), bool(batchnorm)
        self.layers = nn.ModuleList([nn.Linear(1, width)] + [nn.Linear(width, width) for _ in range(self.depth - 1)])
        self.norms = nn.ModuleList(
            BatchStatNorm(detach_stats=not exact_bn) if batchnorm else nn.Identity()
            for _ in range(self.depth))
        self.out = nn.Linear(width, 1)
        with torch.no_grad():
            for lin in list(self.layers) + [self.out]:
                lin.weight.normal_(0.0, math.sqrt(2.0 / lin.in_features), generator=generator)
                lin.bias.normal_(0.0, bias_std, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1) -> (N, 1)
        if self.residual:
            h = self.layers[0](x)
            for lin, norm in zip(self.layers[1:], self.norms[1:]):
                h = h + torch.relu(norm(lin(h)))
        else:
            h = x
            for lin, norm in zip(self.layers, self.norms):
                h = torch.relu(norm(lin(h)))
        return self.out(h)


def scalar_mlp(depth: int, width: int = 200, residual: bool = False, batchnorm: bool = False,
               bias_std: float = 1.0, generator: Optional[torch.Generator] = None,
               seed: Optional[int] = None, exact_bn: bool = False) -> ScalarMLP:
    """A ``ScalarMLP`` (see there), initialised from ``generator`` or, if given, ``seed``."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return ScalarMLP(depth, width, residual, batchnorm, bias_std, generator, exact_bn)


def scalar_gradients(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """dy/dx at each of the inputs ``x`` (N,) of a scalar net; returns (N,).

    When the samples are independent (no BN, or ``BatchStatNorm`` with detached statistics) one
    backward of sum(y) w.r.t. the batch gives every dy_i/dx_i. With gradient through the batch
    statistics y_i depends on every x_j; then the exact Jacobian diagonal dy_i/dx_i is taken from
    the full Jacobian (N vectorised backwards of the one graph; ~100x slower)."""
    xb = x.detach().reshape(-1, 1).clone().requires_grad_(True)
    y = model(xb).reshape(-1)
    coupled = any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                  or (isinstance(m, BatchStatNorm) and not m.detach_stats) for m in model.modules())
    if not coupled:
        (g,) = torch.autograd.grad(y.sum(), xb)
        return g.reshape(-1)
    eye = torch.eye(y.numel(), dtype=y.dtype, device=y.device)
    (jac,) = torch.autograd.grad(y, xb, grad_outputs=eye, is_grads_batched=True)  # (N, N, 1)
    return jac.reshape(y.numel(), -1).diagonal()


def scalar_shattering(depth: int, residual: bool = False, batchnorm: bool = False, num_inits: int = 5,
                      seed: int = 0, n_points: int = 256, lo: float = -2.0, hi: float = 2.0,
                      width: int = 200, bias_std: float = 1.0, exact_bn: bool = False) -> dict:
    """The scalar setting over ``num_inits`` inits (init r uses seed ``seed + r``), on the CPU in
    float32: ``{x, gradients (R, n), acf (R, n), acf_mean, acf_sd, lag1 (R,), lag1_mean, lag1_sd,
    correlation (n, n) or None}`` plus the settings. Defaults follow the paper (unverified)."""
    if int(num_inits) < 1 or int(n_points) < 2 or not hi > lo:
        raise ValueError(f"need num_inits >= 1, n_points >= 2 and hi > lo, got {num_inits}, {n_points}, [{lo}, {hi}]")
    x = torch.linspace(lo, hi, int(n_points))
    grads = []
    with torch.autocast("cpu", enabled=False):
        for r in range(int(num_inits)):
            model = scalar_mlp(depth, width, residual, batchnorm, bias_std, seed=seed + r,
                               exact_bn=exact_bn)
            grads.append(scalar_gradients(model, x).detach().numpy())
    out = summarise(np.stack(grads))
    out.update(x=x.numpy(), depth=int(depth), residual=bool(residual), batchnorm=bool(batchnorm),
               width=int(width), num_inits=int(num_inits), bias_std=float(bias_std), exact_bn=bool(exact_bn))
    return out


# ---------------------------------------------------------------- (b) image models

def _param_device_dtype(model: nn.Module):
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def _modes(model: nn.Module):
    return [(m, m.training) for m in model.modules()]


def _restore(modes) -> None:
    for m, training in modes:
        m.training = training


def line_shattering(model: nn.Module, x0: torch.Tensor, v: Optional[torch.Tensor] = None,
                    logit: Optional[int] = None, n_points: int = 256, scale: Optional[float] = None,
                    seed: int = 0, batch_size: int = 256) -> dict:
    """d logit / dt along x0 + t v, t in [-scale, scale] (``n_points`` evenly spaced).

    ``x0``: one input (C, H, W) or (1, C, H, W). ``v``: a direction (normalised to unit norm), by
    default a random unit direction from ``seed``. ``logit``: the class, by default the predicted
    class at x0. ``scale``: by default ||x0|| (so the line spans about the input's own norm;
    a choice, not the paper's). The model runs in eval mode (BN with running statistics, so the
    points are independent and one backward of sum(logit) w.r.t. t gives every derivative,
    d logit / dt = <grad_x logit, v>), float32 with autocast off, ``batch_size`` points at a time;
    the mode is restored. Returns ``{t, gradients (n,), acf, lag1, logit, v}``.
    """
    device, dtype = _param_device_dtype(model)
    x0 = x0.detach().to(device, dtype)
    if x0.dim() == 4 and x0.shape[0] == 1:
        x0 = x0[0]
    if x0.dim() != 3:
        raise ValueError(f"x0 must be one input (C, H, W) or (1, C, H, W), got shape {tuple(x0.shape)}")
    if v is None:
        gen = torch.Generator().manual_seed(int(seed))
        v = torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    v = v.detach().reshape(x0.shape).to(device, torch.float64)
    if not float(v.norm()) > 0:
        raise ValueError("the direction v must be non-zero")
    v = (v / v.norm()).to(dtype)
    scale = float(x0.norm()) if scale is None else float(scale)
    if not scale > 0 or int(n_points) < 2:
        raise ValueError(f"need scale > 0 and n_points >= 2, got {scale!r}, {n_points!r}")
    modes = _modes(model)
    try:
        model.eval()
        with torch.autocast(device.type, enabled=False):
            if logit is None:
                with torch.no_grad():
                    logit = int(model(x0[None]).argmax(1)[0])
            t = torch.linspace(-scale, scale, int(n_points), device=device, dtype=dtype)
            parts = []
            for chunk in t.split(int(batch_size)):
                tc = chunk.clone().requires_grad_(True)
                out = model(x0[None] + tc[:, None, None, None] * v[None])
                (g,) = torch.autograd.grad(out[:, logit].sum(), tc)
                parts.append(g.detach())
            grads = torch.cat(parts).double().cpu().numpy()
    finally:
        _restore(modes)
    acf = autocorrelation(grads)
    return {"t": t.detach().double().cpu().numpy(), "gradients": grads, "acf": acf,
            "lag1": float(acf[1]), "logit": logit, "v": v.detach().cpu()}


@DIAGNOSTICS.register(QUANTITY,
                      description="autocorrelation of the input gradient along a line of inputs (Balduzzi et al. 2017)")
def compute(model: nn.Module, data, num_directions: int = 4, n_points: int = 256,
            scale: Optional[float] = None, index: int = 0, seed: int = 0, **unknown) -> list:
    """Line shattering on ``data.test_x[index]`` along ``num_directions`` random unit directions
    (seeds ``seed + r``), the predicted class's logit. Records (layer None): ``lag1`` (per
    direction), ``lag1_mean``, ``lag1_sd``, ``acf_mean``, ``acf_sd`` (lags 0..n-1)."""
    if unknown:
        raise TypeError(f"shattering: unknown options {sorted(unknown)}; valid: num_directions, "
                        "n_points, scale, index, seed")
    if int(num_directions) < 1:
        raise ValueError(f"num_directions must be >= 1, got {num_directions!r}")
    test_x = getattr(data, "test_x", None)
    if test_x is None or len(test_x) <= index:
        raise ValueError(f"shattering needs data.test_x with an input at index {index}")
    runs = [line_shattering(model, test_x[index], n_points=n_points, scale=scale, seed=seed + r)
            for r in range(int(num_directions))]
    s = summarise(np.stack([r["gradients"] for r in runs]))
    directions = {"x": list(range(int(num_directions))), "x_label": "direction (random unit vector)"}
    lags = {"x": list(range(len(s["acf_mean"]))), "x_label": "lag (steps between points on the line)"}
    return [record(QUANTITY, "lag1", s["lag1"], **directions), record(QUANTITY, "lag1_mean", s["lag1_mean"]),
            record(QUANTITY, "lag1_sd", s["lag1_sd"]), record(QUANTITY, "acf_mean", s["acf_mean"], **lags),
            record(QUANTITY, "acf_sd", s["acf_sd"], **lags)]
