"""Plots that read run directories only (never recompute)."""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from depthlab.fileio import atomic_write_bytes, epoch_gap, read_jsonl
from depthlab.report.inputs import clean_metrics

# Labels come from files (layer, run and quantity names): drawn as written, never parsed as TeX math
# (a "$" in a name would otherwise raise or render as a formula).
TEXT_AS_IS = {"text.parse_math": False}


def plain_log_labels(fig) -> None:
    """Log axes labelled 0.001, 1e-06, 100 rather than mathtext (``$10^{-3}$``), which the pages'
    plain-text setting (``TEXT_AS_IS``: a label from a record is never parsed) would show raw."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":
                axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                axis.set_minor_formatter(NullFormatter())


def read_metrics(run_dir) -> List[dict]:
    """The per-epoch rows of a run's metrics.jsonl, each field of the type depthlab writes (rows
    that are not are skipped or their bad fields emptied, with one logged line naming the file)."""
    path = Path(run_dir) / "metrics.jsonl"  # read_jsonl logs each line it skips, naming file:line
    rows = clean_metrics([r for r in read_jsonl(path) if not isinstance(r, dict) or r.get("kind") == "epoch"], path)
    gap = epoch_gap(rows)
    if gap:  # a lost row is damage too: say so rather than draw a run that looks complete
        logging.getLogger("depthlab").warning("%s: %s; shown without it", path, gap)
    return rows


def plot_training_curves(runs: Dict[str, str], path, title: str = "") -> Path:
    """Training loss and accuracy per epoch; plain runs dashed, residual runs solid, colour = depth."""
    with plt.rc_context(TEXT_AS_IS):
        return _training_curves(runs, path, title)


def _training_curves(runs: Dict[str, str], path, title: str) -> Path:
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    depths = sorted({_depth(name) for name in runs})
    cmap = plt.get_cmap("viridis")
    colour = {d: cmap(i / max(1, len(depths) - 1) * 0.85) for i, d in enumerate(depths)}
    for name, run_dir in runs.items():
        rows = read_metrics(run_dir)
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        style = "--" if name.startswith("plain") else "-"
        kw = dict(ls=style, color=colour[_depth(name)], lw=1.8, label=name)
        # a diverged epoch's loss is null (strict JSON): a gap in the line
        ax_loss.plot(ep, [_nan(r.get("train_loss")) for r in rows], **kw)
        ax_acc.plot(ep, [100 * (1 - _nan(r.get("train_acc"))) for r in rows], **kw)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="training error (%)", title="training error")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, ncol=2)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path, dpi: int = 100, layout: bool = True) -> Path:
    """Lay out (unless the caller did: ``layout=False``), write and close ``fig``; returns the path.
    Written atomically: a symbolic link at ``path`` is replaced, never followed."""
    plain_log_labels(fig)
    if layout:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    atomic_write_bytes(Path(path), lambda f: f.write(buf.getvalue()))
    return Path(path)


def _nan(v) -> float:
    return float("nan") if v is None else v


def _depth(name: str) -> int:
    digits = "".join(c for c in name if c.isdigit())
    return int(digits) if digits else 0
