"""Feature discriminability per tap: a closed-form ridge linear probe (Gao & McDonnell 2017).

Per tap of ``model.taps()``: the output pooled (conv maps over positions, token sequences over
tokens), a ridge read-out ``W = (A + lam D)^-1 B`` fitted in closed form from streamed sufficient
statistics (float64), lambda chosen on a validation split, and its test accuracy; plus the Fisher
ratio. The read-out is our reading of the authors' tool (unverified). The algebra, the choices and
the memory bound: docs/methods.md, "Discriminability".
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.diagnostics.common import eval_mode
from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "discriminability"
DEFAULT_LAMBDAS = tuple(float(v) for v in torch.logspace(-4, 2, 7, dtype=torch.float64))
LAMBDA_SCALES = ("trace", "absolute")

__all__ = ["compute", "probe_taps", "pool_features", "collect_features", "ridge_solve",
           "fisher_ratio", "depth_where_probe_stops_rising", "probe_splits", "accumulate_stats", "DEFAULT_LAMBDAS"]


# ----------------------------------------------------------------------------------- helpers
def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _acc_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def pool_features(out: torch.Tensor, pool: int = 1, tokens: bool = False) -> torch.Tensor:
    """(B, C, H, W) -> (B, C * pool^2): adaptive average pool to ``pool x pool``, flattened
    (channel-major). (B, C) inputs are returned as they are. ``tokens``: the features are the
    last dimension, (B, tokens, D) -> (B, D), averaged over the tokens."""
    if out.dim() == 2:
        return out
    if tokens:
        return out.mean(dim=tuple(range(1, out.dim() - 1)))
    if pool == 1:
        return out.mean(dim=tuple(range(2, out.dim())))
    return F.adaptive_avg_pool2d(out, pool).flatten(1)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(n, start + batch_size)


def _run_pass(model: nn.Module, taps: "Dict[str, nn.Module]", x: torch.Tensor, batch_size: int,
              pool: int, on_batch) -> None:
    """One forward pass over ``x``; ``on_batch(lo, hi, {tap: (B, d) float32 features})``.
    Token sequences are averaged over their tokens: a Linear's output with 3+ dimensions, and
    every later output that is not a conv's (a transformer's residual stream)."""
    device = _device(model)
    feats: Dict[str, torch.Tensor] = {}
    seen_tokens = [False]

    def make_hook(name):
        def hook(module, _inp, out):
            if isinstance(module, nn.Linear) and out.dim() >= 3:
                seen_tokens[0] = True
            tokens = seen_tokens[0] and not isinstance(module, CONVS)
            feats[name] = pool_features(out.detach().float(), pool, tokens)
        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in taps.items()]
    try:
        with eval_mode(model), torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            for lo, hi in _batches(len(x), batch_size):
                feats.clear()
                seen_tokens[0] = False
                model(x[lo:hi].to(device=device, dtype=torch.float32))
                missing = [n for n in taps if n not in feats]
                if missing:
                    raise RuntimeError(f"taps did not fire in the forward pass: {missing[:5]}")
                on_batch(lo, hi, feats)
    finally:
        for h in handles:
            h.remove()


def collect_features(model: nn.Module, x: torch.Tensor, pool: int = 1, batch_size: int = 256,
                     taps: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """Stacked pooled features per tap, ``{tap: (N, d) float32 on the model's device}``.
    Memory O(taps x N x d): meant for small probe sets and tests (``probe_taps`` does not store
    features)."""
    all_taps = model.taps()
    chosen = {n: all_taps[n] for n in (taps if taps is not None else all_taps)}
    chunks: Dict[str, List[torch.Tensor]] = {n: [] for n in chosen}

    def on_batch(_lo, _hi, feats):
        for n in chosen:
            chunks[n].append(feats[n])

    _run_pass(model, chosen, x, batch_size, pool, on_batch)
    return {n: torch.cat(c) for n, c in chunks.items()}


def ridge_solve(A: torch.Tensor, B: torch.Tensor, lam: float) -> torch.Tensor:
    """``(A + lam D)^-1 B`` in float64, ``D = diag(1, ..., 1, 0)`` (last row/column: the unpenalised
    bias). ``A``: (d+1, d+1), ``B``: (d+1, classes) -> (d+1, classes)."""
    dtype = torch.float64 if A.device.type != "mps" else torch.float32
    A, B = A.to(dtype), B.to(dtype)
    penalty = torch.ones(A.shape[0], dtype=dtype, device=A.device)
    penalty[-1] = 0.0
    M = A + torch.diag(lam * penalty)
    L, info = torch.linalg.cholesky_ex(M)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.lstsq(M.cpu(), B.cpu()).solution.to(A.device)  # singular: lam = 0, no data


def fisher_ratio(class_sums: torch.Tensor, counts: torch.Tensor, sumsq: torch.Tensor) -> float:
    """``tr(S_B) / tr(S_W)`` from streamed statistics: class sums (classes, d), class counts
    (classes,), and the total ``sum_i ||x_i||^2``."""
    counts = counts.to(class_sums.dtype)
    n = counts.sum()
    present = counts > 0
    mu = class_sums.sum(0) / n
    mu_c = class_sums[present] / counts[present, None]
    between = (counts[present] * ((mu_c - mu) ** 2).sum(1)).sum()
    within = sumsq - (counts[present] * (mu_c ** 2).sum(1)).sum()
    within = torch.clamp(within, min=0.0)
    if float(within) <= 0.0:
        return math.inf if float(between) > 0 else float("nan")
    return float(between / within)


def probe_splits(n: int, n_train: Optional[int] = None, val_fraction: float = 0.2, seed: int = 0):
    """Seeded ``(train_idx, val_idx)`` of ``range(n)``: the first ``n_train`` samples of a random
    permutation, of which ``round(val_fraction * n_train)`` (at least 1) are the validation split."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=g)
    m = n if n_train is None else min(int(n_train), n)
    n_val = max(1, int(round(val_fraction * m)))
    if m - n_val < 1:
        raise ValueError(f"probe set too small: {m} samples with val_fraction={val_fraction}")
    return perm[n_val:m], perm[:n_val]


def _num_classes(model, data, *labels) -> int:
    if getattr(data, "num_classes", None):
        return int(data.num_classes)
    spec = getattr(model, "spec", None)
    if spec is not None and getattr(spec, "num_classes", None):
        return int(spec.num_classes)
    return int(max(int(y.max()) for y in labels)) + 1


def accumulate_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, *,
                     pool: int = 1, batch_size: int = 256,
                     taps: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Streamed sufficient statistics per tap from one forward pass over ``x`` (on the model's
    device, float64 except on MPS): ``{tap: {"A": [X 1]^T [X 1] (d+1, d+1), "B": [X 1]^T Y
    (d+1, classes), "class_sums" (classes, d), "counts" (classes,), "sumsq" (scalar)}}`` with
    ``Y`` the one-hot labels."""
    all_taps = model.taps()
    tap_map = {n: all_taps[n] for n in (taps if taps is not None else all_taps)}
    device = _device(model)
    acc = _acc_dtype(device)
    y_d = y.to(device=device, dtype=torch.long)
    stats: Dict[str, dict] = {}

    def on_batch(lo, hi, feats):
        onehot = F.one_hot(y_d[lo:hi], classes).to(acc)
        for n, f in feats.items():
            f = f.to(acc)
            xa = torch.cat([f, torch.ones(len(f), 1, dtype=acc, device=device)], 1)  # (B, d+1)
            s = stats.get(n)
            if s is None:
                d = f.shape[1]
                s = stats[n] = {"A": torch.zeros(d + 1, d + 1, dtype=acc, device=device),
                                "B": torch.zeros(d + 1, classes, dtype=acc, device=device),
                                "class_sums": torch.zeros(classes, d, dtype=acc, device=device),
                                "counts": torch.zeros(classes, dtype=acc, device=device),
                                "sumsq": torch.zeros((), dtype=acc, device=device)}
            s["A"] += xa.T @ xa
            s["B"] += xa.T @ onehot
            s["class_sums"] += onehot.T @ f
            s["counts"] += onehot.sum(0)
            s["sumsq"] += (f * f).sum()

    _run_pass(model, tap_map, x, batch_size, pool, on_batch)
    return stats


# ----------------------------------------------------------------------------------- the probe
def probe_taps(model: nn.Module, data, *, pool: int = 1, lambdas: Iterable[float] = DEFAULT_LAMBDAS,
               lambda_scale: str = "trace", n_train: Optional[int] = None, val_fraction: float = 0.2,
               n_test: Optional[int] = None, seed: int = 0, batch_size: int = 256,
               taps: Optional[Sequence[str]] = None, keep_weights: bool = False) -> List[dict]:
    """Ridge-probe every tap; returns one plain dict per tap in ``model.taps()`` order::

        {"tap", "dim", "probe_accuracy" (test), "val_accuracy", "lambda" (penalty used),
         "lambda_grid" (chosen grid value), "val_accuracies" (per grid value), "fisher_ratio"}

    ``keep_weights=True`` adds ``"weights"``: the chosen read-out, a (d+1, classes) float64 CPU
    tensor whose last row is the bias (prediction ``argmax(x @ W[:-1] + W[-1])``).

    See the module docstring for the splits, the lambda grid and the memory.
    """
    if pool < 1:
        raise ValueError(f"pool must be >= 1, got {pool!r}")
    if lambda_scale not in LAMBDA_SCALES:
        raise ValueError(f"lambda_scale must be one of {LAMBDA_SCALES}, got {lambda_scale!r}")
    grid = [float(v) for v in lambdas]
    if not grid or any(not v > 0 for v in grid):
        raise ValueError(f"lambdas must be a non-empty list of positive values, got {grid!r}")
    all_taps = model.taps()
    tap_map = {n: all_taps[n] for n in (taps if taps is not None else all_taps)}
    device = _device(model)

    train_idx, val_idx = probe_splits(len(data.train_x), n_train, val_fraction, seed)
    x_tr, y_tr = data.train_x[train_idx], data.train_y[train_idx]
    x_val, y_val = data.train_x[val_idx], data.train_y[val_idx]
    m_test = len(data.test_x) if n_test is None else min(int(n_test), len(data.test_x))
    x_te, y_te = data.test_x[:m_test], data.test_y[:m_test]
    classes = _num_classes(model, data, y_tr, y_val, y_te)
    y_val_d, y_te_d = (y.to(device=device, dtype=torch.long) for y in (y_val, y_te))

    # pass 1: sufficient statistics on the probe-train split
    stats = accumulate_stats(model, x_tr, y_tr, classes, pool=pool, batch_size=batch_size, taps=list(tap_map))

    # solve every lambda of the grid per tap
    weights: Dict[str, torch.Tensor] = {}
    penalties: Dict[str, List[float]] = {}
    for n, s in stats.items():
        A = s["A"]
        d = A.shape[0] - 1
        scale = 1.0
        if lambda_scale == "trace":
            total = A[-1, -1]
            sx = A[:d, -1]
            trace = float(torch.diagonal(A)[:d].sum() - (sx @ sx) / total)
            scale = trace / d if trace > 0 else 1.0  # constant features: fall back to absolute
        penalties[n] = [g * scale for g in grid]
        weights[n] = torch.stack([ridge_solve(A, s["B"], lam) for lam in penalties[n]])  # (G, d+1, K)

    def count_correct(y_all, ws_for):
        correct = {n: torch.zeros(ws_for(n).shape[0], dtype=torch.long, device=device) for n in tap_map}

        def on_batch(lo, hi, feats):
            y = y_all[lo:hi]
            for n, f in feats.items():
                W = ws_for(n)  # (G, d+1, K)
                logits = f.to(W.dtype) @ W[:, :-1, :] + W[:, -1:, :]  # (G, B, K)
                correct[n] += (logits.argmax(-1) == y).sum(-1)
        return correct, on_batch

    # pass 2: validation accuracy of every lambda
    val_correct, on_val = count_correct(y_val_d, lambda n: weights[n])
    _run_pass(model, tap_map, x_val, batch_size, pool, on_val)
    chosen: Dict[str, int] = {}
    for n in tap_map:
        accs = val_correct[n].tolist()
        best = max(accs)
        chosen[n] = max(i for i, a in enumerate(accs) if a == best)  # ties: most regularised

    # pass 3: test accuracy of the chosen read-out
    test_correct, on_test = count_correct(y_te_d, lambda n: weights[n][chosen[n]:chosen[n] + 1])
    _run_pass(model, tap_map, x_te, batch_size, pool, on_test)

    results = []
    for n in tap_map:
        s, i = stats[n], chosen[n]
        results.append({
            "tap": n,
            "dim": int(s["A"].shape[0] - 1),
            "probe_accuracy": float(test_correct[n][0]) / max(1, m_test),
            "val_accuracy": float(val_correct[n][i]) / len(val_idx),
            "val_accuracies": [float(c) / len(val_idx) for c in val_correct[n].tolist()],
            "lambda": penalties[n][i],
            "lambda_grid": grid[i],
            "fisher_ratio": fisher_ratio(s["class_sums"], s["counts"], s["sumsq"]),
        })
        if keep_weights:
            results[-1]["weights"] = weights[n][i].detach().cpu()
    return results


def depth_where_probe_stops_rising(records: Sequence[dict], tol: float = 0.005,
                                   suffix: str = ".sum") -> Optional[dict]:
    """Where adding blocks stops helping: over the taps whose name ends with ``suffix`` (block
    sums), in record order, the first position ``i`` such that no later tap's probe accuracy
    exceeds ``a_i`` by more than ``tol``. Accepts ``compute`` records (``name ==
    "probe_accuracy"``) or ``probe_taps`` dicts. Returns ``{"index": i (among the sum taps, i.e.
    the block index), "name": tap, "accuracy": a_i, "num_taps": m}``, or None without sum taps."""
    seq = []
    for r in records:
        if "tap" in r and "probe_accuracy" in r:
            name, value = r["tap"], r["probe_accuracy"]
        elif r.get("name") == "probe_accuracy" and r.get("quantity", QUANTITY) == QUANTITY:
            name, value = r.get("layer"), r["value"]
        else:
            continue
        if name is not None and str(name).endswith(suffix):
            seq.append((str(name), float(value)))
    if not seq:
        return None
    for i, (name, a) in enumerate(seq):
        if all(b <= a + tol for _, b in seq[i + 1:]):
            return {"index": i, "name": name, "accuracy": a, "num_taps": len(seq)}
    return None  # unreachable: the last tap always qualifies


@DIAGNOSTICS.register("discriminability",
                      description="linear-probe (closed-form ridge) test accuracy of the pooled features at every "
                                  "tap (Gao & McDonnell 2017)")
def compute(model: nn.Module, data, **options) -> List[dict]:
    """Records per tap (layer = tap name): ``probe_accuracy`` (test), ``val_accuracy``,
    ``lambda`` (penalty used), ``fisher_ratio``, ``dim``; plus one record ``probe_stops_rising``
    (layer = the block-sum tap after which probe accuracy no longer rises by more than ``tol``,
    value = its block index). Options: those of ``probe_taps`` and ``tol`` (default 0.005)."""
    tol = float(options.pop("tol", 0.005))
    results = probe_taps(model, data, **options)
    records = []
    for r in results:
        for key in ("probe_accuracy", "val_accuracy", "lambda", "fisher_ratio", "dim"):
            records.append(record(QUANTITY, key, r[key], r["tap"]))
    stop = depth_where_probe_stops_rising(results, tol)
    if stop is not None:
        records.append(record(QUANTITY, "probe_stops_rising", stop["index"], stop["name"]))
    return records

