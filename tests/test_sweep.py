"""`depthlab sweep`: expansion, validation before anything runs, the local process pool (failures,
divergence, skip on re-run, resume), aggregation, the CLI, and a local Ray instance when ray is
installed. Runs are tiny (resnet-8 on digits, one epoch); the whole file takes about half a minute."""
import copy
import importlib.util
import json
import math
import os
import re
import statistics

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from stops import StopAfter

from depthlab.cli import main
from depthlab.config import ConfigError
from depthlab.sweep import load_spec, plan_sweep, point_ids, run_sweep
from depthlab.sweep.executors import DIED, run_local

TINY = {"model": {"name": "resnet", "depth": 8}, "data": {"name": "digits"},
        "train": {"epochs": 1, "device": "cpu"}}
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")


def sweep_dict(tmp_path, **kw):
    d = {"name": "t", "out_dir": str(tmp_path / "sweeps"), "base": copy.deepcopy(TINY)}
    d.update(kw)
    return d


def by_id(doc):
    return {r["run_id"]: r for r in doc["runs"]}


# ----------------------------------------------------------------------------- expansion

def test_expansion_is_the_product_times_seeds_with_readable_stable_ids(tmp_path):
    d = sweep_dict(tmp_path, grid={"model.name": ["resnet20", "resnet56"], "methods.stochastic_depth": [None, 0.5]},
                   seeds=3, threads_per_worker=2)
    plan = plan_sweep(d)
    ids = [r.run_id for r in plan.runs]
    assert len(ids) == 2 * 2 * 3 == len(set(ids))
    assert ids[:3] == ["resnet20_stochastic_depth=none_s0", "resnet20_stochastic_depth=none_s1",
                       "resnet20_stochastic_depth=none_s2"]
    assert ids[-1] == "resnet56_stochastic_depth=0.5_s2"
    assert ids == [r.run_id for r in plan_sweep(d).runs]  # deterministic
    run = plan.runs[-1]
    assert (run.config.model.name, run.config.methods.stochastic_depth, run.config.train.seed) == ("resnet56", 0.5, 2)
    assert run.config.train.threads == 2 and run.config.data.name == "digits"
    assert run.config.run_dir == (tmp_path / "sweeps" / "t" / "runs" / run.run_id).resolve()
    assert {s["action"] for s in plan.states} == {"train"}
    assert not (tmp_path / "sweeps").exists()  # planning writes nothing
    # growing a grid list keeps every existing id
    d["grid"]["model.name"].append("resnet32")
    assert set(ids) < {r.run_id for r in plan_sweep(d).runs}
    # explicit seeds, a union of grids, a base_config file relative to the sweep file
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({"data": {"name": "digits"}, "train": {"lr": 0.02}}))
    f = tmp_path / "s.yaml"
    f.write_text(yaml.safe_dump({"name": "u", "base_config": "base.yaml", "base": {"train": {"epochs": 2}},
                                 "grid": [{"model.name": ["plain20"]},
                                          {"model.name": ["resnet20"], "model.zero_init_residual": [True]}],
                                 "seeds": [0, 5]}))
    runs = plan_sweep(f).runs
    assert [r.run_id for r in runs] == ["plain20_s0", "plain20_s5", "resnet20_zero_init_residual=true_s0",
                                        "resnet20_zero_init_residual=true_s5"]
    assert runs[0].config.train.lr == 0.02 and runs[0].config.train.epochs == 2


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=60))
KEYS = st.sampled_from(["model.name", "data.name", "model.init", "train.lr", "data.seed", "model.stage_blocks",
                        "methods.modulation", "train.recipe"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(KEYS, st.lists(SCALARS, min_size=1, max_size=4, unique_by=json.dumps), min_size=1,
                       max_size=4))
def test_ids_are_unique_filesystem_safe_and_survive_a_growing_grid(grid):
    from depthlab.sweep import grid_points

    keys = list(grid)
    points = grid_points([grid])
    ids = point_ids(points, keys)
    assert len(set(ids)) == len(ids)
    assert all(SAFE_ID.fullmatch(i) and len(i) <= 110 for i in ids), ids
    assert ids == point_ids(points, keys)
    bigger = {k: v + ["an-extra-value"] if "an-extra-value" not in v else v for k, v in grid.items()}
    if len(set(map(str, [p for v in bigger.values() for p in v]))) == sum(map(len, bigger.values())):
        new = dict(zip(map(json.dumps, grid_points([bigger])), point_ids(grid_points([bigger]), keys)))
        assert [new[json.dumps(p)] for p in points] == ids  # no collisions: old ids unchanged


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("change, words", [
    ({"grid": {"model.nme": ["plain20"]}}, ["unknown grid key 'model.nme'", "model.name"]),
    ({"grid": {"train.lr": ["fast"]}}, ["train.lr expects float", "lr=fast"]),
    ({"grid": {"model.depth": [8, 21]}}, ["model.depth=21", "6n+2"]),
    ({"grid": {"model.name": ["resnet57"]}}, ["model.name 'resnet57'", "resnet56"]),
    # only the model knows: stochastic depth needs residual blocks (built on the meta device)
    ({"grid": {"model.name": ["plain20", "resnet20"], "methods.stochastic_depth": [None, 0.5]}},
     ["grid point plain20_stochastic_depth=0.5", "needs residual blocks"]),
    ({"grid": {"model.name": []}}, ["grid model.name must be a non-empty list"]),
    ({"grid": {"model.name": "plain20"}}, ["grid model.name must be a non-empty list"]),
    ({"grid": {"train.seed": [1, 2]}}, ["train.seed", "seeds:"]),
    ({"executor": "slurm"}, ["executor 'slurm'", "local, ray"]),
    ({"workers": 0}, ["workers must be a positive integer"]),
    ({"seeds": 0}, ["seeds must be"]),
    ({"sweeps": 3}, ["unknown sweep key 'sweeps'", "grid"]),
    ({"name": "a/b"}, ["filesystem-safe"]),
    ({"base": {"out_dir": "x"}}, ["base sets out_dir"]),
    ({"base": {"train": {"epoch": 3}}}, ["train.epoch", "epochs"]),
    ({"ray": {"adress": "auto"}}, ["unknown ray key 'adress'", "address"]),
])
def test_bad_sweeps_fail_before_anything_runs_naming_the_key(tmp_path, change, words):
    d = sweep_dict(tmp_path, grid={"model.name": ["plain20"]})
    d.update(change)
    with pytest.raises(ConfigError) as e:
        run_sweep(d, quiet=True)
    for w in words:
        assert w in str(e.value)
    assert not (tmp_path / "sweeps").exists()


def test_ray_executor_without_ray_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'depthlab\[ray\]'"):
        run_sweep(sweep_dict(tmp_path), executor="ray", quiet=True)
    assert load_spec(sweep_dict(tmp_path), executor="ray", workers=3).workers == 3


# ----------------------------------------------------------------------------- local executor

def test_local_sweep_records_failure_and_divergence_aggregates_and_skips_on_rerun(tmp_path, capsys):
    # lr 1e6 diverges; cifar10 with no files (and no download) raises inside train: both recorded
    d = sweep_dict(tmp_path, grid=[{"train.lr": [0.05, 1e6]}, {"data.name": ["cifar10"]}], seeds=2, workers=2)
    d["base"]["data"].update(download=False, data_dir=str(tmp_path / "no-data"))
    doc = run_sweep(d)
    err = capsys.readouterr().err
    assert "[6/6]" in err and re.search(r"lr=0\.05_s1 finished train [\d.]+% test [\d.]+% \([\d.]+ s\)", err)
    c = doc["counts"]
    assert (c["finished"], c["diverged"], c["failed"], c["interrupted"]) == (2, 2, 2, 0)
    assert c["actions"]["trained"] == 6 and doc["complete"]
    runs = by_id(doc)
    assert runs["lr=1000000.0_s0"]["status"] == "diverged"
    fail = runs["cifar10_s1"]
    assert fail["status"] == "failed" and fail["error"].startswith("DataFileError: cifar10 data not found")
    sweep_dir = tmp_path / "sweeps" / "t"
    assert "Traceback" in (sweep_dir / "runs" / "cifar10_s1" / "error.txt").read_text()
    # aggregation: mean +- sample sd over the finished seeds, by hand from results.json
    saved = json.loads((sweep_dir / "results.json").read_text())
    accs = [r["test_acc"] for r in saved["runs"] if r["point_id"] == "lr=0.05"]
    group = next(g for g in saved["groups"] if g["point_id"] == "lr=0.05")
    assert group["test_acc"]["mean"] == pytest.approx(statistics.mean(accs))
    assert group["test_acc"]["sd"] == pytest.approx(statistics.stdev(accs))
    row = saved["table"]["rows"][0]
    assert saved["table"]["columns"][:3] == ["train.lr", "data.name", "finished"]
    assert row[:3] == ["0.05", "-", "2/2"]
    assert row[4] == f"{100 * statistics.mean(accs):.1f} +- {100 * statistics.stdev(accs):.1f}%"
    assert saved["table"]["rows"][1][2] == "0/2" and saved["table"]["rows"][1][-1] == "diverged s0,s1"
    assert saved["table"]["rows"][2][-1] == "failed s0,s1"
    md = (sweep_dir / "results.md").read_text()
    assert "| 0.05 | - | 2/2 |" in md and "cifar10_s0: failed: DataFileError" in md
    page = (sweep_dir / "report.html").read_text()
    assert "<table>" in page and "<script" not in page and "http://" not in page and "https://" not in page
    assert yaml.safe_load((sweep_dir / "sweep.yaml").read_text())["grid"] == d["grid"]

    # a re-run trains nothing that finished or diverged (failed runs are retried)
    finished = sweep_dir / "runs" / "lr=0.05_s0"
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()}
    again = run_sweep(d, quiet=True)
    a = again["counts"]["actions"]
    assert (a["skipped"], a["trained"], a["resumed"]) == (4, 2, 0)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished.rglob("*") if p.is_file()} == stamps
    assert by_id(again)["lr=0.05_s0"]["test_acc"] == runs["lr=0.05_s0"]["test_acc"]
    assert by_id(again)["lr=0.05_s0"]["params"] == runs["lr=0.05_s0"]["params"]
    assert again["table"]["rows"] == doc["table"]["rows"]


