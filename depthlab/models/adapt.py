"""The model contract for a network depthlab did not build: ``adapt(model)``.

Gives any ``nn.Module`` classifier ``blocks`` (residual blocks found by tracing with ``torch.fx``, or named
ones), ``taps()`` and ``forward_features``, without copying, renaming or changing anything of the user's.
Details: docs/own-model.md, section "What depthlab reads in a model it did not build", and
docs/design.md, section "The model contract".
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import List, Optional, Sequence

from torch import fx, nn

from depthlab.models.residual import ResidualBlock, block_names, find_residuals, is_add, rewrite, trace

RESNET_BLOCK = re.compile(r"(^|\.)layer\d+\.\d+$")  # also inside a wrapper: model.layer1.0
DENSE_LAYER = re.compile(r"(^|\.)denseblock\d+\.denselayer\d+$")
PARAMETRIC = (nn.Conv2d, nn.Linear)
log = logging.getLogger("depthlab")
SUM_PREFIX = "depthlab_sum_"
MODES = (False, True)  # eval, train


class BlockSlots:
    """``model.blocks`` of an adapted net: position ``p`` holds a block; assigning another block
    to it makes position ``p`` run that block's branch (only between residual blocks)."""

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
        if not (isinstance(slot, ResidualBlock) and isinstance(block, ResidualBlock)):
            raise ValueError("only residual blocks of an adapted net can be reordered")
        object.__setattr__(slot, "_placed", block)


def _tap_sums(gm: fx.GraphModule, shared: List[nn.Identity]) -> None:
    """An identity after each remaining addition (``sum.<node>`` taps), the k-th shared by both modes."""
    k = 0
    for node in list(gm.graph.nodes):
        if is_add(node):
            if k == len(shared):
                shared.append(nn.Identity())
            name = f"{SUM_PREFIX}{k}"
            gm.add_submodule(name, shared[k])
            with gm.graph.inserting_after(node):
                tap = gm.graph.call_module(name, (node,))
            node.replace_all_uses_with(tap, delete_user_cb=lambda user, tap=tap: user is not tap)
            k += 1
    gm.recompile()


def _traced_blocks(module: nn.Module, prefix: str = ""):
    """``((graphs by training flag, blocks, sum taps), "")`` for ``module`` traced in both modes, or
    ``(None, why)`` if it does not trace. Train mode is dropped (eval's graph serves both) where it
    finds other blocks than eval mode."""
    eval_graph, why = trace(module, False)
    if eval_graph is None:
        return None, why
    graphs = {False: eval_graph, True: trace(module, True)[0]}
    found = {flag: find_residuals(gm) for flag, gm in graphs.items() if gm is not None}
    names = block_names(found[False], prefix)
    if graphs[True] is None or block_names(found[True], prefix) != names:
        graphs.pop(True)
    blocks = [ResidualBlock(n, ".".join(p for p in (prefix, r.module) if p)) for n, r in zip(names, found[False])]
    sums: List[nn.Identity] = []
    for flag, gm in graphs.items():
        rewrite(gm, found[flag], blocks, flag)
        _tap_sums(gm, sums)
    return (graphs, blocks, sums), ""


def _graph_taps(gm: fx.GraphModule, prefix: str, taps: "OrderedDict[str, nn.Module]") -> None:
    """The taps of a rewritten graph, in the order they run (a block: its branch's layers, then its sum)."""
    def join(target):
        return f"{prefix}.{target}" if prefix else target

    for node in gm.graph.nodes:
        if node.op != "call_module":
            continue
        m = gm.get_submodule(node.target)
        if isinstance(m, ResidualBlock):
            for inner in m.fns[False].graph.nodes:
                if inner.op == "call_module" and isinstance(m.fns[False].get_submodule(inner.target), PARAMETRIC):
                    taps[join(inner.target)] = m.fns[False].get_submodule(inner.target)
            taps[f"{m.name}.sum"] = m.sum
        elif node.target.startswith(SUM_PREFIX):
            taps[join(f"sum.{node.args[0].name}")] = m
        elif isinstance(m, PARAMETRIC):
            taps[join(node.target)] = m


class AdaptedNet(nn.Module):
    """``net`` with the depthlab model contract; see the module docstring."""

    def __init__(self, net: nn.Module, blocks: Optional[Sequence[str]] = None):
        super().__init__()
        self.net = net
        modules = dict(net.named_modules())
        if blocks is not None:
            missing = [n for n in blocks if n not in modules]
            if missing:
                raise ValueError(f"blocks not found in {type(net).__name__}: {', '.join(missing)}; module "
                                 f"names look like {', '.join(list(modules)[1:6])}")
        graphs, units, slots, names = {}, [], [], []
        whole, why = _traced_blocks(net) if blocks is None else (None, "")
        if whole is not None and (whole[1] or whole[2]):
            graphs, slots, _ = whole
            names = [b.name for b in slots]
        if not slots:
            units_named = list(blocks) if blocks is not None else find_blocks(net)
            if blocks is None and whole is None:
                log.warning("depthlab.adapt: %s does not trace with torch.fx (%s); reading its blocks by name: %s",
                            type(net).__name__, why,
                            ", ".join(units_named) if units_named else "none recognised (pass blocks=[...] to "
                            "depthlab.adapt or --blocks to depthlab diagnose)")
            for unit in units_named:
                traced, _ = _traced_blocks(modules[unit], unit)
                if traced is not None and traced[1]:
                    units.append((unit, modules[unit], traced[0]))
                    slots += traced[1]
                    names += [b.name for b in traced[1]]
                else:  # no identity path depthlab can run: a depth unit that is never deleted
                    slots.append(modules[unit])
                    names.append(unit)
            if units:
                graphs = {}
        object.__setattr__(self, "_graphs", graphs)  # not children: the state dict stays the user's
        object.__setattr__(self, "_units", units)
        self.block_names = names
        self.blocks = BlockSlots(slots)
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        object.__setattr__(self, "_classifier", linears[-1] if linears else None)
        self.sums = "fx" if graphs else "blocks" if units else "none"

    @contextmanager
    def _blocks_in_place(self):
        """Named blocks run their traced copies, for the duration of one depthlab call only."""
        saved = []
        try:
            for _, module, graphs in self._units:
                saved.append((module, module.__dict__.get("forward")))
                module.forward = graphs.get(module.training, graphs[False]).forward
            yield
        finally:
            for module, forward in saved:
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward

    def forward(self, *args, **kwargs):
        if self._graphs:
            return self._graphs.get(self.net.training, self._graphs[False])(*args, **kwargs)
        with self._blocks_in_place():
            return self.net(*args, **kwargs)

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
        """Every Conv2d / Linear output (module path) and each residual block's ``<block>.sum``
        (other additions of a traced model: ``sum.<node>``), in the order they run."""
        taps: "OrderedDict[str, nn.Module]" = OrderedDict()
        if self._graphs:
            _graph_taps(self._graphs[False], "", taps)
            return taps
        units = {name: graphs for name, _, graphs in self._units}
        skip = None
        for name, m in self.net.named_modules():
            if skip is not None and name.startswith(skip + "."):
                continue
            skip = None
            if name in units:
                _graph_taps(units[name][False], name, taps)
                skip = name
            elif isinstance(m, PARAMETRIC):
                taps[name] = m
        return taps


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


__all__ = ["adapt", "AdaptedNet", "find_blocks", "has_contract"]
