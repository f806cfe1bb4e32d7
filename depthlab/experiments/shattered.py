"""shattered: gradients of deep feedforward nets look like white noise, those of shallow nets like
brown noise, those of ResNets in between (Balduzzi et al. 2017, The Shattered Gradients Problem,
arXiv 1702.08591, Fig. 1-3). No training: every number is measured on randomly initialised nets.

The scalar setting of ``depthlab.diagnostics.shattering``: the ACF of dy/dx over a line of inputs.
Its constants (width, inputs, init, the residual block, BN) are readings of the paper, all parameters.
Details: docs/methods.md, section "Shattering (Balduzzi et al. 2017)".
"""
from __future__ import annotations

import numpy as np

from depthlab.diagnostics.shattering import brown_noise, scalar_shattering, white_noise
from depthlab.experiments.base import (
    Experiment,
    Findings,
    compare,
    fmt_mean_sd,
    heatmap_figure,
    line_figure,
    mean_sd,
    panels_figure,
    register,
    series,
    table,
    verdict,
)

NETS = ("shallow", "feedforward", "resnet", "brown", "white")


@register
class Shattered(Experiment):
    name = "shattered"
    title = "Shattered gradients: gradient autocorrelation of feedforward nets and ResNets at init"
    source = "Balduzzi et al. 2017, The Shattered Gradients Problem (arXiv 1702.08591), Fig. 1-3"
    claim = ("The gradient dy/dx of a deep feedforward ReLU net over a line of inputs resembles white noise "
             "(correlation between nearby inputs decays like 2^-L with depth), a shallow net's resembles brown "
             "noise, and a ResNet with BN sits in between (decay like 1/sqrt(L)).")
    expected = ("lag-1 gradient autocorrelation: 1-layer net ~ 1 (>= 0.9); 24-layer feedforward (BN) ~ white "
                "noise; 50-block ResNet (BN) in between, well above the 24-layer net")
    scales = {
        "quick": {"dataset": None, "recipe": None, "num_inits": 8, "corr_inits": 32, "n_points": 256,
                  "width": 200, "ff_depth": 24, "res_blocks": 50, "sweep_depths": [1, 2, 4, 8, 16, 24, 50],
                  "batchnorm": True, "shallow_batchnorm": False, "max_lag": 50, "corr_stride": 2,
                  "shallow_min": 0.9, "white_band": 0.2, "margin": 0.3},
        "paper": {"dataset": None, "recipe": None, "num_inits": 20, "corr_inits": 100, "n_points": 256,
                  "width": 200, "ff_depth": 24, "res_blocks": 50, "sweep_depths": [1, 2, 4, 8, 16, 24, 50],
                  "batchnorm": True, "shallow_batchnorm": False, "max_lag": 50, "corr_stride": 2,
                  "shallow_min": 0.9, "white_band": 0.2, "margin": 0.3},
    }
    smoke = {"num_inits": 2, "corr_inits": 3, "n_points": 32, "width": 16, "ff_depth": 4, "res_blocks": 4,
             "sweep_depths": [1, 4], "max_lag": 8, "corr_stride": 4}

    def runs(self, p):
        return []  # nothing to train

    def analyse(self, ctx) -> Findings:
        p, f = ctx.p, Findings()
        m = ctx.measure("shattering", lambda: measure_shattering(p))
        lag1 = {k: m[k]["lag1"] for k in NETS}
        area = {k: m[k]["acf_area"] for k in NETS}
        lbl = _labels(p)
        n = p["num_inits"]

        def fmt(k, d=lag1):
            return f"{lbl[k]} {fmt_mean_sd(d[k], digits=3)}"

        c = compare(lag1["shallow"], [p["shallow_min"]] * len(lag1["shallow"]), 0.0)  # spread: the inits'
        f.verdicts.append(verdict(f"the 1-layer net's gradients are brown-noise-like: lag-1 >= {p['shallow_min']}",
                                  c["holds"], f"lag-1 autocorrelation over {n} inits: {fmt('shallow')}; "
                                  f"{fmt('brown')}", n, c["spread"], unit="init"))
        band = p["white_band"]
        c = _all(compare(lag1["feedforward"], lag1["white"], -band), compare(lag1["white"], lag1["feedforward"], -band))
        f.verdicts.append(verdict(f"the {p['ff_depth']}-layer feedforward net's gradients are white-noise-like: "
                                  f"lag-1 within +-{band} of white noise's", c["holds"],
                                  f"{fmt('feedforward')}; {fmt('white')}", n, c["spread"], unit="init"))
        c = _all(compare(lag1["resnet"], lag1["feedforward"], p["margin"]),
                 compare(lag1["shallow"], lag1["resnet"], 0.0))
        f.verdicts.append(verdict(f"the {p['res_blocks']}-block ResNet is in between: lag-1 above the "
                                  f"{p['ff_depth']}-layer net's by >= {p['margin']} and below the 1-layer net's",
                                  c["holds"], f"{fmt('resnet')}; {fmt('feedforward')}; {fmt('shallow')}", n,
                                  c["spread"], unit="init"))
        c = _all(compare(area["resnet"], area["feedforward"], p["margin"] / 2),
                 compare(area["shallow"], area["resnet"], 0.0))
        f.verdicts.append(verdict(f"the ResNet's ACF decays faster than the 1-layer net's and slower than the "
                                  f"{p['ff_depth']}-layer net's (mean ACF over lags 1..{p['max_lag']}; gap "
                                  f">= {p['margin'] / 2} above the feedforward net)", c["holds"],
                                  f"{fmt('resnet', area)}; {fmt('feedforward', area)}; {fmt('shallow', area)}",
                                  n, c["spread"], unit="init"))

        f.tables.append(table("Gradient autocorrelation at init", ["sequence", "lag-1 ACF",
                                                                   f"mean ACF, lags 1..{p['max_lag']}"],
                              [[lbl[k], fmt_mean_sd(lag1[k], digits=3), fmt_mean_sd(area[k], digits=3)] for k in NETS],
                              note=f"mean +- sd over {n} inits (noises: {n} draws); {p['n_points']} inputs in "
                                   f"[-2, 2], width {p['width']}"))
        depths, sweep = p["sweep_depths"], m["sweep"]
        f.tables.append(table("Lag-1 autocorrelation vs depth", ["depth L", "feedforward (L layers)",
                                                                  "ResNet (L blocks)"],
                              [[d, fmt_mean_sd(sweep["feedforward"][str(d)], digits=3),
                                fmt_mean_sd(sweep["resnet"][str(d)], digits=3)] for d in depths],
                              note=f"BN {'on' if p['batchnorm'] else 'off'}; mean +- sd over {n} inits"))
        f.figures.extend(_figures(p, m, lbl))
        f.notes += [
            "No training: all numbers are measured on randomly initialised scalar nets (1 -> width -> ... -> 1).",
            "Unverified constants (parameters here): width, the number and range of the inputs, He-normal weights, "
            "N(0, 1) biases, the residual block h <- h + relu(BN(W h + b)), and BN using the batch of inputs' "
            "statistics treated as constants in backward.",
            f"BN is {'on' if p['batchnorm'] else 'off'} in the deep feedforward net and the ResNet (parameter "
            "batchnorm); without BN the 24-layer scalar net's gradient stayed smooth here (lag-1 ~ 0.9), so the "
            "white-noise finding needs BN in this setting. The 1-layer net has no BN (with a scalar input BN makes "
            "its gradient a two-valued step).",
            "Lag-1 of a smooth sequence saturates near 1, so the mean ACF over the first lags is reported as well "
            "(a correlation-length summary; not a quantity the paper names).",
            "Scales differ only in the number of inits (and the inits behind the correlation matrices).",
        ]
        return f