def test_interrupted_run_is_resumed_not_restarted_and_the_cli_reports(tmp_path, capsys, monkeypatch):
    import depthlab.training.trainer as loop
    from depthlab.training import train

    class Stop(StopAfter):
        n = 23  # digits: 1,437 images in batches of 64 = 23 steps; a stop in epoch 1's last step saves epoch 1

    d = sweep_dict(tmp_path, grid={"train.lr": [0.05]}, seeds=1)
    d["base"]["train"]["epochs"] = 2
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert re.search(r"lr=0\.05_s0 +train", capsys.readouterr().out)
    # the same run, stopped after its first epoch (what a killed sweep leaves behind)
    cfg = plan_sweep(path).runs[0].config
    monkeypatch.setattr(loop, "StopSignals", Stop)
    first = train(cfg, quiet=True)
    monkeypatch.undo()
    assert first["status"] == "interrupted"
    row1 = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()[0]
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "resume  (from epoch 1 of 2)" in capsys.readouterr().out

    assert main(["sweep", str(path), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"\[1/1\] lr=0\.05_s0 finished .*resumed\)", err)
    assert "1/1" in out and "sweep complete: 1 run: 1 finished (this invocation: 1 resumed)" in out
    rows = (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
    assert rows[0] == row1 and [json.loads(r)["epoch"] for r in rows] == [1, 2]  # epoch 1 kept, not retrained
    doc = json.loads((tmp_path / "sweeps" / "t" / "results.json").read_text())
    assert doc["runs"][0]["epoch"] == 2 and doc["runs"][0]["action"] == "resumed"
    assert first["epoch"] == 1
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert "skip    (finished earlier at epoch 2" in capsys.readouterr().out
    d["base"]["train"]["epochs"] = 3  # a run of another length is another run: refused before anything runs
    path.write_text(yaml.safe_dump(d))
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "train.epochs: saved 2, now 3" in capsys.readouterr().err


def test_cli_bad_sweep_exits_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngrid:\n  model.nme: [plain20]\n")
    assert main(["sweep", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthlab: error:") and "model.nme" in err and len(err.strip().splitlines()) == 1
    bad.write_text("name: x\ngrid: {model.name: [plain20\n")
    assert main(["sweep", str(bad), "--dry-run"]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def crashing_task(task):
    """A per-run function for the pool test: run 'boom' kills its worker process outright."""
    if task["run_id"] == "boom":
        os._exit(3)
    return {"run_id": task["run_id"], "status": "finished", "pid": os.getpid()}


def test_a_worker_that_dies_fails_only_its_own_run():
    tasks = [{"run_id": rid, "resume": False} for rid in ("a", "boom", "b", "c")]
    got = {}
    run_local(tasks, workers=2, threads=1, on_result=lambda i, rec: got.update({tasks[i]["run_id"]: rec}),
              fn=crashing_task)
    # retried once (a resume), then failed; the error says it died and how often it was retried
    assert got["boom"]["status"] == "failed" and got["boom"]["error"].startswith(DIED)
    assert got["boom"]["retries"] == 1 and "after 1 retry by resuming; exit code 3" in got["boom"]["error"]
    assert all(got[r]["status"] == "finished" and got[r]["retries"] == 0 for r in "abc")
    assert len(got) == 4


# ----------------------------------------------------------------------------- ray

@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
def test_ray_executor_on_a_local_instance(tmp_path):
    import ray

    d = sweep_dict(tmp_path, grid={"train.lr": [0.05, 1e6]}, executor="ray", workers=2)
    doc = run_sweep(d, quiet=True)
    runs = by_id(doc)
    assert runs["lr=0.05_s0"]["status"] == "finished" and runs["lr=0.05_s0"]["test_acc"] > 0.5
    assert runs["lr=1000000.0_s0"]["status"] == "diverged"
    assert not ray.is_initialized()  # the instance it started is shut down
    assert (tmp_path / "sweeps" / "t" / "runs" / "lr=0.05_s0" / "metrics.jsonl").exists()
    assert not math.isnan(doc["groups"][0]["test_acc"]["mean"])


def test_the_summary_line_counts_runs_that_never_began_as_not_started():
    from depthlab.sweep.results import counts, summary_line

    records = [{"status": "interrupted", "action": "trained", "epoch": 1},
               {"status": "interrupted", "action": "trained", "epoch": 0},
               {"status": "interrupted", "action": "not run", "epoch": 0},
               {"status": "interrupted", "action": "not run", "epoch": None}]
    line = summary_line({"counts": counts(records)})
    assert line == "4 runs: 0 finished, 2 interrupted, 2 not started (this invocation: 2 trained, 2 not run)"


def test_grid_progress_prints_a_line_per_epoch_of_runs_trained_elsewhere(tmp_path):
    import io
    import json

    from depthlab.training.progress import GridProgress

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    row = {"kind": "epoch", "train_loss": 1.0, "train_acc": 0.5, "seconds": 1.0}
    (b / "metrics.jsonl").write_text(json.dumps({**row, "epoch": 1}) + "\n")  # resumed: done before
    out = io.StringIO()
    progress = GridProgress([("a", a, 2), ("b", b, 2)], stream=out, interval=60)
    with progress:
        (a / "metrics.jsonl").write_text(json.dumps({**row, "epoch": 1}) + "\n" + json.dumps({**row, "epoch": 2})
                                         + "\n" + '{"kind": "epo')  # a line being written
        assert progress.poll() == 3
    lines = out.getvalue().splitlines()
    assert lines == ["  [a] epoch 1/2  loss 1.0000  train acc 0.500  1.0s",
                     "  [a] epoch 2/2  loss 1.0000  train acc 0.500  1.0s"]
    quiet = io.StringIO()
    with GridProgress([("a", a, 2)], stream=quiet, quiet=True):
        pass
    assert quiet.getvalue() == ""
