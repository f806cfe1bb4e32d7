"""Fixup ResNet for CIFAR: Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without
Normalization" (arXiv 1901.09321), Sec. 3 and the authors' ``fixup_resnet_cifar.py``.

No normalisation; learnable scalar biases (0) and multipliers (1) around each block's convs. With L = 3n
branches of m = 2 convs: conv1 He-normal times L^(-1/(2m-2)) = L^(-1/2), conv2 and the fc zero, so the
initial loss is exactly ln(num_classes). Option-A shortcut on ``x`` itself; Fixup's own init only.
Details: docs/methods.md, section "Fixup".
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.cifar import CIFAR_DEPTHS, cifar_stages
from depthlab.models.init import kaiming_normal_fan_out_
from depthlab.models.layers import ScalarBias, ScalarScale, conv3x3, make_shortcut
from depthlab.models.net import DepthNet
from depthlab.models.spec import ModelSpec, register_family, register_preset


class FixupBlock(Block):
    """Fixup basic block (Zhang et al. 2019, Fig. 1 right): scalar biases before each conv and
    activation, a scalar multiplier after the last conv, no BN. Parameters: the two 3x3 convs
    plus 5 scalars (bias1a, bias1b, bias2a, bias2b, scale), reachable as ``block.bias1a`` etc."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        branch = nn.Sequential(OrderedDict([
            ("bias1a", ScalarBias()),
            ("conv1", conv3x3(c_in, c_out, stride)),  # (B, C_out, ceil(H/s), ceil(W/s))
            ("bias1b", ScalarBias()),
            ("relu1", nn.ReLU()),
            ("bias2a", ScalarBias()),
            ("conv2", conv3x3(c_out, c_out)),
            ("scale", ScalarScale()),
            ("bias2b", ScalarBias()),
        ]))
        super().__init__(branch, make_shortcut("A", c_in, c_out, stride), has_shortcut=True, post=nn.ReLU())

    @property
    def bias1a(self) -> nn.Parameter:
        return self.branch.bias1a.bias

    @property
    def bias1b(self) -> nn.Parameter:
        return self.branch.bias1b.bias

    @property
    def bias2a(self) -> nn.Parameter:
        return self.branch.bias2a.bias

    @property
    def bias2b(self) -> nn.Parameter:
        return self.branch.bias2b.bias

    @property
    def scale(self) -> nn.Parameter:
        return self.branch.scale.scale

    def fixup_init_(self, num_branches: int) -> None:
        """Rules 2-3 of Fixup for m = 2: conv1 He-normal (fan_out) * L^(-1/2), conv2 zero."""
        kaiming_normal_fan_out_(self.branch.conv1.weight)
        with torch.no_grad():
            self.branch.conv1.weight.mul_(num_branches ** (-1.0 / (2 * 2 - 2)))
        nn.init.zeros_(self.branch.conv2.weight)

    def zero_init_residual_(self) -> None:
        nn.init.zeros_(self.branch.conv2.weight)


def validate_fixup(spec: ModelSpec) -> None:
    if spec.init != "fixup":
        raise ValueError(f"init must be 'fixup' for model family 'fixup-resnet', got {spec.init!r}: Fixup defines "
                         f"its own init (Zhang et al. 2019: scaled first conv, zero last conv and classifier)")
    if spec.zero_init_residual:
        raise ValueError("zero_init_residual must be False for model family 'fixup-resnet': Fixup defines its own "
                         "init and already zeroes the last conv of every residual branch")
    if spec.shortcut != "A":
        raise ValueError(f"shortcut must be 'A' for model family 'fixup-resnet' (norm-free, as the Fixup CIFAR "
                         f"networks), got {spec.shortcut!r}")


@register_family("fixup-resnet", layout="cifar", residual=True, depths=CIFAR_DEPTHS, depth=20, width=16,
                 init="fixup", validate=validate_fixup,
                 description="Zhang et al. 2019 Fixup CIFAR ResNet: no normalisation, Fixup init")
def fixup_resnet(spec: ModelSpec) -> DepthNet:
    stages = cifar_stages(spec, lambda c_in, c_out, s: FixupBlock(c_in, c_out, s))
    stem = nn.Sequential(OrderedDict([("conv", conv3x3(spec.in_channels, spec.width)),  # (B, w, H, W)
                                      ("bias1", ScalarBias()), ("relu", nn.ReLU())]))
    return DepthNet(spec, stem, stages, features=4 * spec.width, final=ScalarBias())


for _depth in (20, 56, 110):
    register_preset(f"fixup-resnet{_depth}", "fixup-resnet", depth=_depth)

__all__ = ["FixupBlock", "fixup_resnet", "validate_fixup"]
