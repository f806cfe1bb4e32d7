"""Weight initialisers: ``torch.nn.init``-style tensor functions and whole-model schemes (``INITS``).

Tensor initialisers work in place, return the tensor and raise ``ValueError`` on tensors with fewer
than 2 dimensions. A scheme in ``INITS`` is ``scheme(model) -> model``: it re-initialises every
conv, linear and BatchNorm layer in place (BN: gamma 1, beta 0, fresh running statistics), so it
fully determines the init given the torch RNG state. ``zero_init_residual_`` is applied after it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from depthlab.registry import Registry

INITS = Registry("init scheme")


def _fans(tensor: torch.Tensor, name: str) -> tuple[int, int]:
    if tensor.dim() < 2:
        raise ValueError(f"{name} needs a weight with >= 2 dims (C_out, C_in, *k), got shape {tuple(tensor.shape)}")
    receptive = math.prod(tensor.shape[2:]) if tensor.dim() > 2 else 1
    return tensor.shape[1] * receptive, tensor.shape[0] * receptive


def kaiming_normal_fan_out_(tensor: torch.Tensor) -> torch.Tensor:
    """N(0, 2 / fan_out), fan_out = C_out * k * k: He et al. 2015, "Delving Deep into Rectifiers"
    (arXiv 1502.01852), eq. 14 -- preserves the backward signal's variance through ReLU layers.
    This is what torchvision's ResNet uses (``kaiming_normal_(mode="fan_out")``)."""
    _, fan_out = _fans(tensor, "kaiming_normal_fan_out_")
    with torch.no_grad():
        return tensor.normal_(0.0, math.sqrt(2.0 / fan_out))


def kaiming_normal_fan_in_(tensor: torch.Tensor) -> torch.Tensor:
    """N(0, 2 / fan_in), fan_in = C_in * k * k: He et al. 2015 (arXiv 1502.01852), eq. 10 --
    preserves the forward signal's variance through ReLU layers."""
    fan_in, _ = _fans(tensor, "kaiming_normal_fan_in_")
    with torch.no_grad():
        return tensor.normal_(0.0, math.sqrt(2.0 / fan_in))


def xavier_uniform_(tensor: torch.Tensor) -> torch.Tensor:
    """U(-a, a), a = sqrt(6 / (fan_in + fan_out)): Glorot & Bengio 2010, "Understanding the
    difficulty of training deep feedforward neural networks", eq. 16 ("normalized initialization")."""
    fan_in, fan_out = _fans(tensor, "xavier_uniform_")
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


def orthogonal_(tensor: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Orthogonal init of the weight reshaped to C_out x (C_in k k): Saxe, McClelland & Ganguli 2014,
    "Exact solutions to the nonlinear dynamics of learning in deep linear networks" (arXiv 1312.6120).
    Rows are orthonormal when C_out <= C_in k k (columns otherwise), times ``gain``."""
    _fans(tensor, "orthogonal_")
    return nn.init.orthogonal_(tensor, gain=gain)


def _reinit(model: nn.Module, weight_fn, linear_fn=None) -> nn.Module:
    """Apply ``weight_fn`` to every conv (and ``linear_fn`` to every linear) weight; zero their
    biases; reset BatchNorm. ``linear_fn=None`` keeps torch's default Linear init (as torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and linear_fn is not None):
            (weight_fn if isinstance(m, nn.Conv2d) else linear_fn)(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
            m.reset_parameters()
    return model


@INITS.register("kaiming", paper="He et al. 2015, arXiv 1502.01852, eq. 14 (fan_out)")
def kaiming_init_(model: nn.Module) -> nn.Module:
    """Convs He-normal fan_out (ReLU gain), BN 1/0, fc torch default: torchvision's ResNet init."""
    return _reinit(model, kaiming_normal_fan_out_)


@INITS.register("kaiming-fan-in", paper="He et al. 2015, arXiv 1502.01852, eq. 10 (fan_in)")
def kaiming_fan_in_init_(model: nn.Module) -> nn.Module:
    """Convs He-normal fan_in (ReLU gain), BN 1/0, fc torch default."""
    return _reinit(model, kaiming_normal_fan_in_)


@INITS.register("orthogonal", paper="Saxe et al. 2014, arXiv 1312.6120")
def orthogonal_init_(model: nn.Module) -> nn.Module:
    """Convs and fc orthogonal (gain 1; BN rescales anyway), biases 0, BN 1/0."""
    return _reinit(model, orthogonal_, orthogonal_)


@INITS.register("xavier", paper="Glorot & Bengio 2010, eq. 16")
def xavier_init_(model: nn.Module) -> nn.Module:
    """Convs and fc Glorot-uniform, biases 0, BN 1/0."""
    return _reinit(model, xavier_uniform_, xavier_uniform_)


@INITS.register("torch-default", paper="PyTorch's reset_parameters (kaiming_uniform_, a=sqrt(5))")
def torch_default_init_(model: nn.Module) -> nn.Module:
    """Every layer's own ``reset_parameters()``: what you get from constructing the modules."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            m.reset_parameters()
    return model


def zero_init_residual_(model: nn.Module) -> nn.Module:
    """Zero the last BN gamma (pre-activation blocks: the last conv) of every residual branch, so each
    residual block starts as the identity path: Goyal et al. 2017, "Accurate, Large Minibatch SGD"
    (arXiv 1706.02677), Sec. 5.1. Plain blocks are left alone."""
    for block in model.blocks:
        if block.has_shortcut:
            block.zero_init_residual_()
    return model


def init_model_(model: nn.Module, scheme: str, zero_init_residual: bool = False) -> nn.Module:
    """Apply init scheme ``scheme`` (a name in INITS), then optionally ``zero_init_residual_``."""
    INITS.get(scheme)(model)
    if zero_init_residual:
        zero_init_residual_(model)
    return model
