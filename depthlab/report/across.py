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
from typing import Dict, List

from depthlab.report.inputs import load_object, text

STATUSES = ("observed", "not observed", "inconclusive")


def claim_key(claim: str) -> str:
    """The wording of an expectation without its numbers: what makes two scales' verdicts one row."""
    return re.sub(r"\d+(?:\.\d+)?", "#", claim).strip()


def _experiments(root: Path) -> Dict[str, Path]:
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
    out = {}
    for d in found:
        doc = load_object(d / "experiment.json")
        out.setdefault(text(doc.get("name")) or d.name, d)
    return out


def _label(doc: dict) -> str:
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(text(data.get("name")), text(data.get("name")) or "?")
    return name + (" (JPEG re-encoding)" if "JPEG" in text(data.get("source")) else "")


def compare_verdicts(roots: List[Path]) -> dict:
    """``{"columns": [label per root], "experiments": [{"name", "title", "source", "rows": [{"claim",
    "cells": [verdict dict or None per root]}]}]}`` for every experiment under any root."""
    found = [_experiments(r) for r in roots]
    docs = [{n: load_object(d / "experiment.json") for n, d in f.items()} for f in found]
    labels = [_label(next(iter(ds.values()))) for ds in docs]
    scales = [text(next(iter(ds.values())).get("scale")) for ds in docs]
    labels = [f"{lab}, {sc} scale" if labels.count(lab) > 1 else lab for lab, sc in zip(labels, scales)]
    labels = [f"{lab} ({Path(r).name})" if labels.count(lab) > 1 else lab for lab, r in zip(labels, roots)]
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
