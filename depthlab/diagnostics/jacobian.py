"""jacobian: singular values of the input-output Jacobian ``J = d logits / d x`` (dynamical
isometry; Saxe et al. 2014, Pennington et al. 2017), one test input at a time.

``output="features"`` takes ``J = d forward_features(x) / d x`` instead (Xiao et al. 2018, arXiv 1806.05393).
Exact (``torch.func`` and ``svdvals``) for small inputs, a randomised SVD (Halko, Martinsson, Tropp 2011)
otherwise. Details: docs/diagnostics.md, section jacobian.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence

import torch
from torch import nn

from depthlab.diagnostics.gradient_flow import model_device_dtype, preserved_state, take_batch
from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "jacobian"


@dataclass
class JacobianSpectrum:
    method: str                          # "exact" | "randomized"
    singular_values: List[List[float]]   # per input, descending
    mean_squared_singular_value: List[float]
    condition_number: List[float]

    def records(self) -> List[dict]:
        ranks = len(self.singular_values[0]) if self.singular_values else 0
        inputs = {"x": list(range(len(self.condition_number))), "x_label": "input (row of data.test_x)"}
        return [record(QUANTITY, "singular_values", self.singular_values, x=list(range(1, ranks + 1)),
                       x_label="rank of the singular value (1 = largest)", x_axis=1),  # one curve per input
                record(QUANTITY, "mean_squared_singular_value", self.mean_squared_singular_value, **inputs),
                record(QUANTITY, "condition_number", self.condition_number, **inputs)]


OUTPUTS = ("logits", "features")


def _single(model: nn.Module, x: torch.Tensor, output: str = "logits"):
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUTS))}, got {output!r}")
    if output == "features" and not callable(getattr(model, "forward_features", None)):
        raise ValueError("output 'features' needs a model with forward_features (the depthlab model contract)")
    fn = model if output == "logits" else model.forward_features

    def f(v: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (K,)
        return fn(v.unsqueeze(0)).reshape(-1)
    return f


def exact_jacobian(model: nn.Module, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
    """Dense ``(K, D)`` Jacobian of the logits (or ``forward_features``) at one input ``x`` (C, H, W):
    ``jacrev`` (K reverse passes), or ``jacfwd`` (D forward passes) when ``D < K``."""
    f = _single(model, x, output)
    with torch.no_grad():
        k = f(x).numel()
    jac = torch.func.jacfwd(f) if x.numel() < k else torch.func.jacrev(f)
    return jac(x).reshape(k, x.numel())


def _orth(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(a, mode="reduced").Q


def randomized_singular_values(model: nn.Module, x: torch.Tensor, rank: int = 10, oversample: int = 5,
                               power_iters: int = 2, generator: torch.Generator = None, output: str = "logits"):
    """Top ``rank`` singular values of ``J`` at one input ``x`` (randomised SVD with JVP/VJP
    products) and the Hutchinson estimate of ``||J||_F^2``. Returns ``(s, fro2, K)``."""
    f = _single(model, x, output)
    out, vjp_fn = torch.func.vjp(f, x)
    k, d = out.numel(), x.numel()
    width = max(1, min(int(rank) + int(oversample), k, d))
    omega = torch.randn(d, width, generator=generator, device="cpu", dtype=torch.float32).to(x.device, x.dtype)

    def jmat(m):  # (D, width) -> (K, width): J @ m, one JVP per column
        return torch.stack([torch.func.jvp(f, (x,), (m[:, j].reshape(x.shape),))[1].reshape(-1)
                            for j in range(m.shape[1])], dim=1)

    def jtmat(m):  # (K, width) -> (D, width): J^T @ m, one VJP per column
        return torch.stack([vjp_fn(m[:, j].reshape(out.shape))[0].reshape(-1)
                            for j in range(m.shape[1])], dim=1)

    y = jmat(omega)
    fro2 = y.double().pow(2).sum() / width
    q = _orth(y)
    for _ in range(int(power_iters)):
        q = _orth(jmat(_orth(jtmat(q))))
    b = jtmat(q).T  # (width, D) = Q^T J
    s = torch.linalg.svdvals(b.double())[: max(1, min(int(rank), width))]
    return s, fro2, k


def _condition(s: torch.Tensor, k: int, d: int) -> float:
    tol = s.max() * max(k, d) * torch.finfo(torch.float32).eps
    nz = s[s > tol]
    return float("inf") if nz.numel() == 0 else (nz.max() / nz.min()).item()


def jacobian_spectrum(model: nn.Module, x: torch.Tensor, exact_max: int = 4096, rank: int = 10,
                      oversample: int = 5, power_iters: int = 2, seed: int = 0,
                      output: str = "logits") -> JacobianSpectrum:
    """Spectrum of ``d logits / d input`` (``output="features"``: ``d forward_features / d input``)
    at each row of ``x`` (N, C, H, W); exact when ``C*H*W <= exact_max``, randomised otherwise (see
    the module docstring)."""
    if not callable(model):
        raise ValueError("jacobian needs a callable model")
    if x.dim() < 2:
        raise ValueError(f"x must be a batch (N, ...) of inputs, got shape {tuple(x.shape)}")
    device, dtype = model_device_dtype(model)
    x = x.to(device=device, dtype=dtype)
    d = x[0].numel()
    exact = d <= int(exact_max)
    gen = torch.Generator().manual_seed(int(seed))
    svals, msq, conds = [], [], []
    with preserved_state(model, bn_train=False):
        for xi in x:
            if exact:
                jac = exact_jacobian(model, xi.detach(), output)
                k = jac.shape[0]
                s = torch.linalg.svdvals(jac.double())
                fro2 = s.pow(2).sum()
            else:
                s, fro2, k = randomized_singular_values(model, xi.detach(), rank, oversample,
                                                        power_iters, gen, output)
            svals.append(s.cpu().tolist())
            msq.append((fro2 / min(k, d)).item())
            conds.append(_condition(s, k, d))
    return JacobianSpectrum("exact" if exact else "randomized", svals, msq, conds)


def spectrum_over_depth(build: Callable[[int], nn.Module], depths: Sequence[int], x: torch.Tensor,
                        output: str = "features", quantiles: Sequence[float] = (0.1, 0.5, 0.9),
                        exact_max: int = 4096, seed: int = 0) -> List[dict]:
    """Dynamical isometry over depth: for each ``depth``, the singular values of the Jacobian of the
    freshly built ``build(depth)`` (in eval mode; ``output="features"``: the body's last feature map,
    Xiao et al. 2018's quantity) at every row of ``x``, pooled over the rows. Returns one row per depth:
    ``{"depth", "max", "min", "q<quantile>" ..., "spread"}`` where spread = max / min over the pooled
    values (inf when the smallest is 0). Build the models under a seeded RNG for reproducible spectra."""
    rows = []
    for depth in depths:
        model = build(int(depth))
        spectrum = jacobian_spectrum(model, x, exact_max=exact_max, seed=seed, output=output)
        s = torch.tensor([v for per_input in spectrum.singular_values for v in per_input], dtype=torch.float64)
        row = {"depth": int(depth), "max": s.max().item(), "min": s.min().item()}
        row.update({f"q{q:g}": torch.quantile(s, q).item() for q in quantiles})
        row["spread"] = row["max"] / row["min"] if row["min"] > 0 else float("inf")
        rows.append(row)
    return rows


@DIAGNOSTICS.register(QUANTITY,
                      description="singular values of the input-output Jacobian (exact on small inputs, randomised "
                                  "otherwise)")
def compute(model: nn.Module, data, num_inputs: int = 4, exact_max: int = 4096, rank: int = 10,
            oversample: int = 5, power_iters: int = 2, seed: int = 0, output: str = "logits") -> List[dict]:
    """Records ``singular_values``, ``mean_squared_singular_value``, ``condition_number`` (one
    entry per input) on the first ``num_inputs`` rows of ``data.test_x``; ``output``: ``"logits"``
    or ``"features"`` (the body's last feature map)."""
    x = take_batch(data, "test", num_inputs, model, labels=False)
    return jacobian_spectrum(model, x, exact_max, rank, oversample, power_iters, seed, output).records()


__all__ = ["OUTPUTS", "JacobianSpectrum", "compute", "spectrum_over_depth", "exact_jacobian", "jacobian_spectrum",
           "randomized_singular_values"]
