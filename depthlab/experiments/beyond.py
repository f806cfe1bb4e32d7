"""beyond: remedies that train 1000+ layer networks without batch norm or without shortcuts: Fixup
(Zhang, Dauphin & Ma 2019, arXiv 1901.09321), SkipInit / ReZero (De & Smith 2020, arXiv 2002.10444;
Bachlechner et al. 2020, arXiv 2003.04887; branch times alpha = 0 at init) and delta-orthogonal init of a
vanilla tanh CNN (Xiao et al. 2018, arXiv 1806.05393). Trained over depth against the plain BN + ReLU
baseline (the vanilla net against Gaussian init); initial loss, gradient_flow ratio and Jacobian spectrum at init.
The vanilla nets' training (``vanilla_lr``, ``vanilla_epochs``, no weight decay) and ``sigma_w``, ``sigma_b``
are readings (docs/methods.md). Details: docs/methods.md, section "The vanilla family (Xiao et al.'s setting)".
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from depthlab.config import RunConfig
from depthlab.diagnostics.gradient_flow import gradient_flow, take_batch
from depthlab.diagnostics.jacobian import spectrum_over_depth
from depthlab.experiments.base import (
    Experiment,
    Findings,
    RunSpec,
    compare,
    curves_figure,
    fmt_mean_sd,
    fmt_ratio,
    geo_mean,
    line_figure,
    mean_sd,
    panels_figure,
    register,
    series,
    table,
    verdict,
    within,
)
from depthlab.experiments.highway import train_acc
from depthlab.experiments.remedies import VARIANTS
from depthlab.training.trainer import build_from_config

BASELINE = "plain"
REMEDIES = ("fixup-resnet", "resnet+rezero")  # judged against the BN + ReLU plain baseline
XIAO, XIAO_BASELINE = "vanilla+delta-orthogonal", "vanilla+gaussian"  # Xiao et al.'s setting and baseline
VANILLA = {XIAO: "delta-orthogonal", XIAO_BASELINE: "gaussian"}
EXTRA = "plain+delta-orthogonal"  # BN + ReLU: not Xiao et al.'s setting; shown, never judged
NAMES = (BASELINE,) + REMEDIES + (XIAO, XIAO_BASELINE, EXTRA)
# the vanilla nets' scales (a reading of "near sigma_w^2 = 1 with a small sigma_b^2": sigma_w^2 = 1.05,
# sigma_b^2 = 2e-5), training (small lr, no weight decay) and the thresholds of their verdicts
XIAO_PARAMS = {"sigma_w": 1.0247, "sigma_b": 0.00448, "vanilla_lr": 0.001, "vanilla_trains": 0.9, "near_chance": 0.2,
               "vanilla_ratio_bound": 10.0, "spectrum_depths": [10, 30, 100, 300, 1202], "spread_factor": 100.0}


@register
class Beyond(Experiment):
    name = "beyond"
    title = "Beyond BN and shortcuts: Fixup, ReZero and delta-orthogonal init at 1000+ layers"
    source = ("Zhang et al. 2019 Fixup (arXiv 1901.09321); De & Smith 2020 SkipInit (arXiv 2002.10444) / "
              "Bachlechner et al. 2020 ReZero (arXiv 2003.04887); Xiao et al. 2018 delta-orthogonal (arXiv 1806.05393)")
    claim = ("Residual nets without normalisation (Fixup) or with a zero-initialised scalar per branch "
             "(SkipInit/ReZero) train at 1000 to 10,000 layers; vanilla CNNs without BN or shortcuts train at "
             "10,000 layers with delta-orthogonal init (tanh), where Gaussian init at the same scales fails, and "
             "their input-output Jacobian stays well conditioned with depth. Fixup's initial loss is ln(classes).")
    expected = ("Fixup and ReZero train at the deepest depth (well above chance, above the plain baseline) and keep "
                "the backward error ratio near 1 at init where the plain net's explodes; Fixup starts at loss ln 10; "
                "the delta-orthogonal vanilla tanh net reaches >= 90% training accuracy at the deepest depth with a "
                "ratio within [1/10, 10] at init, the Gaussian one stays near chance; the Gaussian net's Jacobian "
                "spectrum spreads with depth far more than the delta-orthogonal net's")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "epochs": 6, "depths": [20, 110, 1202], "width": 8,
                  "deepest_epochs": 8, "above_chance": 0.3, "gap": 0.1, "ratio_bound": 100.0, "probe_batch": 128,
                  **XIAO_PARAMS, "vanilla_epochs": 20, "vanilla_width": 16, "vanilla_strided": 0},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [20, 110, 1202], "width": None,
                  "deepest_epochs": None, "above_chance": 0.3, "gap": 0.1, "ratio_bound": 100.0, "probe_batch": 128,
                  **XIAO_PARAMS, "vanilla_epochs": None, "vanilla_width": None, "vanilla_strided": 2},
    }
    smoke = {"depths": [8, 14], "epochs": 1, "deepest_epochs": 1, "vanilla_epochs": 1, "width": 4, "vanilla_width": 4,
             "probe_batch": 32,
             "spectrum_depths": [4, 8]}

    def runs(self, p):
        specs = []
        for d in p["depths"]:
            deepest = d == max(p["depths"]) and p.get("deepest_epochs")
            for v in NAMES:
                if v in VANILLA:  # its own budget at every depth
                    epochs = [f"train.epochs={p['vanilla_epochs']}"] if p.get("vanilla_epochs") else []
                else:
                    epochs = [f"train.epochs={p['deepest_epochs']}"] if deepest else []
                specs.append(RunSpec(f"{v}{d}", _model_overrides(v, d, p) + epochs, {"variant": v, "depth": d}))
        return specs

    def analyse(self, ctx) -> Findings:
        p, depths, n = ctx.p, sorted(ctx.p["depths"]), len(ctx.seeds)
        classes = ctx.dataset.num_classes if ctx.dataset is not None else 10
        chance, deep = 1.0 / classes, depths[-1]
        acc = {(v, d): train_acc(ctx, variant=v, depth=d) for v in NAMES for d in depths}
        init = ctx.measure("init", lambda: _init_signal(ctx), key=[p["width"], p["probe_batch"]])
        ratio = {(v, d): [init[f"{v}{d}-s{s}"]["ratio"] for s in ctx.seeds] for v in NAMES for d in depths}
        loss0 = {(v, d): [init[f"{v}{d}-s{s}"]["loss"] for s in ctx.seeds] for v in NAMES for d in depths}
        pct = lambda v: fmt_mean_sd(v, 100, unit="%")  # noqa: E731
        f = Findings()
        for v in REMEDIES:  # 1. trains at the deepest depth
            c1 = compare(acc[(v, deep)], [chance] * len(acc[(v, deep)]), p["above_chance"])  # seeds decide
            c2 = compare(acc[(v, deep)], acc[(BASELINE, deep)], p["gap"])
            f.verdicts.append(verdict(
                f"{v} trains at depth {deep}: training accuracy >= chance + {p['above_chance']:.0%} and >= the "
                f"plain baseline + {p['gap']:.0%}", _all(c1["holds"], c2["holds"]),
                f"{v}-{deep} {pct(acc[(v, deep)])}, plain-{deep} {pct(acc[(BASELINE, deep)])}, chance "
                f"{chance:.0%}", n, max(c1["spread"], c2["spread"]), points=True))
        bounded = {v: within(ratio[(v, deep)], p["ratio_bound"]) for v in NAMES}
        f.verdicts.append(verdict(  # 2. the plain baseline's error explodes (or vanishes) at init
            f"at init the plain baseline's gradient ratio at depth {deep} is outside [1/{p['ratio_bound']:g}, "
            f"{p['ratio_bound']:g}] (the error explodes or vanishes on its way down)", _not(bounded[BASELINE][0]),
            f"first/last error RMS ratio of plain-{deep}: {fmt_ratio(ratio[(BASELINE, deep)])}", n,
            bounded[BASELINE][1]))
        for v in REMEDIES:  # 3. the init-time signal of each remedy
            f.verdicts.append(verdict(
                f"at init {v}'s gradient ratio at depth {deep} is within [1/{p['ratio_bound']:g}, "
                f"{p['ratio_bound']:g}]", bounded[v][0],
                f"{v}-{deep} {fmt_ratio(ratio[(v, deep)])} (plain-{deep} {fmt_ratio(ratio[(BASELINE, deep)])})",
                n, bounded[v][1]))
        fix = [x for d in depths for x in loss0[("fixup-resnet", d)]]
        off = [abs(x - math.log(classes)) for x in fix]  # every depth and seed, as the claim says
        f.verdicts.append(verdict(
            f"Fixup's initial loss is ln({classes}) = {math.log(classes):.4f} (within 0.01) at every depth",
            all(x <= 0.01 for x in off) if off else None,
            "initial loss " + ", ".join(f"fixup-{d} {fmt_mean_sd(loss0[('fixup-resnet', d)], digits=4)}"
                                        for d in depths), n))
        spectra = ctx.measure("spectrum", lambda: _spectra(ctx), key=[p["width"], p["spectrum_depths"]])
        f.verdicts += _xiao_verdicts(p, acc, ratio, spectra, chance, deep, n)

        rows, irows = [], []
        for v in NAMES:
            for d in depths:
                rs = ctx.rows(variant=v, depth=d)
                rows.append([f"{v}-{d}", rs[0].get("params") if rs else "-", pct(acc[(v, d)]),
                             pct(ctx.values("test_acc", variant=v, depth=d)),
                             ", ".join(sorted({str(r.get("epoch")) for r in rs})),
                             fmt_mean_sd([r.get("seconds_per_epoch") for r in rs], digits=1),
                             ", ".join(sorted({r["status"] for r in rs}))])
                after = any(init[f"{v}{d}-s{s}"]["after_step"] for s in ctx.seeds)
                irows.append([f"{v}-{d}", fmt_mean_sd(loss0[(v, d)], digits=3), fmt_ratio(ratio[(v, d)])
                              + (" (after 1 step)" if after else "")])
        f.tables.append(table("Final training and test accuracy", ["model", "params", "train acc", "test acc",
                                                                   "epochs", "s / epoch", "status"], rows,
                              note=f"{p['recipe']} recipe on {ctx.dataset.name if ctx.dataset else '-'}; mean +- sd "
                                   f"over {n} seed(s); a diverged run counts as chance"))
        f.tables.append(table("At initialisation", ["model", "initial loss", "gradient ratio first/last tap"], irows,
                              note=f"one batch of {p['probe_batch']} training images, BN in batch mode "
                                   f"(depthlab.diagnostics.gradient_flow); seed(s) {ctx.seeds}"))
        styles = {BASELINE: "--"}
        acc_lines, ratio_lines = [], []
        for v in NAMES:
            ms = [mean_sd(acc[(v, d)]) for d in depths]
            acc_lines.append(series(v, depths, [100 * m for m, _, _ in ms], [100 * s for _, s, _ in ms],
                                    style=styles.get(v, "-")))
            ratio_lines.append(series(v, depths, [geo_mean(ratio[(v, d)]) for d in depths], style=styles.get(v, "-")))
        f.figures.append(line_figure("Training accuracy vs depth", "depth (weighted layers)",
                                     "final training accuracy (%)", acc_lines, xscale="log",
                                     hlines=[{"y": 100 * chance, "label": "chance"}],
                                     caption=f"Deepest depth trained {p.get('deepest_epochs') or 'all'} epoch(s); "
                                             "plain baseline dashed."))
        f.figures.append(line_figure("Gradient ratio at init vs depth", "depth (weighted layers)",
                                     "backward error RMS, first tap / last tap", ratio_lines, xscale="log",
                                     yscale="log", hlines=[{"y": 1, "label": "no growth"}],
                                     caption="Geometric mean over seeds; a float32 overflow is not drawn; Fixup "
                                             "read after one SGD step (its zero classifier passes no gradient at "
                                             "init)."))
        f.figures.append(_spectrum_figure(spectra))
        f.figures.append(curves_figure(f"Depth {deep}: error per epoch (seed 0)",
                                       {f"{v}-{deep}": r["run_dir"] for v in NAMES
                                        for r in ctx.rows(variant=v, depth=deep, seed=0)}))
        f.notes += [
            "Xiao et al.'s setting is the vanilla rows: conv + tanh, no BN, no shortcuts, "
            f"sigma_w = {p['sigma_w']:g}, sigma_b = {p['sigma_b']:g} (our reading of 'near sigma_w^2 = 1 with a "
            f"small sigma_b^2'), trained {p.get('vanilla_epochs') or 'the recipe'} epochs at every depth with lr "
            f"{p['vanilla_lr']:g} and no weight decay "
            "(weight decay shrinks 1000 layers' weights below the critical scale); the paper's optimiser "
            "settings are not known to us. 'vanilla+gaussian' is the same net and training with Gaussian init "
            "N(0, sigma_w^2 / fan_in) at the same scales.",
            f"'{EXTRA}' (extra, not judged) is delta-orthogonal init of a BN + ReLU plain net, not Xiao et al.'s "
            "setting: batch norm makes the backward error grow geometrically with depth at init (Yang et al. 2019), "
            "which the orthogonal kernels do not undo. It is trained like the plain baseline.",
            f"Width {p.get('width') or 'default (16)'} for every net but the vanilla ones "
            f"({p.get('vanilla_width') or p.get('width') or 'default (16)'}); depths < {deep} train "
            f"{p.get('epochs') or 'the recipe'} epoch(s), depth {deep} trains {p.get('deepest_epochs') or 'the same'} "
            f"epoch(s) with the {p['recipe']} recipe's schedule compressed into them: a short trainability check, "
            f"not the papers' full schedules.",
            "Gradient ratio: depthlab.diagnostics.gradient_flow's error_rms first/last tap ratio on a fresh net "
            "(seeded per seed). Fixup's zero-init classifier gives exactly zero error everywhere at init, so for "
            "nets whose ratio is undefined the ratio is read after one SGD step (lr 0.1) on the same batch.",
            "Fixup is trained as the authors' reference code trains it: the scalar biases, multipliers and the "
            "classifier bias at a tenth of the learning rate in their own optimiser groups (methods.fixup_scalar_lr, "
            "0.1), SGD momentum without Nesterov. Without the lr/10 the 600 bias2b scalars of a 1202-layer net get "
            "near-identical gradients, move in lockstep and kill every final feature (a constant output): that "
            "collapse was ours, not the method's.",
        ]
        return f


def _model_overrides(variant: str, depth: int, p: dict) -> list:
    """The remedy's config preset at ``depth`` (and ``p["width"]`` channels when set); the vanilla
    nets with the experiment's scales, strides, learning rate and no weight decay."""
    if variant in VANILLA:
        head = ["model.name=vanilla", f"model.init={VANILLA[variant]}", f"model.sigma_w={p['sigma_w']}",
                f"model.sigma_b={p['sigma_b']}", f"model.strided={p['vanilla_strided']}",
                f"train.lr={p['vanilla_lr']}", "train.weight_decay=0"]
        width = p.get("vanilla_width") or p.get("width")
    else:
        head, width = VARIANTS[variant][1], p.get("width")
    return head + [f"model.depth={depth}"] + ([f"model.width={width}"] if width else [])


