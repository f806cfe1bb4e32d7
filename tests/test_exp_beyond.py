"""beyond experiment (Fixup, SkipInit/ReZero, delta-orthogonal): end to end at both scales with smoke
params, each verdict's numbers and status recomputed from the run directories and the init-time
measurement, and the verdict logic on fabricated results."""
import json
import math

import expcheck as ec
import pytest

from depthlab.experiments.base import NOT_OBSERVED, OBSERVED, within
from depthlab.experiments.beyond import NAMES, REMEDIES, VANILLA, XIAO, XIAO_BASELINE, Beyond
from depthlab.experiments.runner import Context, reproduce

# what each variant trains, as its config.json says (not the name the experiment gives the run)
MODEL = {"plain": {"name": "plain", "init": "kaiming"}, "fixup-resnet": {"name": "fixup-resnet"},
         "resnet+rezero": {"name": "resnet", "rezero": True},
         "plain+delta-orthogonal": {"name": "plain", "init": "delta-orthogonal"},
         "vanilla+delta-orthogonal": {"name": "vanilla", "init": "delta-orthogonal"},
         "vanilla+gaussian": {"name": "vanilla", "init": "gaussian"}}


def _ratio_text(r):
    return "overflow" if r == math.inf else f"{r:.3g}"


def _inside(r, bound):
    """A ratio within [1/bound, bound]; zero, nan and inf are outside."""
    return r > 0 and math.isfinite(r) and abs(math.log10(r)) <= math.log10(bound)


def check_verdicts(out, doc):
    """Every verdict's numbers and status, recomputed from the run directories and measurements/init.json."""
    p = doc["params"]
    deep = max(p["depths"])
    run = {v: ec.find_run(out, depth=deep, **MODEL[v]) for v in NAMES}
    chance = ec.chance(out, run["plain"])
    acc = {v: ec.acc(out, run[v], if_diverged=chance) for v in NAMES}  # a diverged run counts as chance
    for v in REMEDIES:
        holds = ec.both(ec.rule([acc[v]], [chance], p["above_chance"]), ec.rule([acc[v]], [acc["plain"]], p["gap"]))
        ec.check(ec.verdict(doc, f"{v} trains at depth {deep}"), holds,
                 f"{v}-{deep} {ec.pct([acc[v]])}, plain-{deep} {ec.pct([acc['plain']])}, chance {chance:.0%}")
    init = ec.measurement(out, "init")
    ratio = {v: init[run[v]]["ratio"] for v in NAMES}
    ec.check(ec.verdict(doc, "plain baseline's gradient ratio"), not _inside(ratio["plain"], p["ratio_bound"]),
             f"first/last error RMS ratio of plain-{deep}: {_ratio_text(ratio['plain'])}")
    for v in REMEDIES:
        ec.check(ec.verdict(doc, f"at init {v}'s gradient ratio"), _inside(ratio[v], p["ratio_bound"]),
                 f"{v}-{deep} {_ratio_text(ratio[v])} (plain-{deep} {_ratio_text(ratio['plain'])})")
    depths = sorted(p["depths"])
    loss = {d: init[ec.find_run(out, depth=d, **MODEL["fixup-resnet"])]["loss"] for d in depths}
    off = [abs(x - math.log(1 / chance)) for x in loss.values()]
    # the claim says "within 0.01 at every depth": each depth's loss, not their mean
    ec.check(ec.verdict(doc, "Fixup's initial loss"), all(x <= 0.01 for x in off),
             "initial loss " + ", ".join(f"fixup-{d} {loss[d]:.4f}" for d in depths))
    # Xiao et al.: the vanilla tanh net, delta-orthogonal vs Gaussian at the same scales
    x, g = acc["vanilla+delta-orthogonal"], acc["vanilla+gaussian"]
    ec.check(ec.verdict(doc, "vanilla tanh net with delta-orthogonal init trains"),
             ec.rule([x], [p["vanilla_trains"]], 0), f"vanilla+delta-orthogonal-{deep} {ec.pct([x])}")
    ec.check(ec.verdict(doc, "Gaussian init at the same scales stays near chance"),
             ec.rule([chance + p["near_chance"]], [g], 0),
             f"vanilla+gaussian-{deep} {ec.pct([g])}, chance {chance:.0%}")
    bound = p["vanilla_ratio_bound"]
    ec.check(ec.verdict(doc, "at init vanilla+delta-orthogonal's gradient ratio"),
             _inside(ratio["vanilla+delta-orthogonal"], bound),
             f"vanilla+delta-orthogonal-{deep} {_ratio_text(ratio['vanilla+delta-orthogonal'])} (vanilla+gaussian-"
             f"{deep} {_ratio_text(ratio['vanilla+gaussian'])})")
    spectra = ec.measurement(out, "spectrum")
    last = {v: spectra[v]["0"][-1] for v in VANILLA}
    assert [r["depth"] for r in spectra[XIAO]["0"]] == p["spectrum_depths"]
    for rows in (spectra[v]["0"] for v in VANILLA):  # spread = max / min of the pooled singular values
        assert all(math.isclose(r["spread"], r["max"] / r["min"]) and r["min"] <= r["q0.5"] <= r["max"] for r in rows)
    ec.check(ec.verdict(doc, "Jacobian spectrum is spread"),
             last[XIAO_BASELINE]["spread"] / last[XIAO]["spread"] >= p["spread_factor"],
             "; ".join(f"{v}: spread {last[v]['spread']:.3g}, median {last[v]['q0.5']:.3g}" for v in VANILLA))


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_run_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    doc = reproduce("beyond", seeds=1, scale=scale, params=Beyond.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 2 * len(REMEDIES) + 2 + 4
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("runs") or f.get("series") or f.get("panels") for f in saved["figures"])
    spectrum_fig = next(f for f in saved["figures"] if f["type"] == "panels")
    assert all(len(panel["series"]) == len(VANILLA) for panel in spectrum_fig["panels"])
    assert {r["variant"] for r in saved["runs"]} == set(NAMES)
    init = json.loads((tmp_path / "measurements" / "init.json").read_text())["value"]
    deepest = max(Beyond.smoke["depths"])
    fixup = init[f"fixup-resnet{deepest}-s0"]
    assert abs(fixup["loss"] - math.log(10)) < 1e-4  # zero classifier: logits exactly 0
    assert fixup["after_step"] and math.isfinite(fixup["ratio"])  # no gradient at init, read after one step
    assert not init[f"resnet+rezero{deepest}-s0"]["after_step"]
    deep_runs = [r for r in saved["runs"] if r["depth"] == deepest]
    assert all(r["status"] != "finished" or r["epoch"] == Beyond.smoke["deepest_epochs"] for r in deep_runs
               if r["variant"] not in VANILLA)
    cfg = ec.configs(tmp_path)[ec.find_run(tmp_path, depth=deepest, **MODEL[XIAO])]
    assert cfg["model"]["activation"] == "tanh"
    assert (cfg["train"]["lr"], cfg["train"]["weight_decay"]) == (saved["params"]["vanilla_lr"], 0.0)
    assert (cfg["model"]["sigma_w"], cfg["model"]["sigma_b"]) == (saved["params"]["sigma_w"],
                                                                   saved["params"]["sigma_b"])
    again = reproduce("beyond", seeds=1, scale=scale, params=Beyond.smoke, out=str(tmp_path), quiet=True, report=False)
    assert all(r["reused"] for r in again["runs"])
    assert again["verdicts"] == doc["verdicts"]


