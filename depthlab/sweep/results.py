"""A sweep's results: ``results.json`` (every run: grid values, seed, status, metrics, error),
``results.md`` and a self-contained ``report.html`` with one table: a row per grid point, its grid
values, finished / seeds, and final train accuracy, test accuracy and train loss as mean +- sd over
the *finished* seeds. Diverged, failed and interrupted runs are counted and listed, never averaged."""
from __future__ import annotations

import html
import json
import math
import sys
from pathlib import Path
from typing import Dict, List

from depthlab.fileio import atomic_write_text
from depthlab.report.html import html_page
from depthlab.report.inputs import inside, pct
from depthlab.report.pages import data_uri, definition_list, html_table, styled
from depthlab.report.plots import read_metrics
from depthlab.stats import fmt_mean_sd, mean_sd

STATUSES = ("finished", "diverged", "failed", "interrupted")
ACTIONS = ("trained", "resumed", "skipped", "not run")
METRICS = (("train_acc", "train acc", 100.0, 1, "%"), ("test_acc", "test acc", 100.0, 1, "%"),
           ("train_loss", "train loss", 1.0, 3, ""))


def _num(v):
    return None if v is None or not math.isfinite(v) else v


def cell(v) -> str:
    """A grid value as the table shows it (YAML spelling: null, true)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def aggregate(grid_keys: List[str], records: List[dict]) -> dict:
    """``{"groups": [...], "table": {...}}`` from per-run records (in expansion order)."""
    order: Dict[str, List[dict]] = {}
    for r in records:
        order.setdefault(r["point_id"], []).append(r)
    groups, rows = [], []
    keys = grid_keys or ["point"]
    for pid, recs in order.items():
        fin = [r for r in recs if r["status"] == "finished"]
        g = {"point_id": pid, "point": recs[0]["point"], "seeds": [r["seed"] for r in recs],
             "n_seeds": len(recs), "n_finished": len(fin),
             "not_finished": [{"seed": r["seed"], "run_id": r["run_id"], "status": r["status"],
                               "error": r.get("error")} for r in recs if r["status"] != "finished"]}
        for key, *_ in METRICS:
            values = [r.get(key) for r in fin]
            m, sd, n = mean_sd(values)
            g[key] = {"mean": _num(m), "sd": _num(sd), "n": n, "values": values}
        groups.append(g)
        values = [cell(g["point"][k]) if k in g["point"] else "-" for k in grid_keys] or [pid]
        values.append(f"{g['n_finished']}/{g['n_seeds']}")
        values += [fmt_mean_sd(g[key]["values"], scale=s, digits=d, unit=u) for key, _, s, d, u in METRICS]
        values.append(_not_finished(g["not_finished"]))
        rows.append(values)
    columns = keys + ["finished"] + [label for _, label, *_ in METRICS] + ["not finished"]
    note = ("Mean +- sample sd over the finished seeds (one value: a single seed) of the last epoch's metrics "
            "(train acc: running accuracy over that epoch). Diverged, failed and interrupted runs are listed, "
            "not averaged.")
    if any(k not in g["point"] for g in groups for k in grid_keys):
        note += " '-': the key is not part of that grid point (the base config's value applies)."
    return {"groups": groups, "table": {"title": "One row per grid point", "columns": columns, "rows": rows,
                                        "note": note}}


def _not_finished(items: List[dict]) -> str:
    """``failed s0,s1; diverged s2``."""
    by: Dict[str, List[str]] = {}
    for x in items:
        by.setdefault(x["status"], []).append(f"s{x['seed']}")
    return "; ".join(f"{status} {','.join(seeds)}" for status, seeds in by.items())


def _not_started(r: dict) -> bool:
    """An interrupted sweep's run that never began (no epoch done, not run by this invocation)."""
    return r["status"] == "interrupted" and r.get("action") == "not run" and not r.get("epoch")


def counts(records: List[dict]) -> dict:
    """Runs per status (an interrupted run that never began counts as ``not started``) and per action."""
    return {"runs": len(records),
            **{s: sum(r["status"] == s and not _not_started(r) for r in records) for s in STATUSES},
            "not started": sum(_not_started(r) for r in records),
            "actions": {a: sum(r.get("action") == a for r in records) for a in ACTIONS},
            "retried": sum(bool(r.get("retries")) for r in records)}


