"""highway: highway networks keep training at depths where plain networks fail (Srivastava, Greff &
Schmidhuber 2015, "Highway Networks" arXiv 1505.00387 and "Training Very Deep Networks" arXiv
1507.06228, Fig. 1 and Fig. 2).

A highway layer computes ``y = T(x) * H(x) + (1 - T(x)) * x`` with ``T = sigmoid(W_T x + b_T)``, ``b_T`` < 0.
Plain and highway nets are CIFAR-layout conv nets of equal depth (the paper's Fig. 1: fully connected, MNIST).
Details: docs/methods.md, section "Highway gate".
"""
from __future__ import annotations

import torch

from depthlab.experiments.base import (
    REAL_FIT,
    Experiment,
    Findings,
    RunSpec,
    compare,
    curves_figure,
    fmt_mean_sd,
    line_figure,
    mean_sd,
    register,
    series,
    table,
    verdict,
)
from depthlab.models.highway import GateConv

FAMILIES = ("plain", "highway")


@register
class Highway(Experiment):
    name = "highway"
    title = "Highway vs plain networks: trainability over depth"
    source = ("Srivastava, Greff, Schmidhuber 2015, Highway Networks (arXiv 1505.00387) and Training Very Deep "
              "Networks (arXiv 1507.06228), Fig. 1 and 2")
    claim = ("Plain networks become hard to optimise beyond some depth (their training error rises steeply from "
             "10 to 100 layers), while highway networks with negatively biased transform gates keep training; "
             "100-layer highway nets train as well as shallow ones. In trained highway nets many transform gates "
             "stay mostly closed.")
    expected = ("at the deepest depth the highway net's training accuracy clearly exceeds the plain net's; the "
                "highway net's accuracy does not collapse with depth; the plain net's does")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "epochs": 40, "depths": [8, 20, 56, 110], "width": 8,
                  "gap": 0.2, "tolerance": 0.1, "gate_batch": 256},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT, the quick scale's width-8 nets at 20 and 110 layers
        "real": {**REAL_FIT, "depths": [20, 110], "width": 8, "gap": 0.2, "tolerance": 0.1, "gate_batch": 256},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [20, 32, 56, 110], "width": None,
                  "gap": 0.1, "tolerance": 0.05, "gate_batch": 256},
    }
    smoke = {"depths": [8, 14], "epochs": 1, "width": 4}
    min_depths = 2

    def runs(self, p):
        for d in p["depths"]:
            if (d - 2) % 6:
                raise ValueError(f"depth {d} is not valid for both families: plain needs 6n + 2, highway 3n + 2; "
                                 f"use a 6n + 2 depth (8, 14, 20, 32, 56, 110, ...)")
        width = [f"model.width={p['width']}"] if p.get("width") else []
        return [RunSpec(f"{f}{d}", [f"model.name={f}", f"model.depth={d}"] + width, {"family": f, "depth": d})
                for d in p["depths"] for f in FAMILIES]

    def analyse(self, ctx) -> Findings:
        p, depths, n = ctx.p, ctx.p["depths"], len(ctx.seeds)
        acc = {(f, d): train_acc(ctx, family=f, depth=d) for f in FAMILIES for d in depths}
        lo, hi = depths[0], depths[-1]
        pct = lambda v: fmt_mean_sd(v, 100, unit="%")  # noqa: E731
        f = Findings()
        c = compare(acc[("highway", hi)], acc[("plain", hi)], p["gap"])
        f.verdicts.append(verdict(
            f"at depth {hi} the highway net's training accuracy exceeds the plain net's by >= {p['gap']:.0%}",
            c["holds"], f"highway-{hi} {pct(acc[('highway', hi)])}, plain-{hi} {pct(acc[('plain', hi)])} "
                        f"training accuracy", n, c["spread"], points=True))
        c = compare(acc[("highway", hi)], acc[("highway", lo)], -p["tolerance"])
        f.verdicts.append(verdict(
            f"the highway net does not collapse with depth: highway-{hi} within {p['tolerance']:.0%} of highway-{lo}",
            c["holds"], f"highway-{lo} {pct(acc[('highway', lo)])}, highway-{hi} {pct(acc[('highway', hi)])} "
                        f"training accuracy", n, c["spread"], points=True))
        c = compare(acc[("plain", lo)], acc[("plain", hi)], p["gap"])
        f.verdicts.append(verdict(
            f"the plain net fails with depth: plain-{hi} trains worse than plain-{lo} by >= {p['gap']:.0%}",
            c["holds"], f"plain-{lo} {pct(acc[('plain', lo)])}, plain-{hi} {pct(acc[('plain', hi)])} "
                        f"training accuracy", n, c["spread"], points=True))

        rows = []
        for d in depths:
            for fam in FAMILIES:
                rs = ctx.rows(family=fam, depth=d)
                rows.append([f"{fam}-{d}", rs[0].get("params") if rs else "-",
                             fmt_mean_sd([1 - a for a in acc[(fam, d)]], 100, unit="%"),
                             fmt_mean_sd([1 - a for a in ctx.values("test_acc", family=fam, depth=d)], 100, unit="%"),
                             fmt_mean_sd([r.get("seconds_per_epoch") for r in rs], digits=2),
                             ", ".join(sorted({r["status"] for r in rs}))])
        f.tables.append(table("Final training and test error", ["model", "params", "train error", "test error",
                                                                "s / epoch", "status"], rows,
                              note=f"{p['recipe']} recipe on {ctx.dataset.name if ctx.dataset else '-'}; "
                                   f"mean +- sd over {n} seed(s); a diverged run counts as chance"))
        lines = []
        for fam, style in (("plain", "--"), ("highway", "-")):
            ms = [mean_sd([1 - a for a in acc[(fam, d)]]) for d in depths]
            lines.append(series(fam, depths, [100 * m for m, _, _ in ms], [100 * s for _, s, _ in ms], style=style))
        f.figures.append(line_figure("Training error vs depth (Srivastava et al. Fig. 1)", "depth (weighted layers)",
                                     "final training error (%)", lines, xscale="log",
                                     caption="Plain nets dashed, highway nets solid; mean +- sd over seeds."))
        for fam in FAMILIES:
            runs = {f"{fam}-{d}": r["run_dir"] for d in depths for r in ctx.rows(family=fam, depth=d, seed=0)}
            f.figures.append(curves_figure(f"{fam} networks: error per epoch (seed 0)", runs))

        gates = ctx.measure("gates", lambda: _gate_activity(ctx), key=p.get("gate_batch"))
        grows, glines = [], []
        for d in depths:
            ms = [gates[r["run_id"]] for r in ctx.rows(family="highway", depth=d) if r["run_id"] in gates]
            mean_t = [sum(g["mean_t"]) / len(g["mean_t"]) for g in ms]
            bias = [sum(g["gate_bias"]) / len(g["gate_bias"]) for g in ms]
            closed = [sum(t < 0.1 for t in g["mean_t"]) / len(g["mean_t"]) for g in ms]
            grows.append([f"highway-{d}", fmt_mean_sd(mean_t, digits=3), fmt_mean_sd(closed, 100, unit="%"),
                          fmt_mean_sd(bias, digits=2)])
            for r in ctx.rows(family="highway", depth=d, seed=0):
                if r["run_id"] in gates:
                    t = gates[r["run_id"]]["mean_t"]
                    glines.append(series(f"highway-{d}", range(1, len(t) + 1), t, marker=None))
        f.tables.append(table("Transform-gate activity of the trained highway nets (Srivastava et al. Fig. 2)",
                              ["model", "mean T(x) over layers", "layers with mean T < 0.1", "mean b_T"], grows,
                              note=f"T(x) averaged over the first {p['gate_batch']} test images and every gate "
                                   f"unit and position of a layer; b_T started at -2"))
        f.figures.append(line_figure("Mean transform-gate activity per layer", "highway layer (input to output)",
                                     "mean T(x)", glines, caption="Trained nets, test images, seed 0; T = 0 is the "
                                     "carry path, T = 1 the plain transform."))
        f.notes += [
            "Srivastava et al.'s Fig. 1 uses fully connected nets on MNIST; here both families are CIFAR-layout "
            "conv nets (plain: depth 6n + 2; highway: depth 3n + 2, gate_bias -2, gate conv weights x0.1). The "
            "depths used are 6n + 2, valid for both, so the nets have the same count of weighted layers; the gate "
            "convs are not counted (as in the paper), so a highway net has about twice the plain net's parameters.",
            "Accuracy is the last epoch's running training accuracy; a diverged run counts as chance "
            "(1 / classes), an errored run as missing.",
        ]
        if p.get("width"):
            f.notes.append(f"Both families are {p['width']} channels wide in the first stage (the CIFAR default is 16) "
                           f"to fit the CPU budget; the highway net is the expensive one (two convs per layer).")
        if p.get("epochs"):
            f.notes.append(f"Every run trains {p['epochs']} epochs (the {p['recipe']} recipe's schedule over that many "
                           f"epochs); a highway-110 net needs about 40 on digits (12 epochs left it at 47% training "
                           f"accuracy in the calibration, 40 at 100%).")
        return f


