"""dead_features: channels that carry nothing, per readable point of the network.

A deep net that fails to train often has layers whose channels never fire, or a head whose output
no longer depends on the input (the whole net computes a constant). On the first ``batch_size``
rows of ``data.test_x``, in eval mode, for every tap of ``model.taps()`` (conv outputs and block
sums; see the model contract), with the tap's output read as ``(B, C, ...)`` and channel ``c``'s
values ``v`` over examples and positions:

    dead      max(v) <= 0: never positive, so after a ReLU it passes neither signal nor gradient
    constant  max(v) - min(v) <= tol * max(1, max|v|): the same value for every input

Records: per tap (layer = tap name) ``dead_fraction`` and ``constant_fraction`` (of its channels);
layer None: ``output_spread``, the largest range over the batch of any logit, and
``output_constant`` (``output_spread`` within ``tol``: the net answers every input alike).
No gradient is taken; training flags are restored and the hooks removed afterwards.
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
