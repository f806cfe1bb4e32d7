"""discriminability: how linearly separable the features are at every layer (Gao & McDonnell 2017,
"Gradient degradation and feature-map quality", ICONIP, LNCS 10635).

Read with ``depthlab.diagnostics.discriminability`` (a ridge linear read-out per tap): (a) plain vs ResNet of
equal depth, (b) training duration, (c) conv placement (``stage_blocks`` ``"k,1,1"`` vs ``"1,1,k"``).
The read-out is our reading (the paper's could not be verified); (b) and (c) are measured notes, not verdicts.
Details: docs/methods.md, section "Discriminability (Gao & McDonnell 2017)".
"""
from __future__ import annotations

import math

from depthlab.diagnose_run import read_diagnostics
from depthlab.diagnostics.discriminability import depth_where_probe_stops_rising, probe_taps
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
PLACEMENTS = ("early", "late")
VIRIDIS = ("#440154", "#46327e", "#365c8d", "#277f8e", "#1fa187", "#4ac16d", "#a0da39", "#fde725")


def stage_blocks(placement: str, k: int) -> str:
    """The ``stage_blocks`` string that puts ``k`` blocks in the first (early) or last (late) stage."""
    return f"{k},1,1" if placement == "early" else f"1,1,{k}"


def profile(records, suffix: str = ".sum"):
    """Probe accuracies of the taps ending with ``suffix``, in forward order."""
    return [r["probe_accuracy"] for r in records if str(r["tap"]).endswith(suffix)]


def stop_position(records, tol: float):
    """Where the block-sum profile stops rising, as a fraction of the way to the last block (0..1)."""
    stop = depth_where_probe_stops_rising(records, tol)
    if stop is None or stop["num_taps"] < 2:
        return math.nan
    return stop["index"] / (stop["num_taps"] - 1)


