"""The looks-linear experiment: end to end at both scales (smoke params) with each verdict's numbers
and status recomputed from the run directories, and its verdict logic on fabricated results."""
import re

import expcheck as ec
import pytest

from depthlab.experiments.base import INCONCLUSIVE, NOT_OBSERVED, OBSERVED
from depthlab.experiments.looks_linear import VARIANTS, LooksLinear
from depthlab.experiments.runner import Context, reproduce, resolve_params

# variant -> (label in the verdicts, what its config.json says it trained)
NETS = {"crelu-ll": ("CReLU + looks-linear", {"name": "plain", "activation": "crelu", "init": "looks-linear"}),
        "resnet": ("ResNet", {"name": "resnet"}),
        "crelu": ("CReLU, Kaiming init", {"name": "plain", "activation": "crelu", "init": "kaiming"}),
        "relu": ("ReLU plain", {"name": "plain", "activation": "relu"}),
        "linear": ("linear (BN, no ReLU)", {"name": "plain", "activation": "linear"})}


def check_verdicts(out, doc):
    """Every verdict's numbers and status at the deepest depth, recomputed from each run's last metrics
    row (a diverged run has no accuracy: missing, never chance)."""
    p = doc["params"]
    deep = p["depths"][-1]
    run = {v: ec.find_run(out, depth=deep, **model) for v, (_, model) in NETS.items()}
    test = {v: ec.acc(out, r, "test_acc") for v, r in run.items()}
    train = {v: ec.acc(out, r, "train_acc") for v, r in run.items()}

    def shown(v):
        return f"{NETS[v][0]} {ec.pct([test[v]])}"

    ec.check(ec.verdict(doc, f"at depth {deep}, CReLU + LL tracks the ResNet"),
             ec.rule([test["crelu-ll"]], [test["resnet"]], -p["gap"]),
             f"test accuracy: {shown('crelu-ll')}, {shown('resnet')}")
    # the linear net's verdict also shows the measured linear-classifier ceiling (the number in the note)
    noted = re.search(r"test accuracy (-?\d+\.\d)%\.", " ".join(doc["notes"])).group(1)
    found = re.search(r"; a linear classifier on the pixels reaches (-?\d+\.\d)% test accuracy, so a linear net "
                      r"can fall at most (-?\d+\.\d)% below CReLU \+ LL here$", ec.verdict(doc, "linear net")["detail"])
    if test["crelu-ll"] is None:  # no CReLU + LL number to measure the room from: no room shown
        assert found is None
    else:
        assert found and found.group(1) == noted
        assert abs(float(found.group(2)) / 100 - (test["crelu-ll"] - float(noted) / 100)) <= 0.0011
    for v, what in (("relu", "ReLU plain collapses"), ("crelu", "CReLU without LL falls away"),
                    ("linear", "the linear net falls away")):
        room = found.group(0) if v == "linear" and found else ""
        ec.check(ec.verdict(doc, f"at depth {deep}, {what}"), ec.rule([test["crelu-ll"]], [test[v]], p["collapse"]),
                 f"test accuracy: {shown(v)}, {shown('crelu-ll')}; train accuracy {ec.pct([train[v]])} vs "
                 f"{ec.pct([train['crelu-ll']])}{room}")


@pytest.mark.parametrize("scale", ["quick", "paper"])
def test_end_to_end_verdicts_show_the_run_numbers_and_follow_the_rules_and_reuse(scale, tmp_path):
    doc = reproduce("looks-linear", seeds=1, scale=scale, params=LooksLinear.smoke, out=str(tmp_path), quiet=True)
    assert (tmp_path / "experiment.json").exists() and (tmp_path / "report.html").exists()
    assert len(doc["runs"]) == len(VARIANTS) * len(LooksLinear.smoke["depths"])
    assert all(r["status"] in ("finished", "diverged") for r in doc["runs"])
    assert len(doc["verdicts"]) == 4
    check_verdicts(tmp_path, doc)
    assert doc["figures"] and all(f.get("panels") or f.get("runs") for f in doc["figures"])
    again = reproduce("looks-linear", seeds=1, scale=scale, params=LooksLinear.smoke, out=str(tmp_path), quiet=True,
                      report=False)
    assert all(r["reused"] for r in again["runs"])


def test_runs_use_the_variant_presets_and_comparable_widths():
    exp = LooksLinear()
    p = resolve_params(exp, "paper")
    specs = exp.runs(p)
    assert sorted({s.labels["depth"] for s in specs}) == [8, 14, 32, 56, 104, 200]
    assert all((d - 2) % 6 == 0 for d in p["depths"])
    by_id = {s.id: s.overrides for s in specs}
    assert {"model.activation=crelu", "model.init=looks-linear", "model.width=11"} <= set(by_id["crelu-ll200"])
    assert "model.init=looks-linear" not in by_id["crelu200"] and "model.width=11" in by_id["crelu200"]
    assert {"model.name=resnet", "model.width=16"} <= set(by_id["resnet200"])
    assert "model.activation=linear" in by_id["linear200"]


