"""discriminability experiment (Gao & McDonnell 2017): end to end at both scales with smoke params,
each verdict's numbers and status recomputed from the probe measurements (which must match the
probes written during training), and the verdict logic on fabricated probe profiles (observed and
not observed)."""
import json

import expcheck as ec
import pytest

from depthlab.experiments.base import NOT_OBSERVED, OBSERVED
from depthlab.experiments.discriminability import Discriminability, stage_blocks
from depthlab.experiments.runner import Context, reproduce


def _profile(records, suffix=".sum"):
    return [r["probe_accuracy"] for r in records if r["tap"].endswith(suffix)]


def _stops_rising(prof, tol):
    """Fraction of the way to the last block where no later block sum beats this one by more than tol."""
    if len(prof) < 2:
        return float("nan")
    first = next(i for i, a in enumerate(prof) if all(b <= a + tol for b in prof[i + 1:]))
    return first / (len(prof) - 1)


def check_verdicts(out, doc):
    """Every verdict's numbers and status, recomputed from measurements/final_probes.json; the final
    probes of the depth runs equal the probes their training wrote at the last epoch (another code
    path: diagnostics during training, not a model loaded afterwards); the placement note's numbers."""
    p, d = doc["params"], doc["params"]["depth"]
    probes, during = ec.measurement(out, "final_probes"), ec.measurement(out, "training_probes")
    run = {f: ec.find_run(out, name=f, depth=d, stage_blocks=None) for f in ("plain", "resnet")}
    for f, r in run.items():
        last_epoch = str(ec.final(out, r)["epoch"])
        trained = {x["tap"]: x["probe_accuracy"] for x in during[r][last_epoch]}
        assert {x["tap"]: x["probe_accuracy"] for x in probes[r]} == pytest.approx(trained, abs=1e-6), f
    res, plain = probes[run["resnet"]], probes[run["plain"]]
    sums = _profile(res)
    last, early = sums[-1], max(sums[:max(1, len(sums) // 3)])
    ec.check(ec.verdict(doc, "at the last block sum exceeds"), ec.rule([last], [early], p["rise"]),
             f"last block sum {ec.pct([last])}, best early block sum {ec.pct([early])}")
    pos = {f: _stops_rising(_profile(probes[r]), p["tol"]) for f, r in run.items()}
    ec.check(ec.verdict(doc, f"plain-{d}: probe accuracy stops rising"),
             ec.rule([p["stall_fraction"]], [pos["plain"]], 0),
             f"stops rising at {ec.fmt([pos['plain']], 100, 0, '%')} of the blocks (resnet: "
             f"{ec.fmt([pos['resnet']], 100, 0, '%')}); peak plain probe accuracy {ec.pct([max(_profile(plain))])}, "
             f"at the last block {ec.pct([_profile(plain)[-1]])}")
    convs = _profile(res, ".conv2")
    ec.check(ec.verdict(doc, "rises more at the residual sums"),
             ec.rule([sums[-1] - sums[0]], [convs[-1] - convs[0]], p["gap"]),
             f"rise at sums {ec.points([sums[-1] - sums[0]])}, at conv2 outputs {ec.points([convs[-1] - convs[0]])}")
    k = p["placement_blocks"]
    for fam in p["placement_families"]:
        shown = {}
        for pl, blocks in (("early", f"{k},1,1"), ("late", f"1,1,{k}")):
            r = ec.find_run(out, name=fam, stage_blocks=blocks)
            shown[pl] = (ec.acc(out, r, "test_acc"), _profile(probes[r])[-1])
        note = next(n for n in doc["notes"] if n.startswith(f"Conv placement ({fam}"))
        assert (f"early {k},1,1 test {100 * shown['early'][0]:.1f}% / last-block probe {100 * shown['early'][1]:.1f}%, "
                f"late 1,1,{k} test {100 * shown['late'][0]:.1f}% / probe {100 * shown['late'][1]:.1f}%") in note


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_probe_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    reproduce("discriminability", seeds=1, scale=scale, params=Discriminability.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert len(saved["verdicts"]) == 3
    check_verdicts(tmp_path, saved)
    assert saved["figures"] and all(f.get("series") or f.get("panels") for f in saved["figures"])
    # the training-time profiles were read: at init (epoch 0) and after epoch 1, for both families
    during = json.loads((tmp_path / "measurements" / "training_probes.json").read_text())["value"]
    assert all(set(v) == {"0", "1"} for v in during.values()) and len(during) == 2
    # the placement runs have equal depth and their blocks where asked
    cfgs = {r["placement"]: json.loads((tmp_path / r["run_dir"] / "config.json").read_text())["model"]
            for r in saved["runs"] if r["part"] == "placement"}
    assert cfgs["early"]["stage_blocks"] == "2,1,1" and cfgs["late"]["stage_blocks"] == "1,1,2"
    assert cfgs["early"]["depth"] == cfgs["late"]["depth"] == 10
    again = reproduce("discriminability", seeds=1, scale=scale, params=Discriminability.smoke, out=str(tmp_path),
                      quiet=True, report=False)
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


def test_verdicts_observed_when_resnet_sums_rise_and_plain_stalls_details_show_the_profile_numbers(tmp_path):
    rising = [0.5 + 0.05 * i for i in range(10)]
    f = Discriminability().analyse(_ctx(tmp_path, {
        "resnet": (rising, [0.5] * 10),
        "plain": ([0.5, 0.7, 0.8, 0.75, 0.7, 0.6, 0.6, 0.55, 0.5, 0.5], [0.5] * 10)}))
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 3
    # the last resnet block sum against the best of the first three (10 // 3) block sums
    assert f.verdicts[0]["detail"] == "last block sum 95.0%, best early block sum 60.0%"
    # plain: after 80% at block 3 no later sum beats it by more than 0.5%: stops at 2 / 9 of the way
    assert f.verdicts[1]["detail"] == ("stops rising at 22% of the blocks (resnet: 100%); peak plain probe accuracy "
                                       "80.0%, at the last block 50.0%")
    assert f.verdicts[2]["detail"] == "rise at sums 45.0 points, at conv2 outputs 0.0 points"
    assert any("better test accuracy with late placement" in n for n in f.notes)


def test_verdicts_not_observed_when_resnet_flat_and_plain_keeps_rising(tmp_path):
    rising = [0.5 + 0.05 * i for i in range(10)]
    f = Discriminability().analyse(_ctx(tmp_path, {
        "resnet": ([0.9] * 10, [0.9] * 10),
        "plain": (rising, rising)}))
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 3


def test_stage_blocks_strings():
    assert stage_blocks("early", 7) == "7,1,1" and stage_blocks("late", 7) == "1,1,7"
