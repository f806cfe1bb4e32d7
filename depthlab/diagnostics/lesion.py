"""Lesion study at test time (Veit, Wilber & Belongie 2016, "ResNets behave like ensembles", arXiv 1605.06431).

Test error of the intact model, with each block deleted alone (``block.enabled = False``: its shortcut
path only), with ``k`` random blocks deleted together, and with ``k`` disjoint pairs of same-shape blocks
swapped (Kendall tau of the order). Eval mode; the model is restored afterwards.
Details: docs/diagnostics.md, section lesion.
"""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from depthlab.diagnostics.common import eval_mode as _eval_mode
from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "lesion"
DELETE_K = "k (blocks deleted)"                       # the axis of the *_delete_k records
SWAP_K = "k (pairs of same-shape blocks swapped)"     # the axis of the *_swap_k records

__all__ = ["compute", "lesion_study", "error_rate", "blocks_disabled", "blocks_permuted",
           "block_shapes", "kendall_tau", "swap_order", "restored_blocks"]


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def restored_blocks(model: nn.Module):
    """Snapshot every block's ``enabled`` flag and the order of ``model.blocks``; restore both on
    exit (normal or exceptional)."""
    order = list(model.blocks)
    flags = [b.enabled for b in order]
    try:
        yield model
    finally:
        for i, b in enumerate(order):
            model.blocks[i] = b
        for b, flag in zip(order, flags):
            b.enabled = flag


@contextmanager
def blocks_disabled(model: nn.Module, indices: Sequence[int]):
    """Delete blocks ``indices`` (``enabled = False``) inside the block; flags restored on exit."""
    with restored_blocks(model):
        for i in indices:
            model.blocks[i].enabled = False
        yield model


@contextmanager
def blocks_permuted(model: nn.Module, order: Sequence[int]):
    """Execute the blocks in ``order`` (a permutation of ``range(len(model.blocks))``: position
    ``p`` runs original block ``order[p]``) inside the block; the original order is restored on
    exit. No weights are copied: the ``nn.ModuleList`` entries are rearranged."""
    n = len(model.blocks)
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {list(order)!r}")
    with restored_blocks(model):
        original = list(model.blocks)
        for p, i in enumerate(order):
            model.blocks[p] = original[i]
        yield model


def swap_order(n: int, pairs: Sequence[Tuple[int, int]]) -> List[int]:
    """The permutation of ``range(n)`` with each pair of positions exchanged (in turn)."""
    order = list(range(n))
    for i, j in pairs:
        order[i], order[j] = order[j], order[i]
    return order


def kendall_tau(order: Sequence[int], reference: Optional[Sequence[int]] = None) -> float:
    """Kendall's tau (tau-a; no ties in a permutation) between ``order`` and ``reference``
    (default ``range(n)``): (concordant - discordant) / (n (n - 1) / 2). One adjacent swap in n
    items gives ``1 - 4 / (n (n - 1))``; 1.0 for n < 2."""
    order = list(order)
    reference = list(range(len(order))) if reference is None else list(reference)
    if len(order) != len(reference):
        raise ValueError("order and reference must have the same length")
    n = len(order)
    if n < 2:
        return 1.0
    rank = {v: p for p, v in enumerate(reference)}
    r = [rank[v] for v in order]
    s = 0
    for a in range(n):
        for b in range(a + 1, n):
            s += 1 if r[a] < r[b] else -1
    return s / (n * (n - 1) / 2)


