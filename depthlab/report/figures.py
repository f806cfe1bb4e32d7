"""Draw the plain-data figure specs experiments write (``line``, ``bar``, ``heatmap``, ``curves``,
``panels``; see ``depthlab.experiments.base``) with one consistent style, as SVG bytes."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from depthlab.report.inputs import inside  # noqa: E402
from depthlab.report.plots import TEXT_AS_IS, plain_log_labels, read_metrics  # noqa: E402

STYLE = {"font.size": 9.5, "axes.titlesize": 10.5, "axes.labelsize": 9.5, "legend.fontsize": 8,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
         "svg.fonttype": "path", "svg.hashsalt": "depthlab",  # glyphs as paths: no font files needed
         **TEXT_AS_IS}
CURVE_METRICS = {"train_error": ("train_acc", "training error (%)"), "test_error": ("test_acc", "test error (%)"),
                 "train_loss": ("train_loss", "training loss"), "test_loss": ("test_loss", "test loss")}


def render(spec: dict, base_dir: Optional[Path] = None, fmt: str = "svg") -> bytes:
    """The figure ``spec`` as ``fmt`` bytes (svg or png); ``curves`` read run directories under
    ``base_dir``."""
    with plt.rc_context(STYLE):
        kind = spec["type"]
        if kind == "panels":
            panels = spec["panels"]
            cols = max(1, min(spec.get("cols", 3), len(panels)))
            rows = math.ceil(len(panels) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
            for ax, p in zip(axes.flat, panels):
                _draw(ax, p, base_dir)
            for ax in list(axes.flat)[len(panels):]:
                ax.set_visible(False)
            fig.suptitle(spec.get("title", ""))
        elif kind == "curves":
            metrics = spec.get("metrics", ["train_error", "test_error"])
            fig, axes = plt.subplots(1, len(metrics), figsize=(5.3 * len(metrics), 3.8), squeeze=False)
            for ax, m in zip(axes.flat, metrics):
                _curves(ax, spec["runs"], m, base_dir)
            fig.suptitle(spec.get("title", ""))
        else:
            fig, ax = plt.subplots(figsize=(6.4, 4.0) if kind != "heatmap" else (5.2, 4.4))
            _draw(ax, spec, base_dir)
        plain_log_labels(fig)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
        plt.close(fig)
    return buf.getvalue()


def _draw(ax, spec: dict, base_dir) -> None:
    kind = spec["type"]
    if kind == "line":
        _line(ax, spec)
    elif kind == "bar":
        _bar(ax, spec)
    elif kind == "heatmap":
        _heatmap(ax, spec)
    elif kind == "curves":
        _curves(ax, spec["runs"], spec.get("metrics", ["train_error"])[0], base_dir)
    else:
        raise ValueError(f"unknown figure type {kind!r}; valid: line, bar, heatmap, curves, panels")


def _line(ax, spec: dict) -> None:
    for s in spec["series"]:
        x = s["x"]
        y = [math.nan if v is None else v for v in s["y"]]
        kw = dict(ls=s.get("style", "-"), marker=s.get("marker"), ms=4, lw=1.6, label=s["label"])
        if s.get("color"):
            kw["color"] = s["color"]
        if s.get("yerr") and any(e for e in s["yerr"] if e):
            err = [0 if e is None else e for e in s["yerr"]]
            ax.errorbar(x, y, yerr=err, capsize=2, **kw)
        else:
            ax.plot(x, y, **kw)
    for h in spec.get("hlines", []):
        ax.axhline(h["y"], color="0.4", lw=1, ls=":", label=h.get("label"))
    ax.set(title=spec.get("title", ""), xlabel=spec.get("xlabel", ""), ylabel=spec.get("ylabel", ""))
    if spec.get("xscale", "linear") != "linear":
        ax.set_xscale(spec["xscale"])
        if spec["xscale"] == "log":
            xs = sorted({v for s in spec["series"] for v in s["x"]})
            if 1 < len(xs) <= 12:
                ax.set_xticks(xs)
                ax.set_xticklabels([f"{v:g}" for v in xs])
                ax.minorticks_off()
    if spec.get("yscale", "linear") != "linear":
        ax.set_yscale(spec["yscale"])
    if spec["series"] and any(s.get("label") for s in spec["series"]):
        ax.legend(frameon=False)


def _bar(ax, spec: dict) -> None:
    vals = [math.nan if v is None else v for v in spec["values"]]
    ax.bar(range(len(vals)), vals, yerr=spec.get("yerr"), capsize=3, color="#4477aa")
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(spec["labels"], rotation=30 if len(vals) > 4 else 0, ha="right" if len(vals) > 4 else "center")
    ax.set(title=spec.get("title", ""), ylabel=spec.get("ylabel", ""))


def _heatmap(ax, spec: dict) -> None:
    z = [[math.nan if v is None else v for v in row] for row in spec["z"]]
    im = ax.imshow(z, cmap="RdBu_r", vmin=spec.get("vmin"), vmax=spec.get("vmax"), aspect="auto",
                   interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.grid(False)
    ax.set(title=spec.get("title", ""), xlabel=spec.get("xlabel", ""), ylabel=spec.get("ylabel", ""))


def _curves(ax, runs: dict, metric: str, base_dir) -> None:
    if metric not in CURVE_METRICS:
        raise ValueError(f"unknown curve metric {metric!r}; valid: {', '.join(CURVE_METRICS)}")
    key, label = CURVE_METRICS[metric]
    cmap = plt.get_cmap("viridis")
    diverged = []
    for i, (name, run_dir) in enumerate(runs.items()):
        where = inside(Path(base_dir or "."), run_dir)
        if where is None:  # a spec from someone else's directory reads nothing outside it
            raise ValueError(f"run directory {str(run_dir)[:200]!r} of {str(name)[:200]!r} is not inside "
                             f"{str(base_dir or '.')!r}")
        every = read_metrics(where)
        bad = next((r["epoch"] for r in every if r.get("status") == "diverged"), None)
        rows = [r for r in every if r.get(key) is not None and _finite(r[key]) and r.get("status") != "diverged"]
        if bad is not None:
            diverged.append(f"{name}: diverged in epoch {bad}")
        if not rows:
            continue
        ys = [100 * (1 - r[key]) if metric.endswith("error") else r[key] for r in rows]
        line, = ax.plot([r["epoch"] for r in rows], ys, ls="--" if name.startswith("plain") else "-", lw=1.6,
                        marker="o" if len(rows) <= 3 else None, ms=4,  # a lone point (the test set at the end)
                        color=cmap(0.85 * i / max(1, len(runs) - 1)),
                        label=name + (f" (diverged in epoch {bad})" if bad is not None else ""))
        if bad is not None:  # where it broke: an x after its last completed epoch
            ax.plot([rows[-1]["epoch"]], [ys[-1]], marker="x", ms=8, color=line.get_color())
    ax.set(xlabel="epoch", ylabel=label, title=label.split(" (")[0])
    if not ax.lines and diverged:  # nothing completed an epoch: say why the axes are empty
        ax.text(0.5, 0.5, "no completed epoch to draw\n" + "\n".join(diverged[:6]), transform=ax.transAxes,
                ha="center", va="center", fontsize=8)
    if metric.endswith("loss"):
        ax.set_yscale("log")
    if len(runs) > 1 and ax.get_legend_handles_labels()[0]:  # beside the axes: never over a curve
        ax.legend(frameon=False, ncol=2 if len(runs) > 8 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                  fontsize=7)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)
