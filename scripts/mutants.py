"""Summarise a mutmut run (``make mutants``): killed / survived / other per module, the score, and
the survivors that docs/notes/mutation.md does not list as equivalent.

Reads ``mutants/**/*.py.meta`` (mutmut 3's per-file results). The score counts killed mutants
(a test failed, timed out or crashed) over all checked mutants, less the equivalent ones named in
docs/notes/mutation.md (lines ``- `mutant.name` ...`` under "Equivalent mutants").

    python scripts/mutants.py [--all]   # --all: print every survivor, not only the first 40
"""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KILLED = {1, 3, 24, -24, 36, 152, 255, -11, -9}  # a failing test, a timeout or a crash
SURVIVED = {0}
NO_TESTS = {5, 33}


def equivalent_names(doc: Path = ROOT / "docs" / "mutation.md") -> set:
    if not doc.exists():
        return set()
    text = doc.read_text()
    part = text.split("## Equivalent mutants", 1)[-1] if "## Equivalent mutants" in text else ""
    part = part.split("\n## ", 1)[0]
    return set(re.findall(r"^- `([^`]+)`", part, flags=re.M))


def results(root: Path = ROOT / "mutants") -> dict:
    """``{mutant name: exit code or None}`` over every ``.py.meta`` file."""
    found = {}
    for meta in sorted(root.rglob("*.py.meta")):
        found.update(json.loads(meta.read_text()).get("exit_code_by_key", {}))
    return found


def module_of(name: str) -> str:
    return name.split(".x")[0]  # mutmut names: module.x_function__mutmut_N or module.xǁClassǁmethod__mutmut_N


def main(argv) -> int:
    codes = results()
    if not codes:
        print("no mutmut results under mutants/: run `make mutants` first")
        return 1
    equivalent = equivalent_names()
    rows, survivors = {}, []
    for name, code in codes.items():
        kind = ("equivalent" if name in equivalent and code in SURVIVED else
                "killed" if code in KILLED else "survived" if code in SURVIVED else
                "no tests" if code in NO_TESTS else "not checked" if code is None else "other")
        rows.setdefault(module_of(name), Counter())[kind] += 1
        if kind in ("survived", "no tests"):
            survivors.append(name)
    total = Counter()
    print(f"{'module':45s} {'killed':>7s} {'survived':>9s} {'no tests':>9s} {'equiv.':>7s} {'unchecked':>9s}")
    for module in sorted(rows):
        c = rows[module]
        total.update(c)
        print(f"{module:45s} {c['killed']:7d} {c['survived']:9d} {c['no tests']:9d} {c['equivalent']:7d} "
              f"{c['not checked'] + c['other']:9d}")
    checked = total["killed"] + total["survived"] + total["no tests"]
    score = total["killed"] / checked if checked else 0.0
    print(f"{'all':45s} {total['killed']:7d} {total['survived']:9d} {total['no tests']:9d} "
          f"{total['equivalent']:7d} {total['not checked'] + total['other']:9d}")
    print(f"mutation score: {total['killed']} killed of {checked} checked non-equivalent mutants = {score:.1%}")
    shown = survivors if "--all" in argv else survivors[:40]
    if shown:
        print(f"survivors ({len(survivors)}; `mutmut show NAME` prints the change):")
        for name in shown:
            print("  " + name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
