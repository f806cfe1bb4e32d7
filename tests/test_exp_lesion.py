"""lesion experiment (Veit et al. 2016): end to end at both scales with smoke params, and the
verdict logic on fabricated lesion studies and path gradients (observed and not observed)."""
import json
import math

import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.lesion import Lesion, largest_jump, log_slope
from depthlab.experiments.runner import Context, reproduce

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_and_reuse(scale, tmp_path):
    doc = reproduce("lesion", scale=scale, params=Lesion.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 6
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in saved["verdicts"])
    assert saved["figures"] and all(f.get("series") or f.get("panels") for f in saved["figures"])
    for name in ("lesion", "paths"):  # every measurement is cached
        assert (tmp_path / "measurements" / f"{name}.json").exists()
    again = reproduce("lesion", scale=scale, params=Lesion.smoke, out=str(tmp_path), quiet=True, report=False)
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
