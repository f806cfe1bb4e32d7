"""One PNG per diagnostic quantity, drawn from ``diagnostics.jsonl`` files only (never recomputed).

Records are grouped by ``name``; per-layer scalars become a line over the layers (one line per run,
the layer names as tick labels), sequences a line over their ``x`` (with the record's ``x_label``;
records without one, e.g. from older files, over their index), per-sample lists along ``x`` a mean
with sd bars, one curve per input (``x_axis: 1``) a mean with a min-max band, unlabelled scalars a
bar per run, square matrices an image. A spread record shares its mean's panel as sd bars
(``X_mean`` with the per-sample ``X`` or with ``X_sd``; ``X`` with ``X_sd``), and a record that is
only the ``x`` of others (paths' ``ks``) gets no panel; records without ``x`` (older files) are
drawn as they always were.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from depthlab.diagnose_run import read_diagnostics  # noqa: E402
from depthlab.report.inputs import clean_diagnostics, file_stem, output_dir  # noqa: E402
from depthlab.report.plots import TEXT_AS_IS, save_figure  # noqa: E402

MAX_PANELS = 6
MAX_TICK_LABELS = 28  # layer names beyond this are thinned (every 2nd, 3rd, ... name shown)
MAX_STEPS = 6         # a scheduled quantity of one run: at most this many snapshots drawn (first to last)
# name -> (panel title, y-axis label) for the records depthlab writes; others show their name on both
LABELS = {
    "error_rms": ("backward error per layer", "RMS of dL/d(layer output)"),
    "error_norm": ("backward error per layer", "||dL/d(layer output)||"),
    "weight_grad_rms": ("weight gradient per layer", "RMS of dL/dW"),
    "weight_grad_norm": ("weight gradient per layer", "||dL/dW||_F"),
    "probe_accuracy": ("linear read-out per tap (test)", "read-out test accuracy"),
    "val_accuracy": ("linear read-out per tap (validation)", "read-out validation accuracy"),
    "fisher_ratio": ("class separation per tap", "Fisher ratio tr(S_B) / tr(S_W)"),
    "error": ("one block deleted", "test error (fraction)"),
    "error_delete_k_mean": ("k blocks deleted", "test error (fraction)"),
    "error_swap_k_mean": ("k pairs of blocks swapped", "test error (fraction)"),
    "kendall_tau_swap_k": ("order after the swaps", "Kendall tau to the original order"),
    "std": ("branch response (last BN output)", "standard deviation"),
    "magnitude": ("gradient through paths of length k", "mean ||dL/dx|| per path"),
    "distribution": ("share of the gradient by path length", "fraction of the total"),
    "contribution": ("total gradient by path length", "C(n, k) x magnitude"),
    "counts": ("number of paths of length k", "C(n, k)"),
    "singular_values": ("input-output Jacobian spectrum", "singular value"),
    "dead_fraction": ("channels that never fire", "fraction of channels"),
    "constant_fraction": ("channels that never change", "fraction of channels"),
    "acf_mean": ("gradient autocorrelation", "autocorrelation"),
    "wwt_minus_identity_fro": ("distance from orthonormal", "||W W^T - I||_F"),
}


def _latest(records: List[dict]) -> List[dict]:
    """Keep each (quantity, layer, name) from the latest step only."""
    best: Dict[tuple, dict] = {}
    for r in records:
        key = (r["quantity"], r.get("layer"), r["name"])
        if key not in best or r.get("step", 0) >= best[key].get("step", 0):
            best[key] = r
    return list(best.values())


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v) -> bool:
    """A non-empty list of numbers; ``None`` (a non-finite value in strict JSON) counts as a gap."""
    return isinstance(v, list) and any(_is_num(x) for x in v) and all(_is_num(x) or x is None for x in v)


def _kind(rs: List[dict]) -> str:
    r0 = rs[0]
    v, x = r0["value"], r0.get("x")
    if any(r.get("layer") is not None for r in rs) and all(_is_num(r["value"]) for r in rs):
        return "per-layer"
    if _numbers(v):
        return "sequence"
    if x is not None and isinstance(v, list) and v and all(_numbers(row) for row in v):
        if r0.get("x_axis", 0) == 0 and len(v) == len(x):
            return "samples"  # v[i]: the samples at x[i]
        if r0.get("x_axis", 0) == 1 and all(len(row) == len(x) for row in v):
            return "curves"  # v[j]: one curve over x
    if isinstance(v, list) and v and all(isinstance(row, list) and len(row) == len(v) for row in v):
        return "matrix"  # square: a correlation matrix (ragged per-sample lists have *_mean records)
    if _is_num(v):
        return "scalar"
    return "skip"


def _f(v) -> float:
    return math.nan if v is None else float(v)


def _mean_sd(row: List) -> tuple:
    vals = [float(v) for v in row if _is_num(v) and math.isfinite(v)]
    if not vals:
        return math.nan, 0.0
    m = sum(vals) / len(vals)
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / len(vals))


def _axis(r: dict, n: int):
    """The x values and label of a sequence of length ``n``: the record's own, else its index."""
    x = r.get("x")
    if isinstance(x, list) and len(x) == n:
        return x, r.get("x_label") or "index"
    return list(range(n)), "index"