def _ctx(tmp_path, accs, seeds=(0, 1)):
    """accs: variant -> (test acc at the deepest depth, spread between seeds)."""
    exp = LooksLinear()
    p = resolve_params(exp, "quick", {"depths": [8, 56]})
    ctx = Context(exp, "quick", p, list(seeds), tmp_path, "cpu", None, "", True)
    for v in VARIANTS:
        for d in p["depths"]:
            a, spread = accs[v] if d == 56 else (0.95, 0.0)
            for s in seeds:
                acc = a + (spread if s else -spread)
                ctx.results.append({"id": f"{v}{d}", "seed": s, "run_id": f"{v}{d}-s{s}",
                                    "run_dir": f"runs/{v}{d}-s{s}", "variant": v, "depth": d,
                                    "status": "finished", "train_acc": acc, "test_acc": acc, "params": 1000,
                                    "seconds_per_epoch": 0.5})
    return exp, ctx


def test_verdicts_observed_when_the_paper_holds_details_show_mean_and_sd(tmp_path):
    exp, ctx = _ctx(tmp_path, {"crelu-ll": (0.90, 0.01), "resnet": (0.92, 0.01), "crelu": (0.5, 0.02),
                               "relu": (0.3, 0.02), "linear": (0.4, 0.01)})
    f = exp.analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [OBSERVED] * 4
    assert f.verdicts[0]["detail"] == "test accuracy: CReLU + looks-linear 90.0 +- 1.4%, ResNet 92.0 +- 1.4%"
    assert f.verdicts[1]["detail"] == ("test accuracy: ReLU plain 30.0 +- 2.8%, CReLU + looks-linear 90.0 +- 1.4%; "
                                       "train accuracy 30.0 +- 2.8% vs 90.0 +- 1.4%")
    assert len(f.tables) == 3 and len(f.figures) == 2


def test_verdicts_not_observed_when_it_fails(tmp_path):
    # CReLU + LL collapses like the ReLU net while the ResNet trains
    exp, ctx = _ctx(tmp_path, {"crelu-ll": (0.30, 0.01), "resnet": (0.92, 0.01), "crelu": (0.5, 0.01),
                               "relu": (0.3, 0.01), "linear": (0.4, 0.01)})
    f = exp.analyse(ctx)
    assert [v["status"] for v in f.verdicts] == [NOT_OBSERVED] * 4


def test_failed_runs_count_as_missing_and_noisy_seeds_are_inconclusive(tmp_path):
    exp, ctx = _ctx(tmp_path, {"crelu-ll": (0.90, 0.01), "resnet": (0.92, 0.01), "crelu": (0.5, 0.01),
                               "relu": (0.82, 0.05), "linear": (0.4, 0.01)})
    for r in ctx.rows(variant="linear", depth=56):
        r.update(status="diverged", train_acc=None, test_acc=None)
    f = exp.analyse(ctx)
    assert f.verdicts[1]["status"].startswith(INCONCLUSIVE)  # 0.90 - 0.82 vs 0.10: within the seeds' spread
    assert f.verdicts[3]["status"].startswith(INCONCLUSIVE)  # no linear result at all
    assert f.verdicts[3]["detail"] == ("test accuracy: linear (BN, no ReLU) -, CReLU + looks-linear 90.0 +- 1.4%; "
                                       "train accuracy - vs 90.0 +- 1.4%")


def test_the_linear_nets_ceiling_is_measured_on_the_data(tmp_path):
    """A linear classifier of the pixels bounds how far the linear net can fall: on noise-free
    synthetic data (one template per class: linearly separable) it reaches 100%, so a CReLU + LL
    net at 90% leaves the linear net no room to fall 10 points below it."""
    from depthlab.data import load_dataset
    from depthlab.experiments.looks_linear import linear_ceiling

    exp, ctx = _ctx(tmp_path, {"crelu-ll": (0.90, 0.01), "resnet": (0.92, 0.01), "crelu": (0.5, 0.01),
                               "relu": (0.3, 0.01), "linear": (0.4, 0.01)})
    ctx.dataset = load_dataset("synthetic", shape=(1, 4, 4), n_train=200, n_test=100, noise=0.0)
    assert linear_ceiling(ctx.dataset) == 1.0 and linear_ceiling(None) is None
    f = exp.analyse(ctx)
    assert f.verdicts[3]["detail"].endswith("; a linear classifier on the pixels reaches 100.0% test accuracy, so a "
                                            "linear net can fall at most -10.0% below CReLU + LL here")
    assert "test accuracy 100.0%" in f.notes[-1]
    noisy = load_dataset("synthetic", shape=(1, 4, 4), n_train=400, n_test=400, noise=30.0)
    assert linear_ceiling(noisy) < 0.3  # noise 30x the signal: near chance (10%)