def _xiao_verdicts(p, acc, ratio, spectra, chance, deep, n) -> list:
    """Xiao et al.'s claims: the delta-orthogonal vanilla net trains where the Gaussian one does not,
    its error ratio at init stays near 1, and its Jacobian spectrum spreads far less with depth."""
    pct = lambda v: fmt_mean_sd(v, 100, unit="%")  # noqa: E731
    bound, out = p["vanilla_ratio_bound"], []
    c = compare(acc[(XIAO, deep)], [p["vanilla_trains"]] * n, 0)
    out.append(verdict(f"the vanilla tanh net with delta-orthogonal init trains at depth {deep} (training accuracy "
                       f">= {p['vanilla_trains']:.0%})", c["holds"], f"{XIAO}-{deep} {pct(acc[(XIAO, deep)])}",
                       n, c["spread"], points=True))
    c = compare([chance + p["near_chance"]] * n, acc[(XIAO_BASELINE, deep)], 0)
    out.append(verdict(f"the same net with Gaussian init at the same scales stays near chance at depth {deep} "
                       f"(< chance + {p['near_chance']:.0%})", c["holds"],
                       f"{XIAO_BASELINE}-{deep} {pct(acc[(XIAO_BASELINE, deep)])}, chance {chance:.0%}", n,
                       c["spread"], points=True))
    holds, spread = within(ratio[(XIAO, deep)], bound)
    out.append(verdict(f"at init {XIAO}'s gradient ratio at depth {deep} is within [1/{bound:g}, {bound:g}]", holds,
                       f"{XIAO}-{deep} {fmt_ratio(ratio[(XIAO, deep)])} ({XIAO_BASELINE}-{deep} "
                       f"{fmt_ratio(ratio[(XIAO_BASELINE, deep)])})", n, spread))
    seeds = sorted(spectra[XIAO])
    last = {v: [spectra[v][s][-1] for s in seeds] for v in VANILLA}
    factors = [g["spread"] / d["spread"] for g, d in zip(last[XIAO_BASELINE], last[XIAO])]
    ok = [f >= p["spread_factor"] for f in factors]
    out.append(verdict(
        f"at init the Gaussian vanilla net's Jacobian spectrum is spread (max / min singular value) at least "
        f"{p['spread_factor']:g}x wider than the delta-orthogonal net's at depth {last[XIAO][0]['depth']}",
        all(ok) if len(set(ok)) == 1 else None,
        "; ".join(f"{v}: spread {_join(last[v], 'spread')}, median {_join(last[v], 'q0.5')}" for v in VANILLA),
        len(seeds)))
    return out


