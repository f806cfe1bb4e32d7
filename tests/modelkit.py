"""Shared helpers of the model and method mutation tests: an allclose with shape and dtype checks,
eval-mode BatchNorm by hand, and BN layers given non-trivial statistics."""
import torch
from torch import nn

from depthlab.config import RunConfig
from depthlab.models import build_model


def assert_close(actual, expected, rtol=1e-5, atol=1e-8):
    """torch.allclose with matching shapes and dtypes (torch.testing's first import alone takes seconds)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max()


def bn_eval(x, bn):
    """Eval-mode BatchNorm by hand: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def randomise_bn(module, seed=0):
    """Non-trivial BN statistics and affine parameters, so every BN's place in a forward matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)
                m.weight.copy_(torch.randn(c, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype))
    return module


def tiny_resnet():
    """3 residual blocks, 4-channel stem: the smallest resnet."""
    return build_model("resnet", depth=8, width=4, in_channels=1, num_classes=10)


def methods_cfg(*overrides):
    return RunConfig().with_overrides(list(overrides)).validate().methods


def rms(t):
    return t.double().pow(2).mean().sqrt()
