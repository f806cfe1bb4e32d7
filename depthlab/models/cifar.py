"""CIFAR layout (He et al. 2015, Sec. 4.2): 3x3 conv stem, 3 stages of n blocks at widths
w/2w/4w (w = 16), stride 2 opening stages 2 and 3, global average pool, fc. Depth = 6n + 2.

Families: ``resnet`` (post-activation, option A), ``plain`` (same layers, no additions),
``preact-resnet`` (He et al. 2016 identity-mapping blocks, final BN-ReLU before pooling).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List

from torch import nn

from depthlab.models.blocks import BasicBlock, Block, PreActBlock
from depthlab.models.layers import conv3x3
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset

CIFAR_DEPTHS = DepthRule(step=6, offset=2)


def cifar_stages(spec: ModelSpec, make_block: Callable[[int, int, int], Block]) -> List[List[Block]]:
    """3 stages of n = (depth - 2) / 6 blocks; ``make_block(c_in, c_out, stride)``."""
    n = CIFAR_DEPTHS.blocks(spec.depth)
    stages, c_in = [], spec.width
    for s, c_out in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
        stage = []
        for b in range(n):
            stage.append(make_block(c_in, c_out, 2 if s > 0 and b == 0 else 1))
            c_in = c_out
        stages.append(stage)  # (B, c_out, H / 2^s, W / 2^s)
    return stages


def cifar_stem(spec: ModelSpec, norm: bool = True) -> nn.Sequential:
    layers = [("conv", conv3x3(spec.in_channels, spec.width))]  # (B, w, H, W)
    if norm:
        layers += [("bn", nn.BatchNorm2d(spec.width)), ("relu", nn.ReLU())]
    return nn.Sequential(OrderedDict(layers))


@register_family("resnet", layout="cifar", residual=True, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2015 CIFAR ResNet, post-activation basic blocks")
def cifar_resnet(spec: ModelSpec) -> DepthNet:
    stages = cifar_stages(spec, lambda c_in, c_out, s: BasicBlock(c_in, c_out, s, True, spec.shortcut))
    return DepthNet(spec, cifar_stem(spec), stages, features=4 * spec.width)


@register_family("plain", layout="cifar", residual=False, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2015 CIFAR plain net: the ResNet without shortcut additions")
def cifar_plain(spec: ModelSpec) -> DepthNet:
    stages = cifar_stages(spec, lambda c_in, c_out, s: BasicBlock(c_in, c_out, s, False))
    return DepthNet(spec, cifar_stem(spec), stages, features=4 * spec.width)


@register_family("preact-resnet", layout="cifar", residual=True, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2016 pre-activation (identity-mapping) CIFAR ResNet")
def cifar_preact_resnet(spec: ModelSpec) -> DepthNet:
    stages = cifar_stages(spec, lambda c_in, c_out, s: PreActBlock(c_in, c_out, s, spec.shortcut))
    c = 4 * spec.width
    final = nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(c)), ("relu", nn.ReLU())]))
    # The stem is the bare conv: the first block's BN-ReLU pre-activates it.
    return DepthNet(spec, cifar_stem(spec, norm=False), stages, features=c, final=final)


for _depth in (20, 32, 44, 56, 110, 1202):
    register_preset(f"resnet{_depth}", "resnet", depth=_depth)
for _depth in (20, 32, 44, 56, 110):
    register_preset(f"plain{_depth}", "plain", depth=_depth)
for _depth in (20, 56, 110):
    register_preset(f"preact-resnet{_depth}", "preact-resnet", depth=_depth)
