"""gradient_flow: how the gradient travels down the network, measured on one training batch.

Per parametric layer the weight-gradient norm ``||dL/dW||_F`` and its RMS; at every tap the backward error
norm ``||dL/dh||`` and its RMS; the first/last-tap error ratio and the first/last-layer weight-gradient ratio.
BatchNorm in train mode, every other module in eval mode; the model is left as it was.
``GradientFlowTracker``: the per-step weight-gradient norms, without a host sync.
Details: docs/diagnostics.md, section gradient_flow.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "gradient_flow"
PARAMETRIC = (nn.Conv2d, nn.Linear)


# --- helpers shared by the diagnostics in this package ------------------------------------------

def model_device_dtype(model: nn.Module) -> Tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter (CPU/float32 if none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def take_batch(data, split: str, batch_size: int, model: nn.Module, labels: bool = True):
    """The first ``batch_size`` rows of ``data.{split}_x`` (and ``_y``), on the model's device,
    inputs in the model's dtype."""
    x = getattr(data, f"{split}_x", None)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"data has no tensor {split}_x; need an object with train_x/train_y/test_x/test_y")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    device, dtype = model_device_dtype(model)
    x = x[: int(batch_size)].to(device=device, dtype=dtype)
    if not labels:
        return x
    y = getattr(data, f"{split}_y")[: int(batch_size)].to(device=device, dtype=torch.int64)
    return x, y