def train_acc(ctx, **labels) -> list:
    """Training accuracy over seeds; a diverged run is at chance, an errored run is nan."""
    chance = 1.0 / ctx.dataset.num_classes if ctx.dataset is not None else 0.1
    return [chance if r.get("status") == "diverged" else _num(r.get("train_acc")) for r in ctx.rows(**labels)]


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _gate_activity(ctx) -> dict:
    """Per finished highway run: mean sigmoid gate output T(x) per highway layer (test images, eval
    mode, forward hooks on each layer's gate conv) and the mean gate bias b_T per layer."""

    out = {}
    for r in ctx.results:
        if r.get("family") != "highway" or r.get("status") != "finished":
            continue
        model, data = ctx.load(r)
        gates = [m for m in model.modules() if isinstance(m, GateConv)]
        means = {}
        hooks = [g.register_forward_hook(lambda m, i, o, k=k, means=means: means.__setitem__(
                     k, torch.sigmoid(o).mean().item()))
                 for k, g in enumerate(gates)]
        try:
            with torch.no_grad():
                dev = next(model.parameters()).device
                model(data.test_x[: int(ctx.p["gate_batch"])].to(dev))
        finally:
            for h in hooks:
                h.remove()
        out[r["run_id"]] = {"mean_t": [means[k] for k in range(len(gates))],
                            "gate_bias": [g.gate_bias.mean().item() for g in gates]}
    return out
