"""The shattered experiment: end to end at both scales (smoke params) and its verdict logic on
fabricated measurements."""
import json

import numpy as np
import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.runner import Context, reproduce, resolve_params
from depthlab.experiments.shattered import NETS, Shattered, measure_shattering

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_smoke(scale, tmp_path):
    doc = reproduce("shattered", scale=scale, params=Shattered.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    assert doc["runs"] == [] and doc["data"]["name"] is None  # nothing trained, no dataset loaded
    assert len(doc["verdicts"]) == 4
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in doc["verdicts"])
    assert doc["figures"] and all(f.get("series") or f.get("panels") for f in doc["figures"])
    cache = tmp_path / "measurements" / "shattering.json"
    stamp = cache.stat().st_mtime_ns
    again = reproduce("shattered", scale=scale, params=Shattered.smoke, out=str(tmp_path), quiet=True,
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


def _analyse(tmp_path, monkeypatch, measured):
    exp = Shattered()
    p = resolve_params(exp, "quick", {"sweep_depths": [1, 4], "num_inits": 6})
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    monkeypatch.setattr(ctx, "measure", lambda name, fn, key=None: json.loads(json.dumps(measured)))
    return exp.analyse(ctx)


def test_verdicts_observed_when_the_paper_holds(tmp_path, monkeypatch):
    lag1 = {"shallow": 0.98, "feedforward": 0.0, "resnet": 0.9, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.6, "feedforward": 0.0, "resnet": 0.3, "brown": 0.5, "white": 0.0}
    f = _analyse(tmp_path, monkeypatch, _fake(lag1, area))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 4
    assert "1-layer feedforward 0.98" in f.verdicts[0]["detail"]
    assert f.tables and len(f.figures) == 4  # gradients, ACF, correlation, depth sweep


def test_verdicts_not_observed_when_it_fails(tmp_path, monkeypatch):
    # shallow net not smooth, deep feedforward still smooth, resnet as shattered as the deep net
    lag1 = {"shallow": 0.5, "feedforward": 0.8, "resnet": 0.8, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.2, "feedforward": 0.4, "resnet": 0.4, "brown": 0.5, "white": 0.0}
    f = _analyse(tmp_path, monkeypatch, _fake(lag1, area))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 4


def test_spread_straddling_a_threshold_is_inconclusive(tmp_path, monkeypatch):
    lag1 = {"shallow": 0.98, "feedforward": 0.0, "resnet": 0.9, "brown": 0.97, "white": 0.0}
    area = {"shallow": 0.6, "feedforward": 0.0, "resnet": 0.3, "brown": 0.5, "white": 0.0}
    m = _fake(lag1, area)
    m["shallow"]["lag1"] = [0.8, 1.0, 0.85, 0.99, 0.9, 0.95]  # mean ~0.915, sd ~0.08 around the 0.9 bar
    f = _analyse(tmp_path, monkeypatch, m)
    assert f.verdicts[0]["status"].startswith(INCONCLUSIVE)


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
