"""Results as Markdown (``depthlab report DIR --markdown FILE``), read from the directories' files
only: per experiment (``experiment.json``) the command that produced it, the verdicts with their
numbers, and every table (``docs/results.md`` is written this way); per run directory its config
and final metrics; for a directory of runs a table of them."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from depthlab.report.html import _pct
from depthlab.report.pages import _find, format_cell, run_status, run_status_text
from depthlab.report.plots import read_metrics


def _cell(v) -> str:
    return format_cell(v).replace("|", "\\|")


def _train_seconds(doc: dict) -> float:
    return sum(r.get("seconds") or 0.0 for r in doc.get("runs", []))


def experiment_markdown(exp_dir, level: int = 2) -> str:
    """One experiment's section."""
    doc = json.loads((Path(exp_dir) / "experiment.json").read_text())
    prov = doc.get("provenance", {})
    h = "#" * level
    lines = [f"{h} {doc['name']}", "", f"**{doc['title']}** ({doc['source']})", "",
             f"**Paper:** {doc['claim']}", "", f"**Expected at this scale:** {doc['expected']}", "",
             "```bash", prov.get("command", f"depthlab reproduce {doc['name']}"), "```", "",
             f"{doc['scale']} scale, {doc['seeds']} seed(s), data `{doc.get('data', {}).get('name')}`; "
             f"{prov.get('device', '?')}; torch {prov.get('torch', '?')}; commit `{prov.get('commit', '?')}`; "
             f"{prov.get('finished', '?')[:10]}; {_train_seconds(doc):.0f} s of training over "
             f"{len(doc.get('runs', []))} runs, this invocation {prov.get('seconds', 0):.0f} s "
             f"({sum(1 for r in doc.get('runs', []) if r.get('reused'))} runs reused).", ""]
    makers = sorted({r.get("made_by") or "not recorded" for r in doc.get("runs", []) if r.get("reused")})
    if makers:
        lines += ["Reused runs were made by: " + "; ".join(f"`{m}`" for m in makers), ""]
    diverged = [r for r in doc.get("runs", []) if r.get("status") == "diverged"]
    lines += [f"- {r['run_id']}: {run_status_text(r)}" for r in diverged] + ([""] if diverged else [])
    if doc.get("data", {}).get("note"):
        lines += [f"> {doc['data']['note']}", ""]
    lines += ["| expectation | verdict | numbers |", "|---|---|---|"]
    for v in doc["verdicts"]:
        lines.append(f"| {_cell(v['claim'])} | **{v['status']}** | {_cell(v['detail'])} |")
    lines.append("")
    for t in doc["tables"]:
        lines += [f"{h}# {t['title']}" if t.get("title") else "", "",
                  "| " + " | ".join(_cell(c) for c in t["columns"]) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(t["columns"]))) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t["rows"]]
        if t.get("note"):
            lines += ["", t["note"]]
        lines.append("")
    for n in doc.get("notes", []):
        lines += [f"- {n}"]
    return "\n".join(lines).rstrip() + "\n"


def find_experiments(root: Path) -> List[Path]:
    """``root`` itself if it is an experiment directory, else every experiment directory below it."""
    if (root / "experiment.json").exists():
        return [root]
    found = sorted(p.parent for p in root.glob("*/experiment.json"))
    if not found:
        raise FileNotFoundError(f"no experiment directory (experiment.json) in {str(root)!r}")
    return found


def results_markdown(exp_dirs: List[Path], title: str = "Reproduced findings", intro: str = "") -> str:
    """Every experiment's section, with a summary table of verdicts first."""
    docs = [(d, json.loads((Path(d) / "experiment.json").read_text())) for d in exp_dirs]
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| experiment | source | verdicts |", "|---|---|---|"]
    for _, doc in docs:
        lines.append(f"| [{doc['name']}](#{doc['name']}) | {_cell(doc['source'])} | "
                     + "; ".join(v["status"] for v in doc["verdicts"]) + " |")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(experiment_markdown(d) for d, _ in docs)


def _run_row(run_dir: Path) -> tuple:
    cfg = json.loads((run_dir / "config.json").read_text())
    rows = read_metrics(run_dir)
    return cfg, rows, (rows[-1] if rows else {})


