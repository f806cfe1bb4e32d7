"""One PNG per diagnostic quantity, drawn from ``diagnostics.jsonl`` files only (never recomputed).

Records are grouped by ``name``; per-layer scalars become a line over the layers (one line per run),
unlabelled sequences a line over their index, unlabelled scalars a bar per run, matrices an image.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from depthlab.diagnosis import read_diagnostics
from depthlab.report.plots import save_figure  # noqa: E402

MAX_PANELS = 6


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


def _kind(rs: List[dict]) -> str:
    v = rs[0]["value"]
    if any(r.get("layer") is not None for r in rs) and all(_is_num(r["value"]) for r in rs):
        return "per-layer"
    if isinstance(v, list) and v and all(_is_num(x) for x in v):
        return "sequence"
    if isinstance(v, list) and v and all(isinstance(row, list) and len(row) == len(v) for row in v):
        return "matrix"  # square: a correlation matrix (ragged per-sample lists have *_mean records)
    if _is_num(v):
        return "scalar"
    return "skip"


def plot_quantity(runs: Dict[str, List[dict]], quantity: str, path) -> Path:
    """``runs``: label -> records (from read_diagnostics). Writes and returns ``path``."""
    by_name: Dict[str, Dict[str, List[dict]]] = {}
    for label, records in runs.items():
        for r in _latest([r for r in records if r["quantity"] == quantity]):
            by_name.setdefault(r["name"], {}).setdefault(label, []).append(r)
    panels = [(n, d) for n, d in by_name.items() if _kind(next(iter(d.values()))) != "skip"][:MAX_PANELS]
    if not panels:
        raise ValueError(f"no plottable records for quantity {quantity!r}")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, per_run) in zip(axes.flat, panels):
        _panel(ax, name, per_run)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(quantity)
    return save_figure(fig, path)


def _panel(ax, name: str, per_run: Dict[str, List[dict]]) -> None:
    kind = _kind(next(iter(per_run.values())))
    values = []
    if kind == "per-layer":
        for label, rs in per_run.items():
            ys = [r["value"] for r in rs]
            ax.plot(range(len(ys)), ys, marker=".", lw=1.2, label=label)
            values += ys
        ax.set_xlabel("layer (forward order)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    elif kind == "sequence":
        for label, rs in per_run.items():
            ys = rs[0]["value"]
            ax.plot(range(len(ys)), ys, lw=1.2, label=label)
            values += ys
        ax.set_xlabel("index")
    elif kind == "scalar":
        labels = list(per_run)
        ys = [per_run[k][0]["value"] for k in labels]
        ax.bar(range(len(ys)), ys, tick_label=labels)
        values += ys
    elif kind == "matrix":
        label, rs = next(iter(per_run.items()))
        im = ax.imshow(rs[0]["value"], cmap="RdBu_r", vmin=-1, vmax=1)
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
        name = f"{name} ({label})"
    finite = [v for v in values if _is_num(v) and math.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
    if kind in ("per-layer", "sequence") and len(per_run) > 1:
        ax.legend(fontsize=8)


def plot_diagnostics(run_dirs: List[str], out_dir, quantities=None) -> List[Path]:
    """One ``diagnostics_<quantity>.png`` per quantity found in the runs' diagnostics.jsonl."""
    runs = {Path(d).name: read_diagnostics(d) for d in run_dirs}
    found = sorted({r["quantity"] for rs in runs.values() for r in rs})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for q in found:
        if quantities is not None and q not in quantities:
            continue
        try:
            paths.append(plot_quantity(runs, q, out_dir / f"diagnostics_{q}.png"))
        except ValueError:  # nothing numeric to draw for this quantity
            continue
    return paths