def summary_line(doc: dict) -> str:
    c, a = doc["counts"], doc["counts"]["actions"]
    parts = [f"{c[s]} {s}" for s in STATUSES + ("not started",) if c.get(s) or s == "finished"]
    acted = ", ".join(f"{a[k]} {k}" for k in ACTIONS if a[k])
    if c.get("retried"):
        acted += f"; {c['retried']} resumed after a worker died"
    runs = f"{c['runs']} run{'s' if c['runs'] != 1 else ''}"
    return f"{runs}: {', '.join(parts)} (this invocation: {acted or 'nothing to do'})"


def write_results(sweep_dir: Path, doc: dict) -> Dict[str, str]:
    """results.json, results.md and report.html in ``sweep_dir``; returns their paths."""
    sweep_dir = Path(sweep_dir)
    paths = {"json": sweep_dir / "results.json", "markdown": sweep_dir / "results.md",
             "html": sweep_dir / "report.html"}
    doc["paths"] = {k: str(v) for k, v in paths.items()}
    atomic_write_text(paths["json"], json.dumps(doc, indent=1, default=str))
    atomic_write_text(paths["markdown"], markdown(doc))
    atomic_write_text(paths["html"], report_html(doc))
    return doc["paths"]


def _md_row(cells) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _problems(doc: dict) -> List[str]:
    out = []
    for r in doc["runs"]:
        if r["status"] == "diverged":
            out.append(f"{r['run_id']}: diverged at epoch {r.get('epoch')} (non-finite training loss)")
        elif r["status"] == "failed":
            out.append(f"{r['run_id']}: failed: {r.get('error')} (traceback: {r['run_dir']}/error.txt)")
        elif r["status"] == "interrupted":
            out.append(f"{r['run_id']}: interrupted at epoch {r.get('epoch') or 0}; re-run the sweep to resume it")
    return out


def markdown(doc: dict) -> str:
    t = doc["table"]
    prov = doc.get("provenance", {})
    lines = [f"# Sweep `{doc['name']}`", ""]
    if doc.get("description"):
        lines += [doc["description"], ""]
    lines += [f"Generated by `{prov.get('command')}`: {summary_line(doc)}.", "",
              _md_row(t["columns"]), _md_row(["---"] * len(t["columns"]))]
    lines += [_md_row(r) for r in t["rows"]]
    lines += ["", t["note"], ""]
    problems = _problems(doc)
    if problems:
        lines += ["## Runs that did not finish", ""] + [f"- {p}" for p in problems] + [""]
    return "\n".join(lines)