def _join(rows, key) -> str:
    return ", ".join(f"{r[key]:.3g}" for r in rows)


def _spectra(ctx) -> dict:
    """Per vanilla variant and seed: ``spectrum_over_depth`` of fresh nets on 4 test images."""
    p = ctx.p
    x = ctx.dataset.test_x[:4].float()
    out = {}
    for v in VANILLA:
        out[v] = {}
        for seed in ctx.seeds:
            def build(d, v=v, seed=seed):
                torch.manual_seed(seed)
                cfg = RunConfig().with_overrides(_model_overrides(v, d, p))
                return build_from_config(cfg, ctx.dataset.num_classes, ctx.dataset.in_channels)
            with torch.random.fork_rng():
                out[v][str(seed)] = spectrum_over_depth(build, p["spectrum_depths"], x)
            ctx.log(f"spectrum {v} seed {seed}: " + ", ".join(f"{r['depth']}: spread {r['spread']:.3g}"
                                                              for r in out[v][str(seed)]))
    return out


def _spectrum_figure(spectra) -> dict:
    panels = []
    for key, what in (("q0.5", "median singular value"), ("spread", "spread (max / min)")):
        lines = [series(v, [r["depth"] for r in by_seed["0"]], [r[key] for r in by_seed["0"]],
                        style="--" if v == XIAO_BASELINE else "-") for v, by_seed in spectra.items() if "0" in by_seed]
        panels.append(line_figure(what, "depth (weighted layers)", what, lines, xscale="log", yscale="log"))
    return panels_figure("Dynamical isometry: the vanilla net's feature-Jacobian spectrum at init over depth", panels,
                         cols=2, caption="Singular values of d(last feature map) / d(input) at 4 test images, fresh "
                                         "nets (seed 0); Gaussian dashed. Isometry: median near 1, small spread.")


