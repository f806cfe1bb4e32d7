"""``write_report(dir)``: one self-contained HTML page per experiment or run directory (every plot
inline as a data URI, no scripts, no external fonts or links), and an index page over a directory
of them. Pages read ``experiment.json``, ``config.json``, ``metrics.jsonl`` and
``diagnostics.jsonl`` only; nothing is recomputed. Every value read is escaped, whoever wrote the
directory (``depthlab.report.inputs``)."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import List

from depthlab.diagnose_run import read_diagnostics
from depthlab.diagnostics.reading import reading
from depthlab.fileio import read_jsonl
from depthlab.report.across import compare_verdicts, verdict_status
from depthlab.report.diagnostic_plots import diagnostic_figures, summary_numbers
from depthlab.report.figures import render
from depthlab.report.html import html_page
from depthlab.report.inputs import (
    clean_diagnostics,
    file_stem,
    fmt,
    href,
    integer,
    is_real_dir,
    load_object,
    log,
    number,
    output_dir,
    pct,
    text,
    write_file,
)
from depthlab.report.plots import read_metrics

_e = html.escape  # every value from a file goes through _e(text(...)) or a formatter that escapes

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
    if (path / "experiment.json").is_file():
        return write_experiment_report(path)
    if (path / "config.json").is_file():
        return write_run_page(path)
    if (path / "tracked.json").is_file():
        return write_tracked_page(path)
    found = find_report_dirs(path)
    if not found:
        raise FileNotFoundError(f"{str(path)!r} holds no experiment (experiment.json) or run (config.json) "
                                f"directory; run `depthlab reproduce NAME` or `depthlab train` first")
    pages = [write_report(d) for d in found]
    return write_index(path, pages)


def find_report_dirs(root: Path, depth: int = 3) -> List[Path]:
    """Report directories under ``root``; symbolic links are not followed (a page is written into
    every directory found, and none may lie outside the folder asked for)."""
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        if not is_real_dir(d):
            log.warning("%s is a symbolic link; not followed (reports are written only inside %s)", d, root)
            continue
        if any((d / f).is_file() for f in ("experiment.json", "config.json", "tracked.json")):
            out.append(d)
        elif depth > 1:
            out += find_report_dirs(d, depth - 1)
    return out


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _figure(spec: dict, base: Path, idx: int, alt: str = "") -> str:
    """Figure ``idx`` of a page, drawn from its spec (runs are read only inside ``base``)."""
    if not isinstance(spec, dict):
        return f"<p class=note>figure {idx} could not be drawn: it is not a figure spec</p>"
    title = text(spec.get("title"), "")
    try:
        svg = render(spec, base, fmt="svg")
    except (ValueError, KeyError, TypeError, IndexError, OSError) as e:  # says why; the page stays
        return f"<p class=note>figure {_e(title or str(idx))} could not be drawn: {_e(text(str(e)))}</p>"
    alt = alt or title or f"figure {idx}"
    return (f"<figure id='fig{idx}'><img alt='{_e(alt)}' src='{data_uri(svg, 'image/svg+xml')}'>"
            f"<figcaption>Figure {idx}. {_e(title)}. {_e(text(spec.get('caption'), ''))}</figcaption></figure>")


def export_figures(exp_dir, out_dir) -> List[Path]:
    """An experiment's figures as PNG files ``<out_dir>/<experiment>_<n>.png`` (for a README or a
    paper); figures that cannot be drawn are skipped with one logged line."""
    exp_dir, out_dir = Path(exp_dir), Path(out_dir)
    doc = load_object(exp_dir / "experiment.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, spec in enumerate(_rows(doc.get("figures")), 1):
        try:
            png = render(spec, exp_dir, fmt="png")
        except (ValueError, KeyError, TypeError, IndexError, OSError, AttributeError) as e:
            log.warning("figure %d of %s could not be drawn: %s", i, exp_dir, e)
            continue
        written.append(write_file(out_dir / f"{file_stem(exp_dir.name)}_{i}.png", png))
    return written


def _status_class(status) -> str:
    """The CSS class of a verdict: one of three fixed names, whatever the file says."""
    s = text(status)
    return next((c for w, c in (("not", "not-observed"), ("observed", "observed"), ("inconclusive", "inconclusive"))
                 if s.startswith(w)), "other")


def _rows(v) -> list:
    return v if isinstance(v, list) else []


def html_table(t: dict) -> str:
    if not isinstance(t, dict):
        return ""
    cols = _rows(t.get("columns"))
    head = "".join(f"<th class={'l' if i == 0 else 'r'}>{_e(text(c))}</th>" for i, c in enumerate(cols))
    body = "".join("<tr>" + "".join(f"<td class={'l' if i == 0 else 'r'}>{_e(format_cell(v))}</td>"
                                    for i, v in enumerate(_rows(row))) + "</tr>" for row in _rows(t.get("rows")))
    note = f"<figcaption>{_e(text(t['note']))}</figcaption>" if t.get("note") else ""
    return f"<h3>{_e(text(t.get('title'), ''))}</h3><table><tr>{head}</tr>{body}</table>{note}"


def format_cell(v) -> str:
    """A table cell as text: thousands separators for ints, 4 significant digits for floats."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return text(v)


