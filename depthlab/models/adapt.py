"""The model contract for a network depthlab did not build: ``adapt(model)``.

Diagnostics read ``model.taps()`` (readable points), ``model.blocks`` (depth units: lesions delete
them, paths split at them) and ``model.forward_features``. ``adapt`` gives any ``nn.Module``
classifier those, without copying or renaming a parameter: the user's module is held as ``net``
and its state dict keys are unchanged (``adapt(m).net.state_dict()`` is ``m.state_dict()``).

- **taps**: every ``Conv2d`` / ``Linear`` output, named by its module path (``layer1.0.conv1``,
  ``fc``), in module order; for each recognised residual block also ``<block>.sum``, the sum of
  branch and shortcut before the block's final activation.
- **blocks**, found for these layouts, or given by name (``blocks=["layer1.0", ...]``):

  * torchvision-layout ResNets: ``layer{N}.{i}`` modules with ``conv1``, ``bn1``, ``conv2``,
    ``bn2`` (``conv3``, ``bn3`` for bottlenecks), ``relu`` and an optional ``downsample``. Their
    forward is re-expressed as ``relu(branch(x) + shortcut(x))`` with the same modules (checked
    equal to the original in the tests), so they get ``branch``, ``shortcut``, ``sum``,
    ``has_shortcut = True`` and ``enabled`` (False: the block returns ``relu(shortcut(x))``, the
    path left when the residual branch is deleted, Veit et al. 2016).
  * DenseNet dense layers (``denseblock{N}.denselayer{i}``) and the children of an
    ``nn.Sequential`` model: depth units without an identity path (``has_shortcut = False``); a
    lesion or path count needs one and says so.
- **forward_features(x)**: the input of the last ``Linear`` (the classifier), captured by a hook.
- **sums in other models**: where no residual block is recognised, the model is traced with
  ``torch.fx``; every tensor-tensor addition in the graph becomes a tap ``sum.<node>`` (an
  ``nn.Identity`` inserted after it in a traced copy that shares every parameter, so the function
  is unchanged), and taps come in the graph's (forward) order. A model that does not trace
  (data-dependent control flow) keeps the Conv2d / Linear taps only; ``sums`` says which happened.

Blocks recognised as residual can be reordered (``model.blocks[p] = other``: position ``p`` then
runs ``other``'s computation), which the lesion study's swaps need.
"""
from __future__ import annotations

import operator
import re
import types
from collections import OrderedDict
from typing import List, Optional, Sequence

import torch
from torch import fx, nn

RESNET_BLOCK = re.compile(r"(^|\.)layer\d+\.\d+$")  # also inside a wrapper: model.layer1.0
DENSE_LAYER = re.compile(r"(^|\.)denseblock\d+\.denselayer\d+$")
PARAMETRIC = (nn.Conv2d, nn.Linear)
BRANCH_LAYERS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")


class _Branch(nn.Module):
    """conv1-bn1-relu-conv2-bn2[-relu-conv3-bn3] of a torchvision block, sharing its modules."""

    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "block", block)  # not a child: no second copy in any state dict

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        """Its layers, as if they were its children (``responses`` reads the branch's last BN),
        without registering them twice: a layer already seen (``memo``) is skipped."""
        memo = set() if memo is None else memo
        for name, m in [("", self)] + [(n, getattr(self.block, n, None)) for n in BRANCH_LAYERS]:
            if m is not None and (m not in memo or not remove_duplicate):
                memo.add(m)
                yield (f"{prefix}.{name}" if prefix and name else prefix or name), m

    def forward(self, x):
        b = self.block
        out = b.relu(b.bn1(b.conv1(x)))
        out = b.bn2(b.conv2(out))
        if getattr(b, "conv3", None) is not None:
            out = b.bn3(b.conv3(b.relu(out)))
        return out


class _Shortcut(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        object.__setattr__(self, "block", block)

    def forward(self, x):
        down = getattr(self.block, "downsample", None)
        return x if down is None else down(x)


def is_resnet_block(m: nn.Module) -> bool:
    """A torchvision-layout BasicBlock / Bottleneck (nothing else in its forward)."""
    names = {n for n, _ in m.named_children()}
    core = {"conv1", "bn1", "conv2", "bn2", "relu"}
    extra = names - core - {"conv3", "bn3", "downsample"}
    return core <= names and not extra and (("conv3" in names) == ("bn3" in names))


def _adapt_residual(block: nn.Module) -> None:
    """Give a torchvision block the depthlab Block attributes; its forward keeps its value."""
    block.branch, block.shortcut = _Branch(block), _Shortcut(block)
    object.__setattr__(block, "sum", nn.Identity())
    # the same function as the block's ReLU, never in place: the sum tap's output must stay readable
    object.__setattr__(block, "post", nn.ReLU() if isinstance(block.relu, nn.ReLU) else block.relu)
    block.has_shortcut, block.enabled = True, True
    object.__setattr__(block, "_placed", block)  # whose computation this position runs (lesion swaps)

    def compute(self, x):
        if not self.enabled:
            return self.post(self.shortcut(x))
        out = self.branch(x)  # branch first, as the original forward (taps fire in module order)
        return self.post(self.sum(out + self.shortcut(x)))

    block._compute = types.MethodType(compute, block)
    block.forward = types.MethodType(lambda self, x: self._placed._compute(x), block)


class BlockSlots:
    """``model.blocks`` of an adapted net: position ``p`` holds a block; assigning another block
    to it makes position ``p`` run that block's computation (only between residual blocks)."""

    def __init__(self, slots: List[nn.Module]):
        self._slots = slots

    def __len__(self):
        return len(self._slots)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i):
        slot = self._slots[i]
        return getattr(slot, "_placed", slot)

    def __setitem__(self, i, block):
        slot = self._slots[i]
        if block is getattr(slot, "_placed", slot):
            return
        if not (hasattr(slot, "_placed") and hasattr(block, "_compute")):
            raise ValueError("only residual blocks of an adapted net can be reordered")
        object.__setattr__(slot, "_placed", block)