def axis_labels(ax) -> dict:
    """What a panel tells the reader about its x axis: ``{"xlabel", "xticklabels"}`` (for tests)."""
    return {"xlabel": ax.get_xlabel(), "xticklabels": [t.get_text() for t in ax.get_xticklabels()]}


STEP_SERIES = "weight_grad_norm_per_step"  # gradient_tracking: one record per layer and flush, a value per step
MAX_STEP_LINES = 8


def step_series(records: List[dict]) -> Dict[str, tuple]:
    """Per layer, the per-step gradient norms of every flush joined in step order: ``{layer: (steps,
    values)}`` (a resumed run's repeated steps keep their latest value)."""
    by_layer: Dict[str, Dict[int, float]] = {}
    for r in sorted((r for r in records if r.get("name") == STEP_SERIES), key=lambda r: r.get("step", 0)):
        first = int(r.get("first_step", 1))
        by_layer.setdefault(r["layer"], {}).update({first + i: _f(v) for i, v in enumerate(r["value"])})
    return {layer: (sorted(d), [d[k] for k in sorted(d)]) for layer, d in by_layer.items()}


def draw_step_series(runs: Dict[str, List[dict]]):
    """Per run, the weight-gradient norm of up to 8 layers (first to last, evenly picked) per step."""
    fig, axes = plt.subplots(1, len(runs), figsize=(6.4 * len(runs), 4.2), squeeze=False)
    for ax, (label, records) in zip(axes.flat, runs.items()):
        series = step_series(records)
        if not series:
            raise ValueError("no per-step gradient norms")
        layers = list(series)
        pick = sorted({round(i * (len(layers) - 1) / max(1, MAX_STEP_LINES - 1)) for i in range(MAX_STEP_LINES)})
        for i in pick:
            steps, values = series[layers[i]]
            ax.plot(steps, values, lw=1, label=layers[i])
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("||dL/dW|| per layer")
        ax.set_title(label, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("gradient_tracking: weight-gradient norm per step")
    return fig


def _snapshots(records: List[dict]) -> List[int]:
    """The steps at which a run recorded this quantity: at most ``MAX_STEPS``, first and last kept."""
    steps = sorted({int(r.get("step") or 0) for r in records})
    if len(steps) <= MAX_STEPS:
        return steps
    return [steps[round(i * (len(steps) - 1) / (MAX_STEPS - 1))] for i in range(MAX_STEPS)]


def _when(records: List[dict], step: int) -> str:
    epoch = next((r.get("epoch") for r in records if int(r.get("step") or 0) == step and r.get("epoch") is not None),
                 None)
    return f"epoch {epoch}" if epoch is not None else f"step {step}"


def draw_quantity(runs: Dict[str, List[dict]], quantity: str):
    """The figure for ``quantity`` (``runs``: label -> records); the caller saves or closes it. One
    panel per record name that is a curve (single numbers go to ``summary_numbers``); a run that
    recorded the quantity at several steps gets a line per snapshot, named by its epoch."""
    if quantity == "gradient_tracking":
        return draw_step_series({k: [r for r in rs if r["quantity"] == quantity] for k, rs in runs.items()})
    mine = {label: [r for r in records if r["quantity"] == quantity] for label, records in runs.items()}
    steps = _snapshots(next(iter(mine.values()))) if len(mine) == 1 else []
    when = ""
    if len(steps) > 1:  # one run, several snapshots: each is a "run" of the figure, named by its epoch
        (only,) = mine.values()
        mine = {_when(only, st): [r for r in only if int(r.get("step") or 0) == st] for st in steps}
    elif len(mine) == 1:
        only = next(iter(mine.values()))
        when = f" ({_when(only, max(int(r.get('step') or 0) for r in only))})" if only else ""
    by_name: Dict[str, Dict[str, List[dict]]] = {}
    for label, records in mine.items():
        for r in _latest(records):
            by_name.setdefault(r["name"], {}).setdefault(label, []).append(r)
    spreads = _fold_spreads(by_name)
    axes_only = {json.dumps(r.get("x")) for d in by_name.values() for rs in d.values() for r in rs if r.get("x")}
    for name in [n for n, d in by_name.items() if all("x" not in r and json.dumps(r["value"]) in axes_only
                                                     for rs in d.values() for r in rs)]:
        del by_name[name]  # e.g. paths' "ks": the axis of the other records, not a measurement
    panels = [(n, d) for n, d in by_name.items()
              if _kind(next(iter(d.values()))) not in ("skip", "scalar") and not _one_layer(d)
              and not _few_named(next(iter(d.values()))[0])][:MAX_PANELS]
    if not panels:
        raise ValueError(f"no curves to draw for quantity {quantity!r} (single numbers go to the summary table)")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    tall = any(_kind(next(iter(d.values()))) == "per-layer" for _, d in panels)  # room for layer names
    fig, axes = plt.subplots(rows, cols, figsize=(5.4 * cols, (5.0 if tall else 3.9) * rows + 0.5), squeeze=False)
    for ax, (name, per_run) in zip(axes.flat, panels):
        _panel(ax, name, per_run, spreads.get(name))
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = [], []
    for ax in axes.flat:  # one legend for the figure, above the panels: it never covers a curve
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.suptitle(quantity + when)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if len(labels) > 1 else 0.97))
    if len(labels) > 1:
        fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.955), ncol=min(len(labels), 6),
                   frameon=False, fontsize=8)
    return fig


