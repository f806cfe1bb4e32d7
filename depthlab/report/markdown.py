"""Results as Markdown (``depthlab report DIR --markdown FILE``), read from the directories' files
only: per experiment (``experiment.json``) the command that produced it, the verdicts with their
numbers, and every table (``docs/results.md`` is written this way); per run directory its config
and final metrics; for a directory of runs a table of them."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List

from depthlab.report.across import STATUSES, compare_verdicts, verdict_status
from depthlab.report.inputs import fmt, load_object, number, pct, text
from depthlab.report.pages import find_report_dirs, format_cell, run_status, run_status_text
from depthlab.report.plots import read_metrics

_MD_ESCAPES = (("\\", "\\\\"), ("`", "\\`"), ("[", "\\["), ("]", "\\]"), ("<", "&lt;"))


def _md(v) -> str:
    """Text from a file as Markdown that shows it as written: no raw HTML or autolink (``<`` as an
    entity), no code span or link it could open (backslash-escaped), no line break that would end a
    table row or a quote."""
    s = " ".join(format_cell(v).split())
    for old, new in _MD_ESCAPES:
        s = s.replace(old, new)
    return s


def _cell(v) -> str:
    return _md(v).replace("|", "\\|")


def _ticks(s: str, least: int) -> str:
    return "`" * max(least, max((len(t) for t in re.findall("`+", s)), default=0) + 1)


def _code(v) -> str:
    """``v`` in a code span that no backtick inside it can close."""
    s = " ".join(format_cell(v).split())
    t = _ticks(s, 1)
    return f"{t} {s} {t}" if "`" in s else f"`{s}`"


def _fenced(body: str, lang: str = "") -> List[str]:
    """A fenced code block longer than any backtick run in ``body``."""
    fence = _ticks(body, 3)
    return [fence + lang, body, fence]


def _train_seconds(runs: List[dict]) -> float:
    return sum(number(r.get("seconds")) or 0.0 for r in runs)


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


def _list(v) -> list:
    return v if isinstance(v, list) else []


def experiment_markdown(exp_dir, level: int = 2) -> str:
    """One experiment's section."""
    doc = load_object(Path(exp_dir) / "experiment.json")
    prov, data = _dict(doc.get("provenance")), _dict(doc.get("data"))
    runs = [r for r in _list(doc.get("runs")) if isinstance(r, dict)]
    h = "#" * level
    moved = f" (checkout at {_code(prov['commit_at_end'])} when it finished)" if prov.get("commit_at_end") else ""
    lines = [f"{h} {_md(doc.get('name'))}", "", f"**{_md(doc.get('title'))}** ({_md(doc.get('source'))})", "",
             f"**Paper:** {_md(doc.get('claim'))}", "", f"**Expected at this scale:** {_md(doc.get('expected'))}", "",
             *_fenced(text(prov.get("command", f"depthlab reproduce {text(doc.get('name'))}")), "bash"), "",
             f"{_md(doc.get('scale'))} scale, {_md(doc.get('seeds'))} seed(s), data {_code(data.get('name'))}"
             f"{' (' + _md(data['source']) + ')' if data.get('source') else ''}; "
             f"{_md(prov.get('device', '?'))}; torch {_md(prov.get('torch', '?'))}; "
             f"commit {_code(prov.get('commit', '?'))}{moved}; "
             f"{_md(prov.get('finished', '?'))[:10]}; {_train_seconds(runs):.0f} s of training over "
             f"{len(runs)} runs, this invocation {fmt(prov.get('seconds', 0), '.0f')} s "
             f"({sum(1 for r in runs if r.get('reused'))} runs reused).", ""]
    makers = sorted({text(r.get("made_by"), "not recorded") for r in runs if r.get("reused")})
    if makers:
        lines += ["Reused runs were made by: " + "; ".join(_code(m) for m in makers), ""]
    diverged = [r for r in runs if r.get("status") == "diverged"]
    lines += [f"- {_md(r.get('run_id'))}: {_md(run_status_text(r))}" for r in diverged] + ([""] if diverged else [])
    if data.get("note"):
        lines += [f"> {_md(data['note'])}", ""]
    lines += ["| expectation | verdict | numbers |", "|---|---|---|"]
    for v in map(_dict, _list(doc.get("verdicts"))):
        lines.append(f"| {_cell(v.get('claim'))} | **{_cell(v.get('status'))}** | {_cell(v.get('detail'))} |")
    lines.append("")
    for t in map(_dict, _list(doc.get("tables"))):
        columns = _list(t.get("columns"))
        lines += [f"{h}# {_md(t['title'])}" if t.get("title") else "", "",
                  "| " + " | ".join(_cell(c) for c in columns) + " |",
                  "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
        lines += ["| " + " | ".join(_cell(c) for c in _list(row)) + " |" for row in _list(t.get("rows"))]
        if t.get("note"):
            lines += ["", _md(t["note"])]
        lines.append("")
    for n in _list(doc.get("notes")):
        lines += [f"- {_md(n)}"]
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
    docs = [(d, load_object(Path(d) / "experiment.json")) for d in exp_dirs]
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| experiment | source | verdicts |", "|---|---|---|"]
    for _, doc in docs:
        anchor = re.sub(r"[^a-z0-9_-]", "", text(doc.get("name")).lower().replace(" ", "-"))
        lines.append(f"| [{_cell(doc.get('name'))}](#{anchor}) | {_cell(doc.get('source'))} | "
                     + _cell("; ".join(text(_dict(v).get("status")) for v in _list(doc.get("verdicts")))) + " |")
    lines.append("")
    return "\n".join(lines) + "\n" + "\n".join(experiment_markdown(d) for d, _ in docs)


def _run_row(run_dir: Path) -> tuple:
    cfg = load_object(run_dir / "config.json")
    rows = read_metrics(run_dir)
    return cfg, rows, (rows[-1] if rows else {})


def run_markdown(run_dir, level: int = 1) -> str:
    """One run directory: what was trained, how it ended, its last epoch's metrics, its config."""
    run_dir = Path(run_dir)
    cfg, rows, last = _run_row(run_dir)
    m, t = _dict(cfg.get("model")), _dict(cfg.get("train"))
    lines = [f"{'#' * level} Run {_code(run_dir.name)}", "",
             f"{_code(m.get('name'))} (depth {_md(m.get('depth'))}) on {_code(_dict(cfg.get('data')).get('name'))}, "
             f"recipe {_code(t.get('recipe'))}, seed {_md(t.get('seed'))}: **{_md(run_status(cfg, rows))}** after "
             f"{_md(last.get('epoch', 0))} of {_md(t.get('epochs'))} epochs.", ""]
    if isinstance(last.get("diagnosis"), dict) and last["diagnosis"].get("message"):
        lines += [f"> {_md(last['diagnosis']['message'])}", ""]
    if rows:
        cols = [("epoch", "epoch", format_cell), ("train loss", "train_loss", format_cell),
                ("train acc", "train_acc", pct), ("test acc", "test_acc", pct), ("val acc", "val_acc", pct),
                ("seconds", "elapsed", format_cell)]
        cols = [c for c in cols if c[1] in last]
        lines += ["Final metrics (last epoch):", "", "| " + " | ".join(c[0] for c in cols) + " |",
                  "|" + "|".join("---:" for _ in cols) + "|",
                  "| " + " | ".join(_cell(show(last.get(key))) if last.get(key) is not None else "-"
                                    for _, key, show in cols) + " |", ""]
    lines += ["Config (`config.json`):", "", *_fenced(json.dumps(cfg, indent=2), "json")]
    return "\n".join(lines) + "\n"


def runs_markdown(run_dirs: List[Path], root: Path) -> str:
    """A table of run directories: model, data, status, epochs and final accuracies."""
    lines = [f"# Runs in {_code(root)}", "", "| run | model | data | status | epochs | train acc | test acc |",
             "|---|---|---|---|---:|---:|---:|"]
    for d in run_dirs:
        cfg, rows, last = _run_row(d)
        epochs = f"{text(last.get('epoch', 0))}/{text(_dict(cfg.get('train')).get('epochs'))}"
        cells = [Path(d).relative_to(root).as_posix(), _dict(cfg.get("model")).get("name"),
                 _dict(cfg.get("data")).get("name"), run_status(cfg, rows), epochs]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + f" | {pct(last.get('train_acc'))} | "
                     f"{pct(last.get('test_acc'))} |")
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
        runs = [d for d in find_report_dirs(path) if (d / "config.json").exists()]
        if not runs:
            raise FileNotFoundError(f"{str(path)!r} holds no experiment (experiment.json) or run (config.json) "
                                    f"directory; run `depthlab reproduce NAME` or `depthlab train` first") from None
        return runs_markdown(runs, path)
    intro = (f"Generated by `{command}` from the experiment directories' experiment.json files; each section "
             f"names the command that produced its runs.")
    body = results_markdown(dirs, intro=intro)
    return suite_markdown(path / "suite.json") + body if (path / "suite.json").exists() else body


