"""``write_report(dir)``: one self-contained HTML page per experiment or run directory (every plot
inline as a data URI, no scripts, no external fonts or links), and an index page over a directory
of them. Pages read ``experiment.json``, ``config.json``, ``metrics.jsonl`` and
``diagnostics.jsonl`` only; nothing is recomputed."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import List

from depthlab.report.diagnostics import plot_diagnostics
from depthlab.report.figures import render
from depthlab.report.figures import render as _render
from depthlab.report.html import _page, _pct
from depthlab.report.plots import read_metrics

_EXTRA_CSS = """section{margin:1.6em 0}.observed{color:#176f2c;font-weight:600}
.not-observed{color:#a61b1b;font-weight:600}
.inconclusive{color:#8a6100;font-weight:600}figure{margin:1.2em 0}figcaption{color:#555;font-size:.9em}
td.l,th.l{text-align:left}dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}
dd{margin:0}.note{background:#fff8e1;border-left:4px solid #e0a800;padding:.5em 1em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}"""


def write_report(path) -> Path:
    """Report for an experiment directory (``experiment.json``), a run directory (``config.json``)
    or a directory holding several of them (each gets its page, plus ``index.html``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a directory")
    if (path / "experiment.json").exists():
        return write_experiment_report(path)
    if (path / "config.json").exists():
        return write_run_page(path)
    if (path / "tracked.json").exists():
        return write_tracked_page(path)
    found = _find(path)
    if not found:
        raise FileNotFoundError(f"{str(path)!r} holds no experiment (experiment.json) or run (config.json) "
                                f"directory; run `depthlab reproduce NAME` or `depthlab train` first")
    pages = [write_report(d) for d in found]
    return write_index(path, pages)


def _find(root: Path, depth: int = 3) -> List[Path]:
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if any((d / f).exists() for f in ("experiment.json", "config.json", "tracked.json")):
            out.append(d)
        elif depth > 1:
            out += _find(d, depth - 1)
    return out


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _figure(spec: dict, base: Path, idx: int) -> str:
    try:
        svg = render(spec, base, fmt="svg")
    except (ValueError, KeyError, OSError) as e:  # a figure that cannot be drawn says why, the page stays
        title = html.escape(spec.get("title", str(idx)))
        return f"<p class=note>figure {title} could not be drawn: {html.escape(str(e))}</p>"
    alt = html.escape(spec.get("title") or f"figure {idx}")
    cap = spec.get("caption") or ""
    return (f"<figure id='fig{idx}'><img alt='{alt}' src='{_data_uri(svg, 'image/svg+xml')}'>"
            f"<figcaption>Figure {idx}. {html.escape(spec.get('title', ''))}. {html.escape(cap)}</figcaption></figure>")


def _status_class(status: str) -> str:
    return "not-observed" if status.startswith("not") else status.split(" ")[0]


def _table(t: dict) -> str:
    head = "".join(f"<th class={'l' if i == 0 else 'r'}>{html.escape(str(c))}</th>" for i, c in enumerate(t["columns"]))
    body = "".join("<tr>" + "".join(f"<td class={'l' if i == 0 else 'r'}>{html.escape(format_cell(v))}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in t["rows"])
    note = f"<figcaption>{html.escape(t['note'])}</figcaption>" if t.get("note") else ""
    return f"<h3>{html.escape(t.get('title', ''))}</h3><table><tr>{head}</tr>{body}</table>{note}"


def format_cell(v) -> str:
    """A table cell as text: thousands separators for ints, 4 significant digits for floats."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _dl(items) -> str:
    return "<dl>" + "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(format_cell(v))}</dd>"
                            for k, v in items) + "</dl>"


def write_experiment_report(exp_dir) -> Path:
    """``report.html`` for an experiment directory (reads its experiment.json and run directories)."""
    exp_dir = Path(exp_dir)
    doc = json.loads((exp_dir / "experiment.json").read_text())
    prov = doc.get("provenance", {})
    parts = [f"<p><i>{html.escape(doc['source'])}</i></p>",
             "<section id=summary><h2>The finding</h2>"
             f"<p><b>Paper:</b> {html.escape(doc['claim'])}</p>"
             f"<p><b>Expected at this scale:</b> {html.escape(doc['expected'])}</p>"]
    if doc.get("data", {}).get("note"):
        parts.append(f"<p class=note>{html.escape(doc['data']['note'])}</p>")
    parts.append("</section><section id=verdicts><h2>Expected vs observed</h2><table>"
                 "<tr><th class=l>expectation</th><th class=l>verdict</th><th class=l>numbers</th></tr>")
    for v in doc["verdicts"]:
        parts.append(f"<tr><td class=l>{html.escape(v['claim'])}</td><td class='l {_status_class(v['status'])}'>"
                     f"{html.escape(v['status'])}</td><td class=l>{html.escape(v['detail'])}</td></tr>")
    parts.append("</table></section><section id=results><h2>Results</h2>")
    parts += [_table(t) for t in doc["tables"]]
    parts.append("</section><section id=figures><h2>Plots</h2>")
    parts += [_figure(spec, exp_dir, i) for i, spec in enumerate(doc["figures"], 1)]
    parts.append("</section>")
    if doc.get("notes"):
        parts.append("<section id=notes><h2>Notes</h2>" + "".join(f"<p>{html.escape(n)}</p>" for n in doc["notes"])
                     + "</section>")
    runs = doc.get("runs", [])
    if runs:
        rows = [[r["run_id"], run_status_text(r), _pct(r.get("train_acc")), _pct(r.get("test_acc")),
                 r.get("seconds_per_epoch"), f"yes, made by: {r.get('made_by') or 'not recorded'}"
                 if r.get("reused") else "no", r["run_dir"]] for r in runs]
        parts.append("<section id=runs><h2>Runs</h2>" + _table(
            {"title": f"{len(runs)} training runs", "columns": ["run", "status", "train acc", "test acc", "s / epoch",
                                                                 "reused", "directory"], "rows": rows}) + "</section>")
    params = {k: v for k, v in doc.get("params", {}).items() if v not in (None, [], ())}
    parts.append("<section id=provenance><h2>What was run</h2>" + _dl([
        ("command", prov.get("command")), ("scale", doc["scale"]), ("seeds", doc["seeds"]),
        ("data", doc.get("data", {}).get("name")), ("commit", prov.get("commit")),
        ("depthlab", prov.get("depthlab")), ("torch", prov.get("torch")), ("python", prov.get("python")),
        ("device", prov.get("device")), ("platform", prov.get("platform")), ("started", prov.get("started")),
        ("finished", prov.get("finished")), ("wall time", f"{prov.get('seconds', 0):.0f} s (this invocation; "
                                                           f"finished runs are reused)"),
        ("training time", f"{sum(r.get('seconds') or 0 for r in runs):.0f} s over {len(runs)} runs")])
        + f"<h3>parameters</h3><pre>{html.escape(json.dumps(params, indent=1))}</pre></section>")
    path = exp_dir / "report.html"
    path.write_text(_styled(_page(f"depthlab reproduce {doc['name']}: {doc['title']}", "".join(parts))))
    return path


def run_status_text(row: dict) -> str:
    """An experiment run's status; a diverged run says in which epoch and what the diagnosis found."""
    status = row.get("status") or "-"
    if status == "diverged":
        epoch = row.get("epoch")
        done = f" ({epoch - 1} epoch(s) completed)" if isinstance(epoch, int) else ""
        return (f"diverged in epoch {epoch if epoch is not None else '?'}{done}"
                + (f": {row['diagnosis']}" if row.get("diagnosis") else ""))
    return status


def run_status(cfg: dict, rows: List[dict]) -> str:
    """finished, diverged, incomplete or not started, from a run's config and epoch rows."""
    if not rows:
        return "not started"
    return rows[-1].get("status", "finished" if rows[-1]["epoch"] == cfg["train"]["epochs"] else "incomplete")


def write_run_page(run_dir) -> Path:
    """``report.html`` for one run: config, training curves, metrics, and the diagnostics found in
    its diagnostics.jsonl (one figure per quantity)."""
    run_dir = Path(run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = read_metrics(run_dir)
    curves = {"type": "curves", "title": f"{cfg['model']['name']} training", "runs": {run_dir.name: "."},
              "metrics": ["train_loss", "train_error", "test_error"]}
    parts = ["<section id=summary><h2>Run</h2>" + _dl([
        ("model", f"{cfg['model']['name']} (depth {cfg['model'].get('depth')})"), ("data", cfg["data"]["name"]),
        ("recipe", cfg["train"]["recipe"]), ("seed", cfg["train"]["seed"]), ("epochs", cfg["train"]["epochs"]),
        ("status", run_status(cfg, rows))]) + "</section>"]
    parts.append("<section id=figures><h2>Training</h2>")
    if rows:
        svg = _render(curves, run_dir, fmt="svg")
        parts.append(f"<figure><img alt='training curves' src='{_data_uri(svg, 'image/svg+xml')}'></figure>")
    parts += _diagnostic_figures(run_dir)
    parts.append("</section><section id=results><h2>Metrics per epoch</h2>")
    parts.append(_table({"title": "", "columns": ["epoch", "lr", "train loss", "train acc", "test acc", "seconds"],
                         "rows": [[r["epoch"], r["lr"], r["train_loss"], _pct(r["train_acc"]), _pct(r.get("test_acc")),
                                   r["seconds"]] for r in rows]}))
    parts.append(f"</section><section id=provenance><h2>Config</h2><pre>{html.escape(json.dumps(cfg, indent=2))}"
                 "</pre></section>")
    path = run_dir / "report.html"
    path.write_text(_styled(_page(f"depthlab run {run_dir.name}", "".join(parts))))
    return path


def _diagnostic_figures(run_dir: Path) -> List[str]:
    """One inline PNG figure per quantity of the directory's diagnostics.jsonl (none without one)."""
    if not (run_dir / "diagnostics.jsonl").exists():
        return []
    return [f"<figure><img alt='{png.stem}' src='{_data_uri(png.read_bytes(), 'image/png')}'>"
            f"<figcaption>{html.escape(png.stem.replace('diagnostics_', ''))}</figcaption></figure>"
            for png in plot_diagnostics([str(run_dir)], run_dir / "report_files")]


def write_tracked_page(run_dir) -> Path:
    """``report.html`` for a directory ``depthlab.track`` wrote (your own loop): what was tracked and
    one figure per quantity in its diagnostics.jsonl."""
    run_dir = Path(run_dir)
    meta = json.loads((run_dir / "tracked.json").read_text())
    parts = ["<section id=summary><h2>Tracked run</h2>" + _dl([
        ("model", f"{meta['model']} ({meta['params']:,} parameters, {len(meta['layers'])} Conv2d / Linear layers)"),
        ("every", f"{meta['every']} steps" if meta.get("every") else "once (depthlab diagnose --model)"),
        ("quantities", ", ".join(meta["quantities"]) or "-"), ("blocks", ", ".join(meta.get("blocks") or []) or "-"),
        ("data", meta.get("data") or "-"), ("started", meta["started"])]) + "</section>",
        "<section id=figures><h2>Diagnostics</h2>"] + _diagnostic_figures(run_dir) + ["</section>"]
    path = run_dir / "report.html"
    path.write_text(_styled(_page(f"depthlab tracked run {run_dir.name}", "".join(parts))))
    return path


def write_index(root, pages: List[Path]) -> Path:
    """``index.html`` linking every page under ``root`` with its verdicts (experiments) or final
    accuracy (runs)."""
    root = Path(root)
    rows = []
    for page in pages:
        d = page.parent
        rel = page.relative_to(root).as_posix()
        if (d / "experiment.json").exists():
            doc = json.loads((d / "experiment.json").read_text())
            verdicts = "; ".join(v["status"] for v in doc["verdicts"])
            rows.append(f"<tr><td class=l><a href='{html.escape(rel)}'>{html.escape(doc['name'])}</a></td>"
                        f"<td class=l>{html.escape(doc['title'])}</td><td class=l>{doc['scale']}, {doc['seeds']} "
                        f"seed(s)</td><td class=l>{html.escape(verdicts)}</td></tr>")
        elif (d / "tracked.json").exists():
            rows.append(f"<tr><td class=l><a href='{html.escape(rel)}'>{html.escape(d.name)}</a></td><td class=l>"
                        "tracked run (depthlab.track)</td><td class=l>-</td><td class=l>-</td></tr>")
        else:
            m = read_metrics(d)
            last = m[-1] if m else {}
            rows.append(f"<tr><td class=l><a href='{html.escape(rel)}'>{html.escape(d.name)}</a></td><td class=l>run"
                        f"</td><td class=l>{len(m)} epochs</td><td class=l>train {_pct(last.get('train_acc'))}, "
                        f"test {_pct(last.get('test_acc'))}</td></tr>")
    body = ("<section id=index><table><tr><th class=l>page</th><th class=l>what</th><th class=l>scale</th>"
            "<th class=l>verdicts / result</th></tr>" + "".join(rows) + "</table></section>")
    path = root / "index.html"
    path.write_text(_styled(_page(f"depthlab reports in {root.name or root}", body)))
    return path


def _styled(page: str) -> str:
    return page.replace("</style>", _EXTRA_CSS + "</style>", 1)
