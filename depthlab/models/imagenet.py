"""ImageNet layout (He et al. 2015, Table 1; torchvision's ResNet-18/34): 7x7/2 conv(64)-BN-ReLU,
3x3/2 max-pool, 4 stages of basic blocks at widths w/2w/4w/8w (w = 64), stride 2 opening stages
2-4, global average pool, fc. Residual nets default to option-B projections where the shape
changes (torchvision's parameter counts); plain nets have no shortcut parameters at all.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import List

from torch import nn

from depthlab.models.blocks import BasicBlock, Block
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
IMAGENET_DEPTHS = DepthRule(choices=tuple(STAGE_BLOCKS))


def imagenet_stem(spec: ModelSpec) -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(spec.in_channels, spec.width, 7, stride=2, padding=3, bias=False)),  # (B, w, H/2, W/2)
        ("bn", nn.BatchNorm2d(spec.width)),
        ("relu", nn.ReLU()),
        ("pool", nn.MaxPool2d(3, stride=2, padding=1)),  # (B, w, H/4, W/4)
    ]))


def imagenet_net(spec: ModelSpec) -> DepthNet:
    stages: List[List[Block]] = []
    c_in = spec.width
    for s, n in enumerate(STAGE_BLOCKS[spec.depth]):
        c_out = spec.width * 2 ** s
        stage = []
        for b in range(n):
            stage.append(BasicBlock(c_in, c_out, 2 if s > 0 and b == 0 else 1, spec.residual, spec.shortcut))
            c_in = c_out
        stages.append(stage)  # (B, c_out, H / 2^(s+2), W / 2^(s+2))
    return DepthNet(spec, imagenet_stem(spec), stages, features=c_in)


_DEFAULTS = dict(depth=18, width=64, num_classes=1000)
register_family("resnet-imagenet", layout="imagenet", residual=True, depths=IMAGENET_DEPTHS, shortcut="B",
                description="He et al. 2015 ImageNet ResNet (basic blocks), torchvision layout",
                **_DEFAULTS)(imagenet_net)
register_family("plain-imagenet", layout="imagenet", residual=False, depths=IMAGENET_DEPTHS,
                description="He et al. 2015 ImageNet plain net: ResNet layout, no shortcuts",
                **_DEFAULTS)(imagenet_net)

for _depth in STAGE_BLOCKS:
    register_preset(f"resnet{_depth}", "resnet-imagenet", depth=_depth)
    register_preset(f"plain{_depth}", "plain-imagenet", depth=_depth)
