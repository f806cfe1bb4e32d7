"""lesion experiment (Veit et al. 2016): end to end at both scales with smoke params, each verdict's
numbers and status recomputed from the lesion and path measurements (themselves checked for
consistency), and the verdict logic on fabricated lesion studies and path gradients (observed and not
observed)."""
import json
import math
import statistics

import expcheck as ec
import pytest

from depthlab.experiments.base import NOT_OBSERVED, OBSERVED
from depthlab.experiments.lesion import Lesion, largest_jump, log_slope
from depthlab.experiments.runner import Context, reproduce


def _slope(ks, magnitude):
    """Least-squares slope of ln(magnitude) over k >= 1 (positive magnitudes)."""
    pts = [(k, math.log(m)) for k, m in zip(ks, magnitude) if k >= 1 and m > 0]
    mk, mv = sum(k for k, _ in pts) / len(pts), sum(v for _, v in pts) / len(pts)
    return sum((k - mk) * (v - mv) for k, v in pts) / sum((k - mk) ** 2 for k, _ in pts)


def check_verdicts(out, doc):
    """Every verdict's numbers and status, recomputed from measurements/lesion.json and paths.json;
    a k = 1 deletion errs as the single deletion of that block, the path shares are C(n, k) x magnitude
    normalised."""
    p = doc["params"]
    d, dp = p["depth"], p["plain_depth"]
    studies, paths = ec.measurement(out, "lesion"), ec.measurement(out, "paths")
    res = studies[ec.find_run(out, name="resnet", depth=d)]
    plain = studies[ec.find_run(out, name="plain", depth=dp)]
    for s in (res, plain):
        one = next(x for x in s["delete_k"] if x["k"] == 1)
        assert one["errors"] == [s["blocks"][b]["error"] for (b,) in one["deleted"]]
    rise = {ds: [b["error"] - res["intact_error"] for b in res["blocks"] if b["downsampling"] == ds]
            for ds in (False, True)}
    med = statistics.median(rise[False])
    ec.check(ec.verdict(doc, "median error increase from deleting one non-downsampling block"),
             med <= p["single_tol"],
             f"median increase {ec.points([med])} (intact error {ec.pct([res['intact_error']])}, worst "
             f"non-downsampling deletion {ec.points([max(rise[False])])})")
    ds = sum(rise[True]) / len(rise[True])
    ec.check(ec.verdict(doc, "deleting a downsampling block hurts more"), ec.rule([ds], [med], p["ds_gap"]),
             f"mean increase at downsampling blocks {ec.points([ds])}, median elsewhere {ec.points([med])}")
    chance_error = 1 - ec.chance(out, ec.find_run(out, name="plain", depth=dp))
    plain_med = statistics.median(b["error"] for b in plain["blocks"])
    ec.check(ec.verdict(doc, f"plain-{dp}: median error after deleting one block"),
             plain_med >= p["chance_fraction"] * chance_error,
             f"median single-deletion error {ec.pct([plain_med])} (intact {ec.pct([plain['intact_error']])}, chance "
             f"{100 * chance_error:.0f}%)")
    errs = [res["intact_error"]] + [sum(x["errors"]) / len(x["errors"]) for x in res["delete_k"]]  # k = 0, 1, ...
    jump, k_rise = max(b - a for a, b in zip(errs, errs[1:])), errs[-1] - errs[1]
    ec.check(ec.verdict(doc, "error rises smoothly with the number k"), jump <= p["max_jump"] and k_rise > 0,
             f"largest step {ec.points([jump])}; error k = 1 -> k = {p['max_k']}: rise {ec.points([k_rise])}")
    pr = paths[ec.find_run(out, name="resnet", depth=d)]
    assert pr["counts"] == [math.comb(pr["n"], k) for k in pr["ks"]]
    total = sum(c * m for c, m in zip(pr["counts"], pr["magnitude"]))
    assert pr["distribution"] == pytest.approx([c * m / total for c, m in zip(pr["counts"], pr["magnitude"])])
    slope = _slope(pr["ks"], pr["magnitude"])
    ec.check(ec.verdict(doc, "gradient magnitude through a path falls"), slope <= 0,
             f"slope of ln(magnitude) per block {slope:.3f}")
    lo, hi = pr["effective_range"]
    ec.check(ec.verdict(doc, "the paths that carry 90% of the gradient"), (lo + hi) / 2 <= pr["n"] / 2,
             f"effective range {lo}-{hi} of n = {pr['n']} blocks (Veit: 5-17 of 54)")


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_lesion_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    doc = reproduce("lesion", seeds=1, scale=scale, params=Lesion.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 6
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("series") or f.get("panels") for f in saved["figures"])
    for name in ("lesion", "paths"):  # every measurement is cached
        assert (tmp_path / "measurements" / f"{name}.json").exists()
    again = reproduce("lesion", seeds=1, scale=scale, params=Lesion.smoke, out=str(tmp_path), quiet=True, report=False)
    assert all(r["reused"] for r in again["runs"])
    assert again["verdicts"] == doc["verdicts"]  # measurements reused: the same numbers