def _labels(p) -> dict:
    return {"shallow": "1-layer feedforward", "feedforward": f"{p['ff_depth']}-layer feedforward",
            "resnet": f"{p['res_blocks']}-block ResNet", "brown": "brown noise", "white": "white noise"}


def _all(*cs) -> dict:
    """Conjunction of ``compare`` results: False if any fails, None if any is undecided, else True."""
    holds = [c["holds"] for c in cs]
    h = False if False in holds else (None if None in holds else True)
    return {"holds": h, "spread": max(c["spread"] for c in cs)}


def measure_shattering(p: dict) -> dict:
    """Per sequence (NETS): gradients of init 0, lag-1 and mean ACF over lags 1..max_lag per init,
    ACF mean and sd up to max_lag, and the lag-1 sweep over depth; correlation matrices of the deep
    nets over ``corr_inits`` inits (every ``corr_stride``-th input)."""
    n, inits, L = p["n_points"], p["num_inits"], p["max_lag"]
    common = dict(n_points=n, width=p["width"])
    nets = {"shallow": (1, False, p["shallow_batchnorm"]), "feedforward": (p["ff_depth"], False, p["batchnorm"]),
            "resnet": (p["res_blocks"] + 1, True, p["batchnorm"])}
    out = {}
    for k, (depth, residual, bn) in nets.items():
        s = scalar_shattering(depth, residual, bn, num_inits=inits, **common)
        out[k] = _summary(s["gradients"], s["acf"], L)
        out[k]["x"] = s["x"].tolist()
    for k, noise in (("brown", brown_noise), ("white", white_noise)):
        draws = [noise(n, seed=r) for r in range(inits)]
        out[k] = _summary(np.stack([d["sequence"] for d in draws]), np.stack([d["acf"] for d in draws]), L)
    stride = p["corr_stride"]
    for k in ("feedforward", "resnet"):
        depth, residual, bn = nets[k]
        s = scalar_shattering(depth, residual, bn, num_inits=p["corr_inits"], **common)
        c = s["correlation"]
        out[k]["correlation"] = None if c is None else np.round(c[::stride, ::stride], 3).tolist()
    out["sweep"] = {"feedforward": {}, "resnet": {}}
    for d in p["sweep_depths"]:
        out["sweep"]["feedforward"][str(d)] = scalar_shattering(d, False, p["batchnorm"], num_inits=inits,
                                                                **common)["lag1"].tolist()
        out["sweep"]["resnet"][str(d)] = scalar_shattering(d + 1, True, p["batchnorm"], num_inits=inits,
                                                           **common)["lag1"].tolist()
    return out


