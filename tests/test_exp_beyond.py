"""beyond experiment (Fixup, SkipInit/ReZero, delta-orthogonal): end to end at both scales with smoke
params, the init-time measurement, and the verdict logic on fabricated results."""
import json
import math

import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.beyond import NAMES, REMEDIES, Beyond, _within
from depthlab.experiments.runner import Context, reproduce

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_and_reuse(scale, tmp_path):
    doc = reproduce("beyond", scale=scale, params=Beyond.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 2 * len(REMEDIES) + 2
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in saved["verdicts"])
    assert saved["figures"] and all(f.get("runs") or f.get("series") for f in saved["figures"])
    assert {r["variant"] for r in saved["runs"]} == set(NAMES)
    init = json.loads((tmp_path / "measurements" / "init.json").read_text())["value"]
    deepest = max(Beyond.smoke["depths"])
    fixup = init[f"fixup-resnet{deepest}-s0"]
    assert abs(fixup["loss"] - math.log(10)) < 1e-4  # zero classifier: logits exactly 0
    assert fixup["after_step"] and math.isfinite(fixup["ratio"])  # no gradient at init, read after one step
    assert not init[f"resnet+rezero{deepest}-s0"]["after_step"]
    deep_runs = [r for r in saved["runs"] if r["depth"] == deepest]
    assert all(r["status"] != "finished" or r["epoch"] == Beyond.smoke["deepest_epochs"] for r in deep_runs)
    again = reproduce("beyond", scale=scale, params=Beyond.smoke, out=str(tmp_path), quiet=True, report=False)
    assert all(r["reused"] for r in again["runs"])
    assert again["verdicts"] == doc["verdicts"]


def test_runs_give_the_deepest_depth_its_own_epochs_and_every_net_the_width():
    p = {**Beyond.scales["quick"], "depths": [20, 1202], "deepest_epochs": 3, "width": 8}
    specs = {s.id: s for s in Beyond().runs(p)}
    assert set(specs) == {f"{v}{d}" for v in NAMES for d in (20, 1202)}
    assert "train.epochs=3" in specs["fixup-resnet1202"].overrides
    assert not any(o.startswith("train.epochs") for o in specs["fixup-resnet20"].overrides)
    assert all("model.width=8" in s.overrides for s in specs.values())
    assert "model.init=delta-orthogonal" in specs["plain+delta-orthogonal1202"].overrides


def test_within_bound_is_symmetric_and_rejects_undefined_ratios():
    assert _within([50.0], 100)[0] and _within([0.02], 100)[0]
    assert _within([500.0], 100)[0] is False and _within([1e-3], 100)[0] is False
    assert _within([math.nan], 100)[0] is False and _within([math.inf], 100)[0] is False
    assert _within([], 100)[0] is None


def _ctx(tmp_path, accs, ratios, fixup_loss=math.log(10)):
    """``accs``/``ratios``: variant -> train accuracy (or "diverged") / init gradient ratio, every depth."""
    exp = Beyond()
    p = {**exp.scales["quick"], "set": ()}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    init = {f"{v}{d}-s0": {"loss": fixup_loss if v == "fixup-resnet" else 2.4, "ratio": ratios[v],
                           "after_step": v == "fixup-resnet"} for v in NAMES for d in p["depths"]}
    ctx.measure = lambda name, fn, key=None: init  # no models built here
    for d in p["depths"]:
        for v, a in accs.items():
            diverged = a == "diverged"
            ctx.results.append({"id": f"{v}{d}", "seed": 0, "run_id": f"{v}{d}-s0", "run_dir": f"runs/{v}{d}-s0",
                                "variant": v, "depth": d, "status": "diverged" if diverged else "finished",
                                "train_acc": None if diverged else a, "test_acc": None if diverged else a,
                                "epoch": 4, "seconds_per_epoch": 1.0, "params": 1})
    return ctx


def test_verdicts_observed_when_remedies_train_and_keep_the_gradient(tmp_path):
    ctx = _ctx(tmp_path, {"plain": "diverged", "fixup-resnet": 0.9, "resnet+rezero": 0.95,
                          "plain+delta-orthogonal": 0.8},
               {"plain": 1e9, "fixup-resnet": 0.5, "resnet+rezero": 1.3, "plain+delta-orthogonal": 3.0})
    f = Beyond().analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 8
    assert "10.0%" in f.verdicts[0]["detail"]  # the diverged baseline counts as chance
    assert "(after 1 step)" in f.tables[1]["rows"][len(Beyond.scales["quick"]["depths"])][2]


def test_verdicts_not_observed_when_remedies_fail(tmp_path):
    ctx = _ctx(tmp_path, {"plain": 0.5, "fixup-resnet": 0.12, "resnet+rezero": 0.55,
                          "plain+delta-orthogonal": "diverged"},
               {"plain": 2.0, "fixup-resnet": math.nan, "resnet+rezero": 1e4, "plain+delta-orthogonal": 1e-5},
               fixup_loss=2.5)
    f = Beyond().analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 8
