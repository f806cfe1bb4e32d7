"""looks-linear: CReLU nets with the looks-linear init train at depths where ReLU nets fail
(Balduzzi et al. 2017, The Shattered Gradients Problem, arXiv 1702.08591, Sec. 5 and Fig. 6).

After a CReLU the next weight is [W, -W] with W orthogonal, so the net is exactly linear at init. Variants
(``VARIANTS``): CReLU + LL, ResNet, CReLU with Kaiming init, ReLU plain, linear.
The paper's widths and optimiser settings are unverified; depths, widths and recipe are parameters.
Details: docs/methods.md, section "CReLU and looks-linear initialisation".
"""
from __future__ import annotations

from depthlab.experiments.base import (
    REAL_FIT_AUGMENTED,
    Experiment,
    Findings,
    RunSpec,
    compare,
    curves_figure,
    fmt_mean_sd,
    line_figure,
    mean_sd,
    panels_figure,
    register,
    series,
    table,
    verdict,
)

# name -> (legend label, overrides, uses the CReLU width)
VARIANTS = {
    "crelu-ll": ("CReLU + looks-linear",
                 ["model.name=plain", "model.activation=crelu", "model.init=looks-linear"], True),
    "resnet": ("ResNet", ["model.name=resnet"], False),
    "crelu": ("CReLU, Kaiming init", ["model.name=plain", "model.activation=crelu"], True),
    "relu": ("ReLU plain", ["model.name=plain"], False),
    "linear": ("linear (BN, no ReLU)", ["model.name=plain", "model.activation=linear"], False),
}
PAPER_DEPTHS = {8: 6, 14: 14, 32: 30, 56: 54, 104: 102, 200: 198}


