"""What an experiment is: a named finding from a paper, a grid of training runs, measurements on
them, and an honest verdict on whether the paper's finding was observed.

A registered ``Experiment`` subclass gives ``scales``, ``runs(p)`` (``RunSpec``s) and ``analyse(ctx)`` (``Findings``:
verdicts, tables, plain-data figure specs); this module also holds the helpers they use.
Details: docs/design.md, section "Experiments: runs, analysis, verdicts".
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from depthlab.registry import Registry
from depthlab.stats import fmt_mean_sd, mean_sd  # noqa: F401  (re-exported: experiments use them from here)

EXPERIMENTS = Registry("experiment")

# The real-image budget on a 2-core CPU (docs/notes/calibration-real.md). REAL_FIT: 1,000 CIFAR-10 training images
# for 32 quick-recipe epochs (512 SGD steps) without augmentation, at which the nets the papers say train fit their
# images (plain-20, resnet-20/44/56/110) and plain-56 does not; the test set is evaluated once, after the last
# epoch. The first real budget, real_budget(4000, 10) (crop+flip, 630 steps), is where no net fits its images yet.
def real_budget(images: int, epochs: int, augment: Optional[str] = None) -> dict:
    """A real scale's budget: the quick recipe on ``images`` CIFAR-10 training images for ``epochs``,
    the test set evaluated after the last epoch only; ``augment`` overrides the dataset's default."""
    aug = [f"data.augment={augment}"] if augment else []
    return {"dataset": "cifar10", "recipe": "quick", "epochs": epochs,
            "set": [f"data.train_subset={images}"] + aug + [f"train.eval_every={epochs}"]}


REAL_FIT = real_budget(1000, 32, augment="none")
# The same images and steps with crop+flip, for claims about test accuracy: without augmentation a net that fits
# 1,000 images reaches 31-37% on the test set and one that does not 21-27%, too narrow for 10-point bars
# (looks-linear at REAL_FIT; docs/notes/calibration-real.md).
REAL_FIT_AUGMENTED = real_budget(1000, 32, augment="crop-flip")

OBSERVED, NOT_OBSERVED, INCONCLUSIVE = "observed", "not observed", "inconclusive"


@dataclass
class RunSpec:
    """One training run of the grid (the runner adds data, recipe, seed, device and run_id)."""

    id: str                                  # unique within the experiment, e.g. "plain56"
    overrides: List[str]                     # RunConfig overrides, e.g. ["model.name=plain", "model.depth=56"]
    labels: Dict[str, Any] = field(default_factory=dict)  # what the analysis groups by


@dataclass
class Findings:
    verdicts: List[dict] = field(default_factory=list)   # from ``verdict``
    tables: List[dict] = field(default_factory=list)     # from ``table``
    figures: List[dict] = field(default_factory=list)    # plain-data plot specs (see depthlab.report.figures)
    notes: List[str] = field(default_factory=list)


class Experiment:
    """Base class; subclasses set the class attributes and implement ``runs`` and ``analyse``."""

    name: str = ""
    title: str = ""
    source: str = ""          # the paper (authors, year, arXiv id, figure)
    claim: str = ""           # what the paper found
    expected: str = ""        # what a quick-scale run should show if the finding holds
    scales: Dict[str, dict] = {}
    smoke: Dict[str, Any] = {}  # parameters that shrink either scale to seconds (tests, CI)
    min_depths: int = 1       # different depths the verdicts need (2: they compare a shallow and a deep net)

    def runs(self, p: dict) -> List[RunSpec]:
        """The training grid for parameters ``p`` (seeds are added by the runner)."""
        return []

    def analyse(self, ctx) -> Findings:  # ctx: depthlab.experiments.runner.Context
        raise NotImplementedError

    @classmethod
    def year(cls) -> int:
        """The year of the (first) paper in ``source``: experiments are listed in the field's order."""
        found = re.search(r"\b(19|20)\d\d\b", cls.source)
        return int(found.group()) if found else 9999

    @classmethod
    def describe(cls) -> str:
        return f"{cls.name}: {cls.title} ({cls.source})"


def register(cls):
    """Class decorator: add an Experiment subclass to ``EXPERIMENTS`` under its ``name``."""
    EXPERIMENTS.register(cls.name, cls)
    return cls


# ----------------------------------------------------------------------------- statistics

def compare(a: Sequence[float], b: Sequence[float], min_gap: float) -> dict:
    """Is ``mean(a) - mean(b) >= min_gap``, and do the seeds agree?

    With one seed each the answer is the sign of ``diff - min_gap``. With more, the answer is
    ``None`` (inconclusive) when the seeds' spread straddles the threshold: ``|diff - min_gap| <
    sd(a) + sd(b)``. Returns ``{"holds", "diff", "spread", "n"}``."""
    ma, sa, na = mean_sd(a)
    mb, sb, nb = mean_sd(b)
    if na == 0 or nb == 0:
        return {"holds": None, "diff": math.nan, "spread": math.nan, "n": min(na, nb)}
    diff, spread = ma - mb, sa + sb
    holds: Optional[bool] = diff >= min_gap
    if min(na, nb) > 1 and abs(diff - min_gap) < spread:
        holds = None
    return {"holds": holds, "diff": diff, "spread": spread, "n": min(na, nb)}