def _summary(gradients, acf, max_lag: int) -> dict:
    acf = np.asarray(acf)
    L = max(1, min(max_lag, acf.shape[1] - 1))
    return {"gradient": np.asarray(gradients)[0].tolist(), "lag1": acf[:, 1].tolist(),
            "acf_area": acf[:, 1:L + 1].mean(1).tolist(), "acf_mean": acf[:, :L + 1].mean(0).tolist(),
            "acf_sd": acf[:, :L + 1].std(0).tolist()}


def _figures(p, m, lbl) -> list:
    x = m["shallow"]["x"]
    grads = [line_figure(lbl[k], "input x", "dy/dx" if k in ("shallow", "feedforward", "resnet") else "value",
                         [series(lbl[k], x, m[k]["gradient"], marker=None)]) for k in NETS]
    figs = [panels_figure("Gradients over the inputs (Balduzzi et al. Fig. 1)", grads, cols=3,
                          caption="dy/dx at each input for one init (init 0) of each net, and one draw of brown and "
                                  "white noise over as many points.")]
    lags = list(range(len(m["shallow"]["acf_mean"])))
    figs.append(line_figure("Autocorrelation of the gradients (Balduzzi et al. Fig. 2)", "lag (input steps)",
                            "autocorrelation", [series(lbl[k], lags, m[k]["acf_mean"], m[k]["acf_sd"], marker=None,
                                                       style=":" if k in ("brown", "white") else "-") for k in NETS],
                            caption=f"Mean +- sd over {p['num_inits']} inits (noises: draws); references dotted."))
    heat = [heatmap_figure(lbl[k], m[k]["correlation"], "input index", "input index", vmin=-1, vmax=1)
            for k in ("feedforward", "resnet") if m[k].get("correlation")]
    if heat:
        figs.append(panels_figure("Gradient correlation across inits (Balduzzi et al. Fig. 3)", heat, cols=2,
                                  caption=f"Correlation, over {p['corr_inits']} inits, of dy/dx at input i and input "
                                          f"j (every {p['corr_stride']}th input); a narrow diagonal band means "
                                          "nearby inputs have unrelated gradients."))
    depths = p["sweep_depths"]
    lines = []
    for k, style in (("feedforward", "--"), ("resnet", "-")):
        ms = [mean_sd(m["sweep"][k][str(d)]) for d in depths]
        lines.append(series("feedforward (L layers)" if k == "feedforward" else "ResNet (L blocks)", depths,
                            [a for a, _, _ in ms], [s for _, s, _ in ms], style=style))
    hl = [{"y": mean_sd(m[k]["lag1"])[0], "label": lbl[k]} for k in ("brown", "white")]
    figs.append(line_figure("Lag-1 gradient autocorrelation vs depth", "depth L (layers or blocks)",
                            "lag-1 autocorrelation", lines, xscale="log", hlines=hl,
                            caption="Mean +- sd over inits. The paper predicts the correlation between nearby "
                                    "inputs' gradients to decay like 2^-L for feedforward nets and like 1/sqrt(L) "
                                    "for ResNets with BN; lag-1 of the sequence is a proxy for that correlation."))
    return figs
