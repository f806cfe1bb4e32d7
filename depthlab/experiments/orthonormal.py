"""orthonormal: deep plain networks trained with an orthonormality regulariser among filters (and
backward error modulation) train far better than plain ones and close to residual networks of the
same depth (Xie, Xiong, Pu 2017, "All You Need is Beyond a Good Init", arXiv 1703.01827).

Regulariser ``lambda/2 sum ||W W^T - I||_F^2`` in place of weight decay on conv weights; plain nets are
``xie-plain``. lambda, the modulation reading and schedule and the init are unverified readings, kept as
parameters (docs/methods.md). Details: docs/methods.md, section "Backward error modulation".
"""
from __future__ import annotations

import json
import math

from depthlab.config import RunConfig
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
from depthlab.experiments.firststeps import describe, first_steps
from depthlab.experiments.remedies import VARIANTS as REMEDIES
from depthlab.methods import orthonormality_per_layer
from depthlab.training.trainer import resolve_device

VARIANTS = ("plain", "plain+orthonormal", "plain+orthonormal+modulation", "resnet")
REMEDIED = VARIANTS[1:3]


@register
class Orthonormal(Experiment):
    name = "orthonormal"
    title = "Orthonormality and error modulation: plain nets that train like resnets"
    source = "Xie, Xiong, Pu 2017, All You Need is Beyond a Good Init (arXiv 1703.01827)"
    claim = ("Plain 44- and 110-layer nets of Conv-BN-ReLU triples, trained with an orthonormality regulariser "
             "among filters (instead of weight decay) and backward error modulation, train much better than "
             "plain nets and match their residual counterparts on CIFAR-10 and ImageNet.")
    expected = ("at every depth, plain+orthonormal (and plain+orthonormal+modulation) reach a clearly higher "
                "training accuracy than plain, and come within a small gap of the resnet of the same depth")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "epochs": 36, "depths": [44, 110], "width": None,
                  "plain_family": "xie-plain", "lam": 1e-3, "modulation": "top-conv",
                  "other_readings": ["fc"], "init": None, "probe_steps": 30, "gap": 0.05, "near": 0.05},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT, the 44-layer nets at the paper's widths, the default reading only
        "real": {**REAL_FIT, "depths": [44], "width": None,
                 "plain_family": "xie-plain", "lam": 1e-3, "modulation": "top-conv",
                 "other_readings": [], "init": None, "probe_steps": 30, "gap": 0.05, "near": 0.05},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depths": [44, 110], "width": None,
                  "plain_family": "xie-plain", "lam": 1e-3, "modulation": "top-conv",
                  "other_readings": ["fc"], "init": None, "probe_steps": 30, "gap": 0.02, "near": 0.02},
    }
    smoke = {"depths": [8], "epochs": 1, "width": 4, "other_readings": [], "probe_steps": 3}

    def runs(self, p):
        specs = []
        for d in _depths(p):
            for v in _variants(p):
                specs.append(RunSpec(f"{v}{d}", _overrides(v, d, p), {"variant": v, "depth": d}))
        return specs

    def analyse(self, ctx) -> Findings:
        p, depths, n = ctx.p, _depths(ctx.p), len(ctx.seeds)
        vs = _variants(p)
        chance = 1.0 / ctx.dataset.num_classes if ctx.dataset is not None else 0.1
        acc = {(v, d): _train_acc(ctx, chance, variant=v, depth=d) for v in vs for d in depths}
        test = {(v, d): ctx.values("test_acc", variant=v, depth=d) for v in vs for d in depths}
        ortho = ctx.measure("filter_orthonormality", lambda: _orthonormality(ctx))
        f = Findings()

        def pct(v, d):
            return f"{fmt_mean_sd(acc[(v, d)], 100, unit='%')}{_flag(ctx, v, d)}"

        for d in depths:  # per depth: each remedy beats plain by >= gap, and comes within `near` of the resnet
            for v in REMEDIED:
                c = compare(acc[(v, d)], acc[("plain", d)], p["gap"])
                f.verdicts.append(verdict(
                    f"{v}-{d} trains better than plain-{d} by >= {p['gap']:.0%} (train accuracy)", c["holds"],
                    f"plain {pct('plain', d)}, {v} {pct(v, d)}", n, c["spread"], points=True))
            for v in REMEDIED:
                c = compare(acc[(v, d)], acc[("resnet", d)], -p["near"])
                f.verdicts.append(verdict(
                    f"{v}-{d} comes within {p['near']:.0%} of resnet-{d} (train accuracy)", c["holds"],
                    f"resnet {pct('resnet', d)}, {v} {pct(v, d)}", n, c["spread"], points=True))

        rows = []
        for d in depths:
            for v in vs:
                rs = ctx.rows(variant=v, depth=d)
                res = [ortho[r["run_id"]] for r in rs if r["run_id"] in ortho]
                rows.append([f"{v}-{d}", rs[0].get("params") if rs else "-",
                             fmt_mean_sd([1 - a for a in acc[(v, d)]], 100, unit="%"),
                             fmt_mean_sd([1 - a for a in test[(v, d)]], 100, unit="%"),
                             _fmt_g(res), fmt_mean_sd([r.get("seconds_per_epoch") for r in rs], digits=2),
                             ", ".join(sorted({r["status"] for r in rs}))])
        data = ctx.dataset.name if ctx.dataset else "-"
        f.tables.append(table("Final training and test error", ["model", "params", "train error", "test error",
                                                                "mean ||WW^T - I||_F", "s / epoch", "status"], rows,
                              note=f"{p['recipe']} recipe on {data}; plain variants use {p['plain_family']}; "
                                   f"mean +- sd over {n} seed(s); diverged runs count as chance "
                                   f"({chance:.0%}) in the training error; ||WW^T - I||_F is the mean over conv "
                                   f"layers of the trained filters' distance from orthonormality"))

        lines = []
        for v in vs:
            ms = [mean_sd(acc[(v, d)]) for d in depths]
            lines.append(series(v, depths, [100 * (1 - m) for m, _, _ in ms], [100 * s for _, s, _ in ms],
                                style="-" if v == "resnet" else "--"))
        f.figures.append(line_figure("Training error vs depth", "depth (weighted layers)", "final training error (%)",
                                     lines, xscale="log", hlines=[{"y": 100 * (1 - chance), "label": "chance"}],
                                     caption="Plain variants dashed; diverged runs are drawn at chance."))
        for d in depths:
            runs = {v: r["run_dir"] for v in vs for r in ctx.rows(variant=v, depth=d, seed=ctx.seeds[0])}
            f.figures.append(curves_figure(f"Depth {d}: error per epoch (seed {ctx.seeds[0]})", runs))
        f.notes += [
            f"Plain variants use the {p['plain_family']} family: Conv-BN-ReLU triples with no shortcuts, as in Xie "
            "et al.; the same layers as He et al.'s plain nets. The resnet baseline is He et al.'s resnet.",
            f"The regulariser's constant (lambda = {p['lam']:g}, replacing weight decay on conv weights) and the "
            f"modulation rule (reference '{p['modulation']}', applied in every epoch) are unverified readings of the "
            "paper (docs/methods.md); both are parameters (lam, modulation, set=methods.modulation_epochs=N). The "
            "verdicts use the modulation reading " + repr(p["modulation"]) + "; the table and plots also show "
            + (", ".join(repr(r) for r in p.get("other_readings") or []) or "no other reading")
            + " (other_readings). 'next' equals 'top-conv' exactly in these chains of layers, so it is not run. "
            + (f"Orthonormal variants start from {p['init']} init (init)." if p.get("init") else
               "Every net starts from the family's He init (init=orthogonal gives the orthonormal variants "
               "orthogonal init, which a published summary pairs with the regulariser)."),
            "A diverged run is a result: its status says so and it counts as not trained (chance accuracy) in the "
            "verdicts, the table and the depth plot.",
            "Earlier single-seed result at depth 56 on digits (docs/remedies.md, plain He et al. net, width 16): "
            "plain 56.7%, plain+orthonormal 69.3%, plain+orthonormal+modulation diverged (train accuracy).",
        ]
        diverged = [f"{r['variant']}-{r['depth']} seed {r['seed']} (epoch {r.get('epoch')})"
                    for r in ctx.results if r["status"] == "diverged"]
        if diverged:
            f.notes.append("Diverged (loss not finite; epoch where it happened): " + ", ".join(diverged) + ". "
                           f"Divergence depends on the {p['recipe']} recipe's learning rate and on the unverified "
                           "lambda and modulation rule; set=train.lr=... or lam=... probe that.")
        grads = ctx.measure("init_gradients", lambda: _init_gradients(ctx))
        if grads:
            f.tables.append(table(
                "Gradients at initialisation (plain net, one batch of 128, BN in train mode)",
                ["depth", "first-layer weight-grad norm", "last-layer weight-grad norm", "first / last"],
                [[d, g["first"], g["last"], g["ratio"]] for d, g in sorted(grads.items(), key=lambda kv: int(kv[0]))],
                note="depthlab.diagnostics gradient_flow on the plain variant's initial weights (seed "
                     f"{ctx.seeds[0]})."))
        deep = depths[-1]
        probe = ctx.measure("first_steps", lambda: _first_steps(ctx, deep), key=p.get("probe_steps"))
        if probe:
            f.tables.append(table(
                f"The first {p.get('probe_steps')} SGD steps at depth {deep}, replayed and measured",
                ["variant", "what happened"], [[v, describe(rows)] for v, rows in probe.items()],
                note="depthlab.experiments.firststeps: each run's initial weights, optimiser groups, methods and "
                     "schedule, on seeded random batches; gradient ratio = first / last conv weight-gradient norm "
                     "as the optimiser applies it; filter norm = Frobenius norm of a conv weight."))
            f.figures.append(line_figure(
                f"Depth {deep}: mean conv filter norm over the first steps", "SGD step", "mean ||W||_F",
                [series(v, [r["step"] for r in rows], [r["filter_norm_mean"] for r in rows])
                 for v, rows in probe.items()],
                yscale="log", caption="Stops where the loss stopped being finite."))
            f.notes.append(f"Why a deep run fails, measured (first {p.get('probe_steps')} steps at depth {deep}): "
                           + "; ".join(f"{v}: {describe(rows)}" for v, rows in probe.items()) + ".")
            mechanism = _mechanism(probe)
            if mechanism:
                f.notes.append(mechanism)
        if p.get("epochs"):
            f.notes.append(f"Every run trains {p['epochs']} epochs (the {p['recipe']} recipe's schedule over that many "
                           "epochs): on digits plain+orthonormal+modulation-44 reached 92.6 +- 5.0% training "
                           "accuracy after 12 epochs and 99.9 to 100.0% after 36 (3 seeds, the calibration).")
        if p.get("width"):
            f.notes.append(f"Width {p['width']} (channels {p['width']}/{2 * p['width']}/{4 * p['width']}) instead of "
                           "the paper's 16/32/64.")
        return f


