"""``reproduce all``'s global queue (depthlab/experiments/suite.py), the run-time estimate that orders it
(depthlab/experiments/cost.py) and the executors' ``after`` dependencies it relies on."""
import json
import math
import time

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from depthlab.config import ConfigError, RunConfig
from depthlab.data import load_dataset_from
from depthlab.experiments import cost
from depthlab.experiments.runner import plan_experiment
from depthlab.experiments.suite import breakdown, queue_tasks, reproduce_all
from depthlab.sweep.executors import execute
from depthlab.training.trainer import build_from_config


def timed_sleep(task):
    started = time.time()
    time.sleep(task["sleep"])
    return {"run_id": task["run_id"], "started": started, "ended": time.time()}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_with_after_starts_only_once_those_tasks_have_reported(workers):
    tasks = [{"run_id": "analysis", "sleep": 0.0, "after": [1, 2]},
             {"run_id": "a", "sleep": 3.0}, {"run_id": "b", "sleep": 0.2}, {"run_id": "c", "sleep": 0.0}]
    got = {}
    execute(tasks, "local", workers, 1, lambda i, rec: got.__setitem__(i, rec), fn=timed_sleep)
    assert set(got) == {0, 1, 2, 3}
    assert got[0]["started"] >= max(got[1]["ended"], got[2]["ended"])
    if workers == 2:  # the waiting analysis does not hold a worker: c starts before a ends
        assert got[3]["started"] < got[1]["ended"]


def test_after_lists_that_can_never_be_met_are_an_error_not_a_hang():
    with pytest.raises(ConfigError, match=r"tasks \[0, 1\] wait for tasks that never run"):
        execute([{"run_id": "x", "sleep": 0, "after": [1]}, {"run_id": "y", "sleep": 0, "after": [0]}], "local", 2, 1,
                lambda i, rec: None, fn=timed_sleep)


def digits():
    return load_dataset_from(RunConfig().with_overrides(["data.name=digits"]).validate().data)


def test_the_cost_features_are_those_of_a_real_forward_pass():
    """FLOPs and leaf-module calls counted on the meta device equal those of the model run on real data."""
    data = digits()
    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=14", "data.name=digits"]).validate()
    flops, calls = cost.model_features(cfg, tuple(data.train_x.shape[1:]), data.num_classes)
    model = build_from_config(cfg, data.num_classes, data.in_channels).eval()
    seen = [0]
    for m in model.modules():
        if not list(m.children()):
            m.register_forward_hook(lambda *a: seen.__setitem__(0, seen[0] + 1))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(data.train_x[:1])
    assert (flops, calls) == (counter.get_total_flops(), seen[0]) and calls > 14
    deeper = RunConfig().with_overrides(["model.name=resnet", "model.depth=56", "data.name=digits"]).validate()
    f56, c56 = cost.model_features(deeper, tuple(data.train_x.shape[1:]), data.num_classes)
    assert f56 > 3 * flops and c56 > 3 * calls


def test_the_estimate_is_the_fitted_formula_and_scales_with_epochs_and_images(monkeypatch):
    data = digits()
    cfg = RunConfig().with_overrides(["model.name=plain", "model.depth=8", "data.name=digits", "train.epochs=3",
                                      "train.batch_size=64"]).validate()
    flops, calls = cost.model_features(cfg, tuple(data.train_x.shape[1:]), 10)
    steps = math.ceil(len(data.train_x) / 64)
    want = 3 * (steps * (cost.A * flops * 64 + cost.B * calls + cost.C * 64 * 64) + cost.D)
    assert cost.estimate_seconds(cfg, data) == pytest.approx(want, rel=1e-12)
    assert cost.estimate_seconds(cfg, data, epochs=6) == pytest.approx(2 * want, rel=1e-12)


def test_a_forward_that_cannot_run_on_meta_is_estimated_from_its_parameters(monkeypatch):
    class ItemNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * x.sum().item()  # data-dependent: no meta kernel

    monkeypatch.setattr(cost, "build_from_config", lambda cfg, classes, channels: ItemNet())
    cfg = RunConfig().with_overrides(["model.width=7"]).validate()  # a key of its own in the cache
    assert cost.model_features(cfg, (1, 8, 8), 10) == (2.0 * (64 * 10 + 10) * 64, 1)


