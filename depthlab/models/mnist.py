"""The MNIST ResNet of the residual-networks lecture: a 1x1 conv0 (1 -> 16, with bias, no BN and
no activation after it), n = 25 blocks of conv3x3(bias)-BN-ReLU-conv3x3(bias)-BN + x, ReLU, all at
16 channels and full resolution, global average pool (28x28 on MNIST), fc 16 -> 10.
Depth = 2n + 2 (conv0 + 2n convs + fc): 52 by default, 117,802 parameters.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from depthlab.models.blocks import BasicBlock
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset

MNIST_DEPTHS = DepthRule(step=2, offset=2)


@register_family("mnist-resnet", layout="mnist", residual=True, depths=MNIST_DEPTHS, depth=52, width=16,
                 in_channels=1, description="the lecture's MNIST ResNet: 1x1 conv0, 25 biased basic blocks")
def mnist_resnet(spec: ModelSpec) -> DepthNet:
    stem = nn.Sequential(OrderedDict([("conv", nn.Conv2d(spec.in_channels, spec.width, 1, bias=True))]))
    blocks = [BasicBlock(spec.width, spec.width, 1, True, spec.shortcut, bias=True)  # (B, w, H, W)
              for _ in range(MNIST_DEPTHS.blocks(spec.depth))]
    return DepthNet(spec, stem, [blocks], features=spec.width)


register_preset("mnist-resnet", "mnist-resnet")