def _few_named(r: dict) -> bool:
    """A short list of numbers over named (not numeric) x, like paths' ``effective_range`` [k_lo,
    k_hi]: numbers for the table, not a curve."""
    x, v = r.get("x"), r["value"]
    return _numbers(v) and len(v) <= 3 and isinstance(x, list) and not all(_is_num(e) for e in x)


def _one_layer(per_run: Dict[str, List[dict]]) -> bool:
    """A per-layer record with one layer in every run (discriminability's ``probe_stops_rising``):
    a single number, for the table."""
    return all(len(rs) == 1 and rs[0].get("layer") is not None for rs in per_run.values())


def summary_numbers(runs: Dict[str, List[dict]]) -> List[list]:
    """``[quantity, name, value per run ...]`` for every single number (a scalar record without a
    layer, or a per-layer one with a single layer: ``name (layer)``) at each run's latest step: the
    table that stands in for one-bar panels."""
    rows: Dict[tuple, Dict[str, object]] = {}
    for label, records in runs.items():
        every = _latest(records)
        latest = [r for r in every if _is_num(r["value"]) and r["quantity"] != "gradient_tracking"]
        layers: Dict[tuple, int] = {}
        for r in latest:
            if r.get("layer") is not None:
                layers[(r["quantity"], r["name"])] = layers.get((r["quantity"], r["name"]), 0) + 1
        for r in every:
            if r.get("layer") is None and _few_named(r):
                rows.setdefault((r["quantity"], r["name"]), {})[label] = ", ".join(
                    f"{x}={v:g}" for x, v in zip(r["x"], r["value"]))
        for r in latest:
            if r.get("layer") is None:
                rows.setdefault((r["quantity"], r["name"]), {})[label] = r["value"]
            elif layers[(r["quantity"], r["name"])] == 1:
                rows.setdefault((r["quantity"], f"{r['name']} ({r['layer']})"), {})[label] = r["value"]
    return [[q, n] + [rows[(q, n)].get(label) for label in runs] for q, n in sorted(rows)]


def _fold_spreads(by_name: Dict[str, Dict[str, List[dict]]]) -> dict:
    """Take the spread records out of ``by_name``: for a sequence "X_mean" with an ``x``, its
    per-sample "X" or "X_sd"; for "X", "X_sd". Returns ``{mean name: {run: sd list}}``."""
    spreads = {}
    for name in list(by_name):
        first = next(iter(by_name[name].values()))[0] if name in by_name else {}
        if "x" not in first or _kind([first]) != "sequence":  # older records without x: as they were
            continue
        stem = name[:-len("_mean")] if name.endswith("_mean") else name
        for sib in (stem, f"{stem}_sd", f"{name}_sd"):
            if sib == name or sib not in by_name:
                continue
            kind = _kind(next(iter(by_name[sib].values())))
            if kind == "samples":
                spreads[name] = {k: [_mean_sd(row)[1] for row in rs[0]["value"]] for k, rs in by_name.pop(sib).items()}
            elif kind == "sequence" and sib != stem:
                spreads[name] = {k: [_f(v) for v in rs[0]["value"]] for k, rs in by_name.pop(sib).items()}
            else:
                continue
            break
    return spreads


def plot_quantity(runs: Dict[str, List[dict]], quantity: str, path) -> Path:
    """``runs``: label -> records (from read_diagnostics). Writes and returns ``path``."""
    return save_figure(draw_quantity(runs, quantity), path, layout=quantity == "gradient_tracking")


def _layer_ticks(ax, names: List[str]) -> None:
    step = max(1, math.ceil(len(names) / MAX_TICK_LABELS))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=90, fontsize=7)


