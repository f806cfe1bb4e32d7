"""CReLU and the CReLU block (Balduzzi et al. 2017, arXiv 1702.08591, Sec. 5; CReLU: Shang et al.
2016, arXiv 1603.05201): ``CReLU(x) = cat[relu(x), relu(-x)]``, so with the looks-linear init
[W, -W] of the next layer the net is exactly linear at init. Each ReLU of the plain / resnet
layout moves to the start of the next unit (the stream carries the pre-activation sum); every conv
after a CReLU has twice the fan-in. Layout, parameter counts and checks: docs/methods.md, "CReLU
and looks-linear initialisation".
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.layers import conv3x3, make_shortcut


def crelu(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Concatenated ReLU: ``cat[relu(x), relu(-x)]`` along ``dim`` (channels), out of place."""
    return torch.cat([torch.relu(x), torch.relu(-x)], dim=dim)


class CReLU(nn.Module):
    """Module form of ``crelu`` (doubles the channel dimension)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, 2C, H, W)
        return crelu(x)


def mark_after_crelu(layer: nn.Module) -> nn.Module:
    """Flag a conv / linear as reading a CReLU output (the ``looks-linear`` init gives it [W, -W])."""
    layer.after_crelu = True
    return layer


class CReLUBlock(Block):
    """CReLU-conv1-BN-CReLU-conv2-BN (+ shortcut(x) when ``residual``), nothing after the sum (see
    the module docstring). ``residual=False`` is the plain CReLU block (option-A shortcut kept for
    lesions). The stream in and out has C_in / C_out channels; the convs see 2C inputs."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, residual: bool = True, shortcut: str = "A"):
        branch = nn.Sequential(OrderedDict([
            ("crelu0", CReLU()),                                          # (B, 2C_in, H, W)
            ("conv1", mark_after_crelu(conv3x3(2 * c_in, c_out, stride))),  # (B, C_out, H', W')
            ("bn1", nn.BatchNorm2d(c_out)),
            ("relu1", CReLU()),                                           # (B, 2C_out, H', W')
            ("conv2", mark_after_crelu(conv3x3(2 * c_out, c_out))),
            ("bn2", nn.BatchNorm2d(c_out)),
        ]))
        super().__init__(branch, make_shortcut(shortcut if residual else "A", c_in, c_out, stride),
                         has_shortcut=residual, post=nn.Identity())

    def zero_init_residual_(self) -> None:
        nn.init.zeros_(self.branch.bn2.weight)