def definition_list(items) -> str:
    return "<dl>" + "".join(f"<dt>{_e(text(k))}</dt><dd>{_e(format_cell(v))}</dd>" for k, v in items) + "</dl>"


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def write_experiment_report(exp_dir) -> Path:
    """``report.html`` for an experiment directory (reads its experiment.json and run directories)."""
    exp_dir = Path(exp_dir)
    doc = load_object(exp_dir / "experiment.json")
    prov, data = _dict(doc.get("provenance")), _dict(doc.get("data"))
    parts = [f"<p><i>{_e(text(doc.get('source')))}</i></p>",
             "<section id=summary><h2>The finding</h2>"
             f"<p><b>Paper:</b> {_e(text(doc.get('claim')))}</p>"
             f"<p><b>Expected at this scale:</b> {_e(text(doc.get('expected')))}</p>"]
    if data.get("note"):
        parts.append(f"<p class=note>{_e(text(data['note']))}</p>")
    parts.append("</section><section id=verdicts><h2>Expected vs observed</h2><table>"
                 "<tr><th class=l>expectation</th><th class=l>verdict</th><th class=l>numbers</th></tr>")
    for v in map(_dict, _rows(doc.get("verdicts"))):
        parts.append(f"<tr><td class=l>{_e(text(v.get('claim')))}</td><td class='l {_status_class(v.get('status'))}'>"
                     f"{_e(text(v.get('status')))}</td><td class=l>{_e(text(v.get('detail')))}</td></tr>")
    parts.append("</table></section><section id=results><h2>Results</h2>")
    parts += [html_table(t) for t in _rows(doc.get("tables"))]
    parts.append("</section><section id=figures><h2>Plots</h2>")
    parts += [_figure(spec, exp_dir, i) for i, spec in enumerate(_rows(doc.get("figures")), 1)]
    parts.append("</section>")
    if _rows(doc.get("notes")):
        parts.append("<section id=notes><h2>Notes</h2>" + "".join(f"<p>{_e(text(n))}</p>" for n in doc["notes"])
                     + "</section>")
    runs = [r for r in _rows(doc.get("runs")) if isinstance(r, dict)]
    if runs:
        rows = [[r.get("run_id"), run_status_text(r), pct(r.get("train_acc")), pct(r.get("test_acc")),
                 r.get("seconds_per_epoch"), f"yes, made by: {text(r.get('made_by'), 'not recorded')}"
                 if r.get("reused") else "no", r.get("run_dir")] for r in runs]
        parts.append("<section id=runs><h2>Runs</h2>" + html_table(
            {"title": f"{len(runs)} training runs", "columns": ["run", "status", "train acc", "test acc", "s / epoch",
                                                                 "reused", "directory"], "rows": rows}) + "</section>")
    params = {k: v for k, v in _dict(doc.get("params")).items() if v not in (None, [], ())}
    train_seconds = sum(number(r.get("seconds")) or 0 for r in runs)
    parts.append("<section id=provenance><h2>What was run</h2>" + definition_list([
        ("command", prov.get("command")), ("scale", doc.get("scale")), ("seeds", doc.get("seeds")),
        ("data", text(data.get("name")) + (f" ({text(data['source'])})" if data.get("source") else "")),
        ("commit", text(prov.get("commit")) + (f" (the checkout was at {text(prov['commit_at_end'])} when it "
                                               f"finished)" if prov.get("commit_at_end") else "")),
        ("depthlab", prov.get("depthlab")), ("torch", prov.get("torch")), ("python", prov.get("python")),
        ("device", prov.get("device")), ("platform", prov.get("platform")), ("started", prov.get("started")),
        ("finished", prov.get("finished")), ("wall time", f"{fmt(prov.get('seconds', 0), '.0f')} s (this invocation; "
                                                           f"finished runs are reused)"),
        ("training time", f"{train_seconds:.0f} s over {len(runs)} runs")])
        + f"<h3>parameters</h3><pre>{_e(text(json.dumps(params, indent=1, default=str)))}</pre></section>")
    page = html_page(f"depthlab reproduce {text(doc.get('name'))}: {text(doc.get('title'))}", "".join(parts))
    return write_file(exp_dir / "report.html", styled(page).encode())


