"""One experiment's verdicts side by side over several datasets or scales: ``depthlab report A B C``
with each of A, B, C a directory of experiments (``depthlab reproduce all --out A``) or one
experiment directory.

For every experiment found under any of them, one table: a row per checked expectation, a column per
directory (labelled by its dataset, or dataset and scale where two share a dataset). Expectations are
matched by their wording with the numbers taken out ("plain-56 ... plain-20 (by >= 5%)" and
"plain-110 ... plain-20 (by >= 2%)" are the same row), the n-th such wording with the n-th, so grids of
different depths still line up; a cell gives the status and the numbers it rests on. Reads
``experiment.json`` files only, escaped like every other page (``depthlab.report.inputs``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional

from depthlab.report.inputs import load_object, text

STATUSES = ("observed", "not observed", "inconclusive")


def claim_key(claim: str) -> str:
    """The wording of an expectation without its numbers: what makes two scales' verdicts one row."""
    return re.sub(r"\d+(?:\.\d+)?", "#", claim).strip()


def _columns(root: Path) -> List[dict]:
    """The experiment directories at or below ``root`` (one level), grouped into columns by dataset and
    scale: ``[{"root", "label", "scale", "docs": {name: experiment.json}}]``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory")
    if (root / "experiment.json").is_file():
        found = [root]
    else:
        found = sorted(p.parent for p in root.glob("*/experiment.json") if not p.parent.is_symlink())
    if not found:
        raise FileNotFoundError(f"no experiment directory (experiment.json) in {str(root)!r}; run "
                                f"`depthlab reproduce NAME --out {root}` first")
    columns: Dict[tuple, dict] = {}
    docs = [(d, load_object(d / "experiment.json")) for d in found]
    # experiments with no dataset (shattered's synthetic inputs) join their scale's column, once it exists
    for d, doc in sorted(docs, key=lambda x: _label(x[1]) is None):
        label, scale = _label(doc), text(doc.get("scale"))
        if label is None:
            label = next((lab for lab, sc in columns if sc == scale), "no dataset")
        col = columns.setdefault((label, scale), {"root": root, "label": label, "scale": scale, "docs": {}})
        col["docs"].setdefault(text(doc.get("name")) or d.name, doc)
    return list(columns.values())


def _label(doc: dict) -> Optional[str]:
    """The dataset a column is named by (None for an experiment that reads none)."""
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    if not isinstance(data.get("name"), str) or not data["name"]:
        return None
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(data["name"], text(data["name"]))
    return name + (" (JPEG re-encoding)" if "JPEG" in text(data.get("source")) else "")


def compare_verdicts(roots: List[Path]) -> dict:
    """``{"columns": [label], "experiments": [{"name", "title", "source", "rows": [{"claim", "cells":
    [verdict dict or None per column]}]}]}`` for every experiment under any root. A column is one dataset
    at one scale in one root (``runs/reproduce`` holding quick and ``-real`` experiments gives two)."""
    cols = [c for r in roots for c in _columns(r)]
    labels = [c["label"] for c in cols]
    labels = [f"{lab}, {c['scale']} scale" if labels.count(lab) > 1 else lab for lab, c in zip(labels, cols)]
    labels = [f"{lab} ({Path(c['root']).name})" if labels.count(lab) > 1 else lab for lab, c in zip(labels, cols)]
    docs = [c["docs"] for c in cols]
    names = list(dict.fromkeys(n for ds in docs for n in ds))
    experiments = []
    for name in names:
        rows: Dict[tuple, dict] = {}
        for col, ds in enumerate(docs):
            doc = ds.get(name)
            seen: Dict[str, int] = {}
            for v in (doc.get("verdicts") if doc and isinstance(doc.get("verdicts"), list) else []):
                if not isinstance(v, dict):
                    continue
                key = claim_key(text(v.get("claim")))
                seen[key] = seen.get(key, 0) + 1
                row = rows.setdefault((key, seen[key]), {"claim": text(v.get("claim")), "cells": [None] * len(docs)})
                row["cells"][col] = v
        head = next(ds[name] for ds in docs if name in ds)
        experiments.append({"name": name, "title": text(head.get("title")), "source": text(head.get("source")),
                            "rows": list(rows.values())})
    return {"columns": labels, "roots": [str(r) for r in roots], "experiments": experiments}


def verdict_status(v) -> str:
    """A cell's status without its seed count: one of ``STATUSES``, "unknown" for anything else a file
    says, or "" for no verdict."""
    if not isinstance(v, dict):
        return ""
    status = text(v.get("status")).split(" (")[0]
    return status if status in STATUSES else "unknown"
