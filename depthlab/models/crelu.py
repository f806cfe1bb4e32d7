"""CReLU and the CReLU block (Balduzzi et al. 2017, "The Shattered Gradients Problem: If resnets are
the answer, then what is the question?", arXiv 1702.08591, Sec. 5; CReLU from Shang et al. 2016,
arXiv 1603.05201).

    CReLU(x) = cat[relu(x), relu(-x)] along channels        (B, C, H, W) -> (B, 2C, H, W)

so every layer that reads a CReLU output has twice the fan-in; the builder flags it
``after_crelu = True`` and the ``looks-linear`` init gives it weight [W, -W], which makes it
exactly linear at init: [W, -W] . crelu(x) = W relu(x) - W relu(-x) = W x.

Selected with the model option ``activation="crelu"`` on the CIFAR ``plain`` and ``resnet``
families (``cifar.py``). The CReLU network keeps the ReLU network's layer sequence with each ReLU
moved to the start of the next unit:

    stem:   conv - BN                                   (the first block's CReLU activates it)
    block:  CReLU - conv1(2C_in -> C_out) - BN - CReLU - conv2(2C_out -> C_out) - BN  (+ shortcut)
    final:  CReLU before the pool; fc(8w -> classes) is flagged too

so the stream between blocks is the pre-activation sum s. For ``plain`` this is the same network
as "post-activation CReLU after every block" (the activation merely changes side of the block
boundary). For ``resnet`` the shortcut carries s = the difference of the two CReLU halves
crelu(s)[:C] - crelu(s)[C:], where the ReLU ResNet's shortcut carries relu(s): a ReLU on the
identity path would break exact linearity, and the 2C-channel CReLU output cannot be added to the
C-channel branch. A lesioned block returns ``shortcut(x)`` on that stream (option A or B).

Parameters: every block conv and the fc have twice the fan-in. At depth 56 (n = 9) the ReLU
ResNet has 853,018 parameters; the CReLU ResNet has 1,701,530 at width 16 (2.0x), 805,485 at width 11
(-5.6%) and 958,198 at width 12 (+12.3%): ``width=11`` is the comparable budget (checked in
tests/test_remedies_models.py).
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