def _init_gradients(ctx) -> dict:
    """Per depth: weight-grad norms of the first and last parametric layer of the plain variant at
    initialisation (its run's config, initial weights)."""
    out = {}
    for r in ctx.results:
        if r["variant"] != "plain" or r["seed"] != ctx.seeds[0] or str(r["depth"]) in out:
            continue
        model, data = ctx.load(r, checkpoint="init")
        records = diagnose(model, "gradient_flow", data)
        recs = {x["name"]: x["value"] for x in records if x["layer"] is None}
        norms = [x["value"] for x in records if x["name"] == "weight_grad_norm"]
        out[str(r["depth"])] = {"first": norms[0], "last": norms[-1], "ratio": recs["weight_grad_first_last_ratio"]}
    return out


def _first_steps(ctx, depth: int) -> dict:
    """``{variant: first_steps rows}`` of every plain variant at ``depth``, seed ``ctx.seeds[0]``: the bare
    plain net is the reference that tells the regulariser's part from the net's own."""
    out = {}
    for v in _variants(ctx.p):
        rs = ctx.rows(variant=v, depth=depth, seed=ctx.seeds[0]) if v != "resnet" else []
        if rs and ctx.dataset is not None:
            cfg = RunConfig.from_dict(json.loads((ctx.run_dir(rs[0]) / "config.json").read_text()))
            out[v] = first_steps(cfg, ctx.dataset, int(ctx.p.get("probe_steps") or 0),
                                 device=str(resolve_device(ctx.device)))
    return {v: rows for v, rows in out.items() if rows}


