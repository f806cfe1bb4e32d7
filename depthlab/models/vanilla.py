"""vanilla: the vanilla CNN of Xiao et al. 2018 ("Dynamical Isometry and a Mean Field Theory of
CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks", arXiv 1806.05393).

    conv3x3(in -> w) - act - [conv3x3(w -> w) - act] x (depth - 2) - global average pool - fc

No normalisation, no shortcuts, a bias on every conv; default init ``delta-orthogonal``. The family options
(``activation``, ``sigma_w``, ``sigma_b``, ``strided``) are readings of the paper, configurable.
Details: docs/methods.md, section "The vanilla family (Xiao et al.'s setting)".
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from depthlab.models.blocks import Block
from depthlab.models.layers import ShortcutA, activation_layer, conv3x3
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset
from depthlab.registry import Option

VANILLA_DEPTHS = DepthRule(step=1, offset=2)
VANILLA_ACTIVATIONS = ("tanh", "relu", "leaky_relu", "sigmoid", "linear")


class VanillaUnit(Block):
    """conv3x3 with bias (branch), activation (post); no norm, no shortcut addition."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, act=nn.Tanh):
        branch = nn.Sequential(OrderedDict([("conv1", conv3x3(c_in, c_out, stride, bias=True))]))
        super().__init__(branch, ShortcutA(c_in, c_out, stride), has_shortcut=False, post=act())


def validate_vanilla(spec: ModelSpec) -> None:
    o = spec.options
    if o["activation"] not in VANILLA_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, VANILLA_ACTIVATIONS))} for model "
                         f"family 'vanilla', got {o['activation']!r}")
    for k in ("sigma_w", "sigma_b"):
        v = o[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{k} must be a non-negative number (a weight or bias scale), got {v!r}")
    s = o["strided"]
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= spec.depth - 1:
        raise ValueError(f"strided must be an integer from 0 to depth - 1 = {spec.depth - 1} (the stride-2 "
                         f"convs at the start), got {s!r}")


@register_family("vanilla", layout="cifar", residual=False, depths=VANILLA_DEPTHS, depth=32, width=16,
                 init="delta-orthogonal",
                 description="Xiao et al. 2018 vanilla CNN: conv-tanh of constant width, no BN, no shortcuts",
                 options=dict(
                     activation=Option(str, "tanh", "tanh | relu | leaky_relu | sigmoid | linear",
                                       choices=VANILLA_ACTIVATIONS),
                     sigma_w=Option(float, 1.0, "weight scale of the delta-orthogonal / gaussian init"),
                     sigma_b=Option(float, 0.0, "bias scale: biases N(0, sigma_b^2) at init"),
                     strided=Option(int, 0, "how many of the first convs have stride 2")),
                 validate=validate_vanilla)
def vanilla(spec: ModelSpec) -> DepthNet:
    act, w, strided = activation_layer(spec.options["activation"]), spec.width, spec.options["strided"]
    stem = nn.Sequential(OrderedDict([
        ("conv", conv3x3(spec.in_channels, w, 2 if strided >= 1 else 1, bias=True)),  # (B, w, H', W')
        ("relu", act())]))
    units = [VanillaUnit(w, w, 2 if i + 2 <= strided else 1, act) for i in range(spec.depth - 2)]
    return DepthNet(spec, stem, [units], features=w)


for _depth in (32, 1002):
    register_preset(f"vanilla{_depth}", "vanilla", depth=_depth)
