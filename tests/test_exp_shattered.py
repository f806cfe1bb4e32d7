"""The shattered experiment: end to end at both scales (smoke params) with each verdict's numbers and
status recomputed from the cached measurement (whose lag-1 and mean ACF of init 0 are recomputed from
that init's gradient), and its verdict logic on fabricated measurements."""
import json

import expcheck as ec
import numpy as np
import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.runner import Context, reproduce, resolve_params
from depthlab.experiments.shattered import NETS, Shattered, measure_shattering


def _acf(seq, lag):
    """Autocorrelation of a sequence at ``lag``: sum of centred products over the centred energy."""
    m = sum(seq) / len(seq)
    c = [x - m for x in seq]
    energy = sum(x * x for x in c)
    return sum(a * b for a, b in zip(c, c[lag:])) / energy


def check_init_0(m, p):
    """The measurement's lag-1 and mean ACF (lags 1..max_lag) of init 0 are those of init 0's gradient
    sequence (of draw 0 for the noises)."""
    lags = range(1, min(p["max_lag"], p["n_points"] - 1) + 1)
    for k in NETS:
        g = m[k]["gradient"]
        assert len(m[k]["lag1"]) == len(m[k]["acf_area"]) == p["num_inits"] and len(g) == p["n_points"]
        assert m[k]["lag1"][0] == pytest.approx(_acf(g, 1), abs=1e-9), k
        assert m[k]["acf_area"][0] == pytest.approx(sum(_acf(g, lag) for lag in lags) / len(lags), abs=1e-9), k


def check_verdicts(doc, m):
    """Every verdict's numbers (mean +- sd over the inits) and status (a spread across the threshold is
    inconclusive), recomputed from the measurement ``m``."""
    p, n = doc["params"], doc["params"]["num_inits"]
    lag1 = {k: m[k]["lag1"] for k in NETS}
    area = {k: m[k]["acf_area"] for k in NETS}
    label = {"shallow": "1-layer feedforward", "feedforward": f"{p['ff_depth']}-layer feedforward",
             "resnet": f"{p['res_blocks']}-block ResNet", "brown": "brown noise", "white": "white noise"}

    def shown(*nets, of=lag1):
        return "; ".join(f"{label[k]} {ec.fmt(of[k], digits=3)}" for k in nets)

    ec.check(ec.verdict(doc, "the 1-layer net's gradients are brown-noise-like"),
             ec.rule(lag1["shallow"], [p["shallow_min"]] * n, 0.0),
             f"lag-1 autocorrelation over {n} inits: {shown('shallow', 'brown')}")
    band = p["white_band"]
    ec.check(ec.verdict(doc, "gradients are white-noise-like"),
             ec.both(ec.rule(lag1["feedforward"], lag1["white"], -band), ec.rule(lag1["white"], lag1["feedforward"],
                                                                                  -band)),
             shown("feedforward", "white"))
    ec.check(ec.verdict(doc, "ResNet is in between"),
             ec.both(ec.rule(lag1["resnet"], lag1["feedforward"], p["margin"]),
                     ec.rule(lag1["shallow"], lag1["resnet"], 0.0)),
             shown("resnet", "feedforward", "shallow"))
    ec.check(ec.verdict(doc, "ACF decays faster"),
             ec.both(ec.rule(area["resnet"], area["feedforward"], p["margin"] / 2),
                     ec.rule(area["shallow"], area["resnet"], 0.0)),
             shown("resnet", "feedforward", "shallow", of=area))


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_measured_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    doc = reproduce("shattered", seeds=1, scale=scale, params=Shattered.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    assert doc["runs"] == [] and doc["data"]["name"] is None  # nothing trained, no dataset loaded
    assert len(doc["verdicts"]) == 4
    m = ec.measurement(tmp_path, "shattering")
    check_init_0(m, doc["params"])
    check_verdicts(doc, m)
    assert doc["figures"] and all(f.get("series") or f.get("panels") for f in doc["figures"])
    cache = tmp_path / "measurements" / "shattering.json"
    stamp = cache.stat().st_mtime_ns
    again = reproduce("shattered", seeds=1, scale=scale, params=Shattered.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])
    assert cache.stat().st_mtime_ns == stamp  # the measurement was reused, not recomputed
    assert again["verdicts"] == doc["verdicts"]


