"""Residual blocks of any traced network: found in its graph, deleted and swapped in a copy.

An addition ``out = a + b`` is a residual block when one operand is the block's input ``x`` (or a short
computation from it) and the other, the branch, a longer computation from ``x`` alone (Veit, Wilber & Belongie
2016). ``rewrite`` makes each one a ``ResidualBlock`` call, ``sum(shortcut(s) + branch(fn(x)))``, in a copy of the
``torch.fx`` graph. Details: docs/design.md, section "The model contract" (the rules and the rewrite), and
docs/own-model.md, section "What depthlab reads in a model it did not build".
"""
from __future__ import annotations

import copy
import operator
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import fx, nn

ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)


def is_add(node: fx.Node) -> bool:
    """A tensor-tensor addition with no scaling (``a + b``, ``a += b``, ``torch.add``, ``a.add(b)``)."""
    plain = (node.op == "call_function" and node.target in ADD_FUNCTIONS) or \
            (node.op == "call_method" and node.target in ("add", "add_"))
    return plain and len(node.args) == 2 and not node.kwargs and all(isinstance(a, fx.Node) for a in node.args)


class Residual(NamedTuple):
    add: fx.Node
    x: fx.Node          # the block's input
    shortcut: fx.Node   # the operand that stays (x itself, or a projection of it)
    branch: fx.Node     # the operand computed by the branch
    body: List[fx.Node]  # the branch's nodes, in graph order (cut out of the graph)
    module: str         # the innermost module whose forward holds the addition ('' at the top level)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(list(stack)[-1])


def find_residuals(gm: fx.GraphModule) -> List[Residual]:
    """The residual additions of ``gm``'s graph, in graph order (see the module docstring)."""
    nodes = list(gm.graph.nodes)
    idx = {n: i for i, n in enumerate(nodes)}
    anc: Dict[fx.Node, int] = {}
    for n in nodes:
        m = 0
        for i in n.all_input_nodes:
            m |= anc[i] | (1 << idx[i])
        anc[n] = m
    const = sum(1 << idx[n] for n in nodes if n.op == "get_attr")
    sinks = [m for m in nodes if not m.users and m.op != "output" and m.all_input_nodes]  # results nobody reads
    params = {name for name, _ in gm.named_parameters()}

    def inc(n):
        return anc[n] | (1 << idx[n])

    found = []
    for n in nodes:
        if not is_add(n):
            continue
        a, b = n.args
        if a.op != "get_attr" and inc(b) >> idx[a] & 1:
            x, s, br = a, a, b
        elif b.op != "get_attr" and inc(a) >> idx[b] & 1:
            x, s, br = b, b, a
        else:
            common = inc(a) & inc(b) & ~const
            if not common:
                continue
            x = nodes[common.bit_length() - 1]  # the latest node both sides depend on
            size_a, size_b = bin(inc(a) & ~inc(x)).count("1"), bin(inc(b) & ~inc(x)).count("1")
            if size_a == size_b:
                continue  # two parallel computations of one input: no shortcut to keep
            s, br = (a, b) if size_a < size_b else (b, a)
        body_mask = inc(br) & ~inc(x)
        # side effects inside the branch that feed nothing (``mask.div_(p)`` in drop-path) belong to it
        grown = True
        while grown:
            grown = False
            for m in sinks:
                if not body_mask >> idx[m] & 1 \
                        and all(i is x or i.op == "get_attr" or body_mask >> idx[i] & 1 for i in m.all_input_nodes) \
                        and any(body_mask >> idx[i] & 1 for i in m.all_input_nodes):
                    body_mask |= 1 << idx[m]
                    grown = True
        body = [nodes[i] for i in _bits(body_mask)]
        inside = set(body)
        closed = all(m.op != "placeholder"
                     and all(i is x or i.op == "get_attr" or i in inside for i in m.all_input_nodes) for m in body)
        contained = all(all(u in inside or (m is br and u is n) for u in m.users) for m in body)
        uses_params = any((m.op == "call_module" and any(True for _ in gm.get_submodule(m.target).parameters()))
                          or (m.op == "get_attr" and m.target in params) for m in body)
        if closed and contained and uses_params:
            found.append(Residual(n, x, s, br, body, _module_path(n)))
    adds = {r.add for r in found}
    return [r for r in found if not adds.intersection(r.body)]


def _out_of_place(gm: fx.GraphModule) -> None:
    """In-place activations of the traced copy become out-of-place (the user's modules untouched)."""
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if getattr(mod, "inplace", False) is True and not any(True for _ in mod.parameters()):
                twin = copy.copy(mod)
                twin.inplace = False
                name = "depthlab_" + node.target.replace(".", "_")
                gm.add_submodule(name, twin)
                node.target = name
        elif node.op == "call_function" and node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}