def suite_markdown(path: Path) -> str:
    """The whole suite's wall time and machine (``suite.json``, written by ``depthlab reproduce all``) as
    the first line, then where the time went."""
    s = json.loads(Path(path).read_text())
    lines = [f"wall time: {s['seconds'] / 60:.0f} min for `{s.get('command') or 'depthlab reproduce all'}` on "
             f"{s.get('machine', 'an unrecorded machine')} (commit `{s.get('commit', 'unknown')}`, "
             f"{s.get('finished', '')})", "",
             "| experiment | core time | report ready at | runs | reused | observed | not observed | inconclusive |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["experiments"]:  # suites before the global queue ran experiment after experiment: no "ready"
        ready = "-" if r.get("ready") is None else f"{r['ready'] / 60:.1f} min"
        lines.append(f"| {r['name']} | {r['seconds'] / 60:.1f} min | {ready} | {r['runs']} | {r['reused']} | "
                     f"{r['observed']} | {r['not observed']} | {r['inconclusive']} |")
    q = s.get("schedule")
    if q:
        lines += ["", f"Schedule: one queue over all experiments, longest runs first, on {q['jobs']} worker(s): "
                  f"{q['idle_core_minutes']:.1f} idle core-minutes; "
                  f"lower bound {q['lower_bound_seconds'] / 60:.1f} min; "
                  f"the same tasks experiment after experiment would take {q['per_experiment_seconds'] / 60:.1f} min."]
    return "\n".join(lines) + "\n\n"


def compare_markdown(roots: List[Path], command: str = "depthlab report") -> str:
    """``depthlab report A B ... --markdown``: the verdicts of the same experiments side by side, one
    column per directory (``depthlab.report.across``): a count of statuses, then a table per experiment."""
    c = compare_verdicts(roots)
    cols = c["columns"]
    lines = ["# Verdicts across datasets", "",
             f"Generated by `{command}` from the experiment.json files under "
             + ", ".join(_code(r) for r in c["roots"]) + ". A row is one checked expectation (worded as in the "
             "first column that checks it; the depths can differ between columns); a cell is the verdict and the "
             "numbers it rests on, `-` where that column did not check it.", "",
             "| | " + " | ".join(_cell(x) for x in cols) + " |", "|---|" + "---:|" * len(cols)]
    for status in STATUSES:
        counts = [sum(1 for e in c["experiments"] for r in e["rows"] if verdict_status(r["cells"][i]) == status)
                  for i in range(len(cols))]
        lines.append(f"| {status} | " + " | ".join(str(n) for n in counts) + " |")
    for e in c["experiments"]:
        lines += ["", f"## {_md(e['name'])}", "", f"{_md(e['title'])} ({_md(e['source'])})", "",
                  "| expectation | " + " | ".join(_cell(x) for x in cols) + " |", "|---|" + "---|" * len(cols)]
        for r in e["rows"]:
            cells = [f"**{verdict_status(v)}**: {_cell(_dict(v).get('detail'))}" if v else "-" for v in r["cells"]]
            lines.append(f"| {_cell(r['claim'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