def _panel(ax, name: str, per_run: Dict[str, List[dict]], spread: Optional[Dict[str, List[dict]]] = None) -> None:
    kind = _kind(next(iter(per_run.values())))
    values, xs = [], []
    title, ylabel = LABELS.get(name, (name, name))
    if kind == "per-layer":
        layers = list(dict.fromkeys(r["layer"] for rs in per_run.values() for r in rs))  # runs may differ
        where = {layer: i for i, layer in enumerate(layers)}
        for label, rs in per_run.items():
            ys = [r["value"] for r in rs]
            ax.plot([where[r["layer"]] for r in rs], ys, marker=".", lw=1.2, label=label)
            values += ys
        ax.set_xlabel("layer (forward order)")
        _layer_ticks(ax, layers)
    elif kind == "sequence":
        for label, rs in per_run.items():
            ys = [_f(v) for v in rs[0]["value"]]
            xs, xlabel = _axis(rs[0], len(ys))
            sd = (spread or {}).get(label)
            if sd and len(sd) == len(ys):
                ax.errorbar(xs, ys, yerr=sd, marker="." if len(ys) <= 30 else None, capsize=2, lw=1.2, label=label)
            else:
                ax.plot(xs, ys, lw=1.2, marker="." if len(ys) <= 30 else None, label=label)
            values += ys
        ax.set_xlabel(xlabel)
        if spread:
            title = f"{title} (+- sd)"
    elif kind == "samples":
        for label, rs in per_run.items():
            ms = [_mean_sd(row) for row in rs[0]["value"]]
            xs, xlabel = _axis(rs[0], len(ms))
            ax.errorbar(xs, [m for m, _ in ms], yerr=[s for _, s in ms], marker=".", capsize=2, lw=1.2, label=label)
            values += [m for m, _ in ms]
        ax.set_xlabel(xlabel)
        title = f"{title} (mean +- sd over samples)"
    elif kind == "curves":
        for label, rs in per_run.items():
            curves = [[_f(v) for v in row] for row in rs[0]["value"]]
            xs, xlabel = _axis(rs[0], len(curves[0]))
            cols = list(zip(*curves))
            mean = [_mean_sd(list(c))[0] for c in cols]
            line, = ax.plot(xs, mean, lw=1.2, marker="." if len(xs) <= 30 else None, label=label)
            if len(curves) > 1:
                lo = [min((v for v in c if math.isfinite(v)), default=math.nan) for c in cols]
                hi = [max((v for v in c if math.isfinite(v)), default=math.nan) for c in cols]
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
            values += [v for c in curves for v in c]
        ax.set_xlabel(xlabel)
        title = f"{title} (mean, band: min-max over {len(curves)})"
    elif kind == "matrix":
        label, rs = next(iter(per_run.items()))
        im = ax.imshow(rs[0]["value"], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        title = f"{title} ({label})"
    if kind in ("sequence", "samples", "curves") and all(_is_num(v) for v in xs):
        if len(set(xs)) <= 12:  # few k values: a tick at each (one k alone would get 0.95 ... 1.05)
            ax.set_xticks(sorted(set(xs)))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # lags, ranks: whole numbers
    finite = [v for v in values if _is_num(v) and math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    if kind != "matrix":
        ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(alpha=0.3)


def diagnostic_figures(run_dirs: List[str], out_dir, quantities=None,
                       labels: Optional[List[str]] = None) -> List[Tuple[str, Path]]:
    """``(quantity, png path)`` for each quantity found in the runs' diagnostics.jsonl, drawn into
    ``out_dir/diagnostics_<quantity>.png`` (a quantity that is not a plain name gets a sanitised file
    name: the records may come from anyone's directory). Malformed records are skipped with one
    logged line per file. ``labels``: the runs' names in the legends (default: the directory names)."""
    labels = labels or [Path(d).name for d in run_dirs]
    runs = {label: clean_diagnostics(read_diagnostics(d), Path(d) / "diagnostics.jsonl")
            for label, d in zip(labels, run_dirs)}
    found = sorted({r["quantity"] for rs in runs.values() for r in rs})
    out_dir = output_dir(Path(out_dir))
    drawn = []
    for q in found:
        if quantities is not None and q not in quantities:
            continue
        try:
            with plt.rc_context(TEXT_AS_IS):
                drawn.append((q, plot_quantity(runs, q, out_dir / f"diagnostics_{file_stem(q)}.png")))
        except (ValueError, TypeError):  # nothing numeric to draw for this quantity (or values of the wrong type)
            continue
            continue
    return drawn


def plot_diagnostics(run_dirs: List[str], out_dir, quantities=None) -> List[Path]:
    """One ``diagnostics_<quantity>.png`` per quantity found in the runs' diagnostics.jsonl."""
    return [path for _, path in diagnostic_figures(run_dirs, out_dir, quantities)]