def _init_signal(ctx) -> dict:
    """Per variant, depth and seed: initial loss and gradient_flow error-RMS ratio (first tap / last
    tap) of a freshly initialised net (inf when the backward error overflows float32); where no error
    reaches the body (Fixup's zero classifier) it is read again after one plain SGD step on the same batch."""

    out = {}
    for d in ctx.p["depths"]:
        for v in NAMES:
            for s in ctx.seeds:
                with torch.random.fork_rng():
                    torch.manual_seed(s)
                    model = build_from_config(RunConfig().with_overrides(_model_overrides(v, d, ctx.p)),
                                              ctx.dataset.num_classes, ctx.dataset.in_channels)
                x, y = take_batch(ctx.dataset, "train", ctx.p["probe_batch"], model)
                g = gradient_flow(model, x, y)
                row = {"loss": g.loss, "ratio": g.error_ratio, "after_step": False}
                if not all(map(math.isfinite, g.error_rms)):  # the backward error overflowed float32
                    row["ratio"] = math.inf
                elif g.error_rms[-1] == 0:  # no error reaches the body (Fixup's zero classifier)
                    opt = torch.optim.SGD(model.parameters(), lr=0.1)
                    model.train()
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                    row.update(ratio=gradient_flow(model, x, y).error_ratio, after_step=True)
                out[f"{v}{d}-s{s}"] = row
                ctx.log(f"init {v}-{d} seed {s}: loss {row['loss']:.3f}, ratio {row['ratio']:.3g}")
    return out


def _all(*holds):
    return False if any(h is False for h in holds) else None if any(h is None for h in holds) else True


def _not(h):
    return None if h is None else not h