def _fake(lag1: dict, area: dict, n=6, points=16) -> dict:
    rng = np.random.default_rng(0)
    m = {}
    for k in NETS:
        m[k] = {"lag1": list(lag1[k] + 0.01 * rng.standard_normal(n)),
                "acf_area": list(area[k] + 0.01 * rng.standard_normal(n)),
                "gradient": list(rng.standard_normal(points)), "x": list(np.linspace(-2, 2, points)),
                "acf_mean": [1.0, lag1[k], 0.0], "acf_sd": [0.0, 0.01, 0.01], "correlation": None}
    m["feedforward"]["correlation"] = np.eye(4).tolist()
    m["sweep"] = {"feedforward": {"1": [0.98] * n, "4": [0.5] * n}, "resnet": {"1": [0.99] * n, "4": [0.95] * n}}
    return m


PARAMS = {"sweep_depths": [1, 4], "num_inits": 6}


def _analyse(tmp_path, monkeypatch, measured):
    exp = Shattered()
    p = resolve_params(exp, "quick", PARAMS)
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    monkeypatch.setattr(ctx, "measure", lambda name, fn, key=None: json.loads(json.dumps(measured)))
    return exp.analyse(ctx)


def test_verdicts_observed_when_the_paper_holds_details_show_mean_and_sd_over_inits(tmp_path, monkeypatch):
    lag1 = {"shallow": 0.98, "feedforward": 0.0, "resnet": 0.9, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.6, "feedforward": 0.0, "resnet": 0.3, "brown": 0.5, "white": 0.0}
    m = _fake(lag1, area)
    f = _analyse(tmp_path, monkeypatch, m)
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 4
    assert f.verdicts[0]["detail"].startswith("lag-1 autocorrelation over 6 inits: 1-layer feedforward 0.98")
    check_verdicts({"params": resolve_params(Shattered(), "quick", PARAMS), "verdicts": f.verdicts}, m)
    assert f.tables and len(f.figures) == 4  # gradients, ACF, correlation, depth sweep


def test_verdicts_not_observed_when_it_fails_details_show_mean_and_sd_over_inits(tmp_path, monkeypatch):
    # shallow net not smooth, deep feedforward still smooth, resnet as shattered as the deep net
    lag1 = {"shallow": 0.5, "feedforward": 0.8, "resnet": 0.8, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.2, "feedforward": 0.4, "resnet": 0.4, "brown": 0.5, "white": 0.0}
    m = _fake(lag1, area)
    f = _analyse(tmp_path, monkeypatch, m)
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 4
    check_verdicts({"params": resolve_params(Shattered(), "quick", PARAMS), "verdicts": f.verdicts}, m)


def test_spread_straddling_a_threshold_is_inconclusive(tmp_path, monkeypatch):
    lag1 = {"shallow": 0.98, "feedforward": 0.0, "resnet": 0.9, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.6, "feedforward": 0.0, "resnet": 0.3, "brown": 0.5, "white": 0.0}
    m = _fake(lag1, area)
    m["shallow"]["lag1"] = [0.8, 1.0, 0.85, 0.99, 0.9, 0.95]  # mean ~0.915, sd ~0.08 around the 0.9 bar
    f = _analyse(tmp_path, monkeypatch, m)
    assert f.verdicts[0]["status"].startswith(INCONCLUSIVE)
    assert f.verdicts[0]["detail"].startswith("lag-1 autocorrelation over 6 inits: 1-layer feedforward 0.915 +- 0.080")
    check_verdicts({"params": resolve_params(Shattered(), "quick", PARAMS), "verdicts": f.verdicts}, m)


def test_measurement_shapes_and_a_small_real_ordering():
    p = resolve_params(Shattered(), "quick", {**Shattered.smoke, "width": 64, "ff_depth": 24, "res_blocks": 8,
                                              "n_points": 64, "num_inits": 3})
    m = measure_shattering(p)
    assert set(NETS) <= set(m) and len(m["shallow"]["gradient"]) == 64
    assert len(m["resnet"]["lag1"]) == 3 and len(m["white"]["acf_mean"]) == p["max_lag"] + 1
    corr = np.asarray(m["resnet"]["correlation"])
    assert corr.shape == (16, 16) and np.allclose(np.diag(corr), 1.0, atol=1e-3)
    # deep BN feedforward gradients are far less correlated than the shallow net's and the resnet's
    assert np.mean(m["feedforward"]["lag1"]) < np.mean(m["resnet"]["lag1"]) - 0.3
    assert np.mean(m["shallow"]["lag1"]) > 0.8