def run_status_text(row: dict) -> str:
    """An experiment run's status; a diverged run says in which epoch and what the diagnosis found."""
    status = text(row.get("status"))
    if status == "diverged":
        epoch = integer(row.get("epoch"))
        done = f" ({epoch - 1} epoch(s) completed)" if epoch is not None else ""
        return (f"diverged in epoch {epoch if epoch is not None else '?'}{done}"
                + (f": {text(row['diagnosis'])}" if row.get("diagnosis") else ""))
    return status


def divergence_text(run_dir: Path) -> str:
    """A diverged run's status with the diagnosis its metrics.jsonl holds (which parameter or
    output first went non-finite, at which step); "" for a run that did not diverge."""
    path = Path(run_dir) / "metrics.jsonl"
    for r in read_jsonl(path) if path.is_file() else []:
        if isinstance(r, dict) and r.get("status") == "diverged":
            d = r.get("diagnosis")
            return run_status_text({"status": "diverged", "epoch": r.get("epoch"),
                                    "diagnosis": d.get("message") if isinstance(d, dict) else d})
    return ""


def run_status(cfg: dict, rows: List[dict]) -> str:
    """finished, diverged, incomplete or not started, from a run's config and epoch rows."""
    if not rows:
        return "not started"
    epochs = _dict(cfg.get("train")).get("epochs")
    return text(rows[-1].get("status", "finished" if rows[-1]["epoch"] == epochs else "incomplete"))


def write_run_page(run_dir) -> Path:
    """``report.html`` for one run: config, training curves, metrics, and the diagnostics found in
    its diagnostics.jsonl (one figure per quantity)."""
    run_dir = Path(run_dir)
    cfg = load_object(run_dir / "config.json")
    model, data, train = (_dict(cfg.get(k)) for k in ("model", "data", "train"))
    rows = read_metrics(run_dir)
    curves = {"type": "curves", "title": f"{text(model.get('name'))} training", "runs": {run_dir.name: "."},
              "metrics": ["train_loss", "train_error", "test_error"]}
    diverged = divergence_text(run_dir)
    parts = ["<section id=summary><h2>Run</h2>" + definition_list([
        ("model", f"{text(model.get('name'))} (depth {text(model.get('depth'))})"), ("data", _data_text(run_dir, data)),
        ("recipe", train.get("recipe")), ("seed", train.get("seed")), ("epochs", train.get("epochs")),
        ("status", diverged or run_status(cfg, rows))]) + "</section>"]
    parts.append("<section id=figures><h2>Training</h2>")
    if rows:
        parts.append(_figure(curves, run_dir, 1, alt="training curves"))
    parts += _diagnostic_figures(run_dir)
    parts.append("</section><section id=results><h2>Metrics per epoch</h2>")
    parts.append(html_table({"title": "", "columns": ["epoch", "lr", "train loss", "train acc", "test acc", "seconds"],
                         "rows": [[r["epoch"], r.get("lr"), r.get("train_loss"), pct(r.get("train_acc")),
                                   pct(r.get("test_acc")), r.get("seconds")] for r in rows]}))
    parts.append(f"</section><section id=provenance><h2>Config</h2><pre>{_e(json.dumps(cfg, indent=2))}"
                 "</pre></section>")
    page = html_page(f"depthlab run {run_dir.name}", "".join(parts))
    return write_file(run_dir / "report.html", styled(page).encode())


