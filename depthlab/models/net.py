"""``DepthNet``: the one network shell every family builds (the model contract, docs/design.md).

    x -> stem -> blocks[0] -> ... -> blocks[-1] -> final -> forward_features(x) -> head -> logits

``stem`` is an ``nn.Sequential`` whose first layer is named ``conv``; ``blocks`` an ``nn.ModuleList``
of ``Block``; ``final`` a post-block norm (pre-activation nets: BN-ReLU) or ``nn.Identity``;
``head`` = global average pool + flatten + fc.

``checkpoint_segments`` (0: off) turns on activation checkpointing of ``blocks`` in training
(``depthlab.models.checkpointing``; exact, for memory); the trainer sets it from
``train.checkpoint_segments``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.checkpointing import run_checkpointed
from depthlab.models.spec import ModelSpec


def make_head(c_in: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("pool", nn.AdaptiveAvgPool2d(1)),  # (B, C, 1, 1): any input size, H = 1 included
        ("flatten", nn.Flatten(1)),         # (B, C)
        ("fc", nn.Linear(c_in, num_classes)),
    ]))


class DepthNet(nn.Module):
    """A stem, stages of blocks, and a head. ``stages`` is a list of lists of blocks; block ``b``
    (1-based) of stage ``s`` is named ``stage{s}.block{b}`` in ``block_names`` and ``taps()``."""

    def __init__(self, spec: ModelSpec, stem: nn.Sequential, stages: Sequence[Sequence[Block]],
                 features: int, final: Optional[nn.Module] = None):
        super().__init__()
        if not hasattr(stem, "conv"):
            raise ValueError("the stem's first conv must be named 'conv' (tap 'stem.conv')")
        self.spec = spec
        self.stem = stem
        self.blocks = nn.ModuleList(block for stage in stages for block in stage)
        self.block_names: List[str] = [f"stage{s}.block{b}" for s, stage in enumerate(stages, 1)
                                       for b in range(1, len(stage) + 1)]
        self.final = final if final is not None else nn.Identity()
        self.head = make_head(features, spec.num_classes)
        self.checkpoint_segments = 0  # activation checkpointing in training (models/checkpointing.py)

    @property
    def depth(self) -> int:
        """Weighted layers on the main path (stem conv + branch convs + fc), e.g. 56."""
        return self.spec.depth

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C, h, w)
        x = self.stem(x)
        if self.checkpoint_segments and self.training and torch.is_grad_enabled():
            x = run_checkpointed(self.blocks, x, self.checkpoint_segments)
        else:
            for block in self.blocks:
                x = block(x)
        return self.final(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, num_classes)
        return self.head(self.forward_features(x))

    def taps(self) -> "OrderedDict[str, nn.Module]":
        """Every readable point in forward order: ``stem.conv``, then per block
        ``stage{s}.block{b}.conv1``, ``...conv2``, ``...sum``. A forward hook on a tap module
        receives that point's output."""
        taps = OrderedDict([("stem.conv", self.stem.conv)])
        for name, block in zip(self.block_names, self.blocks):
            for local, module in block.taps().items():
                taps[f"{name}.{local}"] = module
        return taps

    def extra_repr(self) -> str:
        return f"spec: {self.spec.name} ({self.spec.family}, depth {self.spec.depth})"
