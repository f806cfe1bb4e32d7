"""Small pieces: conv helpers and the two shortcuts of He et al. 2015 (Sec. 3.3 / 4.2).

Option A is a functional core (``shortcut_a``) plus a thin module (``ShortcutA``), timm-style.
Every ReLU in depthlab is out-of-place: a forward hook on a tap must see that point's output, and an
in-place ReLU downstream would overwrite the tensor the hook captured.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict

import torch
import torch.nn.functional as F
from torch import nn


def conv3x3(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 conv, padding 1: output size ceil(H / stride), the same as ``x[..., ::stride, ::stride]``."""
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)


def conv1x1(c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias)


def shortcut_a(x: torch.Tensor, c_out: int, stride: int = 1) -> torch.Tensor:
    """Option A: identity, subsampled by ``stride``, with channels ``C_in..c_out-1`` zero.

    ``x[..., ::s, ::s]`` has ceil(H/s) rows, exactly the size of a stride-s 3x3/pad-1 conv (or a
    stride-s 1x1 conv) for every H, odd sizes and H = 1 included. The kept channels come first
    (some reproductions pad symmetrically; parameter count and function class are the same).
    """
    if stride > 1:
        x = x[:, :, ::stride, ::stride]  # (B, C_in, ceil(H/s), ceil(W/s))
    pad = c_out - x.shape[1]
    if pad > 0:
        x = F.pad(x, (0, 0, 0, 0, 0, pad))  # (B, c_out, H', W'), zeros of x's dtype and device
    return x


class ShortcutA(nn.Module):
    """Parameter-free option-A shortcut (He et al. 2015, used for all their CIFAR results)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        if c_out < c_in:
            raise ValueError(f"option A shortcut cannot reduce channels ({c_in} -> {c_out})")
        self.c_in, self.c_out, self.stride = c_in, c_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        return shortcut_a(x, self.c_out, self.stride)

    def extra_repr(self) -> str:
        return f"{self.c_in}, {self.c_out}, stride={self.stride}"


class ShortcutB(nn.Sequential):
    """Option B: 1x1 projection (+ BN when ``norm``) where the shape changes (He et al. 2015, eq. 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: bool = True):
        layers = [("conv", conv1x1(c_in, c_out, stride))]
        if norm:
            layers.append(("bn", nn.BatchNorm2d(c_out)))
        super().__init__(OrderedDict(layers))


def make_shortcut(kind: str, c_in: int, c_out: int, stride: int = 1, norm: bool = True) -> nn.Module:
    """Identity where the shape is unchanged; otherwise option A (zero-pad) or B (projection)."""
    if c_in == c_out and stride == 1:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(c_in, c_out, stride)
    if kind == "B":
        return ShortcutB(c_in, c_out, stride, norm=norm)
    raise ValueError(f"shortcut must be 'A' or 'B', got {kind!r}")


def sample_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-sample Bernoulli(p) keep mask of shape (B, 1, ..., 1), in ``x``'s dtype and on its device
    (the functional core of per-sample stochastic depth, timm's ``drop_path`` without rescaling:
    Huang et al. 2016 scale by p at test time instead)."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    return (torch.rand(shape, device=x.device) < p).to(x.dtype)


class ScalarBias(nn.Module):
    """A learnable scalar added to every element (Fixup's bias1a/1b/2a/2b; Zhang et al. 2019,
    arXiv 1901.09321, Sec. 3), 0 at init."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def reset_scalars_(self) -> None:
        with torch.no_grad():
            self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class ScalarScale(nn.Module):
    """A learnable scalar multiplier (Fixup's ``scale``, Zhang et al. 2019, Sec. 3), 1 at init."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def reset_scalars_(self) -> None:
        with torch.no_grad():
            self.scale.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


# The nonlinearities a family's ``activation`` option selects (``crelu`` doubles channels and is built
# by crelu.py). Each is a zero-argument module factory; every module here is out of place.
ACTIVATION_LAYERS: Dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,  # negative slope 0.01, torch's default
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "linear": nn.Identity,       # the identity: a linear network (Balduzzi et al. 2017, Fig. 6)
}
DROPOUT_MODES = ("channel", "element")


def activation_layer(name: str) -> Callable[[], nn.Module]:
    """The module factory of activation ``name`` (a key of ``ACTIVATION_LAYERS``)."""
    try:
        return ACTIVATION_LAYERS[name]
    except KeyError:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATION_LAYERS))} here, "
                         f"got {name!r}") from None


def dropout_layer(p: float, mode: str = "channel") -> nn.Module:
    """Dropout with drop probability ``p``: ``"channel"`` zeroes whole feature maps (``nn.Dropout2d``,
    Tompson et al. 2015), ``"element"`` single activations (``nn.Dropout``, Srivastava et al. 2014);
    both rescale the kept values by 1 / (1 - p) in training and are the identity in eval mode."""
    if mode not in DROPOUT_MODES:
        raise ValueError(f"dropout_mode must be one of {', '.join(map(repr, DROPOUT_MODES))}, got {mode!r}")
    return nn.Dropout2d(p) if mode == "channel" else nn.Dropout(p)