@register
class LooksLinear(Experiment):
    name = "looks-linear"
    title = "Looks-linear init: CReLU nets trained over depth vs ResNet, ReLU and linear nets"
    source = "Balduzzi et al. 2017, The Shattered Gradients Problem (arXiv 1702.08591), Sec. 5, Fig. 6"
    claim = ("On CIFAR-10, over depths 6..198, CReLU networks with looks-linear init keep a test accuracy close to "
             "a ResNet's, while CReLU without LL, plain ReLU and linear networks fall away with depth.")
    expected = ("at the deepest depth: CReLU + LL within a few points of the ResNet; ReLU plain clearly below "
                "CReLU + LL (it collapses with depth)")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "epochs": 12, "depths": [8, 14, 32, 56], "width": 8,
                  "crelu_width": 6, "gap": 0.05, "collapse": 0.10},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT_AUGMENTED (its claims are about test accuracy), the quick
        # scale's narrow nets at its shallowest and deepest depth
        "real": {**REAL_FIT_AUGMENTED, "depths": [8, 56], "width": 8, "crelu_width": 6, "gap": 0.05, "collapse": 0.10},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [8, 14, 32, 56, 104, 200], "width": 16,
                  "crelu_width": 11, "gap": 0.03, "collapse": 0.10},
    }
    smoke = {"depths": [8, 14], "epochs": 1, "width": 4, "crelu_width": 3}
    min_depths = 2

    def runs(self, p):
        out = []
        for d in p["depths"]:
            for v, (_, overrides, crelu) in VARIANTS.items():
                w = p["crelu_width"] if crelu else p["width"]
                extra = [f"model.width={w}"] if w else []
                out.append(RunSpec(f"{v}{d}", overrides + [f"model.depth={d}"] + extra, {"variant": v, "depth": d}))
        return out

    def analyse(self, ctx) -> Findings:
        p, depths, n = ctx.p, ctx.p["depths"], len(ctx.seeds)
        test = {(v, d): ctx.values("test_acc", variant=v, depth=d) for v in VARIANTS for d in depths}
        train = {(v, d): ctx.values("train_acc", variant=v, depth=d) for v in VARIANTS for d in depths}
        D = depths[-1]
        f = Findings()

        def acc(v, d=D):
            return f"{VARIANTS[v][0]} {fmt_mean_sd(test[(v, d)], 100, unit='%')}"

        c = compare(test[("crelu-ll", D)], test[("resnet", D)], -p["gap"])
        f.verdicts.append(verdict(f"at depth {D}, CReLU + LL tracks the ResNet: test accuracy within "
                                  f"{p['gap']:.0%} of it (or above)", c["holds"],
                                  f"test accuracy: {acc('crelu-ll')}, {acc('resnet')}", n, c["spread"], points=True))
        ceiling = linear_ceiling(ctx.dataset)
        room = (f"; a linear classifier on the pixels reaches {ceiling:.1%} test accuracy, so a linear net "
                f"can fall at most {mean_sd(test[('crelu-ll', D)])[0] - ceiling:.1%} below CReLU + LL here"
                if ceiling is not None and test[("crelu-ll", D)] else "")
        for v, what in (("relu", "ReLU plain collapses"), ("crelu", "CReLU without LL falls away"),
                        ("linear", "the linear net falls away")):
            c = compare(test[("crelu-ll", D)], test[(v, D)], p["collapse"])
            extra = room if v == "linear" else ""
            f.verdicts.append(verdict(f"at depth {D}, {what}: test accuracy below CReLU + LL's by >= "
                                      f"{p['collapse']:.0%}", c["holds"],
                                      f"test accuracy: {acc(v)}, {acc('crelu-ll')}; train accuracy "
                                      f"{fmt_mean_sd(train[(v, D)], 100, unit='%')} vs "
                                      f"{fmt_mean_sd(train[('crelu-ll', D)], 100, unit='%')}{extra}", n, c["spread"],
                                      points=True))

        data = ctx.dataset.name if ctx.dataset is not None else p["dataset"]
        note = f"{p['recipe']} recipe on {data}; mean +- sd over {n} seed(s)"
        for title, vals in (("Final test accuracy", test), ("Final training accuracy", train)):
            f.tables.append(table(title, ["variant"] + [f"depth {d}" for d in depths],
                                  [[VARIANTS[v][0]] + [fmt_mean_sd(vals[(v, d)], 100, unit="%") for d in depths]
                                   for v in VARIANTS], note=note))
        f.tables.append(table("Parameters and seconds per epoch", ["variant"] + [f"depth {d}" for d in depths],
                              [[VARIANTS[v][0]] + [_cost(ctx.rows(variant=v, depth=d)) for d in depths]
                               for v in VARIANTS],
                              note=f"width {p['width'] or 'preset'} (CReLU nets {p['crelu_width'] or 'preset'}): "
                                   "comparable parameter budgets"))

        panels = []
        for title, vals in (("test accuracy", test), ("training accuracy", train)):
            lines = []
            for v, (label, _, _) in VARIANTS.items():
                ms = [mean_sd(vals[(v, d)]) for d in depths]
                lines.append(series(label, depths, [100 * m for m, _, _ in ms], [100 * s for _, s, _ in ms],
                                    style="--" if v in ("relu", "linear") else "-"))
            panels.append(line_figure(f"Final {title} vs depth", "depth (weighted layers)", f"{title} (%)", lines,
                                      xscale="log"))
        f.figures.append(panels_figure("Accuracy vs depth (Balduzzi et al. Fig. 6)", panels, cols=2,
                                       caption="Mean +- sd over seeds; the paper's depths 6..198 mapped to 6n+2."))
        runs = {VARIANTS[r["variant"]][0]: r["run_dir"] for v in VARIANTS for r in ctx.rows(variant=v, depth=D, seed=0)}
        f.figures.append(curves_figure(f"Depth {D}: error per epoch (seed 0)", runs))
        mapped = ", ".join(f"{PAPER_DEPTHS[d]} -> {d}" for d in depths if d in PAPER_DEPTHS and PAPER_DEPTHS[d] != d)
        f.notes += [
            "Accuracy is the final test accuracy (as in the paper's Fig. 6, CIFAR-10 test accuracy); final training "
            "accuracy is reported alongside.",
            f"Depths are 6n+2 (the CIFAR layout); the paper's depths map to the nearest valid ones "
            f"({mapped or 'none'}).",
            f"Widths: ReLU, ResNet and linear nets {p['width'] or 'preset'}, CReLU nets {p['crelu_width'] or 'preset'} "
            "(a CReLU doubles the next conv's fan-in; width / sqrt(2) keeps the parameter budgets comparable). "
            "The paper's widths and optimiser settings are unverified.",
            "The linear net is the plain net with every ReLU replaced by the identity (BN kept). Its ceiling is "
            "measured: multinomial logistic regression on the raw pixels (sklearn, at most "
            f"{CEILING_SAMPLES} training images), test accuracy "
            f"{'-' if ceiling is None else format(ceiling, '.1%')}. Where that ceiling is within "
            f"{p['collapse']:.0%} of CReLU + LL (nearly linearly separable data such as digits), the linear net "
            "cannot fall away and its verdict says little about CIFAR-10.",
        ]
        return f


CEILING_SAMPLES = 5000


def linear_ceiling(dataset) -> "float | None":
    """Test accuracy of multinomial logistic regression on the flattened pixels (the best a linear
    classifier of the inputs does, up to regularisation), fit on at most ``CEILING_SAMPLES`` training
    images; None without a dataset."""
    if dataset is None:
        return None
    from sklearn.linear_model import LogisticRegression

    x = dataset.train_x[:CEILING_SAMPLES].flatten(1).cpu().double().numpy()
    y = dataset.train_y[:CEILING_SAMPLES].cpu().numpy()
    model = LogisticRegression(max_iter=2000).fit(x, y)
    return float(model.score(dataset.test_x.flatten(1).cpu().double().numpy(), dataset.test_y.cpu().numpy()))


def _cost(rows) -> str:
    if not rows:
        return "-"
    params = rows[0].get("params")
    m, _, k = mean_sd([r.get("seconds_per_epoch") for r in rows])
    return f"{params:,}; {m:.2f} s" if params and k else (f"{params:,}" if params else "-")