def within(ratios, bound):
    """``(holds, spread)``: are the ratios within [1/bound, bound] (on a log10 scale, seeds'
    spread deciding as in ``compare``)? A zero, nan or infinite ratio is outside."""
    logs = [abs(math.log10(r)) if r is not None and r > 0 and math.isfinite(r) else math.inf for r in ratios]
    if not logs:
        return None, math.nan
    if not all(map(math.isfinite, logs)):
        return False, math.nan
    c = compare([math.log10(bound)] * len(logs), logs, 0)  # a constant repeated: the seeds' spread decides
    return c["holds"], c["spread"]


def geo_mean(values) -> float:
    logs = [math.log(v) for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(logs) / len(logs)) if logs else math.nan


def fmt_ratio(values) -> str:
    return ", ".join("overflow" if v == math.inf else f"{v:.3g}" for v in values) or "-"


def verdict(claim: str, holds: Optional[bool], detail: str, seeds: int = 1, spread: Optional[float] = None,
            unit: str = "seed", points: bool = False) -> dict:
    """One checked expectation: status ``observed`` / ``not observed`` / ``inconclusive`` and the
    numbers it rests on (``detail``). ``holds=None`` means the data could not decide. ``seeds``
    counts the samples behind it, in ``unit`` (``seed``; ``init`` where an experiment draws its own).
    ``points``: the spread is of fractions (accuracies, errors) and is shown in percentage points."""
    if holds is None:
        sp = ("" if spread is None or not math.isfinite(spread) else
              f", spread {100 * spread:.2g} points" if points else f", spread {spread:.3g}")
        status = f"{INCONCLUSIVE} ({seeds} {unit}{'s' if seeds != 1 else ''}{sp})"
    else:
        status = OBSERVED if holds else NOT_OBSERVED
    return {"claim": claim, "status": status, "detail": detail, "seeds": seeds, "unit": unit}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> dict:
    """A results table as plain data (cells are already formatted strings or numbers)."""
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "note": note}


# ----------------------------------------------------------------------------- figure specs

def series(label: str, x: Sequence, y: Sequence, yerr: Optional[Sequence] = None, style: str = "-",
           marker: Optional[str] = "o", color: Optional[str] = None) -> dict:
    """One line of a ``line`` figure (``style``: matplotlib line style; ``yerr``: sd over seeds)."""
    s = {"label": label, "x": [float(v) for v in x], "y": [_num(v) for v in y], "style": style, "marker": marker}
    if yerr is not None:
        s["yerr"] = [_num(v) for v in yerr]
    if color is not None:
        s["color"] = color
    return s


def line_figure(title: str, xlabel: str, ylabel: str, lines: Sequence[dict], xscale: str = "linear",
                yscale: str = "linear", caption: str = "", hlines: Optional[Sequence[dict]] = None) -> dict:
    """A single-axes line plot; ``hlines``: ``[{"y": 90, "label": "chance"}]`` reference lines."""
    return {"type": "line", "title": title, "xlabel": xlabel, "ylabel": ylabel, "series": list(lines),
            "xscale": xscale, "yscale": yscale, "caption": caption, "hlines": list(hlines or [])}


def bar_figure(title: str, ylabel: str, labels: Sequence[str], values: Sequence[float],
               yerr: Optional[Sequence[float]] = None, caption: str = "") -> dict:
    return {"type": "bar", "title": title, "ylabel": ylabel, "labels": list(labels),
            "values": [_num(v) for v in values], "yerr": None if yerr is None else [_num(v) for v in yerr],
            "caption": caption}


def heatmap_figure(title: str, matrix, xlabel: str = "", ylabel: str = "", caption: str = "",
                   vmin: Optional[float] = None, vmax: Optional[float] = None) -> dict:
    return {"type": "heatmap", "title": title, "z": [[_num(v) for v in row] for row in matrix],
            "xlabel": xlabel, "ylabel": ylabel, "caption": caption, "vmin": vmin, "vmax": vmax}


def curves_figure(title: str, runs: Dict[str, str], metrics: Sequence[str] = ("train_error", "test_error"),
                  caption: str = "") -> dict:
    """Per-epoch curves read from run directories at report time: ``runs`` maps a label to a run
    directory (relative to the experiment directory); metrics among train_error, test_error,
    train_loss, test_loss. Labels starting with ``plain`` are dashed."""
    return {"type": "curves", "title": title, "runs": dict(runs), "metrics": list(metrics), "caption": caption}


def panels_figure(title: str, panels: Sequence[dict], cols: int = 3, caption: str = "") -> dict:
    """Several ``line`` / ``heatmap`` / ``bar`` specs as small multiples in one figure."""
    return {"type": "panels", "title": title, "panels": list(panels), "cols": cols, "caption": caption}


def _num(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
