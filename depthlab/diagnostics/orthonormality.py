"""orthonormality: ``||W W^T - I||_F`` per conv layer (``W^T W`` for tall ``W``; Xie et al. 2017),
a thin wrapper over ``depthlab.methods.orthonormality_per_layer``. Each conv weight is read as a
``C_out x (C_in k k)`` matrix. ``data`` is unused; no forward pass, so the BN mode is irrelevant.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List

from torch import nn

from depthlab.diagnostics.registry import DIAGNOSTICS, record
from depthlab.methods import orthonormality_per_layer

QUANTITY = "orthonormality"


def orthonormality(model: nn.Module, include_linear: bool = False) -> "OrderedDict[str, float]":
    """``{module path: ||W W^T - I||_F}`` for every conv (and Linear when ``include_linear``);
    ValueError when the model has none."""
    per_param = orthonormality_per_layer(model, include_linear=include_linear)
    if not per_param:
        raise ValueError(f"{type(model).__name__} has no conv layer; orthonormality needs conv weights")
    return OrderedDict((name[: -len(".weight")] if name.endswith(".weight") else name, v)
                       for name, v in per_param.items())


@DIAGNOSTICS.register(QUANTITY,
                      description="||W W^T - I||_F of every conv weight (Xie et al. 2017)")
def compute(model: nn.Module, data=None, include_linear: bool = False) -> List[dict]:
    """One ``wwt_minus_identity_fro`` record per conv layer (layer = module path, e.g.
    ``stage1.block1.branch.conv1``)."""
    return [record(QUANTITY, "wwt_minus_identity_fro", v, name)
            for name, v in orthonormality(model, include_linear).items()]


__all__ = ["compute", "orthonormality"]