def test_runs_give_the_deepest_depth_its_own_epochs_and_every_net_the_width():
    p = {**Beyond.scales["quick"], "depths": [20, 1202], "deepest_epochs": 3, "width": 8}
    specs = {s.id: s for s in Beyond().runs(p)}
    assert set(specs) == {f"{v}{d}" for v in NAMES for d in (20, 1202)}
    assert "train.epochs=3" in specs["fixup-resnet1202"].overrides
    assert not any(o.startswith("train.epochs") for o in specs["fixup-resnet20"].overrides)
    assert all("model.width=8" in s.overrides for s in specs.values() if s.labels["variant"] not in VANILLA)
    assert all(f"model.width={p['vanilla_width']}" in s.overrides for s in specs.values()
               if s.labels["variant"] in VANILLA)
    assert "model.init=delta-orthogonal" in specs["plain+delta-orthogonal1202"].overrides
    for d in (20, 1202):  # the vanilla nets train their own budget at every depth, with their own lr, no decay
        ov = specs[f"{XIAO}{d}"].overrides
        assert f"train.epochs={p['vanilla_epochs']}" in ov and "train.weight_decay=0" in ov
        assert "model.name=vanilla" in ov and f"train.lr={p['vanilla_lr']}" in ov


def test_within_bound_is_symmetric_and_rejects_undefined_ratios():
    assert within([50.0], 100)[0] and within([0.02], 100)[0]
    assert within([500.0], 100)[0] is False and within([1e-3], 100)[0] is False
    assert within([math.nan], 100)[0] is False and within([math.inf], 100)[0] is False
    assert within([], 100)[0] is None


