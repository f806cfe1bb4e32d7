"""toolkit: the residual-networks lecture's summary slide as an experiment.

On one deep CIFAR-layout net (``depth``, default 56): *remove one* of rectifiers, dropout, batch norm,
identity shortcuts and He init from the full toolkit, or *add one* to the bare net, and see what breaks
or what it fixes. The dropout rate and the deletion fraction are our readings (the lecture gives no numbers).
Details: docs/methods.md, section "The lecture's toolkit as switches".
"""
from __future__ import annotations

import math

import torch

from depthlab.config import RunConfig
from depthlab.diagnostics.gradient_flow import gradient_flow, take_batch
from depthlab.diagnostics.lesion import blocks_disabled, error_rate
from depthlab.experiments.base import (
    REAL_FIT,
    Experiment,
    Findings,
    RunSpec,
    bar_figure,
    compare,
    fmt_mean_sd,
    fmt_ratio,
    geo_mean,
    mean_sd,
    register,
    table,
    verdict,
    within,
)
from depthlab.experiments.highway import train_acc
from depthlab.training.trainer import build_from_config

DROPOUT_PAIRS = ("full", "full-dropout", "bare+dropout", "bare")  # the cells whose trained nets are probed
TOOLS = ("rectifier", "dropout", "batch-norm", "identity", "init")
LABEL = {"rectifier": "ReLU", "dropout": "dropout", "batch-norm": "batch norm", "identity": "identity shortcuts",
         "init": "He init"}


def switch(tool: str, on: bool, p: dict) -> list:
    """The overrides that turn ``tool`` on or off."""
    return {"rectifier": [f"model.activation={'relu' if on else 'sigmoid'}"],
            "dropout": [f"model.dropout={p['dropout'] if on else 0.0}"]
            + ([f"model.dropout_mode={p['dropout_mode']}"] if on and p.get("dropout_mode") else []),
            "batch-norm": [f"model.norm={'batch' if on else 'none'}"],
            "identity": [f"model.name={'resnet' if on else 'plain'}"],
            "init": [f"model.init={'kaiming' if on else 'small-gaussian'}"]}[tool]


def cells(p: dict) -> list:
    """``(cell id, table, changed tool, overrides)`` for both tables; each base appears once."""
    out = []
    for table_name, base_on, sign in (("remove-one", True, "-"), ("add-one", False, "+")):
        base = "full" if base_on else "bare"
        for changed in (None,) + TOOLS:
            ov = [o for t in TOOLS for o in switch(t, base_on != (t == changed), p)]
            ov += [f"model.depth={p['depth']}"] + ([f"model.width={p['width']}"] if p.get("width") else [])
            out.append((base if changed is None else f"{base}{sign}{changed}", table_name, changed, ov))
    return out