@register
class Discriminability(Experiment):
    name = "discriminability"
    title = "Feature discriminability per layer: plain vs residual, training duration, conv placement"
    source = "Gao & McDonnell 2017, Gradient degradation and feature-map quality (ICONIP, LNCS 10635)"
    claim = ("Residual-sum outputs grow more discriminable (linearly separable) with depth, conv outputs do "
             "not; in all-conv (plain) nets discriminability stops improving well before the last layer. "
             "The paper also studies training duration and where conv layers are placed.")
    expected = ("resnet: probe accuracy at the last block sum above the early block sums; plain: the profile "
                "peaks well before the last block; resnet sums rise more with depth than its conv outputs")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "depth": 56, "schedule": "log", "placement_blocks": 7,
                  "placement_families": ["plain", "resnet"], "rise": 0.01, "stall_fraction": 0.75,
                  "gap": 0.01, "tol": 0.005},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT, probed on 2,000 of the test images (a probe of resnet-56 on all
        # 10,000 costs about 40 s on one core, at 7 points of each run), conv placement for the resnet only
        "real": {**REAL_FIT, "depth": 56, "schedule": "log", "placement_blocks": 7, "placement_families": ["resnet"],
                 "rise": 0.01, "stall_fraction": 0.75, "gap": 0.01, "tol": 0.005,
                 "set": REAL_FIT["set"] + ["data.test_subset=2000"]},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depth": 56, "schedule": "log", "placement_blocks": 25,
                  "placement_families": ["plain", "resnet"], "rise": 0.01, "stall_fraction": 0.75,
                  "gap": 0.01, "tol": 0.005},
    }
    smoke = {"depth": 8, "epochs": 1, "placement_blocks": 2, "placement_families": ["resnet"]}

    def runs(self, p):
        diag = [f"diagnostics.quantities=discriminability@{p['schedule']}", "diagnostics.at_init=true"]
        specs = [RunSpec(f"{f}{p['depth']}", [f"model.name={f}", f"model.depth={p['depth']}"] + diag,
                         {"part": "depth", "family": f}) for f in FAMILIES]
        k = p["placement_blocks"]
        specs += [RunSpec(f"{f}-{pl}", [f"model.name={f}", f"model.stage_blocks={stage_blocks(pl, k)}"],
                          {"part": "placement", "family": f, "placement": pl})
                  for f in p["placement_families"] for pl in PLACEMENTS]
        return specs

    def analyse(self, ctx) -> Findings:
        p, n = ctx.p, len(ctx.seeds)
        probes = ctx.measure("final_probes", lambda: _final_probes(ctx))
        during = ctx.measure("training_probes", lambda: _training_probes(ctx))
        f = Findings()
        rows = {fam: [r for r in ctx.rows(part="depth", family=fam) if r["run_id"] in probes] for fam in FAMILIES}
        recs = {fam: [probes[r["run_id"]] for r in rows[fam]] for fam in FAMILIES}
        d = p["depth"]

        # (a) 1. resnet: the last block sum beats the early block sums (first third of the blocks)
        last = [profile(x)[-1] for x in recs["resnet"] if profile(x)]
        early = [max(profile(x)[:max(1, len(profile(x)) // 3)]) for x in recs["resnet"] if profile(x)]
        c = compare(last, early, p["rise"])
        f.verdicts.append(verdict(
            f"resnet-{d}: probe accuracy at the last block sum exceeds the best of the first third of the "
            f"block sums by >= {p['rise']:.0%}", c["holds"],
            f"last block sum {fmt_mean_sd(last, 100, unit='%')}, best early block sum "
            f"{fmt_mean_sd(early, 100, unit='%')}", n, c["spread"], points=True))
        # 2. plain: the profile stops rising well before the last block
        pos = {fam: [stop_position(x, p["tol"]) for x in recs[fam]] for fam in FAMILIES}
        c = compare([p["stall_fraction"]] * len(pos["plain"]), pos["plain"], 0.0)
        f.verdicts.append(verdict(
            f"plain-{d}: probe accuracy stops rising (by more than {p['tol']:.1%}) at or before "
            f"{p['stall_fraction']:.0%} of the way to the last block", c["holds"],
            f"stops rising at {fmt_mean_sd(pos['plain'], 100, digits=0, unit='%')} of the blocks (resnet: "
            f"{fmt_mean_sd(pos['resnet'], 100, digits=0, unit='%')}); peak plain probe accuracy "
            f"{fmt_mean_sd([max(profile(x)) for x in recs['plain'] if profile(x)], 100, unit='%')}, at the last "
            f"block {fmt_mean_sd([profile(x)[-1] for x in recs['plain'] if profile(x)], 100, unit='%')}",
            n, c["spread"], points=True))
        # 3. resnet: the sums grow more discriminable with depth than the conv outputs
        rise_sum = [profile(x)[-1] - profile(x)[0] for x in recs["resnet"] if profile(x)]
        rise_conv = [profile(x, ".conv2")[-1] - profile(x, ".conv2")[0] for x in recs["resnet"] if profile(x, ".conv2")]
        c = compare(rise_sum, rise_conv, p["gap"])
        f.verdicts.append(verdict(
            f"resnet-{d}: from the first block to the last, probe accuracy rises more at the residual sums "
            f"than at the conv outputs (by >= {p['gap']:.0%})", c["holds"],
            f"rise at sums {fmt_mean_sd(rise_sum, 100, unit=' points')}, at conv2 outputs "
            f"{fmt_mean_sd(rise_conv, 100, unit=' points')}", n, c["spread"], points=True))

        self._per_tap(f, recs, d, n)
        self._duration(f, ctx, during, probes, rows, d)
        self._placement(f, ctx, probes)
        f.notes.append("Discriminability = test accuracy of a closed-form ridge read-out on globally average-"
                       "pooled tap outputs (lambda chosen on 20% of the training set); the paper's read-out is "
                       "unverified (docs/methods.md). Conv outputs are the taps *.conv2 (before BN); sums the taps "
                       "*.sum.")
        if ctx.data_note:
            f.notes.append(ctx.data_note)
        return f

    def _per_tap(self, f, recs, d, n):
        blocks = range(1, max((len(profile(x)) for fam in FAMILIES for x in recs[fam]), default=0) + 1)
        cols = {(fam, s): [[profile(x, s)[b - 1] for x in recs[fam] if len(profile(x, s)) >= b] for b in blocks]
                for fam in FAMILIES for s in (".conv2", ".sum")}
        f.tables.append(table(f"Probe accuracy per block (depth {d})",
                              ["block", "plain conv2", "plain sum", "resnet conv2", "resnet sum"],
                              [[b] + [fmt_mean_sd(cols[(fam, s)][b - 1], 100, unit="%") for fam in FAMILIES
                                      for s in (".conv2", ".sum")] for b in blocks],
                              note=f"test accuracy of the ridge probe; mean +- sd over {n} seed(s)"))
        lines = []
        for fam in FAMILIES:
            for s, style in ((".sum", "-"), (".conv2", ":")):
                ms = [mean_sd(v) for v in cols[(fam, s)]]
                lines.append(series(f"{fam} {'sum' if s == '.sum' else 'conv output'}", list(blocks),
                                    [100 * m for m, _, _ in ms], [100 * sd for _, sd, _ in ms],
                                    style=style if fam == "resnet" else "--" if s == ".sum" else "-.", marker=None))
        f.figures.append(line_figure(f"Probe accuracy per block: plain-{d} vs resnet-{d}", "block (1 = first)",
                                     "probe test accuracy (%)", lines,
                                     caption="Gao & McDonnell: residual sums grow more discriminable with depth; "
                                             "plain nets stall."))

    def _duration(self, f, ctx, during, probes, rows, d):
        panels, trows = [], []
        for fam in FAMILIES:
            seed0 = [r for r in rows[fam] if r["seed"] == ctx.seeds[0]]
            by_epoch = dict(during.get(seed0[0]["run_id"], {})) if seed0 else {}
            if seed0 and seed0[0]["run_id"] in probes and seed0[0].get("epoch"):
                by_epoch.setdefault(str(seed0[0]["epoch"]), probes[seed0[0]["run_id"]])  # the trained model
            epochs = sorted(by_epoch, key=int)
            lines = []
            for i, e in enumerate(epochs):
                prof = profile(by_epoch[e])
                col = VIRIDIS[round((len(VIRIDIS) - 1) * i / max(1, len(epochs) - 1))]
                lines.append(series(f"epoch {e}", range(1, len(prof) + 1), [100 * a for a in prof], marker=None,
                                    color=col))
                if prof:
                    trows.append([fam, int(e), f"{100 * prof[0]:.1f}%", f"{100 * prof[len(prof) // 2]:.1f}%",
                                  f"{100 * prof[-1]:.1f}%", f"{100 * max(prof):.1f}%",
                                  f"{100 * stop_position(by_epoch[e], ctx.p['tol']):.0f}%"])
            panels.append(line_figure(f"{fam}-{d}", "block (1 = first)", "probe test accuracy (%)", lines))
        f.figures.append(panels_figure("Probe profiles over training (seed 0; dark = early, light = late)", panels,
                                       cols=2, caption="Profiles at the scheduled epochs; epoch 0 = at init."))
        f.tables.append(table("Probe accuracy at block sums over training (seed 0)",
                              ["model", "epoch", "first block", "middle block", "last block", "peak",
                               "stops rising at"], trows,
                              note="epoch 0 = at init; 'stops rising at' = fraction of the way to the last block"))
        for fam in FAMILIES:
            fam_rows = [r for r in trows if r[0] == fam]
            if len(fam_rows) >= 2:
                f.notes.append(f"Training duration ({fam}-{d}, measured): last-block probe accuracy "
                               f"{fam_rows[1][4]} after epoch {fam_rows[1][1]} (short) vs {fam_rows[-1][4]} after "
                               f"epoch {fam_rows[-1][1]} (long); the profile stops rising at {fam_rows[1][6]} vs "
                               f"{fam_rows[-1][6]} of the blocks.")

    def _placement(self, f, ctx, probes):
        p, k = ctx.p, ctx.p["placement_blocks"]
        trows, lines = [], []
        for fam in p["placement_families"]:
            res = {}
            for pl in PLACEMENTS:
                rs = [r for r in ctx.rows(part="placement", family=fam, placement=pl)]
                last = [profile(probes[r["run_id"]])[-1] for r in rs if r["run_id"] in probes]
                acc = ctx.values("test_acc", part="placement", family=fam, placement=pl)
                res[pl] = (mean_sd(acc)[0], mean_sd(last)[0])
                trows.append([f"{fam} {pl}", stage_blocks(pl, k), rs[0].get("depth") if rs else "-",
                              rs[0].get("params") if rs else "-", fmt_mean_sd(acc, 100, unit="%"),
                              fmt_mean_sd(last, 100, unit="%")])
                r0 = [r for r in rs if r["seed"] == ctx.seeds[0] and r["run_id"] in probes]
                if r0:
                    prof = profile(probes[r0[0]["run_id"]])
                    lines.append(series(f"{fam} {pl} ({stage_blocks(pl, k)})", range(1, len(prof) + 1),
                                        [100 * a for a in prof], style="--" if fam == "plain" else "-"))
            if all(not math.isnan(v) for pl in PLACEMENTS for v in res[pl]):
                better = lambda i, res=res: max(PLACEMENTS, key=lambda name: res[name][i])  # noqa: E731
                f.notes.append(f"Conv placement ({fam}, measured; the paper as available to us gives no "
                               f"direction): early "
                               f"{stage_blocks('early', k)} test {100 * res['early'][0]:.1f}% / last-block probe "
                               f"{100 * res['early'][1]:.1f}%, late {stage_blocks('late', k)} test "
                               f"{100 * res['late'][0]:.1f}% / probe {100 * res['late'][1]:.1f}%: better test "
                               f"accuracy with {better(0)} placement, better final probe with {better(1)}. "
                               f"The late nets have more parameters (wider last stage).")
        f.tables.append(table("Conv placement at equal depth", ["model", "stage_blocks", "depth", "params",
                                                                "test accuracy", "last-block probe"], trows,
                              note=f"mean +- sd over {len(ctx.seeds)} seed(s)"))
        f.figures.append(line_figure("Probe accuracy per block: extra blocks early vs late (seed 0)",
                                     "block (1 = first)", "probe test accuracy (%)", lines,
                                     caption="early = the extra blocks in the first stage, late = in the last."))


def _slim(results):
    return [{"tap": r["tap"], "probe_accuracy": r["probe_accuracy"], "fisher_ratio": r["fisher_ratio"],
             "lambda": r["lambda"]} for r in results]


def _final_probes(ctx) -> dict:
    """Per finished run: the ridge probe at every tap of the trained model."""
    out = {}
    for r in ctx.results:
        if r.get("status") == "finished":
            ctx.log(f"probing {r['run_id']}")
            model, data = ctx.load(r)
            out[r["run_id"]] = _slim(probe_taps(model, data))
    return out


def _training_probes(ctx) -> dict:
    """Per depth run: {epoch: probe records} from its diagnostics.jsonl (written during training)."""
    out = {}
    for r in ctx.rows(part="depth"):
        by_epoch: dict = {}
        for x in read_diagnostics(ctx.run_dir(r)):
            if x.get("quantity") == "discriminability" and x.get("name") == "probe_accuracy":
                by_epoch.setdefault(str(x["epoch"]), {})[x["layer"]] = x["value"]  # a resumed epoch: last wins
        out[r["run_id"]] = {e: [{"tap": t, "probe_accuracy": a} for t, a in taps.items()]
                            for e, taps in by_epoch.items()}
    return out