def block_shapes(model: nn.Module, x: torch.Tensor) -> List[Tuple[tuple, tuple]]:
    """Per block ``(input shape, output shape)`` without the batch dimension, from one forward
    pass over ``x[:1]`` with hooks on the blocks (eval mode, no grad)."""
    shapes: Dict[int, Tuple[tuple, tuple]] = {}
    device = _device(model)

    def make_hook(i):
        def hook(_m, inp, out):
            shapes[i] = (tuple(inp[0].shape[1:]), tuple(out.shape[1:]))
        return hook

    handles = [b.register_forward_hook(make_hook(i)) for i, b in enumerate(model.blocks)]
    try:
        with _eval_mode(model), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            model(x[:1].to(device=device, dtype=torch.float32))
    finally:
        for h in handles:
            h.remove()
    return [shapes[i] for i in range(len(model.blocks))]


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 error of ``model`` on ``(x, y)``, in eval mode (modes restored), float32, no grad."""
    device = _device(model)
    wrong = 0
    with _eval_mode(model), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
        for lo in range(0, len(x), batch_size):
            xb = x[lo:lo + batch_size].to(device=device, dtype=torch.float32)
            yb = y[lo:lo + batch_size].to(device=device)
            wrong += int((model(xb).argmax(1) != yb).sum())
    return wrong / max(1, len(x))


def _swap_draw(rng: random.Random, groups: List[List[int]], k: int) -> Optional[List[Tuple[int, int]]]:
    """``k`` disjoint random pairs, each within one same-shape group, or None if impossible."""
    free = [list(g) for g in groups]
    pairs = []
    for _ in range(k):
        options = [g for g in free if len(g) >= 2]
        if not options:
            return None
        weights = [len(g) * (len(g) - 1) // 2 for g in options]  # uniform over available pairs
        g = rng.choices(options, weights=weights)[0]
        i, j = rng.sample(g, 2)
        g.remove(i)
        g.remove(j)
        pairs.append((min(i, j), max(i, j)))
    return pairs


def lesion_study(model: nn.Module, data, *, max_k: int = 3, samples: int = 5, seed: int = 0,
                 batch_size: int = 256, n_test: Optional[int] = None, deletions: bool = True,
                 swaps: bool = True) -> dict:
    """The full study as plain data::

        {"intact_error": float,
         "blocks": [{"name", "index", "error", "downsampling", "same_shape", "in_shape",
                     "out_shape"}, ...],
         "delete_k": [{"k", "errors": [...], "mean_error", "deleted": [[indices], ...]}, ...],
         "swap_k": [{"k", "errors": [...], "mean_error", "kendall_tau": [...],
                     "pairs": [[[i, j], ...], ...]}, ...]}

    ``delete_k`` draws ``samples`` sets of ``k`` distinct blocks (k = 1..min(max_k, n)); ``swap_k``
    draws ``samples`` sets of ``k`` disjoint same-shape pairs while such sets exist.
    """
    if max_k < 0 or samples < 1:
        raise ValueError(f"need max_k >= 0 and samples >= 1, got {max_k!r}, {samples!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError("lesion needs a model with blocks (depth units to delete)")
    names = list(getattr(model, "block_names", [f"block{i}" for i in range(len(blocks))]))
    fixed = [name for name, b in zip(names, blocks) if not hasattr(b, "enabled")]
    if fixed:
        raise ValueError(f"lesion needs blocks that can be deleted (an identity path depthlab can run: a "
                         f"residual addition x + f(x)); {len(fixed)} of {len(blocks)} cannot, e.g. {fixed[0]!r}")
    m = len(data.test_x) if n_test is None else min(int(n_test), len(data.test_x))
    x, y = data.test_x[:m], data.test_y[:m]
    n = len(blocks)
    rng = random.Random(seed)
    result: dict = {"blocks": [], "delete_k": [], "swap_k": []}
    with restored_blocks(model):
        shapes = block_shapes(model, x)
        result["intact_error"] = error_rate(model, x, y, batch_size)
        for i, (sin, sout) in enumerate(shapes):
            with blocks_disabled(model, [i]):
                err = error_rate(model, x, y, batch_size)
            result["blocks"].append({
                "name": names[i], "index": i, "error": err,
                "downsampling": sin[1:] != sout[1:],
                "same_shape": sin == sout, "in_shape": list(sin), "out_shape": list(sout)})
        if deletions:
            for k in range(1, min(max_k, n) + 1):
                errors, deleted = [], []
                for _ in range(samples):
                    idx = sorted(rng.sample(range(n), k))
                    with blocks_disabled(model, idx):
                        errors.append(error_rate(model, x, y, batch_size))
                    deleted.append(idx)
                result["delete_k"].append({"k": k, "errors": errors, "deleted": deleted,
                                           "mean_error": sum(errors) / len(errors)})
        if swaps:
            by_shape: Dict[tuple, List[int]] = {}
            for i, (sin, sout) in enumerate(shapes):
                if sin == sout:
                    by_shape.setdefault(sin, []).append(i)
            groups = [g for g in by_shape.values() if len(g) >= 2]
            for k in range(1, max_k + 1):
                draws = [_swap_draw(rng, groups, k) for _ in range(samples)]
                if any(d is None for d in draws):
                    break
                errors, taus = [], []
                for pairs in draws:
                    order = swap_order(n, pairs)
                    with blocks_permuted(model, order):
                        errors.append(error_rate(model, x, y, batch_size))
                    taus.append(kendall_tau(order))
                result["swap_k"].append({"k": k, "errors": errors, "kendall_tau": taus,
                                         "pairs": [[list(p) for p in d] for d in draws],
                                         "mean_error": sum(errors) / len(errors)})
    return result


@DIAGNOSTICS.register("lesion",
                      description="test error with each block deleted, with k random blocks deleted, and with "
                                  "pairs swapped (Veit et al. 2016)")
def compute(model: nn.Module, data, **options) -> List[dict]:
    """Records: ``intact_error`` (layer None); per block (layer = block name) ``error`` (that block
    deleted alone), ``downsampling`` (bool) and ``same_shape`` (bool); layer None:
    ``error_delete_k`` (list over k = 1.. of the per-sample errors), ``error_delete_k_mean``
    (list over k), ``error_swap_k``, ``kendall_tau_swap_k`` (lists over k of per-sample values)
    and ``error_swap_k_mean``; each of those carries its k values as ``x``. Options: those of
    ``lesion_study``."""
    r = lesion_study(model, data, **options)
    records = [record(QUANTITY, "intact_error", r["intact_error"])]
    for b in r["blocks"]:
        records.append(record(QUANTITY, "error", b["error"], b["name"]))
        records.append(record(QUANTITY, "downsampling", bool(b["downsampling"]), b["name"]))
        records.append(record(QUANTITY, "same_shape", bool(b["same_shape"]), b["name"]))
    if r["delete_k"]:
        axis = {"x": [d["k"] for d in r["delete_k"]], "x_label": DELETE_K}
        records.append(record(QUANTITY, "error_delete_k", [d["errors"] for d in r["delete_k"]], **axis))
        records.append(record(QUANTITY, "error_delete_k_mean", [d["mean_error"] for d in r["delete_k"]], **axis))
    if r["swap_k"]:
        axis = {"x": [d["k"] for d in r["swap_k"]], "x_label": SWAP_K}
        records.append(record(QUANTITY, "error_swap_k", [d["errors"] for d in r["swap_k"]], **axis))
        records.append(record(QUANTITY, "kendall_tau_swap_k", [d["kendall_tau"] for d in r["swap_k"]], **axis))
        records.append(record(QUANTITY, "error_swap_k_mean", [d["mean_error"] for d in r["swap_k"]], **axis))
    return records
