"""stochastic-depth: residual networks trained with stochastic depth reach the same or better
accuracy than with constant depth and take less time per epoch (Huang, Sun, Liu, Sedra,
Weinberger 2016, "Deep Networks with Stochastic Depth", arXiv 1603.09382, Table 1, Fig. 3).

A constant-depth resnet against the same resnet with p_l = 1 - (l/L)(1 - p_L), p_L = 0.5, a branch dropped per
mini-batch; seconds per epoch should approach the active fraction ((3L - 1)/4) / L, about 0.75.
Details: docs/methods.md, section "Stochastic depth".
"""
from __future__ import annotations

import torch

from depthlab.experiments.base import (
    REAL_FIT,
    Experiment,
    Findings,
    RunSpec,
    bar_figure,
    compare,
    curves_figure,
    fmt_mean_sd,
    mean_sd,
    register,
    table,
    verdict,
)
from depthlab.methods import apply_stochastic_depth, expected_active_blocks
from depthlab.models import build_model

VARIANTS = ("constant", "stochastic")  # constant depth; stochastic depth with p_L = p["p_last"]


@register
class StochasticDepth(Experiment):
    name = "stochastic-depth"
    title = "Stochastic depth: same accuracy, less time per epoch"
    source = "Huang, Sun, Liu, Sedra, Weinberger 2016, Deep Networks with Stochastic Depth (arXiv 1603.09382), Table 1"
    claim = ("Dropping whole residual branches per mini-batch with linearly decaying survival probability "
             "(p_L = 0.5) trains a ResNet-110 on CIFAR-10 to lower test error (6.41% -> 5.25%; 1202 layers: "
             "6.67% -> 4.91%) in about 25% less time (20h42m -> 15h7m).")
    expected = ("stochastic depth's test accuracy is the same as or better than constant depth's (within a small "
                "tolerance) and its seconds per epoch are clearly lower (ratio about 0.75, at most 0.9)")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "depths": [56, 110], "p_last": 0.5,
                  "tolerance": 0.01, "max_time_ratio": 0.9},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT (the nets fit their 1,000 images, so test accuracy measures
        # what the paper's regulariser is for)
        "real": {**REAL_FIT, "depths": [56], "p_last": 0.5, "tolerance": 0.01, "max_time_ratio": 0.9},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [110], "p_last": 0.5,
                  "tolerance": 0.0, "max_time_ratio": 0.9},
    }
    smoke = {"depths": [8], "epochs": 1}

    def runs(self, p):
        specs = []
        for d in _depths(p):
            base = ["model.name=resnet", f"model.depth={d}"]
            specs.append(RunSpec(f"resnet{d}", base, {"variant": "constant", "depth": d}))
            specs.append(RunSpec(f"resnet{d}-sd", base + [f"methods.stochastic_depth={p['p_last']}",
                                                          "methods.stochastic_depth_mode=batch"],
                                 {"variant": "stochastic", "depth": d}))
        return specs

    def analyse(self, ctx) -> Findings:
        p, depths, n = ctx.p, _depths(ctx.p), len(ctx.seeds)
        acc = {(v, d): ctx.values("test_acc", variant=v, depth=d) for v in VARIANTS for d in depths}
        train_acc = {(v, d): ctx.values("train_acc", variant=v, depth=d) for v in VARIANTS for d in depths}
        spe = {(v, d): ctx.values("seconds_per_epoch", variant=v, depth=d) for v in VARIANTS for d in depths}
        ratio = {d: _ratios(ctx, d) for d in depths}
        active = ctx.measure("active_blocks", lambda: _active_blocks(depths, p["p_last"]))
        f = Findings()

        thr = p["max_time_ratio"]
        for d in depths:  # per depth: (1) accuracy within tolerance, (2) time ratio <= max_time_ratio
            c = compare(acc[("stochastic", d)], acc[("constant", d)], -p["tolerance"])
            f.verdicts.append(verdict(
                f"resnet-{d}: stochastic depth's test accuracy is at least constant depth's minus {p['tolerance']:.1%}",
                c["holds"], f"constant {fmt_mean_sd(acc[('constant', d)], 100, unit='%')}, stochastic "
                            f"{fmt_mean_sd(acc[('stochastic', d)], 100, unit='%')} (diff {100 * c['diff']:+.1f} pts)",
                n, c["spread"], points=True))
            c = compare([thr] * len(ratio[d]), ratio[d], 0.0)  # holds when mean ratio <= thr
            f.verdicts.append(verdict(
                f"resnet-{d}: stochastic depth takes less time per epoch (ratio to constant depth <= {thr:g}; "
                f"paper about 0.75)", c["holds"],
                f"{fmt_mean_sd(spe[('constant', d)], digits=2)} s -> {fmt_mean_sd(spe[('stochastic', d)], digits=2)} s "
                f"per epoch, ratio {fmt_mean_sd(ratio[d], digits=2)} (expected active fraction "
                f"{active[str(d)]['fraction']:.2f})", n, c["spread"]))

        rows = []
        for d in depths:
            for v in VARIANTS:
                rs = ctx.rows(variant=v, depth=d)
                a = active[str(d)]
                rows.append([f"resnet-{d}" + (f" + SD (p_L={p['p_last']:g})" if v == "stochastic" else ""),
                             fmt_mean_sd([1 - x for x in acc[(v, d)]], 100, unit="%"),
                             fmt_mean_sd([1 - x for x in train_acc[(v, d)]], 100, unit="%"),
                             fmt_mean_sd(spe[(v, d)], digits=2),
                             fmt_mean_sd(ratio[d], digits=2) if v == "stochastic" else "1",
                             (f"{a['expected']:.2f} / {a['blocks']}" if v == "stochastic"
                              else f"{a['blocks']} / {a['blocks']}"),
                             ", ".join(sorted({r["status"] for r in rs}))])
        data = ctx.dataset.name if ctx.dataset else "-"
        f.tables.append(table("Test error and time per epoch",
                              ["model", "test error", "train error", "s / epoch", "time ratio",
                               "active blocks (expected)", "status"], rows,
                              note=f"{p['recipe']} recipe on {data}; mean +- sd over {n} seed(s); s / epoch excludes "
                                   f"the first epoch; active blocks = sum of survival probabilities ((3L-1)/4 for "
                                   f"p_L = 0.5)"))

        for d in depths:
            runs = {f"{'stochastic' if v == 'stochastic' else 'constant'} depth {d}": r["run_dir"]
                    for v in VARIANTS for r in ctx.rows(variant=v, depth=d, seed=ctx.seeds[0])}
            f.figures.append(curves_figure(f"resnet-{d}: test error per epoch (seed {ctx.seeds[0]})", runs,
                                           metrics=("test_error", "train_error"),
                                           caption="Huang et al. Fig. 3: stochastic depth's test error ends as "
                                                   "low or lower than constant depth's."))
        labels, values, errs = [], [], []
        for d in depths:
            for v in VARIANTS:
                m, s, _ = mean_sd(spe[(v, d)])
                labels.append(f"{d} {'SD' if v == 'stochastic' else 'const'}")
                values.append(m)
                errs.append(s)
        f.figures.append(bar_figure("Seconds per epoch", "seconds per epoch (wall clock, first epoch excluded)",
                                    labels, values, errs,
                                    caption="Constant depth (const) vs stochastic depth (SD) at each depth; "
                                            "only meaningful on an otherwise idle machine."))
        f.notes += [
            "Timings are wall-clock seconds per epoch (mean over epochs 2..N; the first epoch carries one-off "
            "costs) and are only meaningful on an otherwise idle machine: any other load on the CPU or GPU "
            "shifts the ratio.",
            "Expected active blocks per training step: " + ", ".join(
                f"resnet-{d}: {active[str(d)]['expected']:.2f} of {active[str(d)]['blocks']}" for d in depths) +
            " (sum of p_l, (3L-1)/4 for p_L = 0.5; 40.25 of 54 for ResNet-110). The time ratio approaches the "
            "active fraction only where the residual branches dominate the cost of a step (not the stem, head, "
            "data loading or optimiser).",
            "The paper trains 500 epochs with Nesterov momentum (lr 0.1, /10 at epochs 250 and 375, wd 1e-4); the "
            "paper scale uses the he2015 recipe (164 epochs) by default. For the paper's schedule pass "
            "--param set=train.epochs=500,train.nesterov=true (he2015 then steps at epochs 250 and 375). The paper's "
            "1202-layer net: --param depths=110,1202.",
        ]
        if p["recipe"] == "quick":
            f.notes.append("Quick scale: 8x8 digits images, where the parts of a step that stochastic depth never "
                           "skips (stem, head, optimiser update of every parameter) weigh more than on CIFAR, which "
                           "pushes the ratio above the active fraction; a ratio below it means the machine's load "
                           "changed between the two runs.")
        return f


def _depths(p) -> list:
    """``depths`` as a list (``--param depths=110`` parses to one int)."""
    d = p["depths"]
    return [int(x) for x in (d if isinstance(d, (list, tuple)) else [d])]


def _ratios(ctx, depth: int) -> list:
    """Seconds per epoch, stochastic / constant, paired by seed."""
    out = []
    for seed in ctx.seeds:
        c = ctx.rows(variant="constant", depth=depth, seed=seed)
        s = ctx.rows(variant="stochastic", depth=depth, seed=seed)
        if c and s and c[0].get("seconds_per_epoch") and s[0].get("seconds_per_epoch") is not None:
            out.append(s[0]["seconds_per_epoch"] / c[0]["seconds_per_epoch"])
    return out


def _active_blocks(depths, p_last: float) -> dict:
    """Per depth: residual blocks, expected active blocks (sum of p_l) and their fraction."""

    out = {}
    for d in depths:
        with torch.device("meta"):  # no memory: only the block structure is needed
            model = build_model("resnet", depth=d)
        apply_stochastic_depth(model, p_last)
        blocks, expected = len(model.blocks), expected_active_blocks(model)
        out[str(d)] = {"blocks": blocks, "expected": expected, "fraction": expected / blocks}
    return out