def test_the_queue_puts_analyses_after_their_runs_and_the_longest_runs_first(tmp_path):
    plans = [plan_experiment("degradation", seeds=2, out=str(tmp_path / "d"), params={"depths": [8, 20], "epochs": 1},
                             device="cpu", quiet=True),
             plan_experiment("shattered", out=str(tmp_path / "s"), params=dict(
                 __import__("depthlab.experiments.shattered", fromlist=["x"]).Shattered.smoke), device="cpu",
                 quiet=True)]
    tasks, order = queue_tasks(plans, fresh=False, jobs=2)
    queued = [tasks[i] for i in order]
    assert [t["kind"] for t in queued] == ["analyse", "analyse"] + ["run"] * 8
    estimates = [t["estimate"] for t in queued[2:]]
    assert estimates == sorted(estimates, reverse=True) and estimates[0] > estimates[-1] > 0
    assert {t["run_id"] for t in queued[2:4]} <= {"plain20-s0", "plain20-s1", "resnet20-s0", "resnet20-s1"}
    deg, sha = queued[0], queued[1]
    assert sorted(queued[k]["run_id"] for k in deg["after"]) == sorted(t["run_id"] for t in queued[2:])
    assert sha["after"] == [] and sha["rows"] == []  # no runs: ready at once


def test_reproduce_all_on_two_workers_runs_one_queue_and_accounts_for_the_time(tmp_path):
    result = reproduce_all(params={"depths": [8, 14], "epochs": 1}, out=str(tmp_path), quiet=True, device="cpu",
                           seeds=2, names=["degradation", "stochastic-depth"], jobs=2)
    suite = json.loads((tmp_path / "suite.json").read_text())
    runs = [r for e in ("degradation", "stochastic-depth")
            for r in json.loads((tmp_path / e / "experiment.json").read_text())["runs"]]
    assert len(runs) == 16 and all(r["status"] == "finished" for r in runs)
    s = suite["schedule"]
    assert s["jobs"] == 2 and len(s["estimates"]) == 16
    assert s["busy_seconds"] == pytest.approx(sum(e["seconds"] for e in suite["experiments"]))
    assert s["idle_core_minutes"] == pytest.approx(max(0.0, 2 * (result["seconds"] - s["planning_seconds"])
                                                       - s["busy_seconds"]) / 60, abs=0.05)
    assert s["lower_bound_seconds"] <= s["per_experiment_seconds"] + 1e-9
    assert s["lower_bound_seconds"] <= result["seconds"] + 1e-9
    for e in suite["experiments"]:
        assert 0 < e["ready"] <= result["seconds"] and e["runs"] == 8
    table = breakdown(result)
    assert "schedule: 2 workers, longest runs first; " in table and "idle core-min" in table


def test_one_experiment_on_two_workers_hands_out_its_longest_runs_first(tmp_path, monkeypatch):
    from depthlab.experiments import runner

    plan = plan_experiment("degradation", seeds=2, out=str(tmp_path), params={"depths": [8, 20], "epochs": 1},
                           device="cpu", quiet=True)
    grid_ids = [cfg.resolved_run_id for _, _, cfg in plan.grid]
    assert grid_ids[0].endswith("8-s0")  # grid order: the shallow nets first
    handed = []

    def fake_execute(tasks, executor, workers, threads, on_result, fn=None, quiet=True):
        handed.extend(t["run_id"] for t in tasks)
        for j in reversed(range(len(tasks))):  # results arrive in any order
            on_result(j, {"id": tasks[j]["id"], "seed": tasks[j]["seed"], "run_id": tasks[j]["run_id"],
                          "status": "finished", "seconds": 1.0})

    monkeypatch.setattr(runner, "execute", fake_execute)
    rows = runner._train_grid(plan.grid, plan.dataset, False, True, "cmd", "degradation", jobs=2)
    est = {cfg.resolved_run_id: cost.estimate_seconds(cfg, plan.dataset) for _, _, cfg in plan.grid}
    assert sorted(handed) == sorted(grid_ids) and [est[r] for r in handed] == sorted(est.values(), reverse=True)
    assert {handed[0], handed[1]} <= {r for r in grid_ids if "20-s" in r}
    assert [r["run_id"] for r in rows] == grid_ids  # the rows still come back in grid order
    assert runner.longest_first(plan.grid, None) == list(range(len(plan.grid)))
