"""DenseNet and DenseNet-BC (Huang, Liu, van der Maaten & Weinberger 2017, arXiv 1608.06993), CIFAR
layout: a 3x3 stem conv, 3 dense blocks of n layers with transitions between them, BN-ReLU, pool, fc.

    basic layer:  BN-ReLU-conv3x3(k)                          depth = 3n + 4
    BC layer:     BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k)      depth = 6n + 4
    a layer's output: cat[x, its k new channels]

Details (depth units, taps, lesions, stochastic depth, pooling): docs/methods.md, section "DenseNet and DenseNet-BC".
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import List

import torch
from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.layers import ShortcutA, conv1x1, conv3x3
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset
from depthlab.registry import Option

DENSENET_DEPTHS = DepthRule(step=3, offset=4)   # basic; BC additionally needs (depth - 4) % 6 == 0
BC_DEPTHS = DepthRule(step=6, offset=4)


def avg_pool2() -> nn.AvgPool2d:
    return nn.AvgPool2d(2, ceil_mode=True)  # (B, C, ceil(H/2), ceil(W/2)); partial windows average valid cells


class DenseLayer(Block):
    """out = cat([x, branch(x)], dim=1): (B, C, H, W) -> (B, C + k, H, W)."""

    def __init__(self, c_in: int, growth_rate: int, bottleneck: bool):
        k = growth_rate
        if bottleneck:
            layers = [("bn1", nn.BatchNorm2d(c_in)), ("relu1", nn.ReLU()),
                      ("conv1", conv1x1(c_in, 4 * k)),  # (B, 4k, H, W)
                      ("bn2", nn.BatchNorm2d(4 * k)), ("relu2", nn.ReLU()),
                      ("conv2", conv3x3(4 * k, k))]     # (B, k, H, W)
        else:
            layers = [("bn1", nn.BatchNorm2d(c_in)), ("relu1", nn.ReLU()), ("conv1", conv3x3(c_in, k))]
        super().__init__(nn.Sequential(OrderedDict(layers)), ShortcutA(c_in, c_in + k),
                         has_shortcut=True, post=nn.Identity())
        self.growth_rate = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C + k, H, W)
        if self._branch_off(x):
            return self.sum(self.shortcut(x))  # the k new channels are zero
        new = self.survival_scale(self.branch(x))  # (B, k, H, W)
        return self.sum(torch.cat([x, new], 1))

    def zero_init_residual_(self) -> None:
        """Zero the layer's last conv: its k new channels start at exactly 0 (the lesioned layer)."""
        last = self.branch.conv2 if hasattr(self.branch, "conv2") else self.branch.conv1
        nn.init.zeros_(last.weight)


