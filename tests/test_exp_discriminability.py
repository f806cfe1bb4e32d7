"""discriminability experiment (Gao & McDonnell 2017): end to end at both scales with smoke params,
and the verdict logic on fabricated probe profiles (observed and not observed)."""
import json

import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.discriminability import Discriminability, stage_blocks
from depthlab.experiments.runner import Context, reproduce

STATUSES = (OBSERVED, NOT_OBSERVED)


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_and_reuse(scale, tmp_path):
    reproduce("discriminability", scale=scale, params=Discriminability.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 3
    assert all(v["status"] in STATUSES or v["status"].startswith(INCONCLUSIVE) for v in saved["verdicts"])
    assert saved["figures"] and all(f.get("series") or f.get("panels") for f in saved["figures"])
    # the training-time profiles were read: at init (epoch 0) and after epoch 1, for both families
    during = json.loads((tmp_path / "measurements" / "training_probes.json").read_text())["value"]
    assert all(set(v) == {"0", "1"} for v in during.values()) and len(during) == 2
    # the placement runs have equal depth and their blocks where asked
    cfgs = {r["placement"]: json.loads((tmp_path / r["run_dir"] / "config.json").read_text())["model"]
            for r in saved["runs"] if r["part"] == "placement"}
    assert cfgs["early"]["stage_blocks"] == "2,1,1" and cfgs["late"]["stage_blocks"] == "1,1,2"
    assert cfgs["early"]["depth"] == cfgs["late"]["depth"] == 10
    again = reproduce("discriminability", scale=scale, params=Discriminability.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])


def _records(sums, convs):
    """Probe records of a fabricated net: per block conv1, conv2, sum taps."""
    out = [{"tap": "stem.conv", "probe_accuracy": 0.3}]
    for b, (s, c) in enumerate(zip(sums, convs), 1):
        out += [{"tap": f"stage1.block{b}.conv1", "probe_accuracy": c},
                {"tap": f"stage1.block{b}.conv2", "probe_accuracy": c},
                {"tap": f"stage1.block{b}.sum", "probe_accuracy": s}]
    return out


def _ctx(tmp_path, profiles):
    """``profiles``: family -> (sum accuracies, conv2 accuracies) of the trained depth run."""
    exp = Discriminability()
    p = {**exp.scales["quick"], "set": (), "epochs": None}
    ctx = Context(exp, "quick", p, [0], tmp_path, "cpu", None, "", True)
    final, during = {}, {}
    for fam, (sums, convs) in profiles.items():
        rid = f"{fam}56-s0"
        ctx.results.append({"id": f"{fam}56", "seed": 0, "run_id": rid, "run_dir": f"runs/{rid}", "part": "depth",
                            "family": fam, "status": "finished", "train_acc": 1.0, "test_acc": 0.9, "params": 1})
        final[rid] = _records(sums, convs)
        during[rid] = {"0": _records([0.2] * len(sums), [0.2] * len(sums)), "4": final[rid]}
        for pl, acc in (("early", 0.9), ("late", 0.95)):
            rid = f"{fam}-{pl}-s0"
            ctx.results.append({"id": f"{fam}-{pl}", "seed": 0, "run_id": rid, "run_dir": f"runs/{rid}",
                                "part": "placement", "family": fam, "placement": pl, "status": "finished",
                                "train_acc": 1.0, "test_acc": acc, "params": 1, "depth": 20})
            final[rid] = _records([0.5, acc], [0.5, 0.5])
    data = {"final_probes": final, "training_probes": during}
    ctx.measure = lambda name, fn, key=None: data[name]
    return ctx


def test_verdicts_observed_when_resnet_sums_rise_and_plain_stalls(tmp_path):
    rising = [0.5 + 0.05 * i for i in range(10)]
    f = Discriminability().analyse(_ctx(tmp_path, {
        "resnet": (rising, [0.5] * 10),
        "plain": ([0.5, 0.7, 0.8, 0.75, 0.7, 0.6, 0.6, 0.55, 0.5, 0.5], [0.5] * 10)}))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 3
    assert "95.0%" in f.verdicts[0]["detail"]  # the last resnet block sum
    assert any("better test accuracy with late placement" in n for n in f.notes)


def test_verdicts_not_observed_when_resnet_flat_and_plain_keeps_rising(tmp_path):
    rising = [0.5 + 0.05 * i for i in range(10)]
    f = Discriminability().analyse(_ctx(tmp_path, {
        "resnet": ([0.9] * 10, [0.9] * 10),
        "plain": (rising, rising)}))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 3


def test_stage_blocks_strings():
    assert stage_blocks("early", 7) == "7,1,1" and stage_blocks("late", 7) == "1,1,7"