@contextlib.contextmanager
def preserved_state(model: nn.Module, bn_train: bool = False, requires_grad: Optional[bool] = None):
    """Put ``model`` in eval mode (BatchNorm layers in train mode when ``bn_train``), optionally set
    every parameter's ``requires_grad``, disable autocast; restore every module's training flag,
    every ``requires_grad`` flag and (when ``bn_train``) every BN running buffer on exit."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = []
    if bn_train:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                buffers += [(b, b.detach().clone()) for b in m.buffers(recurse=False) if b is not None]
    device, _ = model_device_dtype(model)
    try:
        model.eval()
        if bn_train:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        if requires_grad is not None:
            for p, _ in flags:
                p.requires_grad_(requires_grad)
        with torch.autocast(device_type=device.type, enabled=False):
            yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def parametric_layers(model: nn.Module) -> "List[Tuple[str, nn.Module]]":
    """``[(name, module)]`` of every Conv2d and Linear with a weight, in module order; the name is
    the layer's tap name where it is a tap (``stage2.block3.conv1``, so records of different
    quantities line up), else its module path (``head.fc``, a projection shortcut)."""
    tap_names = {}
    if callable(getattr(model, "taps", None)):
        tap_names = {id(m): n for n, m in model.taps().items()}
    layers = [(tap_names.get(id(m), n), m) for n, m in model.named_modules()
              if isinstance(m, PARAMETRIC) and isinstance(getattr(m, "weight", None), torch.Tensor)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer; gradient_flow needs "
                         "parametric layers")
    return layers


def model_taps(model: nn.Module) -> "Dict[str, nn.Module]":
    taps = getattr(model, "taps", None)
    if not callable(taps):
        raise ValueError(f"{type(model).__name__} has no taps(); gradient_flow needs the model "
                         "depthlab model contract (docs/design.md; build it with depthlab.models.build_model)")
    taps = taps()
    if not taps:
        raise ValueError(f"{type(model).__name__}.taps() is empty")
    return taps


# --- the one-batch measurement ------------------------------------------------------------------

@dataclass
class GradientFlow:
    """Plain-data result of ``gradient_flow`` (Python floats and lists, in forward order)."""

    loss: float
    layers: List[str]
    weight_grad_norm: List[float]
    weight_numel: List[int]
    taps: List[str]
    error_norm: List[float]
    error_numel: List[int]
    weight_grad_rms: List[float] = field(init=False)
    error_rms: List[float] = field(init=False)

    def __post_init__(self):
        self.weight_grad_rms = [g / math.sqrt(n) for g, n in zip(self.weight_grad_norm, self.weight_numel)]
        self.error_rms = [g / math.sqrt(n) for g, n in zip(self.error_norm, self.error_numel)]

    @property
    def error_ratio(self) -> float:
        """Error RMS at the first tap / at the last tap (inf when the last is 0)."""
        return _ratio(self.error_rms[0], self.error_rms[-1])

    @property
    def weight_grad_ratio(self) -> float:
        """Weight-grad norm of the first parametric layer / of the last."""
        return _ratio(self.weight_grad_norm[0], self.weight_grad_norm[-1])

    def records(self) -> List[dict]:
        out = [record(QUANTITY, "loss", self.loss)]
        for name, g, r in zip(self.layers, self.weight_grad_norm, self.weight_grad_rms):
            out += [record(QUANTITY, "weight_grad_norm", g, name), record(QUANTITY, "weight_grad_rms", r, name)]
        for name, g, r in zip(self.taps, self.error_norm, self.error_rms):
            out += [record(QUANTITY, "error_norm", g, name), record(QUANTITY, "error_rms", r, name)]
        out += [record(QUANTITY, "error_rms_first_last_ratio", self.error_ratio),
                record(QUANTITY, "weight_grad_first_last_ratio", self.weight_grad_ratio)]
        return out


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else (float("inf") if a != 0 else float("nan"))


def gradient_flow(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> GradientFlow:
    """Weight-grad norms per parametric layer and backward error norms per tap on batch
    ``(x, y)`` (moved to the model's device), cross-entropy loss; see the module docstring for the
    BN mode and what is restored."""
    layers = parametric_layers(model)
    taps = model_taps(model)
    device, dtype = model_device_dtype(model)
    x = x.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=torch.int64)
    errors: Dict[str, torch.Tensor] = {}
    numels: Dict[str, int] = {}
    handles = []

    def forward_hook(name):
        def hook(module, inputs, output):
            if not isinstance(output, torch.Tensor) or not output.requires_grad:
                return
            if name in numels:
                raise ValueError(f"tap {name!r} ran twice in one forward pass; its error norm is ambiguous")
            numels[name] = output.numel()

            def store(grad):
                errors[name] = torch.linalg.vector_norm(grad.detach(), dtype=torch.float32)
            handles.append(output.register_hook(store))
        return hook

    with preserved_state(model, bn_train=True, requires_grad=True):
        try:
            for name, module in taps.items():
                handles.append(module.register_forward_hook(forward_hook(name)))
            loss = F.cross_entropy(model(x).float(), y)
            weights = [m.weight for _, m in layers]
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
        finally:
            for h in handles:
                h.remove()
    missing = [n for n in taps if n not in errors]
    if missing:
        raise ValueError(f"taps {missing} received no gradient (not on the path to the loss)")
    wnorms = torch.stack([torch.zeros((), device=device) if g is None else
                          torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
    enorms = torch.stack([errors[n] for n in taps])
    both = torch.cat([wnorms, enorms, loss.detach().float().reshape(1)]).cpu().tolist()  # one sync
    nl, nt = len(layers), len(taps)
    return GradientFlow(loss=both[-1], layers=[n for n, _ in layers], weight_grad_norm=both[:nl],
                        weight_numel=[m.weight.numel() for _, m in layers], taps=list(taps),
                        error_norm=both[nl:nl + nt], error_numel=[numels[n] for n in taps])


@DIAGNOSTICS.register(QUANTITY,
                      description="per-layer weight-gradient norms and backward-error norms at every tap, "
                                  "first/last ratio")
def compute(model: nn.Module, data, batch_size: int = 128) -> List[dict]:
    """Records on the first ``batch_size`` training examples: per layer ``weight_grad_norm`` and
    ``weight_grad_rms``; per tap ``error_norm`` and ``error_rms``; ``loss``,
    ``error_rms_first_last_ratio`` and ``weight_grad_first_last_ratio`` (layer None)."""
    x, y = take_batch(data, "train", batch_size, model)
    return gradient_flow(model, x, y).records()


# --- every training step ------------------------------------------------------------------------

class GradientFlowTracker:
    """Per-layer weight-grad norms after every backward pass, at the cost of one
    ``torch._foreach_norm`` (a few fused reductions; no hooks, no host sync)::

        tracker = GradientFlowTracker(model).attach()
        for x, y in loader:
            loss = ...; loss.backward()
            tracker.step()            # appends read() to the device history
            opt.step(); opt.zero_grad()
        norms = tracker.history()     # (steps, layers) tensor; .cpu() is the only sync
        tracker.detach()

    ``names`` are the module paths of the tracked Conv2d/Linear layers (``parametric_layers``).
    A layer whose ``.grad`` is None (e.g. a stochastic-depth-dropped branch) reads 0.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names: List[str] = []
        self._weights: List[torch.Tensor] = []
        self._history: List[torch.Tensor] = []

    def attach(self) -> "GradientFlowTracker":
        layers = parametric_layers(self.model)
        self.names = [n for n, _ in layers]
        self._weights = [m.weight for _, m in layers]
        return self

    def detach(self) -> None:
        self._weights = []

    @property
    def attached(self) -> bool:
        return bool(self._weights)

    def read(self) -> torch.Tensor:
        """``(layers,)`` float32 tensor of ``||W.grad||_F`` on the weights' device (no sync)."""
        if not self._weights:
            raise RuntimeError("GradientFlowTracker is not attached; call attach() first")
        grads = [w.grad for w in self._weights]
        present = [g for g in grads if g is not None]
        if not present:
            return torch.zeros(len(grads), device=self._weights[0].device)
        norms = iter(torch._foreach_norm(present))
        return torch.stack([torch.zeros((), device=self._weights[0].device) if g is None
                            else next(norms).float() for g in grads])

    def step(self) -> torch.Tensor:
        norms = self.read()
        self._history.append(norms)
        return norms

    def history(self) -> torch.Tensor:
        """``(steps, layers)``: every ``step()`` so far, stacked on the device."""
        if not self._history:
            return torch.zeros(0, len(self.names))
        return torch.stack(self._history)

    def clear(self) -> None:
        self._history = []

    def __enter__(self) -> "GradientFlowTracker":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()


__all__ = ["GradientFlow", "GradientFlowTracker", "compute", "gradient_flow", "parametric_layers",
           "preserved_state", "take_batch", "model_device_dtype"]