class AdaptedNet(nn.Module):
    """``net`` with the depthlab model contract; see the module docstring."""

    def __init__(self, net: nn.Module, blocks: Optional[Sequence[str]] = None):
        super().__init__()
        self.net = net
        modules = dict(net.named_modules())
        names = list(blocks) if blocks is not None else find_blocks(net)
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"blocks not found in {type(net).__name__}: {', '.join(missing)}; module names "
                             f"look like {', '.join(list(modules)[1:6])}")
        for n in names:
            b = modules[n]
            if is_resnet_block(b) and not hasattr(b, "_compute"):
                _adapt_residual(b)
            elif not hasattr(b, "_compute"):  # no identity path depthlab can run: never deletable
                b.has_shortcut = getattr(b, "has_shortcut", False)
        self.block_names = names
        self.blocks = BlockSlots([modules[n] for n in names])
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        object.__setattr__(self, "_classifier", linears[-1] if linears else None)
        residual = any(hasattr(b, "_compute") for b in self.blocks._slots)
        traced = None if residual else trace_sums(net)
        object.__setattr__(self, "_traced", traced)  # not a child: the state dict stays the user's
        self.sums = "blocks" if residual else "fx" if traced is not None else "none"

    def forward(self, x):
        return self.net(x) if self._traced is None else self._traced(x)

    def forward_features(self, x):
        """The classifier's input: what the last ``Linear`` receives."""
        if self._classifier is None:
            raise ValueError(f"{type(self.net).__name__} has no Linear layer, so it has no classifier input")
        seen = {}
        handle = self._classifier.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
        try:
            self(x)
        finally:
            handle.remove()
        return seen["x"]

    def taps(self) -> "OrderedDict[str, nn.Module]":
        """Every Conv2d / Linear output (module path) and each residual block's ``sum``, in
        module order (traced models: every addition's ``sum.<node>``, in graph order)."""
        if self._traced is not None:
            modules = dict(self.net.named_modules())
            taps = OrderedDict()
            for node in self._traced.graph.nodes:
                if node.op != "call_module":
                    continue
                if node.target.startswith(SUM_PREFIX):
                    taps[f"sum.{node.args[0].name}"] = self._traced.get_submodule(node.target)
                elif isinstance(modules.get(node.target), PARAMETRIC):
                    taps[node.target] = modules[node.target]
            return taps
        sums = {id(b): n for n, b in zip(self.block_names, self.blocks._slots) if hasattr(b, "_compute")}
        taps: "OrderedDict[str, nn.Module]" = OrderedDict()
        pending = None
        for name, m in self.net.named_modules():
            if pending is not None and not name.startswith(pending[0] + "."):
                taps[f"{pending[0]}.sum"] = pending[1].sum
                pending = None
            if id(m) in sums:
                pending = (name, m)
            if isinstance(m, PARAMETRIC):
                taps[name] = m
        if pending is not None:
            taps[f"{pending[0]}.sum"] = pending[1].sum
        return taps


SUM_PREFIX = "depthlab_sum_"
ADDS = (operator.add, operator.iadd, torch.add)


def trace_sums(net: nn.Module) -> Optional[fx.GraphModule]:
    """A traced copy of ``net`` (sharing its modules and parameters) with an ``nn.Identity`` after
    every tensor-tensor addition; None if ``net`` does not trace or adds nothing."""
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # noqa: BLE001 - any tracing failure means: no traced sums (documented fallback)
        return None
    found = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in ADDS and len(node.args) >= 2 \
                and all(isinstance(a, fx.Node) for a in node.args[:2]):
            name = f"{SUM_PREFIX}{found}"
            gm.add_submodule(name, nn.Identity())
            with gm.graph.inserting_after(node):
                tap = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
            found += 1
    if not found:
        return None
    gm.recompile()
    return gm


def find_blocks(net: nn.Module) -> List[str]:
    """Depth units of the common layouts: ResNet ``layerN.i``, DenseNet dense layers, or the
    children of an ``nn.Sequential`` model; [] when none is recognised."""
    names = [n for n, _ in net.named_modules()]
    found = [n for n in names if RESNET_BLOCK.search(n)] or [n for n in names if DENSE_LAYER.search(n)]
    if not found and isinstance(net, nn.Sequential):
        found = [n for n, m in net.named_children() if any(True for _ in m.parameters())]
    return found


def adapt(model: nn.Module, blocks: Optional[Sequence[str]] = None) -> nn.Module:
    """``model`` itself when it already has the contract (``taps``), else an ``AdaptedNet``.
    ``blocks``: module names of the depth units, when the layout is not recognised."""
    if callable(getattr(model, "taps", None)) and blocks is None:
        return model
    if not isinstance(model, nn.Module):
        raise TypeError(f"adapt needs an nn.Module, got {type(model).__name__}")
    return AdaptedNet(model, blocks)


def has_contract(model: nn.Module) -> bool:
    return callable(getattr(model, "taps", None)) and hasattr(model, "blocks")


__all__ = ["adapt", "AdaptedNet", "find_blocks", "is_resnet_block", "has_contract"]