def _data_text(run_dir: Path, data: dict) -> str:
    """The dataset a run trained on: its name, and from ``data.json`` (written by training) the
    image counts, shape and class names."""
    name = text(data.get("name"))
    try:
        d = load_object(run_dir / "data.json")
    except (OSError, ValueError):  # an older run, or none
        return name
    shape = "x".join(text(v) for v in _rows(d.get("shape")))
    classes = _rows(d.get("class_names"))
    return (f"{name}: {fmt(d.get('train'), ',')} train / {fmt(d.get('test'), ',')} test images, {shape}, "
            f"{fmt(d.get('num_classes'), 'd')} classes" + (f" ({', '.join(text(c) for c in classes[:20])}"
                                                           + (", ..." if len(classes) > 20 else "") + ")"
                                                           if classes else "")
            + (f"; {text(d['source'])}" if d.get("source") else ""))


def _diagnostic_figures(run_dir: Path) -> List[str]:
    """A plain-language reading of the directory's diagnostics.jsonl, then one inline PNG figure per
    quantity (nothing without the file)."""
    if not (run_dir / "diagnostics.jsonl").is_file():
        return []
    records = clean_diagnostics(read_diagnostics(run_dir), run_dir / "diagnostics.jsonl")
    lines = reading(records)
    summary = (["<section id=reading><h3>Reading</h3><ul>" + "".join(f"<li>{_e(x)}</li>" for x in lines)
                + "</ul><p><small>Thresholds are conventions for a first look, named in each line; the figures "
                  "hold the numbers.</small></p></section>"] if lines else [])
    figures = [f"<figure><img alt='{_e(quantity)}' src='{data_uri(png.read_bytes(), 'image/png')}'>"
               f"<figcaption>{_e(quantity)}</figcaption></figure>"
               for quantity, png in diagnostic_figures([str(run_dir)], output_dir(run_dir / "report_files"))]
    return summary + numbers_table({run_dir.name: records}) + figures


def numbers_table(runs: dict) -> List[str]:
    """The single numbers of the runs' diagnostics (``{label: records}``) as a table, a column per run."""
    rows = summary_numbers(runs)
    if not rows:
        return []
    return ["<section id=numbers><h3>Single numbers</h3>" + html_table({
        "title": "", "columns": ["quantity", "name"] + (["value"] if len(runs) == 1 else list(runs)),
        "rows": [[q, n] + [format_cell(v) for v in vals] for q, n, *vals in rows]}) + "</section>"]


def write_tracked_page(run_dir) -> Path:
    """``report.html`` for a directory ``depthlab.track`` wrote (your own loop): what was tracked and
    one figure per quantity in its diagnostics.jsonl."""
    run_dir = Path(run_dir)
    meta = load_object(run_dir / "tracked.json")
    names = lambda v: ", ".join(text(x) for x in _rows(v)) or "-"  # noqa: E731
    parts = ["<section id=summary><h2>Tracked run</h2>" + definition_list([
        ("model", f"{text(meta.get('model'))} ({fmt(meta.get('params'), ',')} parameters, "
                  f"{len(_rows(meta.get('layers')))} Conv2d / Linear layers)"),
        ("every", f"{text(meta['every'])} steps" if meta.get("every") else "once (depthlab diagnose --model)"),
        ("quantities", names(meta.get("quantities"))), ("blocks", names(meta.get("blocks"))),
        ("data", meta.get("data")), ("started", meta.get("started"))]) + "</section>",
        "<section id=figures><h2>Diagnostics</h2>"] + _diagnostic_figures(run_dir) + ["</section>"]
    page = html_page(f"depthlab tracked run {run_dir.name}", "".join(parts))
    return write_file(run_dir / "report.html", styled(page).encode())