def branch_module(gm: fx.GraphModule, r: Residual, x: fx.Node) -> fx.GraphModule:
    """The branch of ``r`` as a GraphModule of one input ``x`` (the node that is now the block's
    input in ``gm``), sharing ``gm``'s modules."""
    graph = fx.Graph()
    env = {x: graph.placeholder("x")}

    def arg(n):
        if n not in env:  # a constant (get_attr) defined before the block
            env[n] = graph.node_copy(n)
        return env[n]

    for node in r.body:
        env[node] = graph.node_copy(node, arg)
    graph.output(env[r.branch])
    return fx.GraphModule(gm, graph, class_name="Branch")


class _Gate(nn.Identity):
    """An identity on the branch (or shortcut) output, for hooks; ``named_modules`` also lists the
    layers the branch runs (``responses`` reads the branch's last BN), without registering them."""

    def __init__(self, owner=None):
        super().__init__()
        object.__setattr__(self, "_owner", owner)

    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        memo = set() if memo is None else memo
        if self not in memo or not remove_duplicate:
            memo.add(self)
            yield prefix, self
        owner = self._owner
        if owner is None or not owner.fns:
            return
        fn = owner.fns.get(False) or next(iter(owner.fns.values()))
        for node in fn.graph.nodes:
            if node.op == "call_module":
                m = fn.get_submodule(node.target)
                if m not in memo or not remove_duplicate:
                    memo.add(m)
                    local = node.target[len(owner.module) + 1:] if owner.module and \
                        node.target.startswith(owner.module + ".") else node.target
                    yield (f"{prefix}.{local}" if prefix else local), m


class ResidualBlock(nn.Module):
    """One residual addition of a traced network; see the module docstring."""

    has_shortcut = True

    def __init__(self, name: str, module: str):
        super().__init__()
        self.name, self.module, self.enabled = name, module, True
        self.branch, self.shortcut, self.sum = _Gate(self), nn.Identity(), nn.Identity()
        object.__setattr__(self, "fns", {})       # training flag -> branch GraphModule (not children)
        object.__setattr__(self, "_placed", self)  # whose branch this position runs (lesion swaps)

    def _compute(self, x, s, training: bool):
        if not self.enabled:
            return self.sum(self.shortcut(s))
        fn = self.fns.get(training) or self.fns[False]
        out = self.branch(fn(x))  # the branch first, as in the forward it came from (taps in order)
        return self.sum(self.shortcut(s) + out)

    def forward(self, x, s, training: bool):
        return self._placed._compute(x, s, training)

    def extra_repr(self) -> str:
        return f"{self.name!r}, enabled={self.enabled}"


def rewrite(gm: fx.GraphModule, residuals: List[Residual], blocks: List[ResidualBlock], training: bool) -> None:
    """Replace each residual addition of ``gm`` by a call to its block (``blocks[i]`` for
    ``residuals[i]``); the branch's nodes leave the graph (they run inside the block)."""
    done: Dict[fx.Node, fx.Node] = {}  # an addition replaced -> its block call (the next block's input)
    for i, (r, block) in enumerate(zip(residuals, blocks)):
        x, s = done.get(r.x, r.x), done.get(r.shortcut, r.shortcut)
        block.fns[training] = branch_module(gm, r, x)
        name = f"depthlab_block_{i}"
        gm.add_submodule(name, block)
        with gm.graph.inserting_before(r.add):
            call = gm.graph.call_module(name, (x, s, training))
        r.add.replace_all_uses_with(call)
        done[r.add] = call
        gm.graph.erase_node(r.add)
        for node in reversed(r.body):
            gm.graph.erase_node(node)
    gm.recompile()


def trace(net: nn.Module, training: bool) -> Tuple[Optional[fx.GraphModule], str]:
    """``(net traced with its modules in training mode, "")`` (flags restored, in-place
    activations out-of-place), or ``(None, why)`` if it does not trace."""
    flags = [(m, m.training) for m in net.modules()]
    try:
        net.train(training)
        gm = fx.symbolic_trace(net)
    except Exception as e:  # noqa: BLE001 - any tracing failure means: this model does not trace (documented)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        for m, flag in flags:
            m.training = flag
    _out_of_place(gm)
    gm.recompile()
    return gm, ""


def block_names(residuals: List[Residual], prefix: str = "") -> List[str]:
    """A name per residual: its module path (``layer1.0``), with ``#i`` where one module holds
    several (a transformer layer: ``blocks.0#0`` attention, ``blocks.0#1`` MLP); at the top
    level the addition's node name."""
    paths = [".".join(p for p in (prefix, r.module) if p) for r in residuals]
    names, seen = [], {}
    for p, r in zip(paths, residuals):
        count = sum(q == p for q in paths)
        if not p:
            names.append(r.add.name)
        elif count == 1:
            names.append(p)
        else:
            seen[p] = seen.get(p, -1) + 1
            names.append(f"{p}#{seen[p]}")
    return names


__all__ = ["Residual", "ResidualBlock", "find_residuals", "rewrite", "trace", "branch_module", "block_names",
           "is_add"]
