"""lesion: residual networks behave like ensembles of shallow paths (Veit, Wilber, Belongie 2016,
arXiv 1605.06431, Fig. 3-6).

A trained ResNet and a plain net are lesioned at test time (``lesion_study``: blocks deleted alone, k deleted
together, k pairs swapped); on the ResNet, ``depthlab.diagnostics.paths`` gives the gradient through paths of
length k. The plain net's depth, the draws per k and the verdicts' thresholds are ours (parameters).
Details: docs/methods.md, section "Lesion and paths (Veit et al. 2016)".
"""
from __future__ import annotations

import math
import statistics

import numpy as np

from depthlab.diagnose_run import diagnose
from depthlab.diagnostics.lesion import lesion_study
from depthlab.experiments.base import (
    REAL_FIT,
    Experiment,
    Findings,
    RunSpec,
    compare,
    fmt_mean_sd,
    line_figure,
    mean_sd,
    panels_figure,
    register,
    series,
    table,
    verdict,
)

FAMILIES = ("plain", "resnet")


def single_increases(study: dict, downsampling: bool) -> list:
    """Error increase over the intact net when each (non-)downsampling block is deleted alone."""
    return [b["error"] - study["intact_error"] for b in study["blocks"] if bool(b["downsampling"]) == downsampling]


def error_vs_k(study: dict) -> list:
    """Mean error after deleting k = 0 (intact), 1, 2, ... blocks."""
    return [study["intact_error"]] + [d["mean_error"] for d in study["delete_k"]]


def largest_jump(study: dict) -> float:
    errs = error_vs_k(study)
    return max((b - a for a, b in zip(errs, errs[1:])), default=math.nan)


def log_slope(ks, magnitude) -> float:
    """Least-squares slope of log(magnitude) over k (k >= 1, positive magnitudes only)."""
    pts = [(k, math.log(m)) for k, m in zip(ks, magnitude) if k >= 1 and m > 0]
    if len(pts) < 2:
        return math.nan
    return float(np.polyfit([k for k, _ in pts], [v for _, v in pts], 1)[0])


