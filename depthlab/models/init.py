"""Weight initialisers: ``torch.nn.init``-style tensor functions and whole-model schemes (``INITS``).

Tensor initialisers work in place, return the tensor and raise ``ValueError`` on tensors with fewer
than 2 dimensions. A scheme in ``INITS`` is ``scheme(model) -> model``: it re-initialises every
conv, linear and BatchNorm layer in place (BN: gamma 1, beta 0, fresh running statistics), so it
fully determines the init given the torch RNG state (learnable scalars too: ReZero's alpha 0,
Fixup's biases 0 and scales 1). ``zero_init_residual_`` is applied after it.

Schemes that only make sense for one architecture check it and raise ``ValueError``:
``looks-linear`` needs CReLU (``activation="crelu"``), ``fixup`` needs a ``fixup-resnet``.
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


def delta_orthogonal_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Delta-orthogonal kernel: Xiao et al. 2018, "Dynamical Isometry and a Mean Field Theory of
    CNNs: How to Train 10,000-Layer Vanilla Convolutional Neural Networks" (arXiv 1806.05393),
    Algorithm 2. Every tap of the (C_out, C_in, k, k) kernel is zero except the spatial centre,
    which is a random orthogonal C_out x C_in matrix times ``gain`` (semi-orthogonal when
    non-square: orthonormal rows if C_out <= C_in, columns otherwise), so all min(C_out, C_in)
    singular values of the centre tap equal ``gain``. In place; returns ``weight``. Raises
    ``ValueError`` for a non-4D tensor or an even kernel size (no centre tap)."""
    if weight.dim() != 4:
        raise ValueError(f"delta_orthogonal_ needs a 4D conv weight (C_out, C_in, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    c_out, c_in, kh, kw = weight.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"delta_orthogonal_ needs odd kernel sizes (a centre tap), got shape {tuple(weight.shape)}")
    centre = torch.empty(c_out, c_in, dtype=weight.dtype, device=weight.device)
    nn.init.orthogonal_(centre, gain=gain)
    with torch.no_grad():
        weight.zero_()
        weight[:, :, kh // 2, kw // 2] = centre
    return weight


def looks_linear_(weight: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Looks-linear weight for a layer that reads a CReLU output: Balduzzi et al. 2017, "The
    Shattered Gradients Problem: If resnets are the answer, then what is the question?"
    (arXiv 1702.08591), Sec. 5. The input channels are the two CReLU halves ``[relu(x), relu(-x)]``;
    the weight is ``[W, -W]`` along them, so ``[W, -W] . crelu(x) = W x``: the layer is exactly
    linear in x. ``W`` (C_out, C_in / 2, *k) is orthogonal over its fan-in (``orthogonal_``:
    reshaped to C_out x (C_in/2 k k), orthonormal rows, or columns when C_out is larger) times
    ``gain``. Works for conv and linear weights. In place; returns ``weight``. Raises
    ``ValueError`` for fewer than 2 dims or an odd number of input channels."""
    _fans(weight, "looks_linear_")
    if weight.shape[1] % 2:
        raise ValueError(f"looks_linear_ needs an even number of input channels (the two CReLU halves), "
                         f"got shape {tuple(weight.shape)}")
    half = weight.shape[1] // 2
    w = torch.empty(weight.shape[0], half, *weight.shape[2:], dtype=weight.dtype, device=weight.device)
    nn.init.orthogonal_(w, gain=gain)
    with torch.no_grad():
        weight[:, :half] = w
        weight[:, half:] = -w
    return weight


def _reset_scalars(model: nn.Module) -> nn.Module:
    """Reset the learnable scalars (ReZero alpha, Fixup biases / scales): modules with ``reset_scalars_``."""
    for m in model.modules():
        fn = getattr(m, "reset_scalars_", None)
        if callable(fn):
            fn()
    return model


def _reinit(model: nn.Module, weight_fn, linear_fn=None, conv_bias_std: float = 0.0,
            linear_bias_std: float = 0.0) -> nn.Module:
    """Apply ``weight_fn`` to every conv (and ``linear_fn`` to every linear) weight; their biases
    N(0, std^2) with ``conv_bias_std`` / ``linear_bias_std`` (zeros when 0, the default); reset
    BatchNorm. ``linear_fn=None`` keeps torch's default Linear init (as torchvision)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) or (isinstance(m, nn.Linear) and linear_fn is not None):
            conv = isinstance(m, nn.Conv2d)
            (weight_fn if conv else linear_fn)(m.weight)
            std = conv_bias_std if conv else linear_bias_std
            if m.bias is not None and std > 0:
                with torch.no_grad():
                    m.bias.normal_(0.0, std)
            elif m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Linear, nn.modules.batchnorm._BatchNorm)):
            m.reset_parameters()
    return _reset_scalars(model)


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
    return _reset_scalars(model)


def scales(model: nn.Module) -> tuple[float, float]:
    """``(sigma_w, sigma_b)`` of a model whose family has those options (``vanilla``), else (1.0, 0.0)."""
    options = getattr(getattr(model, "spec", None), "options", {}) or {}
    return float(options.get("sigma_w", 1.0)), float(options.get("sigma_b", 0.0))


@INITS.register("delta-orthogonal", paper="Xiao et al. 2018, arXiv 1806.05393, Algorithm 2")
def delta_orthogonal_init_(model: nn.Module) -> nn.Module:
    """Every conv delta-orthogonal with gain sigma_w (``delta_orthogonal_``; a 1x1 projection is then
    plainly orthogonal), conv biases N(0, sigma_b^2); the fc orthogonal with gain 1 and bias 0 (as the
    "orthogonal" scheme); BN gamma 1, beta 0, fresh running statistics. sigma_w and sigma_b are the
    model's options (``vanilla``: Xiao et al.'s vanilla tanh nets, which need no BN), 1 and 0 for
    families without them (in BN nets the gain is irrelevant: BN rescales). Raises ``ValueError``
    on an even kernel."""
    sigma_w, sigma_b = scales(model)

    def conv_fn(w):
        return delta_orthogonal_(w, gain=sigma_w)

    return _reinit(model, conv_fn, orthogonal_, conv_bias_std=sigma_b)  # the classifier's bias stays 0


@INITS.register("gaussian",
                paper="Xiao et al. 2018 / Schoenholz et al. 2017 (arXiv 1611.01232): N(0, sigma_w^2/fan_in)")
def gaussian_init_(model: nn.Module) -> nn.Module:
    """The mean-field Gaussian init at the model's scales (``scales``): every conv and fc weight
    N(0, sigma_w^2 / fan_in) with fan_in = C_in k k, every bias N(0, sigma_b^2); BN gamma 1, beta 0.
    The baseline Xiao et al. compare delta-orthogonal with, at the same sigma_w and sigma_b."""
    sigma_w, sigma_b = scales(model)

    def weight_fn(w):
        fan_in, _ = _fans(w, "gaussian")
        with torch.no_grad():
            return w.normal_(0.0, sigma_w / math.sqrt(fan_in))

    return _reinit(model, weight_fn, weight_fn, conv_bias_std=sigma_b, linear_bias_std=sigma_b)


@INITS.register("small-gaussian", paper="the naive init of early deep nets: N(0, 0.01^2), e.g. Krizhevsky et al. 2012")
def small_gaussian_init_(model: nn.Module) -> nn.Module:
    """Every conv and fc weight N(0, 0.01^2) whatever its fan-in, biases 0, BN gamma 1, beta 0: the
    fixed small-Gaussian init under which deep ReLU nets' signals vanish (Simonyan & Zisserman 2014,
    He et al. 2015 Sec. 2.2)."""
    def weight_fn(w):
        _fans(w, "small-gaussian")
        with torch.no_grad():
            return w.normal_(0.0, 0.01)

    return _reinit(model, weight_fn, weight_fn)


def _after_crelu(m: nn.Module) -> bool:
    return bool(getattr(m, "after_crelu", False))


@INITS.register("looks-linear", paper="Balduzzi et al. 2017, arXiv 1702.08591, Sec. 5")
def looks_linear_init_(model: nn.Module) -> nn.Module:
    """Every conv / fc that reads a CReLU output (flagged ``after_crelu`` by its builder) gets
    ``looks_linear_`` ([W, -W], W orthogonal over its fan-in); the other convs and fcs (the stem
    conv on the raw input, option-B projections) plain ``orthogonal_``; all biases 0; BN gamma 1,
    beta 0, fresh running statistics. With BN in eval mode and fresh statistics the whole network
    is then exactly linear in its input (BN in train mode normalises with batch statistics, which
    is not linear). Raises ``ValueError`` for a model without CReLU: its ReLUs would not cancel."""
    if not any(_after_crelu(m) for m in model.modules()):
        raise ValueError("init 'looks-linear' needs a CReLU network (model option activation='crelu'): "
                         "the [W, -W] weights make a layer linear only when its input is [relu(x), relu(-x)]")

    def weight_fn(m):
        return looks_linear_ if _after_crelu(m) else orthogonal_

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weight_fn(m)(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()
    return _reset_scalars(model)


@INITS.register("fixup", paper="Zhang et al. 2019, arXiv 1901.09321, Sec. 3 (Fixup)")
def fixup_init_(model: nn.Module) -> nn.Module:
    """Fixup (Zhang, Dauphin & Ma 2019, "Fixup Initialization: Residual Learning Without
    Normalization", Sec. 3, rules 1-3) for a ``fixup-resnet`` (blocks with ``fixup_init_``): with
    L residual branches of m = 2 convs, each branch's first conv is He-normal (fan_out, as the
    reference code) times L^(-1/(2m-2)) = L^(-1/2), its last conv 0; the classifier weight and
    bias 0; every scalar bias 0 and scale 1; other convs (the stem) He-normal fan_out."""
    blocks = [b for b in getattr(model, "blocks", []) if callable(getattr(b, "fixup_init_", None))]
    if not blocks:
        raise ValueError("init 'fixup' applies only to Fixup networks (family 'fixup-resnet'): "
                         "it needs norm-free residual branches with scalar biases and multipliers")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_normal_fan_out_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for b in blocks:
        b.fixup_init_(len(blocks))
    return _reset_scalars(model)


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
