"""Highway networks (Srivastava, Greff & Schmidhuber 2015, arXiv 1505.00387 / 1507.06228), CIFAR
layout: conv-BN-ReLU stem, 3 stages of n highway layers at widths w/2w/4w, pool, fc. Depth = 3n + 2
(the gate convs are not counted, as in the paper).

    y = T * H(x) + (1 - T) * C(x),   H = ReLU(BN(conv3x3(x))),   T = sigmoid(conv3x3_T(x) + b_T)

The gate conv's shape is depthlab's choice and ``gate_bias`` (b_T, default -2) a reading of the paper's
-1..-3. Details: docs/methods.md, section "Highway gate".
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.cifar import cifar_stem
from depthlab.models.layers import conv3x3, make_shortcut
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset
from depthlab.registry import Option

HIGHWAY_DEPTHS = DepthRule(step=3, offset=2)
DEFAULT_GATE_BIAS = -2.0
# depthlab's choice (the paper's conv gate init is unverified here): the gate conv's weights are the
# init scheme's times this scale, so T starts close to sigmoid(b_T) everywhere; see GateConv.
DEFAULT_GATE_WEIGHT_SCALE = 0.1


class GateConv(nn.Conv2d):
    """3x3 conv whose per-channel bias ``gate_bias`` (b_T) is a separate parameter, initialised to
    ``init_bias`` and left alone by the init schemes (they zero ``bias``, which is None here).
    Output: the gate pre-activation conv_T(x) + b_T, (B, C_out, H', W')."""

    def __init__(self, c_in: int, c_out: int, stride: int, init_bias: float, weight_scale: float = 1.0):
        super().__init__(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.init_bias = float(init_bias)
        self.weight_scale = float(weight_scale)
        self.gate_bias = nn.Parameter(torch.full((c_out,), self.init_bias))

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if hasattr(self, "gate_bias"):  # nn.Conv2d.__init__ calls this before gate_bias exists
            with torch.no_grad():
                self.gate_bias.fill_(self.init_bias)

    def reset_scalars_(self) -> None:
        """Called by every init scheme after its weight init: b_T back to ``init_bias`` and the gate
        weight scaled by ``weight_scale`` (unnormalised He-initialised gate convs make the gradient
        explode backwards through deep highway nets: measured at 56 layers, stem/fc gradient-norm
        ratio 700 at scale 1 vs 0.85 at scale 0.1)."""
        with torch.no_grad():
            self.gate_bias.fill_(self.init_bias)
            self.weight.mul_(self.weight_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.gate_bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gate_bias={self.init_bias}"


class HighwayTransform(nn.Module):
    """The gated transform: ``transform(x) = H(x)``, ``gate(x) = T(x)``, ``forward(x) = T * H``."""

    def __init__(self, c_in: int, c_out: int, stride: int, gate_bias: float, gate_weight_scale: float = 1.0):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)  # (B, C_out, ceil(H/s), ceil(W/s))
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        # registered after conv1: tap order = forward order
        self.gate = GateConv(c_in, c_out, stride, gate_bias, gate_weight_scale)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu1(self.bn1(self.conv1(x)))

    def transform_gate(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform_gate(x) * self.transform(x)


class HighwayBlock(Block):
    """One highway layer: ``y = T * H(x) + (1 - T) * shortcut(x)``; ``has_shortcut`` is True."""

    def __init__(self, c_in: int, c_out: int, stride: int, gate_bias: float, shortcut: str = "A",
                 gate_weight_scale: float = 1.0):
        super().__init__(HighwayTransform(c_in, c_out, stride, gate_bias, gate_weight_scale),
                         make_shortcut(shortcut, c_in, c_out, stride), has_shortcut=True, post=nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        carry = self.shortcut(x)
        if self._branch_off(x):
            return self.sum(carry)
        h = self.branch.transform(x)
        t = self.survival_scale(self.branch.transform_gate(x))
        return self.sum(torch.lerp(carry, h, t))  # carry + T (H - carry) = T H + (1 - T) carry


def highway_stages(spec: ModelSpec) -> List[List[Block]]:
    n, gate_bias = HIGHWAY_DEPTHS.blocks(spec.depth), float(spec.options["gate_bias"])
    stages, c_in = [], spec.width
    for s, c_out in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
        stage = []
        for b in range(n):
            stage.append(HighwayBlock(c_in, c_out, 2 if s > 0 and b == 0 else 1, gate_bias, spec.shortcut,
                                      float(spec.options["gate_weight_scale"])))
            c_in = c_out
        stages.append(stage)  # (B, c_out, H / 2^s, W / 2^s)
    return stages


def validate_highway(spec: ModelSpec) -> None:
    b = spec.options["gate_bias"]
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b):
        raise ValueError(f"gate_bias must be a finite number (the transform-gate bias b_T; Srivastava et al. "
                         f"use -1 to -3, default {DEFAULT_GATE_BIAS}), got {b!r}")
    w = spec.options["gate_weight_scale"]
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w >= 0):
        raise ValueError(f"gate_weight_scale must be a finite number >= 0 (scales the gate conv's initial "
                         f"weights; default {DEFAULT_GATE_WEIGHT_SCALE}), got {w!r}")
    if spec.zero_init_residual:
        raise ValueError("zero_init_residual must be False for the 'highway' family: a highway layer starts near "
                         "its carry path through a negative gate_bias instead")


@register_family("highway", layout="cifar", residual=True, depths=HIGHWAY_DEPTHS, depth=20, width=16,
                 options=dict(gate_bias=Option(float, DEFAULT_GATE_BIAS, "transform-gate bias at init (negative)"),
                              gate_weight_scale=Option(float, DEFAULT_GATE_WEIGHT_SCALE,
                                                       "gate conv weights = the init scheme's x this")),
                 validate=validate_highway,
                 description="Srivastava et al. 2015 convolutional highway network, CIFAR layout")
def cifar_highway(spec: ModelSpec) -> DepthNet:
    return DepthNet(spec, cifar_stem(spec), highway_stages(spec), features=4 * spec.width)


for _depth in (20, 32, 110):
    register_preset(f"highway{_depth}", "highway", depth=_depth)
