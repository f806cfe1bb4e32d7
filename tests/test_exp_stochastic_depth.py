"""stochastic-depth experiment (Huang et al. 2016): end to end at both scales with smoke params,
and the verdict logic on fabricated results."""
import json

import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.runner import Context, reproduce
from depthlab.experiments.stochastic_depth import StochasticDepth

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_and_reuse(scale, tmp_path):
    reproduce("stochastic-depth", scale=scale, params=StochasticDepth.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 2  # one depth: accuracy and time
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in saved["verdicts"])
    assert saved["figures"] and all(f.get("runs") or f.get("values") for f in saved["figures"])
    assert {r["variant"] for r in saved["runs"]} == {"constant", "stochastic"}
    again = reproduce("stochastic-depth", scale=scale, params=StochasticDepth.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])


def _ctx(tmp_path, rows, seeds=(0,)):
    exp = StochasticDepth()
    p = {**exp.scales["quick"], "depths": [56, 110], "set": (), "epochs": None}
    ctx = Context(exp, "quick", p, list(seeds), tmp_path, "cpu", None, "", True)
    for depth, variant, seed, test_acc, spe in rows:
        ctx.results.append({"id": f"{variant}{depth}", "seed": seed, "run_id": f"{variant}{depth}-s{seed}",
                            "run_dir": f"runs/{variant}{depth}-s{seed}", "variant": variant, "depth": depth,
                            "status": "finished", "train_acc": 1.0, "test_acc": test_acc,
                            "seconds_per_epoch": spe, "params": 1})
    return ctx


def _grid(sd_acc, sd_time, seeds=(0,)):
    rows = []
    for s in seeds:
        for d in (56, 110):
            rows += [(d, "constant", s, 0.95, 2.0 * d / 56), (d, "stochastic", s, sd_acc(s), sd_time(s) * d / 56)]
    return rows


def test_verdicts_observed_when_sd_matches_accuracy_and_is_faster(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.955, lambda s: 1.5)))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 4  # 2 depths x (accuracy, time)
    assert "ratio 0.75" in f.verdicts[3]["detail"]
    assert "40.25 of 54" in " ".join(f.notes)  # (3L-1)/4 for ResNet-110


def test_verdicts_not_observed_when_sd_is_worse_and_not_faster(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.90, lambda s: 1.95)))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 4


def test_time_verdict_inconclusive_when_seeds_straddle_the_threshold(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.95, lambda s: (1.5, 2.1)[s], seeds=(0, 1)),
                                       seeds=(0, 1)))
    assert f.verdicts[0]["status"] == OBSERVED
    assert f.verdicts[1]["status"].startswith(INCONCLUSIVE) and f.verdicts[3]["status"].startswith(INCONCLUSIVE)