def report_html(doc: dict) -> str:
    prov = doc.get("provenance", {})
    parts = []
    if doc.get("description"):
        parts.append(f"<p>{html.escape(doc['description'])}</p>")
    parts.append(f"<section id=summary><p>{html.escape(summary_line(doc))}</p></section>")
    parts.append("<section id=results><h2>Results</h2>" + html_table(doc["table"]) + "</section>")
    fig = _figure(doc)
    if fig:
        parts.append(f"<section id=figures><h2>Accuracy and training curves</h2>{fig}</section>")
    problems = _problems(doc)
    if problems:
        parts.append("<section id=problems><h2>Runs that did not finish</h2><ul>"
                     + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul></section>")
    runs = {"title": f"{len(doc['runs'])} runs", "columns": ["run", "seed", "status", "this invocation", "epoch",
                                                             "train acc", "test acc", "seconds", "error"],
            "rows": [[r["run_id"], r["seed"], r["status"], _action(r), r.get("epoch"),
                      pct(r.get("train_acc")), pct(r.get("test_acc")), r.get("seconds"), r.get("error") or ""]
                     for r in doc["runs"]]}
    parts.append("<section id=runs><h2>Runs</h2>" + html_table(runs) + "</section>")
    parts.append("<section id=provenance><h2>What was run</h2>" + definition_list([
        ("command", prov.get("command")), ("executor", f"{doc['executor']}, {doc['workers']} worker(s), "
                                                       f"{doc['threads_per_worker']} thread(s) each"),
        ("seeds", ", ".join(map(str, doc["seeds"]))), ("commit", prov.get("commit")),
        ("depthlab", prov.get("depthlab")), ("torch", prov.get("torch")), ("python", prov.get("python")),
        ("platform", prov.get("platform")), ("started", prov.get("started")), ("finished", prov.get("finished")),
        ("wall time", f"{prov.get('seconds', 0):.0f} s (this invocation)")])
        + f"<h3>sweep.yaml</h3><pre>{html.escape(doc.get('source_text', ''))}</pre></section>")
    return styled(html_page(f"depthlab sweep {doc['name']}", "".join(parts)))


def _action(r: dict) -> str:
    n = r.get("retries")
    return f"{r.get('action')}, {n} retr{'y' if n == 1 else 'ies'} (worker died)" if n else str(r.get("action"))


def _figure(doc: dict) -> str:
    """Accuracy per grid point (mean +- sd over finished seeds, on an axis fitted to the values) and
    the training curves (mean over seeds per epoch, one line per grid point), as one inline PNG."""
    groups = [g for g in doc["groups"] if g["test_acc"]["n"] or g["train_acc"]["n"]]
    if not groups:
        return ""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    base = Path(doc["sweep_dir"])
    curves = {}
    for g in groups:
        per_epoch: Dict[int, Dict[str, List[float]]] = {}
        for r in doc["runs"]:
            where = inside(base, r.get("run_dir", "")) if r.get("point_id") == g["point_id"] else None
            if where is None or r.get("status") != "finished":
                continue
            for row in read_metrics(where):
                for key in ("train_acc", "test_acc"):
                    if isinstance(row.get(key), (int, float)):
                        per_epoch.setdefault(row["epoch"], {}).setdefault(key, []).append(100 * (1 - row[key]))
        curves[g["point_id"]] = per_epoch
    with plt.rc_context({"font.size": 9.5, "axes.grid": True, "grid.alpha": 0.3}):
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
        colours = plt.get_cmap("tab10")
        x = list(range(len(groups)))
        for key, label, marker in (("train_acc", "train", "o"), ("test_acc", "test", "s")):
            pts = [(i, g[key]) for i, g in zip(x, groups) if g[key]["n"]]
            axes[0].errorbar([i for i, _ in pts], [100 * v["mean"] for _, v in pts],
                             yerr=[100 * (v["sd"] or 0.0) for _, v in pts], fmt=marker, capsize=3, label=label)
        axes[0].set_xticks(x)
        axes[0].set_xticklabels([g["point_id"] for g in groups], rotation=30 if len(groups) > 3 else 0,
                                ha="right" if len(groups) > 3 else "center", fontsize=8)
        axes[0].set(ylabel="accuracy (%), mean +- sd over seeds", title="final accuracy per grid point")
        axes[0].legend(frameon=False)
        for ax, key, title in ((axes[1], "train_acc", "training error"), (axes[2], "test_acc", "test error")):
            for i, (point, per_epoch) in enumerate(curves.items()):
                eps = sorted(e for e, d in per_epoch.items() if d.get(key))
                if eps:
                    ax.plot(eps, [sum(per_epoch[e][key]) / len(per_epoch[e][key]) for e in eps], "-o", ms=3,
                            color=colours(i % 10), label=point)
            ax.set(xlabel="epoch", ylabel=f"{title} (%), mean over seeds", title=title)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, names = axes[1].get_legend_handles_labels()
        fig.tight_layout(rect=(0, 0.1 if handles else 0, 1, 1))
        if handles:
            fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), frameon=False, fontsize=8)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
    img = data_uri(buf.getvalue(), "image/png")
    return (f"<figure><img alt='accuracy per grid point and training curves' src='{img}'>"
            "<figcaption>Left: mean +- sample sd over the finished seeds, on an axis fitted to the values. Middle "
            "and right: per epoch, the mean over the finished seeds of each grid point (the test set where it was "
            "evaluated).</figcaption></figure>")


def print_table(doc: dict, file=None) -> None:
    """The results table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    t = doc["table"]
    table = Table(title=f"sweep {doc['name']}: {summary_line(doc)}", title_justify="left")
    n_keys = len(t["columns"]) - 5
    for i, col in enumerate(t["columns"]):
        table.add_column(col, justify="left" if i < n_keys or col == "not finished" else "right")
    for row in t["rows"]:
        table.add_row(*[str(c) for c in row])
    out = file or sys.stdout
    Console(file=out, width=None if out.isatty() else 200).print(table)
