"""Experiment results as Markdown (``depthlab report DIR --markdown FILE``), read from
``experiment.json`` files only: per experiment the command that produced it, the verdicts with
their numbers, and every table. ``docs/results.md`` is written this way."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from depthlab.report.pages import format_cell


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
