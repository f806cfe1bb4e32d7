"""CIFAR layout (He et al. 2015, arXiv 1512.03385, Sec. 4.2): 3x3 conv stem, 3 stages of n blocks at widths
w/2w/4w (w = 16), stride 2 opening stages 2 and 3, global average pool, fc. Depth = 6n + 2.

Families: ``resnet`` (post-activation, option A), ``plain`` (same layers, no additions),
``preact-resnet`` (He et al. 2016 identity-mapping blocks). Family options ``activation``, ``norm``,
``dropout``, ``dropout_mode``, ``rezero``, ``stage_blocks``; the defaults keep the published networks.
Details: docs/methods.md, sections "The CIFAR layout and its options" and "The lecture's toolkit as switches".
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Tuple

from torch import nn

from depthlab.models.blocks import BasicBlock, Block, PreActBlock
from depthlab.models.crelu import CReLU, CReLUBlock, mark_after_crelu
from depthlab.models.layers import DROPOUT_MODES, activation_layer, conv3x3, dropout_layer
from depthlab.models.net import DepthNet
from depthlab.models.spec import DepthRule, ModelSpec, register_family, register_preset
from depthlab.registry import Option

CIFAR_DEPTHS = DepthRule(step=6, offset=2)
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "crelu", "linear")
ACTIVATION = Option(str, "relu", "relu | leaky_relu | tanh | sigmoid | crelu (with init looks-linear) | linear",
                    choices=ACTIVATIONS)
NORMS = ("batch", "none")
NORM = Option(str, "batch", "batch | none (no normalisation; convs get biases)", choices=NORMS)
DROPOUT = Option(float, 0.0, "drop probability after each activation inside a block (0: none)")
DROPOUT_MODE = Option(str, "channel", "channel (Dropout2d) | element (Dropout)", choices=DROPOUT_MODES)
TOOLKIT_OPTIONS = dict(activation=ACTIVATION, norm=NORM, dropout=DROPOUT, dropout_mode=DROPOUT_MODE)
REZERO = Option(bool, False, "SkipInit/ReZero: branch * alpha, alpha = 0 at init")
STAGE_BLOCKS = Option(str, None, "blocks per stage, e.g. '5,1,1' (depth = 2*sum+2)")


def parse_stage_blocks(value) -> Optional[Tuple[int, int, int]]:
    """``"5,1,1"`` -> ``(5, 1, 1)``; None -> None; anything but three positive integers: ValueError."""
    if value is None:
        return None
    try:
        counts = tuple(int(v) for v in str(value).split(","))
    except ValueError:
        counts = ()
    if isinstance(value, bool) or len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"stage_blocks must be three positive block counts separated by commas, one per "
                         f"stage (e.g. '5,1,1'), got {value!r}")
    return counts


def stage_blocks_depth(options) -> Optional[int]:
    """The depth ``stage_blocks`` fixes: 2 convs per block plus the stem conv and the fc."""
    counts = parse_stage_blocks(options.get("stage_blocks"))
    return None if counts is None else 2 * sum(counts) + 2


def validate_options(spec: ModelSpec) -> None:
    """``activation`` in ACTIVATIONS, ``norm`` in NORMS, ``dropout`` in [0, 1), ``dropout_mode`` in
    DROPOUT_MODES, ``rezero`` a bool; ``init="looks-linear"`` needs CReLU, and CReLU nets keep BN
    and take no dropout (their layout, crelu.py, has neither switch)."""
    opts = spec.options
    if "activation" in opts and opts["activation"] not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))} for model family "
                         f"{spec.family!r}, got {opts['activation']!r}")
    if "norm" in opts and opts["norm"] not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))} for model family {spec.family!r}, "
                         f"got {opts['norm']!r}")
    if "dropout" in opts:
        p = opts["dropout"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be a drop probability in [0, 1), got {p!r}")
    if "dropout_mode" in opts and opts["dropout_mode"] not in DROPOUT_MODES:
        raise ValueError(f"dropout_mode must be one of {', '.join(map(repr, DROPOUT_MODES))}, "
                         f"got {opts['dropout_mode']!r}")
    if opts.get("activation") == "crelu" and (opts.get("norm", "batch") != "batch" or opts.get("dropout", 0.0)):
        raise ValueError(f"activation 'crelu' (model family {spec.family!r}) needs norm='batch' and dropout=0.0: "
                         f"the CReLU layout has no norm-free or dropout variant")
    if "rezero" in opts and not isinstance(opts["rezero"], bool):
        raise ValueError(f"rezero must be True or False, got {opts['rezero']!r}")
    if spec.init == "looks-linear" and opts.get("activation") != "crelu":
        have = (f"activation={opts['activation']!r}" if "activation" in opts
                else "no activation option, so ReLU")
        raise ValueError(f"init 'looks-linear' requires activation='crelu' (model family {spec.family!r} has "
                         f"{have}): its [W, -W] weights cancel only on CReLU inputs [relu(x), relu(-x)]")


def _rezero(block: Block, spec: ModelSpec) -> Block:
    return block.use_rezero_() if spec.options.get("rezero") else block


def crelu_net(spec: ModelSpec, residual: bool) -> DepthNet:
    """The CReLU variant of ``resnet`` / ``plain`` (layout in ``crelu.py``)."""
    stages = cifar_stages(spec, lambda c_in, c_out, s: _rezero(
        CReLUBlock(c_in, c_out, s, residual, spec.shortcut), spec))
    stem = nn.Sequential(OrderedDict([("conv", conv3x3(spec.in_channels, spec.width)),
                                      ("bn", nn.BatchNorm2d(spec.width))]))
    c = 4 * spec.width
    net = DepthNet(spec, stem, stages, features=2 * c, final=CReLU())
    mark_after_crelu(net.head.fc)
    return net


def cifar_stages(spec: ModelSpec, make_block: Callable[[int, int, int], Block],
                 depths: DepthRule = CIFAR_DEPTHS) -> List[List[Block]]:
    """3 stages of n = depths.blocks(depth) blocks (ResNet: (depth - 2) / 6), or of the counts in
    the ``stage_blocks`` option; ``make_block(c_in, c_out, stride)``."""
    counts = parse_stage_blocks(spec.options.get("stage_blocks")) or (depths.blocks(spec.depth),) * 3
    stages, c_in = [], spec.width
    for s, c_out in enumerate((spec.width, 2 * spec.width, 4 * spec.width)):
        stage = []
        for b in range(counts[s]):
            stage.append(make_block(c_in, c_out, 2 if s > 0 and b == 0 else 1))
            c_in = c_out
        stages.append(stage)  # (B, c_out, H / 2^s, W / 2^s)
    return stages


def _act(spec: ModelSpec):
    """The nonlinearity factory of a ReLU-layout net (``activation`` option; ReLU without it)."""
    return activation_layer(spec.options.get("activation", "relu"))


def block_kwargs(spec: ModelSpec) -> dict:
    """``BasicBlock`` keyword arguments of the toolkit options: act, norm, dropout."""
    opts = spec.options
    p, mode = float(opts.get("dropout", 0.0)), opts.get("dropout_mode", "channel")
    return dict(act=_act(spec), norm=opts.get("norm", "batch") == "batch",
                dropout=(lambda: dropout_layer(p, mode)) if p > 0 else None)


def cifar_stem(spec: ModelSpec, bare: bool = False, act=nn.ReLU, norm: bool = True) -> nn.Sequential:
    """conv3x3 (in_channels -> width), then BN (``norm``) and ``act``; ``bare``: the conv alone
    (pre-activation nets). Without BN the conv has a bias."""
    layers = [("conv", conv3x3(spec.in_channels, spec.width, bias=not (norm or bare)))]  # (B, w, H, W)
    if not bare:
        layers += ([("bn", nn.BatchNorm2d(spec.width))] if norm else []) + [("relu", act())]
    return nn.Sequential(OrderedDict(layers))


@register_family("resnet", layout="cifar", residual=True, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2015 CIFAR ResNet, post-activation basic blocks",
                 options=dict(**TOOLKIT_OPTIONS, rezero=REZERO, stage_blocks=STAGE_BLOCKS),
                 validate=validate_options,
                 depth_from_options=stage_blocks_depth)
def cifar_resnet(spec: ModelSpec) -> DepthNet:
    if spec.options["activation"] == "crelu":
        return crelu_net(spec, residual=True)
    kw = block_kwargs(spec)
    stages = cifar_stages(spec, lambda c_in, c_out, s: _rezero(
        BasicBlock(c_in, c_out, s, True, spec.shortcut, **kw), spec))
    return DepthNet(spec, cifar_stem(spec, act=kw["act"], norm=kw["norm"]), stages, features=4 * spec.width)


@register_family("plain", layout="cifar", residual=False, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2015 CIFAR plain net: the ResNet without shortcut additions",
                 options=dict(**TOOLKIT_OPTIONS, stage_blocks=STAGE_BLOCKS), validate=validate_options,
                 depth_from_options=stage_blocks_depth)
def cifar_plain(spec: ModelSpec) -> DepthNet:
    if spec.options["activation"] == "crelu":
        return crelu_net(spec, residual=False)
    kw = block_kwargs(spec)
    stages = cifar_stages(spec, lambda c_in, c_out, s: BasicBlock(c_in, c_out, s, False, **kw))
    return DepthNet(spec, cifar_stem(spec, act=kw["act"], norm=kw["norm"]), stages, features=4 * spec.width)


@register_family("preact-resnet", layout="cifar", residual=True, depths=CIFAR_DEPTHS, depth=20, width=16,
                 description="He et al. 2016 pre-activation (identity-mapping) CIFAR ResNet",
                 options=dict(rezero=REZERO), validate=validate_options)
def cifar_preact_resnet(spec: ModelSpec) -> DepthNet:
    stages = cifar_stages(spec, lambda c_in, c_out, s: _rezero(PreActBlock(c_in, c_out, s, spec.shortcut), spec))
    c = 4 * spec.width
    final = nn.Sequential(OrderedDict([("bn", nn.BatchNorm2d(c)), ("relu", nn.ReLU())]))
    # The stem is the bare conv: the first block's BN-ReLU pre-activates it.
    return DepthNet(spec, cifar_stem(spec, bare=True), stages, features=c, final=final)


for _depth in (20, 32, 44, 56, 110, 1202):
    register_preset(f"resnet{_depth}", "resnet", depth=_depth)
for _depth in (20, 32, 44, 56, 110):
    register_preset(f"plain{_depth}", "plain", depth=_depth)
for _depth in (20, 56, 110):
    register_preset(f"preact-resnet{_depth}", "preact-resnet", depth=_depth)