def _mechanism(probe: dict):
    """A sentence from the replay when it shows the mechanism of a regularised variant's divergence: the bare
    plain net's first step inflates its filters >= 10x and it stays finite, while a regularised variant's loss
    stops being finite; None otherwise."""
    plain = probe.get("plain") or []
    failed = [v for v, rows in probe.items() if v != "plain" and len(rows) > 1 and not rows[-1]["finite"]
              and rows[0].get("penalty") is not None]  # the claim is about the regulariser's penalty
    if len(plain) < 2 or not plain[-1]["finite"] or not failed:
        return None
    a, b = plain[0]["filter_norm_mean"], plain[1]["filter_norm_mean"]
    if b < 10 * a:
        return None
    pens = "; ".join(f"{v}: {probe[v][0]['penalty']:.3g} -> {probe[v][1]['penalty']:.3g} after one step, loss not "
                     f"finite at step {probe[v][-1]['step']}" for v in failed)
    return (f"Measured mechanism: the first SGD step inflates the filters of the bare plain net too (mean norm {a:.3g} "
            f"-> {b:.3g}; first/last gradient ratio {plain[0].get('grad_ratio', math.nan):.3g} at step 0). BN makes "
            "that net invariant to its filters' scale, so it stays finite and its effective step size shrinks "
            "instead; the orthonormality penalty is quartic in the filters and its gradient cubic, so the same "
            f"inflation makes it overflow ({pens}).")


