"""vanilla: the vanilla CNN of Xiao et al. 2018 ("Dynamical Isometry and a Mean Field Theory of
CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks", arXiv 1806.05393).

    conv3x3(in -> w) - act - [conv3x3(w -> w) - act] x (depth - 2) - global average pool - fc

A stack of conv-activation layers of constant width ``w`` with no normalisation and no shortcuts;
every conv has a bias. Depth = weighted layers = convs + fc (>= 3). Every conv after the stem is
its own depth unit (a ``Block`` with ``has_shortcut = False``, like ``xie-plain``): a lesioned unit
returns its parameter-free option-A shortcut (the identity, subsampled where strided).

Family options (the paper's constants are not verified here; these are readings, configurable):

- ``activation``: ``"tanh"`` (default, the paper's), ``relu``, ``leaky_relu``, ``sigmoid``,
  ``linear`` (the identity: a deep linear net, whose Jacobian is exactly sigma_w^L at
  delta-orthogonal init and sigma_b = 0).
- ``sigma_w``, ``sigma_b``: the weight and bias scales the ``delta-orthogonal`` and ``gaussian``
  inits use (``init.py``): delta-orthogonal centre taps are orthogonal times sigma_w, Gaussian
  weights N(0, sigma_w^2 / fan_in); biases N(0, sigma_b^2). Defaults 1.0 and 0.0: for tanh with
  sigma_b = 0 the order-to-chaos critical point is exactly sigma_w^2 = 1 (tanh'(0) = 1); the paper
  puts the critical line near sigma_w^2 = 1 with a small sigma_b^2.
- ``strided``: how many of the first convs have stride 2 (default 0). The paper downsamples a
  large input with a few strided layers at the start; an 8x8 ``digits`` image needs none, a 32x32
  CIFAR image reaches 8x8 with 2 (our reading of "a few").

The default init is ``delta-orthogonal``; ``init=gaussian`` is the paper's baseline at the same scales.
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
