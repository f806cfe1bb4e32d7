"""highway experiment (Srivastava et al. 2015): end to end at both scales with smoke params, each
verdict's numbers and status recomputed from the run directories, and the verdict logic on
fabricated results (a diverged run counts as chance)."""
import json

import expcheck as ec
import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.highway import Highway
from depthlab.experiments.runner import Context, reproduce


def check_verdicts(out, doc):
    """Every verdict's numbers and status, recomputed from each run's last metrics row and the gate
    table from measurements/gates.json."""
    p = doc["params"]
    lo, hi = p["depths"][0], p["depths"][-1]
    run = {(f, d): ec.find_run(out, name=f, depth=d) for f in ("plain", "highway") for d in (lo, hi)}
    chance = ec.chance(out, run[("plain", hi)])
    acc = {k: ec.acc(out, r, if_diverged=chance) for k, r in run.items()}  # a diverged run counts as chance
    h_lo, h_hi, p_lo, p_hi = acc[("highway", lo)], acc[("highway", hi)], acc[("plain", lo)], acc[("plain", hi)]
    ec.check(ec.verdict(doc, f"at depth {hi} the highway net's training accuracy exceeds"),
             ec.rule([h_hi], [p_hi], p["gap"]),
             f"highway-{hi} {ec.pct([h_hi])}, plain-{hi} {ec.pct([p_hi])} training accuracy")
    ec.check(ec.verdict(doc, "the highway net does not collapse"), ec.rule([h_hi], [h_lo], -p["tolerance"]),
             f"highway-{lo} {ec.pct([h_lo])}, highway-{hi} {ec.pct([h_hi])} training accuracy")
    ec.check(ec.verdict(doc, "the plain net fails with depth"), ec.rule([p_lo], [p_hi], p["gap"]),
             f"plain-{lo} {ec.pct([p_lo])}, plain-{hi} {ec.pct([p_hi])} training accuracy")
    gates = ec.measurement(out, "gates")
    rows = {r[0]: r for r in next(t for t in doc["tables"] if "Transform-gate" in t["title"])["rows"]}
    for d in (lo, hi):
        t = gates.get(run[("highway", d)], {}).get("mean_t")  # measured on finished runs only
        want = [f"{sum(t) / len(t):.3f}", ec.pct([sum(x < 0.1 for x in t) / len(t)])] if t else ["-", "-"]
        assert rows[f"highway-{d}"][1:3] == want


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_run_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    doc = reproduce("highway", seeds=1, scale=scale, params=Highway.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 3
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("runs") or f.get("series") for f in saved["figures"])
    assert {(r["family"], r["depth"]) for r in saved["runs"]} == {(f, d) for f in ("plain", "highway")
                                                                  for d in Highway.smoke["depths"]}
    gates = json.loads((tmp_path / "measurements" / "gates.json").read_text())["value"]
    deepest = gates[f"highway{Highway.smoke['depths'][-1]}-s0"]
    assert len(deepest["mean_t"]) == (Highway.smoke["depths"][-1] - 2)  # 3n highway layers at depth 3n + 2
    assert all(0 < t < 1 for t in deepest["mean_t"])
    again = reproduce("highway", seeds=1, scale=scale, params=Highway.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])
    assert doc["verdicts"] == again["verdicts"]


def test_depths_must_be_valid_for_both_families():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        Highway().runs({"depths": [11]})  # 3n + 2 for highway, not 6n + 2 for plain


def _ctx(tmp_path, accs):
    """``accs``: (family, depth) -> train accuracy or "diverged"."""
    exp = Highway()
    p = {**exp.scales["quick"], "set": ()}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    gates = {f"highway{d}-s0": {"mean_t": [0.05, 0.3], "gate_bias": [-2.5, -1.5]} for d in p["depths"]}
    ctx.measure = lambda name, fn, key=None: gates  # no trained models to load here
    for (fam, d), a in accs.items():
        diverged = a == "diverged"
        ctx.results.append({"id": f"{fam}{d}", "seed": 0, "run_id": f"{fam}{d}-s0", "run_dir": f"runs/{fam}{d}-s0",
                            "family": fam, "depth": d, "status": "diverged" if diverged else "finished",
                            "train_acc": None if diverged else a, "test_acc": None if diverged else a,
                            "seconds_per_epoch": 1.0, "params": 1})
    return ctx


def _accs(plain, highway):
    depths = Highway.scales["quick"]["depths"]
    return {**{("plain", d): a for d, a in zip(depths, plain)}, **{("highway", d): a for d, a in zip(depths, highway)}}


def test_verdicts_observed_when_highway_keeps_training_and_plain_fails_details_show_the_inputs(tmp_path):
    f = Highway().analyse(_ctx(tmp_path, _accs([0.99, 0.95, 0.6, "diverged"], [0.99, 0.99, 0.98, 0.97])))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 3
    # the diverged plain net counts as chance
    assert f.verdicts[0]["detail"] == "highway-110 97.0%, plain-110 10.0% training accuracy"
    assert f.verdicts[1]["detail"] == "highway-8 99.0%, highway-110 97.0% training accuracy"
    assert f.verdicts[2]["detail"] == "plain-8 99.0%, plain-110 10.0% training accuracy"
    assert f.tables[1]["rows"][0][2] == "50.0%"  # one of two layers has mean T < 0.1


def test_verdicts_not_observed_when_highway_collapses_like_plain_details_show_the_inputs(tmp_path):
    f = Highway().analyse(_ctx(tmp_path, _accs([0.99, 0.98, 0.97, 0.96], [0.99, 0.9, 0.5, 0.3])))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 3
    assert f.verdicts[0]["detail"] == "highway-110 30.0%, plain-110 96.0% training accuracy"
    assert f.verdicts[2]["detail"] == "plain-8 99.0%, plain-110 96.0% training accuracy"


def test_inconclusive_when_seeds_straddle_the_margin(tmp_path):
    ctx = _ctx(tmp_path, _accs([0.99, 0.9, 0.6, 0.5], [0.99, 0.99, 0.98, 0.75]))
    ctx.seeds = [0, 1]
    extra = {**ctx.rows(family="highway", depth=110)[0], "seed": 1, "run_id": "highway110-s1", "train_acc": 0.65}
    ctx.results.append(extra)
    ctx.results.append({**ctx.rows(family="plain", depth=110)[0], "seed": 1, "run_id": "plain110-s1"})
    f = Highway().analyse(ctx)
    assert f.verdicts[0]["status"].startswith(INCONCLUSIVE)  # 0.70 +- 0.07 vs 0.5: gap 0.2 within the spread