@register
class Toolkit(Experiment):
    name = "toolkit"
    title = "The lecture's toolkit: remove one remedy from a deep net, or add one to a bare net"
    source = ("The residual-networks lecture's summary slide; Glorot, Bordes & Bengio 2011 (rectifiers), "
              "Srivastava et al. 2014 (dropout), Ioffe & Szegedy 2015 (batch norm), He et al. 2015 (identity "
              "shortcuts, arXiv 1512.03385; He init, arXiv 1502.01852)")
    claim = ("Rectifiers, dropout, batch normalisation, identity pass-through and smart initialisation are what "
             "made very deep networks trainable: a sigmoid's derivative is at most 1/4 so the gradient through "
             "many sigmoid layers vanishes, a small-Gaussian init makes deep signals vanish, batch norm keeps "
             "activation statistics in check, identity shortcuts carry the gradient, dropout forces a "
             "distributed representation.")
    expected = (
        "Written before the runs. Remove one (from the full toolkit): the full net trains (>= 90% training "
        "accuracy); without identity shortcuts it trains worse (degradation, He et al. 2015); without batch norm "
        "the backward error explodes at init (ratio > bound) and it trains worse; without He init it trains as "
        "well (batch norm makes the forward pass invariant to the weight scale, Ioffe & Szegedy 2015); without "
        "ReLU it still trains as well (batch norm and the identity path keep the error from vanishing); without "
        "dropout the train-test gap is wider and deleting channels or blocks costs more test accuracy. Add one "
        "(to the bare net): the bare net stays near chance with a vanishing backward error at init "
        "(ratio < 1/bound); ReLU alone, He init alone and dropout alone each leave it near chance (the small "
        "init, the sigmoid's slope or nothing at all still shrinks the signal); batch norm alone and identity "
        "shortcuts alone each make it train, and with shortcuts the error ratio at init is within the bound.")
    scales = {
        "quick": {"dataset": "digits", "recipe": "quick", "depth": 56, "width": None, "dropout": 0.1,
                  "dropout_mode": None, "trains": 0.9, "gap": 0.05, "tolerance": 0.02, "near_chance": 0.2,
                  "ratio_bound": 100.0, "delete_channels": 0.25, "draws": 5, "probe_batch": 128},
        # CIFAR-10 on a 2-core CPU: base.REAL_FIT; 36 runs of a 56-layer net do not fit 30 minutes there, so a
        # narrower, shallower net and 1,000 test images for the deletion probes; with 8 channels, dropping whole
        # maps kept the full net from fitting its images (64% vs 100% without dropout, 3 seeds): element-wise
        # dropout there (docs/notes/calibration-real.md)
        "real": {**REAL_FIT, "depth": 32, "width": 8, "dropout": 0.1, "dropout_mode": "element",
                 "trains": 0.9, "gap": 0.05, "tolerance": 0.02, "near_chance": 0.2, "ratio_bound": 100.0,
                 "delete_channels": 0.25, "draws": 5, "probe_batch": 128,
                 "set": REAL_FIT["set"] + ["data.test_subset=1000"]},
        "paper": {"dataset": "cifar10", "recipe": "he2015", "depth": 56, "width": None, "dropout": 0.1,
                  "dropout_mode": None, "trains": 0.9, "gap": 0.02, "tolerance": 0.005, "near_chance": 0.2,
                  "ratio_bound": 100.0, "delete_channels": 0.25, "draws": 5, "probe_batch": 128},
    }
    smoke = {"depth": 8, "epochs": 1, "width": 4, "probe_batch": 32, "draws": 2}

    @classmethod
    def year(cls) -> int:
        """Listed (and run by ``reproduce all``) after the papers the lecture's summary draws on."""
        return 9000

    def runs(self, p):
        return [RunSpec(cid, ov, {"cell": cid, "table": t, "tool": tool or "-"}) for cid, t, tool, ov in cells(p)]

    def analyse(self, ctx) -> Findings:
        p, n = ctx.p, len(ctx.seeds)
        chance = 1.0 / ctx.dataset.num_classes if ctx.dataset is not None else 0.1
        ids = [c[0] for c in cells(p)]
        tr = {c: train_acc(ctx, cell=c) for c in ids}
        te = {c: ctx.values("test_acc", cell=c) for c in ids}
        init = ctx.measure("init", lambda: _init_ratios(ctx), key=[p["probe_batch"]])
        ratio = {c: [init.get(f"{c}-s{s}", math.nan) for s in ctx.seeds] for c in ids}
        robust = ctx.measure("robustness", lambda: _robustness(ctx), key=[p["delete_channels"], p["draws"]])
        rob = {(c, k): [robust[r["run_id"]][k] for r in ctx.rows(cell=c) if r["run_id"] in robust]
               for c in DROPOUT_PAIRS for k in ("intact", "train", "channels", "blocks")}
        pct = lambda v: fmt_mean_sd(v, 100, unit="%")  # noqa: E731
        f, bound = Findings(), p["ratio_bound"]

        def v(claim, c, detail):
            f.verdicts.append(verdict(claim, c["holds"] if isinstance(c, dict) else c[0], detail, n,
                                      c["spread"] if isinstance(c, dict) else c[1]))

        acc = lambda c: f"{c} {pct(tr[c])} (error ratio at init {fmt_ratio(ratio[c])})"  # noqa: E731
        # remove one ---------------------------------------------------------------------------
        v(f"the full toolkit trains at depth {p['depth']} (training accuracy >= {p['trains']:.0%})",
          compare(tr["full"], [p["trains"]] * n, 0), acc("full"))
        v("without identity shortcuts the net trains worse than the full toolkit (by >= "
          f"{p['gap']:.0%} training accuracy)", compare(tr["full"], tr["full-identity"], p["gap"]),
          f"{acc('full')}, {acc('full-identity')}")
        v(f"without batch norm the backward error explodes at init (first/last ratio > {bound:g})",
          _above(ratio["full-batch-norm"], bound), f"full-batch-norm {fmt_ratio(ratio['full-batch-norm'])}")
        v(f"without batch norm the net trains worse than the full toolkit (by >= {p['gap']:.0%})",
          compare(tr["full"], tr["full-batch-norm"], p["gap"]), f"{acc('full')}, {acc('full-batch-norm')}")
        for tool in ("init", "rectifier"):
            v(f"without {LABEL[tool]} the net trains as well as the full toolkit (within {p['tolerance']:.0%})",
              compare(tr[f"full-{tool}"], tr["full"], -p["tolerance"]), f"{acc('full')}, {acc(f'full-{tool}')}")
        gap = {c: [a - b for a, b in zip(rob[(c, "train")], rob[(c, "intact")])] for c in ("full", "full-dropout")}
        v("dropout narrows the train-test gap (full vs full-dropout; both accuracies in eval mode)",
          compare(gap["full-dropout"], gap["full"], 0),
          f"train - test: full {pct(gap['full'])}, full-dropout {pct(gap['full-dropout'])}")
        for k, what in (("channels", f"{p['delete_channels']:.0%} of the channels are deleted"),
                        ("blocks", "one block is deleted")):
            drop = {c: [a - b for a, b in zip(rob[(c, "intact")], rob[(c, k)])] for c in ("full", "full-dropout")}
            v(f"with dropout, test accuracy falls less when {what} (full vs full-dropout)",
              compare(drop["full-dropout"], drop["full"], 0),
              f"test accuracy lost: full {pct(drop['full'])}, full-dropout {pct(drop['full-dropout'])}")
        # add one ------------------------------------------------------------------------------
        near = lambda c: compare([chance + p["near_chance"]] * n, tr[c], 0)  # noqa: E731
        v(f"the bare net stays near chance (< chance + {p['near_chance']:.0%})", near("bare"), acc("bare"))
        v(f"the bare net's backward error vanishes at init (first/last ratio < 1/{bound:g})",
          _above([1 / r if r else math.inf for r in ratio["bare"]], bound), f"bare {fmt_ratio(ratio['bare'])}")
        for tool in ("rectifier", "init", "dropout"):
            v(f"{LABEL[tool]} alone leaves the bare net near chance", near(f"bare+{tool}"), acc(f"bare+{tool}"))
        for tool in ("batch-norm", "identity"):
            v(f"{LABEL[tool]} alone makes the bare net train (>= chance + {p['near_chance']:.0%})",
              compare(tr[f"bare+{tool}"], [chance + p["near_chance"]] * n, 0), acc(f"bare+{tool}"))
        v(f"with identity shortcuts alone the error ratio at init is within [1/{bound:g}, {bound:g}]",
          within(ratio["bare+identity"], bound), f"bare+identity {fmt_ratio(ratio['bare+identity'])}")

        data_name = ctx.dataset.name if ctx.dataset else "-"
        w = p.get("width")
        wide = f", width {w} (channels {w}/{2 * w}/{4 * w})" if w else ""
        for name, base in (("remove-one", "full"), ("add-one", "bare")):
            rows = [[c, "-" if tool is None else ("off: " if base == "full" else "on: ") + LABEL[tool], pct(tr[c]),
                     pct(te[c]), pct([a - b for a, b in zip(tr[c], te[c])]), fmt_ratio(ratio[c]),
                     ", ".join(sorted({r["status"] for r in ctx.rows(cell=c)}))]
                    for c, t, tool, _ in cells(p) if t == name]
            f.tables.append(table(f"{name.capitalize()}: from the {base} net", [
                "cell", "switched", "train acc", "test acc", "train - test", "error ratio at init (per seed)",
                "status"], rows, note=f"depth {p['depth']}{wide}, {p['recipe']} recipe on {data_name}; mean +- sd "
                                      f"over {n} seed(s); a diverged run counts as chance"))
        rrows = [[c] + [pct(rob[(c, k)]) for k in ("train", "intact", "channels", "blocks")] for c in DROPOUT_PAIRS]
        f.tables.append(table("What dropout buys: test accuracy when parts are deleted", [
            "cell", "train acc (eval mode)", "test acc", f"{p['delete_channels']:.0%} channels deleted",
            "one block deleted (mean)"], rrows,
            note=f"channels: a random {p['delete_channels']:.0%} of the channels zeroed after every branch "
                 f"activation, mean of {p['draws']} draws; blocks: every block deleted in turn, mean"))
        for name in ("remove-one", "add-one"):
            cs = [c for c, t, _, _ in cells(p) if t == name]
            ms = [mean_sd(te[c]) for c in cs]
            f.figures.append(bar_figure(f"{name.capitalize()}: test accuracy", "test accuracy (%)", cs,
                                        [100 * m for m, _, _ in ms], [100 * s for _, s, _ in ms],
                                        caption=f"Mean +- sd over {n} seed(s); chance {chance:.0%}."))
        f.figures.append(bar_figure("Error ratio at init (log10 of first/last tap)", "log10 ratio", ids,
                                    [_log_ratio(ratio[c]) for c in ids],
                                    caption="0 = the error reaches the first layer intact; < 0 vanishes, > 0 "
                                            f"explodes. Geometric mean over seeds; a ratio of 0 (the error "
                                            f"underflows float32) is drawn at {UNDERFLOW:.1f}, the log10 of "
                                            "float32's smallest number; nan (0 / 0) has no bar."))
        f.notes += [
            f"Switches: ReLU vs sigmoid (model.activation), dropout {p['dropout']} "
            f"{p.get('dropout_mode') or 'channel'}-wise after every branch "
            "activation vs none (model.dropout), model.norm batch vs none (convs get biases), resnet vs plain, "
            "model.init kaiming vs small-gaussian (N(0, 0.01^2)). The dropout rate is our reading.",
            "Error ratio: gradient_flow's backward error RMS at the first tap / the last tap, one batch of "
            f"{p['probe_batch']} training images, a fresh net per seed, BN in batch mode, dropout off (eval "
            "mode). 0: the "
            "error underflows float32 before the first tap; nan: no error reaches even the last tap (0 / 0, e.g. "
            "ReLU units whose input underflowed to exactly 0 pass no gradient).",
            _post_activation_note(p, ratio, (p["depth"] - 2) // 2),  # CIFAR layout: 2 convs a block
        ]
        return f


def _post_activation_note(p, ratio, nb) -> str:
    """Why shortcuts alone cannot carry a sigmoid net's error: the activation follows every sum."""
    return (f"The blocks are He et al. 2015's post-activation blocks: the activation follows the sum, so with a "
            f"sigmoid the identity path passes through it too, {nb} times, and its error is multiplied by at most "
            f"1/4 per block (sigmoid' <= 1/4): 4^-{nb} = {4.0 ** -nb:.1e} in all. Measured first/last ratios at "
            f"init: bare+identity {fmt_ratio(ratio['bare+identity'])}, full-rectifier (sigmoid with BN, shortcuts, "
            f"He init) {fmt_ratio(ratio['full-rectifier'])}. A clean identity path needs the activation off it "
            "(pre-activation blocks, He et al. 2016), which these tables do not switch.")


UNDERFLOW = math.log10(1.4e-45)  # float32's smallest subnormal: where a ratio of exactly 0 is drawn


def _log_ratio(values):
    """log10 of the seeds' geometric mean; ``UNDERFLOW`` when every finite ratio is 0; None for nan."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite and all(v == 0 for v in finite):
        return UNDERFLOW
    g = geo_mean(values)
    return math.log10(g) if g > 0 else None


def _above(values, bound):
    """``(holds, spread)``: is every value above ``bound`` (log10 scale, seeds' spread deciding)?"""
    logs = [math.log10(x) if x and x > 0 else -math.inf for x in values]
    if not logs:
        return None, math.nan
    if any(not math.isfinite(x) for x in logs):
        return all(x == math.inf for x in logs if not math.isfinite(x)) and min(logs) > math.log10(bound), math.nan
    c = compare(logs, [math.log10(bound)] * len(logs), 0)
    return c["holds"], c["spread"]


def _init_ratios(ctx) -> dict:
    """Per cell and seed: the first/last-tap backward error ratio of a fresh net (inf on overflow)."""
    out = {}
    for cid, _, _, ov in cells(ctx.p):
        for s in ctx.seeds:
            with torch.random.fork_rng():
                torch.manual_seed(s)
                model = build_from_config(RunConfig().with_overrides(ov), ctx.dataset.num_classes,
                                          ctx.dataset.in_channels)
                x, y = take_batch(ctx.dataset, "train", ctx.p["probe_batch"], model)
                g = gradient_flow(model, x, y)
            out[f"{cid}-s{s}"] = g.error_ratio if all(map(math.isfinite, g.error_rms)) else math.inf
            ctx.log(f"init {cid} seed {s}: ratio {out[f'{cid}-s{s}']:.3g}")
    return out


def _robustness(ctx) -> dict:
    """Per finished run of the dropout pairs: test accuracy intact, with a random fraction of the
    channels after every branch activation zeroed (mean over draws), and with one block deleted
    (mean over blocks)."""
    out = {}
    for r in ctx.results:
        if r.get("cell") not in DROPOUT_PAIRS or r.get("status") != "finished":
            continue
        model, data = ctx.load(r)
        x, y = data.test_x, data.test_y
        def acc(model=model, x=x, y=y):
            return 1 - error_rate(model, x, y)
        chans = []
        for draw in range(ctx.p["draws"]):
            g = torch.Generator().manual_seed(1000 * r["seed"] + draw)
            hooks = [b.branch.relu1.register_forward_hook(_zero_channels(
                torch.rand(b.branch.conv1.out_channels, generator=g) >= ctx.p["delete_channels"]))
                for b in model.blocks]
            try:
                chans.append(acc())
            finally:
                for h in hooks:
                    h.remove()
        blocks = []
        for i in range(len(model.blocks)):
            with blocks_disabled(model, [i]):
                blocks.append(acc())
        out[r["run_id"]] = {"intact": acc(), "train": 1 - error_rate(model, data.train_x, data.train_y),
                            "channels": sum(chans) / len(chans), "blocks": sum(blocks) / len(blocks)}
    return out


def _zero_channels(keep: torch.Tensor):
    """A forward hook zeroing the channels where ``keep`` (a bool vector) is False, in every call."""
    def hook(module, inputs, out):
        return out * keep.to(out.device, out.dtype).view(1, -1, *([1] * (out.dim() - 2)))
    return hook
