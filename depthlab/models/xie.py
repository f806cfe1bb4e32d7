"""Xie, Xiong & Pu 2017 ("All You Need is Beyond a Good Init", arXiv 1703.01827) plain nets, CIFAR
layout: repeated Conv-BN-ReLU triples without shortcuts. A 3x3 conv-BN-ReLU stem (w = 16), 3 stages
of m conv-BN-ReLU units at widths w/2w/4w (stride 2 opening stages 2 and 3), global average pool,
fc. Depth = 3m + 2: xie-plain44 (m = 14), xie-plain110 (m = 36).

Every conv-BN-ReLU is its own depth unit (a ``Block`` with ``has_shortcut = False``): the layers,
parameters and function are those of He et al.'s ``plain{3m+2}`` with m even (whose blocks group
two convs), only lesions and stochastic depth act on single layers here. A lesioned unit returns its
parameter-free option-A shortcut (identity; subsample + zero-pad where the shape changes).
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.cifar import cifar_stages, cifar_stem
from depthlab.models.layers import ShortcutA, conv3x3
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset

XIE_DEPTHS = DepthRule(step=3, offset=2)


class ConvUnit(Block):
    """conv3x3-BN (branch), ReLU (post): the plain block of one conv, as ``BasicBlock``'s layout."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        branch = nn.Sequential(OrderedDict([
            ("conv1", conv3x3(c_in, c_out, stride)),  # (B, C_out, ceil(H/s), ceil(W/s))
            ("bn1", nn.BatchNorm2d(c_out)),
        ]))
        super().__init__(branch, ShortcutA(c_in, c_out, stride), has_shortcut=False, post=nn.ReLU())


@register_family("xie-plain", layout="cifar", residual=False, depths=XIE_DEPTHS, depth=44, width=16,
                 description="Xie et al. 2017 plain CIFAR net: repeated conv-BN-ReLU, one conv per depth unit")
def cifar_xie_plain(spec: ModelSpec) -> DepthNet:
    return DepthNet(spec, cifar_stem(spec), cifar_stages(spec, ConvUnit, XIE_DEPTHS), features=4 * spec.width)


for _depth in (44, 110):
    register_preset(f"xie-plain{_depth}", "xie-plain", depth=_depth)