def test_seeds_straddling_a_constant_bound_are_inconclusive():
    # log10 ratios 1.95 and 2.08 against the bound 2: the seeds' spread straddles it. A constant compared
    # as a one-element list would have no spread, and the straddle rule needs two values on each side.
    assert within([90.0, 120.0], 100)[0] is None
    assert within([50.0, 60.0], 100)[0] is True and within([500.0, 600.0], 100)[0] is False


def _ctx(tmp_path, accs, ratios, spreads, fixup_loss=math.log(10)):
    """``accs``/``ratios``: variant -> train accuracy (or "diverged") / init gradient ratio, every depth;
    ``spreads``: vanilla variant -> Jacobian spread at init at every depth."""
    exp = Beyond()
    p = {**exp.scales["quick"], "set": ()}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    init = {f"{v}{d}-s0": {"loss": fixup_loss if v == "fixup-resnet" else 2.4, "ratio": ratios[v],
                           "after_step": v == "fixup-resnet"} for v in NAMES for d in p["depths"]}
    spectra = {v: {"0": [{"depth": d, "spread": spreads[v], "q0.5": 0.5} for d in p["spectrum_depths"]]}
               for v in VANILLA}
    ctx.measure = lambda name, fn, key=None: {"init": init, "spectrum": spectra}[name]  # no models built here
    for d in p["depths"]:
        for v, a in accs.items():
            diverged = a == "diverged"
            ctx.results.append({"id": f"{v}{d}", "seed": 0, "run_id": f"{v}{d}-s0", "run_dir": f"runs/{v}{d}-s0",
                                "variant": v, "depth": d, "status": "diverged" if diverged else "finished",
                                "train_acc": None if diverged else a, "test_acc": None if diverged else a,
                                "epoch": 4, "seconds_per_epoch": 1.0, "params": 1})
    return ctx


def test_verdicts_observed_when_remedies_train_and_keep_the_gradient_and_details_show_the_inputs(tmp_path):
    ctx = _ctx(tmp_path, {"plain": "diverged", "fixup-resnet": 0.9, "resnet+rezero": 0.95,
                          "plain+delta-orthogonal": 0.2, XIAO: 0.95, XIAO_BASELINE: 0.11},
               {"plain": 1e9, "fixup-resnet": 0.5, "resnet+rezero": 1.3, "plain+delta-orthogonal": 3e7,
                XIAO: 3.0, XIAO_BASELINE: 1e-9}, {XIAO: 50.0, XIAO_BASELINE: 1e7})
    f = Beyond().analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 10  # the BN + ReLU extra is never judged
    # the diverged baseline counts as chance
    assert f.verdicts[0]["detail"] == "fixup-resnet-1202 90.0%, plain-1202 10.0%, chance 10%"
    assert f.verdicts[2]["detail"] == "first/last error RMS ratio of plain-1202: 1e+09"
    assert f.verdicts[5]["detail"] == "initial loss fixup-20 2.3026, fixup-110 2.3026, fixup-1202 2.3026"
    assert f.verdicts[6]["detail"] == "vanilla+delta-orthogonal-1202 95.0%"
    assert f.verdicts[8]["detail"] == "vanilla+delta-orthogonal-1202 3 (vanilla+gaussian-1202 1e-09)"
    assert f.verdicts[9]["detail"] == ("vanilla+delta-orthogonal: spread 50, median 0.5; vanilla+gaussian: spread "
                                       "1e+07, median 0.5")
    assert "(after 1 step)" in f.tables[1]["rows"][len(Beyond.scales["quick"]["depths"])][2]


def test_verdicts_not_observed_when_remedies_fail_and_details_show_the_inputs(tmp_path):
    ctx = _ctx(tmp_path, {"plain": 0.5, "fixup-resnet": 0.12, "resnet+rezero": 0.55,
                          "plain+delta-orthogonal": "diverged", XIAO: "diverged", XIAO_BASELINE: 0.6},
               {"plain": 2.0, "fixup-resnet": math.nan, "resnet+rezero": 1e4, "plain+delta-orthogonal": 1e-5,
                XIAO: 20.0, XIAO_BASELINE: 1.0}, {XIAO: 50.0, XIAO_BASELINE: 60.0}, fixup_loss=2.5)
    f = Beyond().analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 10
    assert f.verdicts[0]["detail"] == "fixup-resnet-1202 12.0%, plain-1202 50.0%, chance 10%"
    assert f.verdicts[3]["detail"] == "fixup-resnet-1202 nan (plain-1202 2)"
    assert f.verdicts[5]["detail"] == "initial loss fixup-20 2.5000, fixup-110 2.5000, fixup-1202 2.5000"
    assert f.verdicts[6]["detail"] == "vanilla+delta-orthogonal-1202 10.0%"  # diverged counts as chance
