"""``depthlab report A B ...`` on runs: one page with their curves overlaid, a table of what differs in
their configs, their final numbers, and their diagnostics drawn together (one line per run).
Directories of experiments go to ``write_compare_page`` (verdicts side by side) instead; ``compare``
picks by what the directories hold. Everything read is checked as for any report (``inputs``)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from depthlab.diagnose_run import read_diagnostics  # noqa: E402
from depthlab.diagnostics.reading import reading  # noqa: E402
from depthlab.report.diagnostic_plots import diagnostic_figures  # noqa: E402
from depthlab.report.html import html_page  # noqa: E402
from depthlab.report.inputs import (  # noqa: E402
    ReportInputError,
    clean_diagnostics,
    fmt,
    load_object,
    output_dir,
    pct,
    text,
    write_file,
)
from depthlab.report.pages import (  # noqa: E402
    data_uri,
    html_table,
    numbers_table,
    run_status,
    styled,
    write_compare_page,
)
from depthlab.report.plots import TEXT_AS_IS, read_metrics  # noqa: E402

DEFAULT_OUT = Path("runs/compare.html")
CURVES = (("train_loss", "training loss", False), ("train_acc", "training error (%)", True),
          ("test_acc", "test error (%)", True))
_e = html.escape


def is_run(path: Path) -> bool:
    return (Path(path) / "config.json").is_file() or (Path(path) / "tracked.json").is_file()


def compare(paths: Sequence, out=None, command: str = "depthlab report") -> Path:
    """The comparison page of ``paths``: runs (``config.json`` or ``tracked.json``: curves, config
    differences, diagnostics) or experiment directories (verdicts side by side), written to ``out``
    (default ``runs/compare.html``)."""
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise FileNotFoundError(f"not a directory: {', '.join(missing)}")
    out = Path(out) if out is not None else DEFAULT_OUT
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = [is_run(p) for p in paths]
    if all(runs):
        return write_runs_page(paths, out, command)
    if any(runs):
        raise ReportInputError("compare runs with runs and experiments with experiments: "
                               + ", ".join(f"{p} ({'run' if r else 'not a run'})" for p, r in zip(paths, runs)))
    return write_compare_page(paths, out, command)


def _labels(paths: List[Path]) -> List[str]:
    """Each run's directory name; the parent too where two names collide."""
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


def _flat(d, prefix: str = "") -> Dict[str, object]:
    out = {}
    for k, v in (d.items() if isinstance(d, dict) else []):
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(configs: List[dict]) -> List[list]:
    """``[key, value per run ...]`` for every config key whose value is not the same in all runs."""
    flat = [_flat(c) for c in configs]
    keys = sorted({k for f in flat for k in f})
    rows = []
    for k in keys:
        vals = [json.dumps(f[k], sort_keys=True) if k in f else "(absent)" for f in flat]
        if len(set(vals)) > 1:
            rows.append([k] + [text(f.get(k), "(absent)") for f in flat])
    return rows


def curves_png(labels: List[str], metrics: List[List[dict]]) -> bytes:
    """Training loss, training error and test error per epoch, one colour per run, the legend
    below the panels (never over a curve)."""
    import io

    with plt.rc_context({**TEXT_AS_IS, "font.size": 9.5, "axes.grid": True, "grid.alpha": 0.3}):
        fig, axes = plt.subplots(1, len(CURVES), figsize=(4.6 * len(CURVES), 3.6))
        colours = plt.get_cmap("tab10")
        for i, (label, rows) in enumerate(zip(labels, metrics)):
            for ax, (key, ylabel, error) in zip(axes, CURVES):
                pts = [(r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float))
                       and math.isfinite(r[key])]
                if pts:
                    ax.plot([e for e, _ in pts], [100 * (1 - v) if error else v for _, v in pts], "-o", ms=3,
                            lw=1.6, color=colours(i % 10), label=label)
                ax.set(xlabel="epoch", ylabel=ylabel, title=ylabel.split(" (")[0])
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, names = axes[0].get_legend_handles_labels()
        if not handles:
            for ax in axes[1:]:
                handles, names = ax.get_legend_handles_labels()
                if handles:
                    break
        fig.tight_layout(rect=(0, 0.12 if handles else 0, 1, 1))
        if handles:
            fig.legend(handles, names, loc="lower center", ncol=min(len(names), 4), frameon=False)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
    return buf.getvalue()


def _summary_row(label: str, cfg: dict, rows: List[dict]) -> list:
    last = rows[-1] if rows else {}
    tests = [r["test_acc"] for r in rows if isinstance(r.get("test_acc"), (int, float))]
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    return [label, f"{text(model.get('name'))} {text(model.get('depth'), '')}".strip(), fmt(last.get("epoch"), "d"),
            fmt(last.get("train_loss"), ".4f"), pct(last.get("train_acc")), pct(last.get("test_acc")),
            pct(max(tests)) if tests else "-", fmt(last.get("elapsed"), ".0f"), run_status(cfg, rows) if cfg else "-"]


def write_runs_page(paths: List[Path], out: Path, command: str = "depthlab report") -> Path:
    """The comparison page of run directories (see the module docstring), at ``out``."""
    labels = _labels(paths)
    configs = [load_object(p / "config.json") if (p / "config.json").is_file() else {} for p in paths]
    metrics = [read_metrics(p) if (p / "metrics.jsonl").is_file() else [] for p in paths]
    parts = [f"<p>Generated by <code>{_e(command)}</code> from "
             + ", ".join(f"<code>{_e(str(p))}</code>" for p in paths) + ".</p>"]
    parts.append("<section id=summary><h2>Runs</h2>" + html_table({
        "title": "", "columns": ["run", "model", "epochs", "train loss", "train acc", "test acc", "best test acc",
                                 "seconds", "status"],
        "rows": [_summary_row(lab, c, m) for lab, c, m in zip(labels, configs, metrics)]}) + "</section>")
    if any(metrics):
        parts.append("<section id=curves><h2>Training curves</h2><figure><img alt='training curves' src='"
                     + data_uri(curves_png(labels, metrics), "image/png")
                     + "'><figcaption>one colour per run; error = 100 - accuracy</figcaption></figure></section>")
    diffs = config_differences(configs)
    parts.append("<section id=config><h2>What differs in their configs</h2>"
                 + (html_table({"title": "", "columns": ["key"] + labels, "rows": diffs}) if diffs
                    else "<p>Nothing: the configs are identical.</p>") + "</section>")
    figures = diagnostic_figures([str(p) for p in paths], output_dir(out.parent / f"{out.stem}_files"),
                                 labels=labels)
    records = {lab: clean_diagnostics(read_diagnostics(p), p / "diagnostics.jsonl") for lab, p in zip(labels, paths)}
    lines = [(lab, line) for lab, rs in records.items() for line in reading(rs)]
    if lines:
        parts.append("<section id=reading><h2>Reading</h2><ul>"
                     + "".join(f"<li><b>{_e(lab)}</b>: {_e(line)}</li>" for lab, line in lines) + "</ul></section>")
    numbers = numbers_table(records)
    if figures or numbers:
        parts.append("<section id=diagnostics><h2>Diagnostics, one line per run</h2>" + "".join(numbers)
                     + "".join(f"<figure><img alt='{_e(q)}' src='{data_uri(png.read_bytes(), 'image/png')}'>"
                               f"<figcaption>{_e(q)}</figcaption></figure>" for q, png in figures) + "</section>")
    page = html_page(f"depthlab: {len(paths)} runs compared", "".join(parts))
    return write_file(out, styled(page).encode())


__all__ = ["compare", "write_runs_page", "config_differences", "is_run"]