def write_index(root, pages: List[Path]) -> Path:
    """``index.html`` linking every page under ``root`` with its verdicts (experiments) or final
    accuracy (runs)."""
    root = Path(root)
    rows = []
    for page in pages:
        d = page.parent
        link = f"<a href='{_e(href(page.relative_to(root).as_posix()))}'>"
        if (d / "experiment.json").is_file():
            doc = load_object(d / "experiment.json")
            verdicts = "; ".join(text(_dict(v).get("status")) for v in _rows(doc.get("verdicts")))
            rows.append(f"<tr><td class=l>{link}{_e(text(doc.get('name')))}</a></td>"
                        f"<td class=l>{_e(text(doc.get('title')))}</td><td class=l>{_e(text(doc.get('scale')))}, "
                        f"{_e(text(doc.get('seeds')))} seed(s)</td><td class=l>{_e(verdicts)}</td></tr>")
        elif (d / "tracked.json").is_file():
            rows.append(f"<tr><td class=l>{link}{_e(d.name)}</a></td><td class=l>"
                        "tracked run (depthlab.track)</td><td class=l>-</td><td class=l>-</td></tr>")
        else:
            m = read_metrics(d)
            last = m[-1] if m else {}
            rows.append(f"<tr><td class=l>{link}{_e(d.name)}</a></td><td class=l>run"
                        f"</td><td class=l>{len(m)} epochs</td><td class=l>train {pct(last.get('train_acc'))}, "
                        f"test {pct(last.get('test_acc'))}</td></tr>")
    body = ("<section id=index><table><tr><th class=l>page</th><th class=l>what</th><th class=l>scale</th>"
            "<th class=l>verdicts / result</th></tr>" + "".join(rows) + "</table></section>")
    page = html_page(f"depthlab reports in {root.name or root}", body)
    return write_file(root / "index.html", styled(page).encode())


def styled(page: str) -> str:
    return page.replace("</style>", _EXTRA_CSS + "</style>", 1)


def _compare_cell(v) -> str:
    if not v:
        return "<td class=l>-</td>"
    status = verdict_status(v)  # one of three known words or "unknown": safe as a class and as text
    return (f"<td class=l><span class='{status.replace(' ', '-')}'>{status}</span><br>"
            f"<small>{_e(text(v.get('detail')))}</small></td>")


def write_compare_page(roots: List[Path], out: Path, command: str = "depthlab report") -> Path:
    """``depthlab report A B ...``: the verdicts of the same experiments side by side, one column per
    directory (``depthlab.report.across``), as one page at ``out``."""
    c = compare_verdicts(roots)
    roots_html = ", ".join(f"<code>{_e(r)}</code>" for r in c["roots"])
    parts = [f"<p>Generated by <code>{_e(command)}</code> from {roots_html}"
             + ". A row is one checked expectation (worded as in the first column that checks it; the depths can "
               "differ between columns); a cell is the verdict and the numbers it rests on.</p>"]
    head = "<tr><th class=l>expectation</th>" + "".join(f"<th class=l>{_e(x)}</th>" for x in c["columns"]) + "</tr>"
    for e in c["experiments"]:
        rows = []
        for r in e["rows"]:
            cells = "".join(_compare_cell(v) for v in r["cells"])
            rows.append(f"<tr><td class=l>{_e(r['claim'])}</td>{cells}</tr>")
        parts.append(f"<section><h2>{_e(e['name'])}</h2><p>{_e(e['title'])} ({_e(e['source'])})</p>"
                     f"<table>{head}{''.join(rows)}</table></section>")
    return write_file(Path(out), styled(html_page("Verdicts across datasets", "".join(parts))).encode())
