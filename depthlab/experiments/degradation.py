"""degradation: deeper plain networks train *worse*; residual networks do not (He et al. 2015,
arXiv 1512.03385, Fig. 1 and 6), and residual branches respond more weakly than plain layers
(Fig. 7)."""
from __future__ import annotations

from depthlab.diagnose_run import diagnose
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

FAMILIES = ("plain", "resnet")


@register
class Degradation(Experiment):
    name = "degradation"
    title = "The degradation problem: plain vs residual networks over depth"
    source = "He, Zhang, Ren, Sun 2015, Deep Residual Learning (arXiv 1512.03385), Fig. 1, 6 and 7"
    claim = ("A deeper plain network has higher training error than a shallower one (plain-56 > plain-20; "
             "plain-110 > 60% error), so the problem is optimisation, not overfitting; residual networks get "
             "better with depth. The std of each layer's BN output is smaller in ResNets than in plain nets.")
    expected = ("plain training error rises with depth (56 clearly above 20); the resnet's does not; the "
                "resnet's branch responses are weaker than the plain net's at equal depth, and weaker in "
                "deeper resnets")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "depths": [8, 20, 56, 110], "gap": 0.05,
                  "tolerance": 0.01},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT (resnet-110, the control: sweeps/calibration-real-resnet110.yaml)
        "real": {**REAL_FIT, "depths": [20, 56], "gap": 0.05, "tolerance": 0.01},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [20, 32, 44, 56, 110], "gap": 0.02,
                  "tolerance": 0.005},
    }

    smoke = {"depths": [8, 14], "epochs": 1}
    min_depths = 2

    def runs(self, p):
        return [RunSpec(f"{f}{d}", [f"model.name={f}", f"model.depth={d}"], {"family": f, "depth": d})
                for d in p["depths"] for f in FAMILIES]

    def analyse(self, ctx) -> Findings:
        p, depths = ctx.p, ctx.p["depths"]
        err = {(f, d): [1 - a for a in ctx.values("train_acc", family=f, depth=d)] for f in FAMILIES for d in depths}
        test_err = {(f, d): [1 - a for a in ctx.values("test_acc", family=f, depth=d)]
                    for f in FAMILIES for d in depths}
        f = Findings()
        n = len(ctx.seeds)
        # 1. plain: training error rises from the 20-ish net to the 56-ish net (the deepest pair if absent)
        lo, hi = (20, 56) if {20, 56} <= set(depths) else (depths[0], depths[-1])
        c = compare(err[("plain", hi)], err[("plain", lo)], p["gap"])
        f.verdicts.append(verdict(
            f"plain-{hi} has a higher training error than plain-{lo} (by >= {p['gap']:.0%})", c["holds"],
            f"plain-{lo} {fmt_mean_sd(err[('plain', lo)], 100, unit='%')}, plain-{hi} "
            f"{fmt_mean_sd(err[('plain', hi)], 100, unit='%')} training error", n, c["spread"], points=True))
        # 2. resnet: training error does not rise over the same depths
        c = compare(err[("resnet", lo)], err[("resnet", hi)], -p["tolerance"])
        f.verdicts.append(verdict(
            f"resnet-{hi} trains at least as well as resnet-{lo} (within {p['tolerance']:.1%})", c["holds"],
            f"resnet-{lo} {fmt_mean_sd(err[('resnet', lo)], 100, unit='%')}, resnet-{hi} "
            f"{fmt_mean_sd(err[('resnet', hi)], 100, unit='%')} training error", n, c["spread"], points=True))
        # 2b. ... and at every other step of the depth grid (e.g. resnet-110 vs resnet-56)
        for a, b in zip(depths, depths[1:]):
            if (a, b) == (lo, hi):
                continue
            c = compare(err[("resnet", a)], err[("resnet", b)], -p["tolerance"])
            f.verdicts.append(verdict(
                f"resnet-{b} trains at least as well as resnet-{a} (within {p['tolerance']:.1%})", c["holds"],
                f"resnet-{a} {fmt_mean_sd(err[('resnet', a)], 100, unit='%')}, resnet-{b} "
                f"{fmt_mean_sd(err[('resnet', b)], 100, unit='%')} training error", n, c["spread"], points=True))
        # 3-4. Fig. 7: mean branch-response std over layers (seed by seed), at the plain pair's deeper
        # depth (a plain net that failed to train has meaningless responses), and over resnet depths
        resp = ctx.measure("responses", lambda: _responses(ctx))

        def mean_std(fam, d):
            return [resp[r["run_id"]]["mean"] for r in ctx.rows(family=fam, depth=d) if r["run_id"] in resp]

        c = compare(mean_std("plain", hi), mean_std("resnet", hi), 0.0)
        f.verdicts.append(verdict(
            f"resnet-{hi}'s branch responses (BN output std) are smaller than plain-{hi}'s", c["holds"],
            f"mean std over layers: plain {fmt_mean_sd(mean_std('plain', hi), digits=3)}, resnet "
            f"{fmt_mean_sd(mean_std('resnet', hi), digits=3)}", n, c["spread"]))
        deepest = depths[-1]
        c = compare(mean_std("resnet", lo), mean_std("resnet", deepest), 0.0)
        f.verdicts.append(verdict(
            f"the deeper resnet-{deepest} has smaller responses than resnet-{lo}", c["holds"],
            f"mean std over layers: resnet-{lo} {fmt_mean_sd(mean_std('resnet', lo), digits=3)}, resnet-{deepest} "
            f"{fmt_mean_sd(mean_std('resnet', deepest), digits=3)}", n, c["spread"]))

        rows = []
        for d in depths:
            for fam in FAMILIES:
                rs = ctx.rows(family=fam, depth=d)
                rows.append([f"{fam}-{d}", rs[0].get("params") if rs else "-",
                             fmt_mean_sd(err[(fam, d)], 100, unit="%"), fmt_mean_sd(test_err[(fam, d)], 100, unit="%"),
                             fmt_mean_sd([r.get("seconds_per_epoch") for r in rs], digits=2),
                             ", ".join(sorted({r["status"] for r in rs}))])
        f.tables.append(table("Final training and test error", ["model", "params", "train error", "test error",
                                                                "s / epoch", "status"], rows,
                              note=f"{ctx.p['recipe']} recipe on {ctx.dataset.name if ctx.dataset else '-'}; "
                                   f"mean +- sd over {n} seed(s)"))
        lines = []
        for fam, style in (("plain", "--"), ("resnet", "-")):
            ms = [mean_sd(err[(fam, d)]) for d in depths]
            lines.append(series(fam, depths, [100 * m for m, _, _ in ms], [100 * s for _, s, _ in ms], style=style))
        f.figures.append(line_figure("Training error vs depth", "depth (weighted layers)", "final training error (%)",
                                     lines, xscale="log", caption="Plain nets (dashed) get worse with depth."))
        for fam in FAMILIES:
            runs = {f"{fam}-{d}": r["run_dir"] for d in depths for r in ctx.rows(family=fam, depth=d, seed=0)}
            f.figures.append(curves_figure(f"{fam} networks: error per epoch (seed 0)", runs))
        shown = {lo, hi, deepest}
        resp_lines = [series(f"{r['family']}-{r['depth']}", range(1, len(resp[r["run_id"]]["std"]) + 1),
                             resp[r["run_id"]]["std"], style="--" if r["family"] == "plain" else "-", marker=None)
                      for r in ctx.results if r["seed"] == 0 and r["depth"] in shown and r["run_id"] in resp]
        f.figures.append(line_figure("Layer responses (He et al. Fig. 7)", "layer (block index)",
                                     "std of the branch's BN output", resp_lines, yscale="log",
                                     caption="Eval-mode BN outputs on test images; seed 0. He et al.: "
                                             "smaller in ResNets than in plain nets, smaller in deeper ResNets."))
        return f


def _responses(ctx) -> dict:
    """Per finished run: the std of each block's last BN output, and their mean."""
    out = {}
    for r in ctx.results:
        if r.get("status") != "finished":
            continue
        model, data = ctx.load(r)
        recs = [x for x in diagnose(model, "responses", data) if x["name"] == "std"]
        stds = [x["value"] for x in recs]
        out[r["run_id"]] = {"std": stds, "mean": sum(stds) / len(stds) if stds else None}
    return out