def _study(intact, block_errors, downsampling, k_errors, swap_errors=(0.1, 0.2)):
    return {"intact_error": intact,
            "blocks": [{"name": f"b{i}", "index": i, "error": e, "downsampling": i in downsampling, "same_shape": True}
                       for i, e in enumerate(block_errors)],
            "delete_k": [{"k": k, "errors": [e], "mean_error": e, "deleted": [[0]]} for k, e in enumerate(k_errors, 1)],
            "swap_k": [{"k": k, "errors": [e], "kendall_tau": [1 - 0.1 * k], "mean_error": e, "pairs": []}
                       for k, e in enumerate(swap_errors, 1)]}


def _paths(n, magnitude, effective_range):
    ks = list(range(n + 1))
    contrib = [math.comb(n, k) * m for k, m in zip(ks, magnitude)]
    return {"n": n, "ks": ks, "magnitude": magnitude, "counts": [math.comb(n, k) for k in ks],
            "distribution": [c / sum(contrib) for c in contrib], "effective_range": effective_range}


def _ctx(tmp_path, studies, paths):
    exp = Lesion()
    p = {**exp.scales["quick"], "set": (), "epochs": None}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    for fam in ("plain", "resnet"):
        ctx.results.append({"id": f"{fam}56", "seed": 0, "run_id": f"{fam}56-s0", "run_dir": f"runs/{fam}56-s0",
                            "family": fam, "status": "finished", "train_acc": 1.0, "test_acc": 0.95, "params": 1})
    data = {"lesion": {f"{fam}56-s0": s for fam, s in studies.items()}, "paths": {"resnet56-s0": paths}}
    ctx.measure = lambda name, fn, key=None: data[name]
    return ctx


def test_verdicts_observed_when_resnet_is_an_ensemble(tmp_path):
    n = 12
    studies = {"resnet": _study(0.05, [0.06] * 4 + [0.3] + [0.07] * 3 + [0.25] + [0.06] * 3, {4, 8},
                                [0.07, 0.1, 0.14, 0.19, 0.25, 0.3, 0.36, 0.42]),
               "plain": _study(0.08, [0.88] * n, {4, 8}, [0.9] * 8)}
    f = Lesion().analyse(_ctx(tmp_path, studies, _paths(n, [2.0 ** -k for k in range(n + 1)], [2, 5])))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 6, [v["detail"] for v in f.verdicts]


def test_verdicts_not_observed_when_resnet_is_fragile(tmp_path):
    n = 12
    studies = {"resnet": _study(0.05, [0.6] * 4 + [0.3] + [0.6] * 7, {4}, [0.6, 0.85, 0.8]),
               "plain": _study(0.08, [0.2] * n, {4}, [0.3] * 3)}
    f = Lesion().analyse(_ctx(tmp_path, studies, _paths(n, [1.1 ** k for k in range(n + 1)], [8, 12])))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 6, [v["detail"] for v in f.verdicts]


def test_helpers():
    s = _study(0.1, [0.1], set(), [0.15, 0.5, 0.55])
    assert largest_jump(s) == pytest.approx(0.35)
    assert log_slope([0, 1, 2, 3], [5.0, 1.0, 0.5, 0.25]) == pytest.approx(math.log(0.5))
    assert math.isnan(log_slope([0, 1], [1.0, 1.0]))
