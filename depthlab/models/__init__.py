"""Model families, presets and init schemes behind one call::

    from depthlab.models import build_model, list_models
    model = build_model("resnet56")                         # a preset
    model = build_model("plain", depth=110, num_classes=100)  # a family (default depth 20)

Every model follows the model contract of docs/design.md (``DepthNet``): ``stem``, ``blocks``,
``head``, ``forward_features``, ``taps()``, ``spec``, ``depth``; every block has ``branch``,
``shortcut``, ``enabled``, ``survival_prob`` and ``has_shortcut``.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from depthlab.models import cifar, crelu, densenet, fixup, highway, imagenet, mnist, vanilla, xie  # noqa: F401  (register families and presets)
from depthlab.models.blocks import BasicBlock, Block, PreActBlock
from depthlab.models.init import INITS, init_model_
from depthlab.models.layers import ShortcutA, ShortcutB, shortcut_a
from depthlab.models.net import DepthNet
from depthlab.models.spec import (
    FAMILIES,
    MODELS,
    DepthRule,
    ModelSpec,
    UnknownOverrideError,
    register_family,
    register_preset,
    resolve_spec,
)

__all__ = [
    "build_model", "list_models", "count_params", "model_summary", "resolve_spec",
    "MODELS", "FAMILIES", "INITS", "ModelSpec", "DepthRule", "DepthNet", "Block", "BasicBlock",
    "PreActBlock", "ShortcutA", "ShortcutB", "shortcut_a", "register_family", "register_preset",
    "UnknownOverrideError",
]


def build_model(name: str, **overrides) -> nn.Module:
    """Build preset or family ``name`` with ``overrides`` (keys: depth, width, num_classes,
    in_channels, shortcut, init, zero_init_residual; ``None`` = keep the default), initialised
    with the torch RNG. Raises ``UnknownNameError`` for an unknown name, ``UnknownOverrideError``
    (a TypeError and ValueError) for an unknown key and ``ValueError`` for a bad value."""
    spec = resolve_spec(name, **overrides)
    model = FAMILIES.get(spec.family)(spec)
    return init_model_(model, spec.init, spec.zero_init_residual)


def list_models(families: bool = False) -> List[str]:
    """Preset names in registration order, or (``families=True``) the family names."""
    return FAMILIES.names() if families else MODELS.names()


def count_params(model: nn.Module) -> int:
    """Trainable parameters, BN affine included."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_summary(name: str, **overrides) -> dict:
    """``{name, family, layout, depth, params}`` without allocating weights (built on the meta device)."""
    spec = resolve_spec(name, **overrides)
    with torch.device("meta"):
        model = FAMILIES.get(spec.family)(spec)
    return {"name": name, "family": spec.family, "layout": spec.layout, "depth": spec.depth,
            "params": count_params(model)}
