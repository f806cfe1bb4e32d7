"""The MNIST ResNet of the residual-networks lecture: a 1x1 conv0 (1 -> 16, with bias, no BN and
no activation after it), n = 25 blocks of conv3x3(bias)-BN-ReLU-conv3x3(bias)-BN + x, ReLU, all at
16 channels and full resolution, global average pool (28x28 on MNIST), fc 16 -> 10.
Depth = 2n + 2 (conv0 + 2n convs + fc): 52 by default, 117,802 parameters.

``mnist-plain`` is the same network without the additions (the plain net of the same depth: the
shortcuts are parameter-free identities, so it has the same 117,802 parameters). Both take the
toolkit options of the CIFAR families (``activation``, ``norm``, ``dropout``, ``dropout_mode``;
see ``cifar.py``); CReLU is not offered here.
"""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from depthlab.models.blocks import BasicBlock
from depthlab.models.cifar import TOOLKIT_OPTIONS, block_kwargs, validate_options
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset

MNIST_DEPTHS = DepthRule(step=2, offset=2)


def _validate(spec: ModelSpec) -> None:
    validate_options(spec)
    if spec.options.get("activation") == "crelu":
        raise ValueError(f"activation 'crelu' is not offered for model family {spec.family!r} "
                         f"(only the CIFAR resnet and plain families have a CReLU layout)")


def mnist_net(spec: ModelSpec, residual: bool) -> DepthNet:
    stem = nn.Sequential(OrderedDict([("conv", nn.Conv2d(spec.in_channels, spec.width, 1, bias=True))]))
    kw = block_kwargs(spec)
    blocks = [BasicBlock(spec.width, spec.width, 1, residual, spec.shortcut, bias=True, **kw)  # (B, w, H, W)
              for _ in range(MNIST_DEPTHS.blocks(spec.depth))]
    return DepthNet(spec, stem, [blocks], features=spec.width)


@register_family("mnist-resnet", layout="mnist", residual=True, depths=MNIST_DEPTHS, depth=52, width=16,
                 in_channels=1, description="the lecture's MNIST ResNet: 1x1 conv0, 25 biased basic blocks",
                 options=dict(TOOLKIT_OPTIONS), validate=_validate)
def mnist_resnet(spec: ModelSpec) -> DepthNet:
    return mnist_net(spec, residual=True)


@register_family("mnist-plain", layout="mnist", residual=False, depths=MNIST_DEPTHS, depth=52, width=16,
                 in_channels=1, description="the lecture's MNIST net without the shortcut additions",
                 options=dict(TOOLKIT_OPTIONS), validate=_validate)
def mnist_plain(spec: ModelSpec) -> DepthNet:
    return mnist_net(spec, residual=False)


register_preset("mnist-resnet", "mnist-resnet")
register_preset("mnist-plain", "mnist-plain")
