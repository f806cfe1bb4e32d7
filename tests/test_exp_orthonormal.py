"""orthonormal experiment (Xie et al. 2017): end to end at both scales with smoke params, each
verdict's numbers and status recomputed from the run directories, and the verdict logic on
fabricated results (a diverged run counts as not trained)."""
import json

import expcheck as ec
import pytest

from depthlab.experiments.base import NOT_OBSERVED, OBSERVED
from depthlab.experiments.orthonormal import REMEDIED, VARIANTS, Orthonormal, _overrides, _variants
from depthlab.experiments.runner import Context, reproduce


def check_verdicts(out, doc):
    """Every verdict's numbers and status, recomputed from each run's last metrics row (a diverged run
    at chance, flagged)."""
    p = doc["params"]
    plain, lam = p["plain_family"], p["lam"]
    model = {"plain": dict(name=plain, methods={"orthonormal": 0.0, "modulation": None}),
             "plain+orthonormal": dict(name=plain, methods={"orthonormal": lam, "modulation": None}),
             "plain+orthonormal+modulation": dict(name=plain, methods={"orthonormal": lam,
                                                                      "modulation": p["modulation"]}),
             "resnet": dict(name="resnet")}
    for d in p["depths"]:
        run = {v: ec.find_run(out, depth=d, **model[v]) for v in VARIANTS}
        chance = ec.chance(out, run["plain"])
        acc = {v: ec.acc(out, run[v], if_diverged=chance) for v in VARIANTS}
        shown = {v: ec.pct([acc[v]]) + (" (1 diverged)" if ec.diverged(out, run[v]) else "") for v in VARIANTS}
        for v in REMEDIED:
            ec.check(ec.verdict(doc, f"{v}-{d} trains better than plain-{d}"),
                     ec.rule([acc[v]], [acc["plain"]], p["gap"]),
                     f"plain {shown['plain']}, {v} {shown[v]}")
            ec.check(ec.verdict(doc, f"{v}-{d} comes within"), ec.rule([acc[v]], [acc["resnet"]], -p["near"]),
                     f"resnet {shown['resnet']}, {v} {shown[v]}")


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_run_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    reproduce("orthonormal", seeds=1, scale=scale, params=Orthonormal.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 4  # one depth: 2 remedies x (vs plain, vs resnet)
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("runs") or f.get("series") for f in saved["figures"])
    assert {r["variant"] for r in saved["runs"]} == set(VARIANTS)
    again = reproduce("orthonormal", seeds=1, scale=scale, params=Orthonormal.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])


def test_plain_variants_use_xie_conv_bn_relu_family():
    p = Orthonormal.scales["quick"]
    assert "model.name=xie-plain" in _overrides("plain+orthonormal+modulation", 110, p)
    assert "methods.modulation=top-conv" in _overrides("plain+orthonormal+modulation", 110, p)
    assert "model.name=resnet" in _overrides("resnet", 44, p)


def test_each_modulation_reading_is_its_own_variant_and_init_is_a_parameter():
    p = Orthonormal.scales["quick"]
    assert _variants(p) == ["plain", "plain+orthonormal", "plain+orthonormal+modulation",
                            "plain+orthonormal+modulation[fc]", "resnet"]
    fc = _overrides("plain+orthonormal+modulation[fc]", 44, p)
    assert [o for o in fc if o.startswith("methods.modulation=")] == ["methods.modulation=fc"]
    assert "methods.orthonormal=0.001" in fc and not any(o.startswith("model.init=") for o in fc)
    ortho = {**p, "init": "orthogonal"}
    assert "model.init=orthogonal" in _overrides("plain+orthonormal", 44, ortho)
    assert "model.init=orthogonal" in _overrides("plain+orthonormal+modulation[fc]", 44, ortho)
    for v in ("plain", "resnet"):
        assert not any(o.startswith("model.init=") for o in _overrides(v, 44, ortho))


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


def test_verdicts_observed_when_remedies_beat_plain_and_near_resnet_details_show_the_inputs(tmp_path):
    f = Orthonormal().analyse(_ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.93,
                                              "plain+orthonormal+modulation": 0.95, "resnet": 0.97}))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 8  # 2 depths x 4
    assert [v["detail"] for v in f.verdicts[:4]] == ["plain 50.0%, plain+orthonormal 93.0%",
                                                     "plain 50.0%, plain+orthonormal+modulation 95.0%",
                                                     "resnet 97.0%, plain+orthonormal 93.0%",
                                                     "resnet 97.0%, plain+orthonormal+modulation 95.0%"]


def test_verdicts_not_observed_and_a_diverged_run_is_shown_at_chance(tmp_path):
    f = Orthonormal().analyse(_ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.52,
                                              "plain+orthonormal+modulation": "diverged", "resnet": 0.99}))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 8
    mod_vs_plain = f.verdicts[1]
    assert "modulation" in mod_vs_plain["claim"] and "diverged" in mod_vs_plain["detail"]
    assert mod_vs_plain["detail"] == "plain 50.0%, plain+orthonormal+modulation 10.0% (1 diverged)"  # at chance
    assert any("Diverged" in note for note in f.notes)


def test_mixed_outcome_is_reported_per_depth(tmp_path):
    ctx = _ctx(tmp_path, {"plain": 0.5, "plain+orthonormal": 0.9, "plain+orthonormal+modulation": 0.9,
                          "resnet": 0.92})
    for r in ctx.rows(variant="plain+orthonormal", depth=110):
        r.update(status="diverged", train_acc=None, test_acc=None)
    statuses = {v["claim"]: v["status"] for v in Orthonormal().analyse(ctx).verdicts}
    assert statuses["plain+orthonormal-44 trains better than plain-44 by >= 5% (train accuracy)"] == OBSERVED
    assert statuses["plain+orthonormal-110 trains better than plain-110 by >= 5% (train accuracy)"] == NOT_OBSERVED
