"""stochastic-depth experiment (Huang et al. 2016): end to end at both scales with smoke params, each
verdict's numbers and status recomputed from the run directories, and the verdict logic on
fabricated results."""
import json

import expcheck as ec
import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.runner import Context, reproduce
from depthlab.experiments.stochastic_depth import StochasticDepth


def check_verdicts(out, doc):
    """Both verdicts' numbers and status per depth, recomputed from each run's metrics.jsonl (last
    test accuracy; seconds per epoch without the first epoch, unless it is the only one) and
    Huang et al.'s survival rule p_l = 1 - (l / L)(1 - p_L) over the L = (depth - 2) / 2 blocks."""
    p = doc["params"]
    for d in p["depths"]:
        const = ec.find_run(out, name="resnet", depth=d, methods={"stochastic_depth": None})
        sd = ec.find_run(out, name="resnet", depth=d, methods={"stochastic_depth": p["p_last"]})
        a_c, a_s = ec.acc(out, const, "test_acc"), ec.acc(out, sd, "test_acc")  # a diverged run is missing
        ec.check(ec.verdict(doc, f"resnet-{d}: stochastic depth's test accuracy"),
                 ec.rule([a_s], [a_c], -p["tolerance"]),
                 f"constant {ec.pct([a_c])}, stochastic {ec.pct([a_s])} (diff {100 * (a_s - a_c):+.1f} pts)")
        t_c, t_s = ec.seconds_per_epoch(out, const), ec.seconds_per_epoch(out, sd)
        blocks = (d - 2) // 2
        active = sum(1 - (i / blocks) * (1 - p["p_last"]) for i in range(1, blocks + 1)) / blocks
        ec.check(ec.verdict(doc, f"resnet-{d}: stochastic depth takes less time"),
                 ec.rule([p["max_time_ratio"]], [t_s / t_c], 0.0),
                 f"{t_c:.2f} s -> {t_s:.2f} s per epoch, ratio {t_s / t_c:.2f} (expected active fraction "
                 f"{active:.2f})")


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_run_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    reproduce("stochastic-depth", seeds=1, scale=scale, params=StochasticDepth.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 2  # one depth: accuracy and time
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("runs") or f.get("values") for f in saved["figures"])
    assert {r["variant"] for r in saved["runs"]} == {"constant", "stochastic"}
    again = reproduce("stochastic-depth", seeds=1, scale=scale, params=StochasticDepth.smoke, out=str(tmp_path),
                      quiet=True, report=False)
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


def test_verdicts_observed_when_sd_matches_accuracy_and_is_faster_details_show_the_inputs(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.955, lambda s: 1.5)))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 4  # 2 depths x (accuracy, time)
    assert f.verdicts[0]["detail"] == "constant 95.0%, stochastic 95.5% (diff +0.5 pts)"
    # (3L - 1) / 4 of L blocks: 20 / 27 = 0.741 at depth 56, 40.25 / 54 = 0.745 at 110
    assert f.verdicts[1]["detail"] == "2.00 s -> 1.50 s per epoch, ratio 0.75 (expected active fraction 0.74)"
    assert f.verdicts[3]["detail"] == "3.93 s -> 2.95 s per epoch, ratio 0.75 (expected active fraction 0.75)"
    assert "40.25 of 54" in " ".join(f.notes)  # (3L-1)/4 for ResNet-110


def test_verdicts_not_observed_when_sd_is_worse_and_not_faster_details_show_the_inputs(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.90, lambda s: 1.95)))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 4
    assert f.verdicts[2]["detail"] == "constant 95.0%, stochastic 90.0% (diff -5.0 pts)"
    assert f.verdicts[3]["detail"].startswith("3.93 s -> 3.83 s per epoch, ratio ")


def test_time_verdict_inconclusive_when_seeds_straddle_the_threshold(tmp_path):
    f = StochasticDepth().analyse(_ctx(tmp_path, _grid(lambda s: 0.95, lambda s: (1.5, 2.1)[s], seeds=(0, 1)),
                                       seeds=(0, 1)))
    assert f.verdicts[0]["status"] == OBSERVED
    assert f.verdicts[1]["status"].startswith(INCONCLUSIVE) and f.verdicts[3]["status"].startswith(INCONCLUSIVE)
