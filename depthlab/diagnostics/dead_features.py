"""dead_features: channels that carry nothing, per readable point of the network.

For every tap, on a test batch in eval mode, the fraction of channels that are dead (max(v) <= 0: never
positive) or constant (max(v) - min(v) <= tol * max(1, max|v|)), and whether the logits are constant over the
batch (``output_spread``, ``output_constant``). Details: docs/diagnostics.md, section dead_features.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from depthlab.diagnostics.gradient_flow import preserved_state, take_batch
from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "dead_features"


def channel_status(out: torch.Tensor, tol: float = 1e-6):
    """``(dead, constant)`` bool tensors of shape ``(C,)`` for a ``(B, C, ...)`` output."""
    v = out.detach().float().transpose(0, 1).reshape(out.shape[1], -1)  # (C, B * positions)
    hi, lo = v.amax(dim=1), v.amin(dim=1)
    scale = v.abs().amax(dim=1).clamp_min(1.0)
    return hi <= 0, (hi - lo) <= tol * scale


def dead_features(model: nn.Module, x: torch.Tensor, tol: float = 1e-6) -> List[dict]:
    taps = getattr(model, "taps", None)
    if taps is None:
        raise ValueError(f"{type(model).__name__} has no taps(); dead_features reads the model contract's "
                         f"readable points (a depthlab model: build_model)")
    found = {}
    handles = []

    def hook(name):
        def read(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() >= 2:
                found[name] = channel_status(output, tol)
        return read

    with preserved_state(model, bn_train=False):
        try:
            for name, module in taps().items():
                handles.append(module.register_forward_hook(hook(name)))
            with torch.no_grad():
                logits = model(x).float()
        finally:
            for h in handles:
                h.remove()
    out = []
    for name, (dead, constant) in found.items():  # forward order; a lesioned block's taps are absent
        out.append(record(QUANTITY, "dead_fraction", dead.float().mean(), name))
        out.append(record(QUANTITY, "constant_fraction", constant.float().mean(), name))
    spread = (logits.amax(dim=0) - logits.amin(dim=0)).amax()
    out.append(record(QUANTITY, "output_spread", spread))
    out.append(record(QUANTITY, "output_constant", bool(spread <= tol * max(1.0, float(logits.abs().amax())))))
    return out


@DIAGNOSTICS.register(QUANTITY,
                      description="fraction of each tap's channels that never fire or never change, and "
                                  "whether the output depends on the input at all")
def compute(model: nn.Module, data, batch_size: int = 256, tol: float = 1e-6) -> List[dict]:
    """Per tap ``dead_fraction`` and ``constant_fraction``; ``output_spread`` and
    ``output_constant`` (layer None); on the first ``batch_size`` rows of ``data.test_x``."""
    return dead_features(model, take_batch(data, "test", batch_size, model, labels=False), tol)
