"""Independent readers for the experiment tests: the numbers a verdict rests on, read straight from an
experiment directory's files (each run's config.json and metrics.jsonl, the measurements/*.json
caches) with plain ``json``, the formatting the verdicts show them in, and the one-comparison rule
of ``depthlab.experiments.base.compare`` written out again.

Nothing here imports ``depthlab.experiments``: a test that recomputed a verdict with the experiment's
own helpers would share their bugs.
"""
import json
import math
from pathlib import Path
from typing import Optional

OBSERVED, NOT_OBSERVED, INCONCLUSIVE = "observed", "not observed", "inconclusive"


# ----------------------------------------------------------------------------- reading runs

def configs(exp_dir) -> dict:
    """run_id -> the run's config.json, for every run directory of the experiment."""
    return {d.name: json.loads((d / "config.json").read_text()) for d in sorted((Path(exp_dir) / "runs").iterdir())}


def find_run(exp_dir, seed: int = 0, methods: Optional[dict] = None, **model) -> str:
    """The id (directory name) of the one run of ``seed`` whose config.json has these ``model`` fields
    (and ``methods`` fields): runs are told apart by what they trained, not by the names the
    experiment gave them."""
    found = [rid for rid, cfg in configs(exp_dir).items()
             if cfg["train"]["seed"] == seed and all(cfg["model"].get(k) == v for k, v in model.items())
             and all(cfg["methods"].get(k) == v for k, v in (methods or {}).items())]
    assert len(found) == 1, (model, methods, found)
    return found[0]


def epochs(exp_dir, run_id: str) -> list:
    """The epoch rows of a run's metrics.jsonl."""
    text = (Path(exp_dir) / "runs" / run_id / "metrics.jsonl").read_text()
    return [r for r in map(json.loads, filter(str.strip, text.splitlines())) if r.get("kind") == "epoch"]


def final(exp_dir, run_id: str) -> dict:
    """The last epoch row of a run's metrics.jsonl."""
    rows = epochs(exp_dir, run_id)
    assert rows, f"{run_id} has no epoch row"
    return rows[-1]


def diverged(exp_dir, run_id: str) -> bool:
    return final(exp_dir, run_id).get("status") == "diverged"


def chance(exp_dir, run_id: str) -> float:
    """1 / classes of the run's model (config.json)."""
    cfg = json.loads((Path(exp_dir) / "runs" / run_id / "config.json").read_text())
    return 1.0 / cfg["model"]["num_classes"]


def acc(exp_dir, run_id: str, key: str = "train_acc", if_diverged: float = math.nan) -> float:
    """``key`` of the run's last epoch; ``if_diverged`` (chance, or nan = missing) for a diverged run."""
    row = final(exp_dir, run_id)
    if row.get("status") == "diverged":
        return if_diverged
    return float(row[key])


def seconds_per_epoch(exp_dir, run_id: str) -> float:
    """Mean seconds of the epochs after the first (the first alone when there is one)."""
    secs = [r["seconds"] for r in epochs(exp_dir, run_id)]
    rest = secs[1:] or secs
    return sum(rest) / len(rest)


def measurement(exp_dir, name: str):
    """The cached value of ``measurements/<name>.json``."""
    return json.loads((Path(exp_dir) / "measurements" / f"{name}.json").read_text())["value"]


def verdict(doc: dict, *words: str) -> dict:
    """The one verdict whose claim contains every word."""
    found = [v for v in doc["verdicts"] if all(w in v["claim"] for w in words)]
    assert len(found) == 1, (words, [v["claim"] for v in doc["verdicts"]])
    return found[0]


# ----------------------------------------------------------------------------- statistics and formatting

def finite(values) -> list:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values) -> float:
    v = finite(values)
    return sum(v) / len(v) if v else math.nan


def sd(values) -> float:
    """Sample standard deviation; 0 for one value."""
    v = finite(values)
    if len(v) < 2:
        return 0.0
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def fmt(values, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
    """As a verdict shows values over seeds: "-" for none, "97.3%" for one, "97.3 +- 0.4%" for more."""
    v = finite(values)
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0] * scale:.{digits}f}{unit}"
    return f"{mean(v) * scale:.{digits}f} +- {sd(v) * scale:.{digits}f}{unit}"


def pct(values) -> str:
    return fmt(values, 100, unit="%")


def points(values) -> str:
    return fmt(values, 100, unit=" points")


def rule(a, b, gap: float):
    """The stated rule of a one-comparison verdict: True when mean(a) - mean(b) >= gap; None (undecided)
    when a side has no finite value, or when both have several and |difference - gap| < sd(a) + sd(b)."""
    fa, fb = finite(a), finite(b)
    if not fa or not fb:
        return None
    diff = mean(fa) - mean(fb)
    if min(len(fa), len(fb)) > 1 and abs(diff - gap) < sd(fa) + sd(fb):
        return None
    return diff >= gap


def both(*holds):
    """Conjunction of rules: False if any fails, None if any is undecided, else True."""
    return False if False in holds else None if None in holds else True


def status(holds) -> str:
    return INCONCLUSIVE if holds is None else OBSERVED if holds else NOT_OBSERVED


def check(v: dict, holds, detail: str) -> None:
    """The verdict shows ``detail`` and the status the rule gives."""
    assert v["detail"] == detail, (v["claim"], v["detail"], detail)
    want = status(holds)
    got = v["status"].split(" (")[0]
    assert got == want, (v["claim"], v["status"], want, detail)
