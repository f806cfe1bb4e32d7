"""Self-contained HTML reports (images inlined) built from run directories only."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from depthlab.report.inputs import fmt, load_object, pct, text, write_file
from depthlab.report.plots import plot_training_curves

_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}.ok{color:#176f2c}.bad{color:#a61b1b}
img{max-width:100%}code{background:#f4f4f4;padding:0 .3em}"""
# No scripts, no requests: images are inline data, styles inline. A value that escaped escaping could not
# run or fetch anything (links to other pages on this disk still work: CSP does not govern navigation).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def _table(rows, cols) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r))}</td>" for _, fmt in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'>"
            f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")




def write_demo_report(out_dir) -> Path:
    """report.html + curves.png for a demo directory (reads results.json, summary.json, run dirs)."""
    out_dir = Path(out_dir)
    results = json.loads((out_dir / "results.json").read_text())
    summary = load_object(out_dir / "summary.json")
    curves = plot_training_curves({r["model"]: r["run_dir"] for r in results}, out_dir / "curves.png",
                                  title=f"plain (dashed) vs resnet (solid) on {summary['dataset']}")
    cols = [("model", lambda r: text(r["model"])), ("depth", lambda r: text(r["depth"])),
            ("params", lambda r: fmt(r["params"], ",")), ("train acc", lambda r: pct(r["train_acc"])),
            ("test acc", lambda r: pct(r["test_acc"])), ("seconds", lambda r: fmt(r["seconds"], ".1f"))]
    check = summary["check"]
    verdict = {True: "<b class=ok>observed</b>", False: "<b class=bad>not observed</b>",
               None: "<b>not checked</b>"}[check["observed"]]
    detail = ""
    if check.get("gap") is not None:
        detail = (f" (depth {check['depth']}: plain {pct(check['plain_train_acc'])}, resnet "
                  f"{pct(check['resnet_train_acc'])} training accuracy)")
    e = {k: html.escape(text(summary.get(k))) for k in ("recipe", "dataset", "seed", "device")}
    body = (f"<p>Plain and residual networks of the same depths trained with the <code>{e['recipe']}</code> "
            f"recipe on <code>{e['dataset']}</code> (seed {e['seed']}, device {e['device']}, "
            f"{fmt(summary.get('seconds'), '.0f')} s in all). The degradation problem (He et al. 2015): deeper plain "
            f"networks train <i>worse</i>, residual ones do not.</p>"
            f"<p>Expected: {html.escape(check['expected'])} &mdash; {verdict}{html.escape(detail)}</p>"
            + _table(results, cols) + _img(curves)
            + "<p>Reproduce: <code>depthlab demo</code>. Each run directory holds config.json, metrics.jsonl "
              "and checkpoints.</p>")
    return write_file(out_dir / "report.html", html_page("depthlab demo: the degradation problem", body).encode())
