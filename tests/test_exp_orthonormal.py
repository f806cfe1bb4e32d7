"""orthonormal experiment (Xie et al. 2017): end to end at both scales with smoke params, and the
verdict logic on fabricated results (a diverged run counts as not trained)."""
import json

import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.orthonormal import VARIANTS, Orthonormal, _overrides
from depthlab.experiments.runner import Context, reproduce

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_and_reuse(scale, tmp_path):
    reproduce("orthonormal", scale=scale, params=Orthonormal.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 4  # one depth: 2 remedies x (vs plain, vs resnet)
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in saved["verdicts"])
    assert saved["figures"] and all(f.get("runs") or f.get("series") for f in saved["figures"])
    assert {r["variant"] for r in saved["runs"]} == set(VARIANTS)
    again = reproduce("orthonormal", scale=scale, params=Orthonormal.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])


def test_plain_variants_use_xie_conv_bn_relu_family():
    p = Orthonormal.scales["quick"]
    assert "model.name=xie-plain" in _overrides("plain+orthonormal+modulation", 110, p)
    assert "methods.modulation=top" in _overrides("plain+orthonormal+modulation", 110, p)
    assert "model.name=resnet" in _overrides("resnet", 44, p)


def _ctx(tmp_path, accs):
    """``accs``: variant -> train accuracy (or "diverged"), the same at every depth."""
    exp = Orthonormal()
    p = {**exp.scales["quick"], "set": (), "epochs": None}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    ctx.measure = lambda name, fn, key=None: {}  # no trained models to load here
    for d in p["depths"]:
        for v, a in accs.items():
            diverged = a == "diverged"
            ctx.results.append({"id": f"{v}{d}", "seed": 0, "run_id": f"{v}{d}-s0", "run_dir": f"runs/{v}{d}-s0",
                                "variant": v, "depth": d, "status": "diverged" if diverged else "finished",
                                "train_acc": None if diverged else a, "test_acc": None if diverged else a,
                                "seconds_per_epoch": 1.0, "params": 1})
    return ctx


def test_verdicts_observed_when_remedies_beat_plain_and_near_resnet(tmp_path):
    f = Orthonormal().analyse(_ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.93,
                                              "plain+orthonormal+modulation": 0.95, "resnet": 0.97}))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 8  # 2 depths x 4


def test_verdicts_not_observed_and_diverged_counts_as_not_trained(tmp_path):
    f = Orthonormal().analyse(_ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.52,
                                              "plain+orthonormal+modulation": "diverged", "resnet": 0.99}))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 8
    mod_vs_plain = f.verdicts[1]
    assert "modulation" in mod_vs_plain["claim"] and "diverged" in mod_vs_plain["detail"]
    assert "10.0%" in mod_vs_plain["detail"]  # chance accuracy, not silently dropped
    assert any("Diverged" in note for note in f.notes)


def test_mixed_outcome_is_reported_per_depth(tmp_path):
    ctx = _ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.9, "plain+orthonormal+modulation": 0.9,
                          "resnet": 0.92})
    for r in ctx.rows(variant="plain+orthonormal", depth=110):
        r.update(status="diverged", train_acc=None, test_acc=None)
    statuses = {v["claim"]: v["status"] for v in Orthonormal().analyse(ctx).verdicts}
    assert statuses["plain+orthonormal-44 trains better than plain-44 by >= 5% (train accuracy)"] == OBSERVED
    assert statuses["plain+orthonormal-110 trains better than plain-110 by >= 5% (train accuracy)"] == NOT_OBSERVED