class TransitionShortcut(nn.Module):
    """Parameter-free stand-in for a lesioned transition: 2x2 average pool, first ``c_out`` channels."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        if not 0 < c_out <= c_in:
            raise ValueError(f"transition must keep 1..{c_in} channels, got {c_out}")
        self.c_in, self.c_out = c_in, c_out
        self.pool = avg_pool2()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, c_out, H', W')
        return self.pool(x)[:, :self.c_out]

    def extra_repr(self) -> str:
        return f"{self.c_in}, {self.c_out}"


class Transition(Block):
    """BN-ReLU-conv1x1(c_out)-AvgPool2, a plain depth unit (``has_shortcut = False``)."""

    def __init__(self, c_in: int, c_out: int):
        branch = nn.Sequential(OrderedDict([
            ("bn1", nn.BatchNorm2d(c_in)), ("relu1", nn.ReLU()),
            ("conv1", conv1x1(c_in, c_out)),  # (B, c_out, H, W)
            ("pool", avg_pool2()),            # (B, c_out, ceil(H/2), ceil(W/2))
        ]))
        super().__init__(branch, TransitionShortcut(c_in, c_out), has_shortcut=False, post=nn.Identity())


def densenet_stages(spec: ModelSpec, c: int) -> tuple[List[List[Block]], int]:
    """3 dense blocks of n layers, a transition closing blocks 1 and 2; returns (stages, channels out)."""
    k, bc = spec.options["growth_rate"], spec.options["bottleneck"]
    n = (BC_DEPTHS if bc else DENSENET_DEPTHS).blocks(spec.depth)
    stages = []
    for s in range(3):
        stage: List[Block] = []
        for _ in range(n):
            stage.append(DenseLayer(c, k, bc))
            c += k
        if s < 2:
            c_out = math.floor(spec.options["compression"] * c)
            stage.append(Transition(c, c_out))
            c = c_out
        stages.append(stage)  # (B, c, H / 2^s, W / 2^s)
    return stages, c


def validate_densenet(spec: ModelSpec) -> None:
    o = spec.options
    k, bc, comp = o["growth_rate"], o["bottleneck"], o["compression"]
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise ValueError(f"growth_rate must be a positive integer (k new channels per dense layer), got {k!r}")
    if not isinstance(bc, bool):
        raise ValueError(f"bottleneck must be True (DenseNet-BC layers) or False (basic layers), got {bc!r}")
    if isinstance(comp, bool) or not isinstance(comp, (int, float)) or not 0.0 < comp <= 1.0:
        raise ValueError(f"compression must be a number in (0, 1] (0.5 for DenseNet-BC, 1.0 for basic), got {comp!r}")
    if bc and not BC_DEPTHS.is_valid(spec.depth):
        raise ValueError(f"depth {spec.depth!r} is not valid for model family 'densenet' with bottleneck=True: "
                         f"{BC_DEPTHS.describe()}")
    if bc and spec.width != 16:
        raise ValueError(f"width must stay 16 for DenseNet-BC (bottleneck=True): its stem has 2 * growth_rate "
                         f"channels; change growth_rate instead (got width={spec.width!r})")
    if spec.shortcut != "A":
        raise ValueError("shortcut must be 'A' for the 'densenet' family: a dense layer's shortcut is its "
                         "concatenated input (zero-padded when lesioned), never a projection")
    c = 2 * k if bc else spec.width
    n = (BC_DEPTHS if bc else DENSENET_DEPTHS).blocks(spec.depth)
    if math.floor(comp * (c + n * k)) < 1:
        raise ValueError(f"compression {comp!r} leaves no channels after the first transition")


@register_family("densenet", layout="cifar", residual=True, depths=DENSENET_DEPTHS, depth=40, width=16,
                 options=dict(growth_rate=Option(int, 12, "k, channels each dense layer adds"),
                              bottleneck=Option(bool, False, "DenseNet-BC: 1x1 bottleneck layers"),
                              compression=Option(float, 1.0, "transition compression (0.5 for BC)")),
                 validate=validate_densenet,
                 description="Huang et al. 2017 CIFAR DenseNet / DenseNet-BC")
def cifar_densenet(spec: ModelSpec) -> DepthNet:
    c = 2 * spec.options["growth_rate"] if spec.options["bottleneck"] else spec.width
    # (B, c, H, W); the first dense layer pre-activates it
    stem = nn.Sequential(OrderedDict([("conv", conv3x3(spec.in_channels, c))]))
    stages, c = densenet_stages(spec, c)
    final = nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(c)), ("relu", nn.ReLU())]))
    net = DepthNet(spec, stem, stages, features=c, final=final)
    for i, block in enumerate(net.blocks):  # "stage1.block13" -> "stage1.transition"
        if isinstance(block, Transition):
            net.block_names[i] = net.block_names[i].split(".")[0] + ".transition"
    return net


register_preset("densenet40", "densenet", depth=40, growth_rate=12,
                description="DenseNet (L=40, k=12), ~1.0M params")
register_preset("densenet-bc100", "densenet", depth=100, growth_rate=12, bottleneck=True, compression=0.5,
                description="DenseNet-BC (L=100, k=12), ~0.8M params")
register_preset("densenet-bc190", "densenet", depth=190, growth_rate=40, bottleneck=True, compression=0.5,
                description="DenseNet-BC (L=190, k=40), ~25.6M params")