def _depths(p) -> list:
    d = p["depths"]
    return [int(x) for x in (d if isinstance(d, (list, tuple)) else [d])]


def _variants(p) -> list:
    """The grid's variants: the four of the verdicts, then the orthonormal + modulation variant under each
    of ``other_readings`` (``plain+orthonormal+modulation[fc]``)."""
    return list(VARIANTS[:3]) + [f"{VARIANTS[2]}[{r}]" for r in p.get("other_readings") or []] + [VARIANTS[3]]


def _overrides(variant: str, depth: int, p: dict) -> list:
    """The remedies preset, with the faithful plain family and this experiment's constants."""
    base, _, reading = variant.partition("[")
    out = [f"model.name={p['plain_family']}" if o == "model.name=plain" else o for o in REMEDIES[base][1]]
    out = [o for o in out if not o.startswith("methods.modulation=")]
    out.append(f"model.depth={depth}")
    if p.get("width"):
        out.append(f"model.width={p['width']}")
    if "orthonormal" in variant:
        out.append(f"methods.orthonormal={p['lam']}")
    if "modulation" in variant:
        out.append(f"methods.modulation={reading.rstrip(']') or p['modulation']}")
    if p.get("init") and "orthonormal" in variant:
        out.append(f"model.init={p['init']}")
    return out


def _train_acc(ctx, chance: float, **labels) -> list:
    """Training accuracy per seed; a diverged run counts as chance, a failed one as missing (nan)."""
    return [chance if r["status"] == "diverged" else (math.nan if r.get("train_acc") is None else r["train_acc"])
            for r in ctx.rows(**labels)]


def _flag(ctx, variant: str, depth: int) -> str:
    k = sum(r["status"] == "diverged" for r in ctx.rows(variant=variant, depth=depth))
    return f" ({k} diverged)" if k else ""


def _orthonormality(ctx) -> dict:
    """Per finished run: the mean over conv layers of ||W W^T - I||_F of the trained filters."""
    out = {}
    for r in ctx.results:
        if r.get("status") == "finished":
            model, _ = ctx.load(r)
            norms = list(orthonormality_per_layer(model).values())
            out[r["run_id"]] = sum(norms) / len(norms)
    return out


def _fmt_g(values) -> str:
    """Mean (+- sd) to 3 significant digits: the residuals span 1 to 1e8 when a plain net blows up."""
    m, sd, k = mean_sd(values)
    return "-" if k == 0 else (f"{m:.3g}" if k == 1 else f"{m:.3g} +- {sd:.2g}")