def run_markdown(run_dir, level: int = 1) -> str:
    """One run directory: what was trained, how it ended, its last epoch's metrics, its config."""
    run_dir = Path(run_dir)
    cfg, rows, last = _run_row(run_dir)
    m, t = cfg["model"], cfg["train"]
    lines = [f"{'#' * level} Run `{run_dir.name}`", "",
             f"`{m['name']}` (depth {m.get('depth')}) on `{cfg['data']['name']}`, recipe `{t['recipe']}`, seed "
             f"{t['seed']}: **{run_status(cfg, rows)}** after {last.get('epoch', 0)} of {t['epochs']} epochs.", ""]
    if isinstance(last.get("diagnosis"), dict) and last["diagnosis"].get("message"):
        lines += [f"> {last['diagnosis']['message']}", ""]
    if rows:
        cols = [("epoch", "epoch", str), ("train loss", "train_loss", format_cell), ("train acc", "train_acc", _pct),
                ("test acc", "test_acc", _pct), ("val acc", "val_acc", _pct), ("seconds", "elapsed", format_cell)]
        cols = [c for c in cols if c[1] in last]
        lines += ["Final metrics (last epoch):", "", "| " + " | ".join(c[0] for c in cols) + " |",
                  "|" + "|".join("---:" for _ in cols) + "|",
                  "| " + " | ".join(_cell(fmt(last.get(key))) if last.get(key) is not None else "-"
                                    for _, key, fmt in cols) + " |", ""]
    lines += ["Config (`config.json`):", "", "```json", json.dumps(cfg, indent=2), "```"]
    return "\n".join(lines) + "\n"


def runs_markdown(run_dirs: List[Path], root: Path) -> str:
    """A table of run directories: model, data, status, epochs and final accuracies."""
    lines = [f"# Runs in `{root}`", "", "| run | model | data | status | epochs | train acc | test acc |",
             "|---|---|---|---|---:|---:|---:|"]
    for d in run_dirs:
        cfg, rows, last = _run_row(d)
        epochs = f"{last.get('epoch', 0)}/{cfg['train']['epochs']}"
        lines.append(f"| {_cell(Path(d).relative_to(root).as_posix())} | {cfg['model']['name']} | "
                     f"{cfg['data']['name']} | {run_status(cfg, rows)} | {epochs} | {_pct(last.get('train_acc'))} | "
                     f"{_pct(last.get('test_acc'))} |")
    return "\n".join(lines) + "\n"


def report_markdown(path, command: str = "depthlab report") -> str:
    """The Markdown ``depthlab report PATH --markdown`` writes: experiments' results, one run's
    summary, or a table of the runs below ``path``. Reads only, so a bad path fails before the
    HTML report is written."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{str(path)!r} is not a directory")
    if (path / "config.json").exists() and not (path / "experiment.json").exists():
        return run_markdown(path)
    try:
        dirs = find_experiments(path)
    except FileNotFoundError:
        runs = [d for d in _find(path) if (d / "config.json").exists()]
        if not runs:
            raise FileNotFoundError(f"{str(path)!r} holds no experiment (experiment.json) or run (config.json) "
                                    f"directory; run `depthlab reproduce NAME` or `depthlab train` first") from None
        return runs_markdown(runs, path)
    intro = (f"Generated by `{command}` from the experiment directories' experiment.json files; each section "
             f"names the command that produced its runs.")
    text = results_markdown(dirs, intro=intro)
    return suite_markdown(path / "suite.json") + text if (path / "suite.json").exists() else text


def suite_markdown(path: Path) -> str:
    """The whole suite's wall time and machine (``suite.json``, written by ``depthlab reproduce all``) as
    the first line, then where the time went."""
    s = json.loads(Path(path).read_text())
    lines = [f"wall time: {s['seconds'] / 60:.0f} min for `{s.get('command') or 'depthlab reproduce all'}` on "
             f"{s.get('machine', 'an unrecorded machine')} (commit `{s.get('commit', 'unknown')}`, "
             f"{s.get('finished', '')})", "",
             "| experiment | wall time | runs | reused | observed | not observed | inconclusive |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in s["experiments"]:
        lines.append(f"| {r['name']} | {r['seconds'] / 60:.1f} min | {r['runs']} | {r['reused']} | {r['observed']} | "
                     f"{r['not observed']} | {r['inconclusive']} |")
    return "\n".join(lines) + "\n\n"