@register
class Lesion(Experiment):
    name = "lesion"
    title = "Lesion study: deleting and reordering blocks of residual vs plain networks"
    source = "Veit, Wilber, Belongie 2016, Residual Networks Behave Like Ensembles (arXiv 1605.06431), Fig. 3-6"
    claim = ("Deleting any single block of a CIFAR-10 ResNet-110 at test time barely changes its error "
             "(downsampling blocks matter more); deleting one layer of a plain net sends error to chance; "
             "deleting or reordering k blocks raises error smoothly with k. Gradient magnitude through a path "
             "falls exponentially with its length, so almost all gradient comes from short paths "
             "(5-17 of 54 blocks).")
    expected = ("resnet: median error increase from deleting one non-downsampling block within a few points; "
                "plain: deleting one block sends error near chance; resnet error rises smoothly with k")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "depth": 56, "plain_depth": 20, "max_k": 8, "samples": 10,
                  "n_test": None, "path_batch": 32, "path_samples": 10, "single_tol": 0.03, "ds_gap": 0.01,
                  "chance_fraction": 0.75, "max_jump": 0.1},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT, lesioned on 1,000 test images with 5 draws per k
        "real": {**REAL_FIT, "depth": 56, "plain_depth": 20, "max_k": 8, "samples": 5, "n_test": 1000,
                 "path_batch": 32, "path_samples": 10, "single_tol": 0.03, "ds_gap": 0.01, "chance_fraction": 0.75,
                 "max_jump": 0.1},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depth": 110, "plain_depth": 20, "max_k": 20,
                  "samples": 10, "n_test": None, "path_batch": 32, "path_samples": 10, "single_tol": 0.02,
                  "ds_gap": 0.01,
                  "chance_fraction": 0.75, "max_jump": 0.1},
    }
    smoke = {"depth": 14, "plain_depth": 8, "epochs": 1, "max_k": 2, "samples": 2, "n_test": 64, "path_batch": 8,
             "path_samples": 2}

    def runs(self, p):
        depth = {"resnet": p["depth"], "plain": p["plain_depth"]}
        return [RunSpec(f"{f}{depth[f]}", [f"model.name={f}", f"model.depth={depth[f]}"], {"family": f})
                for f in FAMILIES]

    def analyse(self, ctx) -> Findings:
        p, n, d, dp = ctx.p, len(ctx.seeds), ctx.p["depth"], ctx.p["plain_depth"]
        studies = ctx.measure("lesion", lambda: _lesion_studies(ctx))
        paths = ctx.measure("paths", lambda: _path_gradients(ctx))
        st = {fam: [studies[r["run_id"]] for r in ctx.rows(family=fam) if r["run_id"] in studies] for fam in FAMILIES}
        classes = getattr(ctx.dataset, "num_classes", None) or 10
        chance = 1 - 1 / classes
        f = Findings()

        # 1. resnet: deleting one non-downsampling block barely hurts
        nd = [single_increases(s, False) for s in st["resnet"] if single_increases(s, False)]
        med = [statistics.median(v) for v in nd]
        c = compare([p["single_tol"]] * len(med), med, 0.0)
        f.verdicts.append(verdict(
            f"resnet-{d}: median error increase from deleting one non-downsampling block is <= "
            f"{100 * p['single_tol']:.0f} points", c["holds"],
            f"median increase {fmt_mean_sd(med, 100, unit=' points')} (intact error "
            f"{fmt_mean_sd([s['intact_error'] for s in st['resnet']], 100, unit='%')}, worst non-downsampling "
            f"deletion {fmt_mean_sd([max(v) for v in nd], 100, unit=' points')})",
            n, c["spread"], points=True))
        # 2. resnet: downsampling blocks matter more
        ds = [statistics.mean(single_increases(s, True)) for s in st["resnet"] if single_increases(s, True)]
        c = compare(ds, med, p["ds_gap"])
        f.verdicts.append(verdict(
            f"resnet-{d}: deleting a downsampling block hurts more than a typical block (by >= "
            f"{100 * p['ds_gap']:.0f} points)", c["holds"],
            f"mean increase at downsampling blocks {fmt_mean_sd(ds, 100, unit=' points')}, median elsewhere "
            f"{fmt_mean_sd(med, 100, unit=' points')}", n, c["spread"], points=True))
        # 3. plain: deleting one block sends error near chance
        plain_med = [statistics.median([b["error"] for b in s["blocks"]]) for s in st["plain"] if s["blocks"]]
        c = compare(plain_med, [p["chance_fraction"] * chance] * len(plain_med), 0.0)
        f.verdicts.append(verdict(
            f"plain-{dp}: median error after deleting one block is >= {p['chance_fraction']:.0%} of chance error "
            f"({100 * p['chance_fraction'] * chance:.0f}%)", c["holds"],
            f"median single-deletion error {fmt_mean_sd(plain_med, 100, unit='%')} (intact "
            f"{fmt_mean_sd([s['intact_error'] for s in st['plain']], 100, unit='%')}, chance "
            f"{100 * chance:.0f}%)", n, c["spread"], points=True))
        # 4. resnet: error rises smoothly with k
        jumps = [largest_jump(s) for s in st["resnet"] if s["delete_k"]]
        c = compare([p["max_jump"]] * len(jumps), jumps, 0.0)
        rises = [error_vs_k(s)[-1] - error_vs_k(s)[1] for s in st["resnet"] if len(s["delete_k"]) >= 2]
        holds = False if rises and not mean_sd(rises)[0] > 0 else c["holds"]  # must rise at all
        f.verdicts.append(verdict(
            f"resnet-{d}: error rises smoothly with the number k of deleted blocks (rises from k = 1 to the "
            f"largest k; no step between consecutive k above {100 * p['max_jump']:.0f} points)", holds,
            f"largest step {fmt_mean_sd(jumps, 100, unit=' points')}; error k = 1 -> k = {p['max_k']}: rise "
            f"{fmt_mean_sd(rises, 100, unit=' points')}", n, c["spread"], points=True))
        # 5. paths: gradient magnitude falls with path length, effective paths are short
        pr = [paths[r["run_id"]] for r in ctx.rows(family="resnet") if r["run_id"] in paths]
        slopes = [log_slope(x["ks"], x["magnitude"]) for x in pr]
        c = compare([0.0] * len(slopes), slopes, 0.0)
        f.verdicts.append(verdict(
            f"resnet-{d}: gradient magnitude through a path falls with its length (log-linear slope over k < 0)",
            c["holds"],
            f"slope of ln(magnitude) per block {fmt_mean_sd(slopes, digits=3)}", n, c["spread"]))
        centre = [sum(x["effective_range"]) / 2 for x in pr]
        half = [x["n"] / 2 for x in pr]
        c = compare(half, centre, 0.0)
        f.verdicts.append(verdict(
            f"resnet-{d}: the paths that carry 90% of the gradient are shorter than the typical path "
            f"(centre of the effective range < n/2)", c["holds"],
            "effective range " + ", ".join(f"{x['effective_range'][0]}-{x['effective_range'][1]}" for x in pr)
            + f" of n = {pr[0]['n'] if pr else '-'} blocks (Veit: 5-17 of 54)", n, c["spread"]))

        self._figures(f, ctx, st, pr, chance)
        f.notes.append(f"The plain net has {dp} layers (a well-trained plain net, as Veit et al.'s VGG-like one; "
                       "its depth is our choice). Plain nets are lesioned block by block (two conv layers per block; "
                       "Veit et al. delete one layer). A deleted downsampling block becomes its parameter-free "
                       "subsample + zero-pad shortcut. Path gradients: single-path mode (gradient passes a chosen "
                       "block's branch only, the others' shortcut only), input-gradient norm of the loss, mean "
                       f"over {p['path_batch']} test images and {p['path_samples']} random block sets per k.")
        for s_ in st["resnet"][:1]:  # which single deletion hurts most (seed 0), and what that does to k-deletion
            worst = max(s_["blocks"], key=lambda b: b["error"], default=None)
            if worst is not None and not worst["downsampling"]:
                f.notes.append(
                    f"The most damaging single deletion in resnet-{d} (seed {ctx.seeds[0]}) is block {worst['index']} "
                    f"({worst['name']}, error {100 * worst['error']:.1f}%), not a downsampling block: this net "
                    "relies on that one block, and the k-deletion draws that include it jump in error, which is "
                    "what breaks smoothness in k here."
                    + (" On 8x8 inputs the downsampling blocks map 8x8 to 4x4 and 4x4 to 2x2, a small loss for "
                       "their zero-pad shortcut." if getattr(ctx.dataset, "image_size", None) == (8, 8) else ""))
        if ctx.data_note:
            f.notes.append(ctx.data_note)
        return f

    def _figures(self, f, ctx, st, pr, chance):
        d, n = {"resnet": ctx.p["depth"], "plain": ctx.p["plain_depth"]}, len(ctx.seeds)
        lines, hl = [], [{"y": 100 * chance, "label": "chance"}]
        for fam, style in (("plain", "--"), ("resnet", "-")):
            if not st[fam]:
                continue
            blocks = st[fam][0]["blocks"]
            errs = [mean_sd([s["blocks"][i]["error"] for s in st[fam]]) for i in range(len(blocks))]
            lines.append(series(fam, range(1, len(blocks) + 1), [100 * m for m, _, _ in errs],
                                [100 * sd for _, sd, _ in errs], style=style, marker=None))
            ds = [i for i, b in enumerate(blocks) if b["downsampling"]]
            lines.append(series(f"{fam}: downsampling block", [i + 1 for i in ds], [100 * errs[i][0] for i in ds],
                                style="none", marker="s"))
            hl.append({"y": 100 * mean_sd([s["intact_error"] for s in st[fam]])[0], "label": f"{fam} intact"})
        f.figures.append(line_figure("Test error after deleting one block (Veit Fig. 3)", "deleted block",
                                     "test error (%)", lines, hlines=hl,
                                     caption="Squares mark downsampling blocks; dotted lines: intact nets, chance."))
        kl, trows = [], []
        for fam, style in (("plain", "--"), ("resnet", "-")):
            curves = [error_vs_k(s) for s in st[fam]]
            if not curves:
                continue
            ks = range(min(map(len, curves)))
            ms = [mean_sd([c[k] for c in curves]) for k in ks]
            kl.append(series(fam, ks, [100 * m for m, _, _ in ms], [100 * sd for _, sd, _ in ms], style=style))
        f.figures.append(line_figure("Test error vs number of deleted blocks (Veit Fig. 5a)", "blocks deleted (k)",
                                     "test error (%), mean over draws", kl, hlines=hl[:1]))
        tl = []
        for fam, style in (("plain", "s"), ("resnet", "o")):
            pts = [(t, e) for s in st[fam] for sw in s["swap_k"] for t, e in zip(sw["kendall_tau"], sw["errors"])]
            if pts:
                tl.append(series(fam, [t for t, _ in pts], [100 * e for _, e in pts], style="none", marker=style))
        if tl:
            f.figures.append(line_figure("Test error vs Kendall tau after swapping blocks (Veit Fig. 5b)",
                                         "Kendall tau of the block order (1 = original)", "test error (%)", tl,
                                         hlines=hl[:1], caption="One point per draw of k swapped same-shape pairs."))
        else:
            f.notes.append("No reordering: these nets have fewer than two same-shape blocks in every stage.")
        ks_max = max((len(error_vs_k(s)) for fam in FAMILIES for s in st[fam]), default=0)
        for k in range(ks_max):
            trows.append([k] + [fmt_mean_sd([error_vs_k(s)[k] for s in st[fam] if len(error_vs_k(s)) > k], 100,
                                            unit="%") for fam in FAMILIES])
        f.tables.append(table("Test error after deleting k random blocks",
                              ["k"] + [f"{fam}-{d[fam]}" for fam in FAMILIES], trows,
                              note=f"k = 0: intact; mean over {ctx.p['samples']} draws, mean +- sd over {n} seed(s)"))
        rows = []
        for fam in FAMILIES:
            for s, seed in zip(st[fam], ctx.seeds):
                nd, ds = single_increases(s, False), single_increases(s, True)
                rows.append([f"{fam}-{d[fam]}", seed, f"{100 * s['intact_error']:.1f}%",
                             f"{100 * statistics.median(nd):+.1f}" if nd else "-",
                             f"{100 * max(nd):+.1f}" if nd else "-",
                             ", ".join(f"{100 * v:+.1f}" for v in ds) or "-"])
        f.tables.append(table("Single-block deletion", ["model", "seed", "intact error", "median increase",
                                                        "largest increase", "downsampling blocks"], rows,
                              note="error increases in percentage points over the intact net"))
        if pr:
            x = pr[0]
            f.figures.append(panels_figure("Gradient through paths of length k (Veit Fig. 6, seed 0)", [
                line_figure("gradient magnitude per path", "path length k (blocks)", "input-gradient norm",
                            [series("resnet", x["ks"], x["magnitude"], marker=None)], yscale="log"),
                line_figure("total gradient by path length", "path length k (blocks)", "share of C(n,k) x magnitude",
                            [series("resnet", x["ks"], x["distribution"], marker=None)])], cols=2,
                caption=f"Effective range (90% of the total): {x['effective_range'][0]}-{x['effective_range'][1]} "
                        f"of {x['n']} blocks."))
            f.tables.append(table("Path-length gradient (seed 0)", ["k", "paths C(n,k)", "magnitude", "share"],
                                  [[k, f"{c:.3g}", f"{m:.3g}", f"{100 * s:.1f}%"] for k, c, m, s in
                                   zip(x["ks"], x["counts"], x["magnitude"], x["distribution"])]))


def _lesion_studies(ctx) -> dict:
    out, p = {}, ctx.p
    for r in ctx.results:
        if r.get("status") == "finished":
            ctx.log(f"lesioning {r['run_id']}")
            model, data = ctx.load(r)
            s = lesion_study(model, data, max_k=p["max_k"], samples=p["samples"], n_test=p["n_test"])
            for b in s["blocks"]:
                b.pop("in_shape"), b.pop("out_shape")
            out[r["run_id"]] = s
    return out


def _path_gradients(ctx) -> dict:
    out, p = {}, ctx.p
    for r in ctx.rows(family="resnet"):
        if r.get("status") == "finished":
            ctx.log(f"path gradients of {r['run_id']}")
            model, data = ctx.load(r)
            recs = diagnose(model, "paths", data, options={"paths": {"batch_size": p["path_batch"],
                                                                     "num_samples": p["path_samples"]}})
            v = {x["name"]: x["value"] for x in recs}
            out[r["run_id"]] = {"n": int(v["num_blocks"]), "ks": v["ks"], "magnitude": v["magnitude"],
                                "counts": v["counts"], "distribution": v["distribution"],
                                "effective_range": v["effective_range"]}
    return out
