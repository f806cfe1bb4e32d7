"""The experiment framework: parameters, verdict statistics, run reuse and resume, the paper-scale
fallback, caching of measurements, the CLI, and the degradation experiment end to end."""
import importlib.util
import json
import math
import re

import pytest
from test_exp_degradation import check_verdicts as check_degradation_verdicts

from depthlab.cli import main
from depthlab.config import ConfigError
from depthlab.experiments import EXPERIMENTS, list_experiments, parse_params, reproduce
from depthlab.experiments.base import compare, fmt_mean_sd, mean_sd, verdict
from depthlab.experiments.runner import Context, resolve_params
from depthlab.registry import UnknownNameError
from depthlab.report.markdown import report_markdown

SMOKE = {"depths": [8, 14], "epochs": 1}
ALL = ("degradation", "shattered", "looks-linear", "discriminability", "lesion", "stochastic-depth",
       "orthonormal", "highway", "beyond", "toolkit")


def test_every_named_experiment_is_registered_with_its_source_and_expectation():
    listed = {e["name"]: e for e in list_experiments()}
    assert set(ALL) <= set(listed)
    for name in ALL:
        e = listed[name]
        assert e["source"] and e["expected"] and {"quick", "paper"} <= set(e["scales"]), name
        assert EXPERIMENTS.get(name).smoke, f"{name} has no smoke parameters for tests"


def test_mean_sd_and_formatting():
    m, sd, n = mean_sd([1.0, 2.0, 3.0, float("nan"), None])
    assert (m, n) == (2.0, 3) and sd == pytest.approx(1.0)
    assert mean_sd([])[2] == 0 and math.isnan(mean_sd([])[0])
    assert fmt_mean_sd([0.5]) == "0.5" and fmt_mean_sd([0.25, 0.75], 100, unit="%") == "50.0 +- 35.4%"
    assert fmt_mean_sd([]) == "-"


def test_compare_is_inconclusive_only_when_the_seeds_straddle_the_threshold():
    assert compare([0.9], [0.5], 0.1)["holds"] is True
    assert compare([0.55], [0.5], 0.1)["holds"] is False
    # seeds far apart from the threshold: decided
    assert compare([0.9, 0.91], [0.5, 0.51], 0.1)["holds"] is True
    # a mean gap of 0.12 with sd ~0.14 on one side: the seeds disagree about the 0.1 threshold
    c = compare([0.5, 0.7], [0.48, 0.48], 0.1)
    assert c["holds"] is None and c["n"] == 2
    assert compare([], [0.5], 0.1)["holds"] is None


def test_verdict_statuses():
    assert verdict("x", True, "d")["status"] == "observed"
    assert verdict("x", False, "d")["status"] == "not observed"
    v = verdict("x", None, "d", seeds=3, spread=0.04)
    assert v["status"] == "inconclusive (3 seeds, spread 0.04)"


def test_parameters_parse_and_unknown_names_list_the_valid_ones():
    assert parse_params(["depths=8,20", "epochs=3", "set=[train.lr=0.1]"]) == {
        "depths": [8, 20], "epochs": 3, "set": ["train.lr=0.1"]}
    assert resolve_params(EXPERIMENTS.get("stochastic-depth")(), "quick", {"depths": 110})["depths"] == [110]
    # depths are sorted and without repeats; an experiment that compares depths needs two different ones
    assert resolve_params(EXPERIMENTS.get("degradation")(), "quick", {"depths": [56, 8, 56]})["depths"] == [8, 56]
    for bad in (8, [8, 8]):
        with pytest.raises(ConfigError, match=r"depths of degradation needs at least 2 different depths"):
            resolve_params(EXPERIMENTS.get("degradation")(), "quick", {"depths": bad})
    for bad in ([8, "x"], [0, 8], [], [True, 8]):
        with pytest.raises(ConfigError, match=r"depths of highway must be a list of positive ints"):
            resolve_params(EXPERIMENTS.get("highway")(), "quick", {"depths": bad})
    with pytest.raises(ConfigError, match="name=value"):
        parse_params(["depths"])
    exp = EXPERIMENTS.get("degradation")()
    with pytest.raises(ConfigError, match="unknown parameter 'depth' .*valid parameters: .*depths"):
        resolve_params(exp, "quick", {"depth": 3})
    with pytest.raises(ConfigError, match="scale 'huge' .*valid scales: paper, quick"):
        resolve_params(exp, "huge")
    with pytest.raises(UnknownNameError, match="degradation"):
        reproduce("degradaton")


def test_measure_caches_until_the_key_or_parameters_change(tmp_path):
    exp = EXPERIMENTS.get("degradation")()
    ctx = Context(exp, "quick", {"a": 1}, [0], tmp_path, "cpu", None, "", True)
    calls = []

    def fn():
        calls.append(1)
        return {"v": len(calls)}

    assert ctx.measure("m", fn) == {"v": 1}
    assert ctx.measure("m", fn) == {"v": 1} and len(calls) == 1
    assert ctx.measure("m", fn, key="other") == {"v": 2}
    ctx2 = Context(exp, "quick", {"a": 2}, [0], tmp_path, "cpu", None, "", True)
    assert ctx2.measure("m", fn, key="other") == {"v": 3}


def test_degradation_end_to_end_verdicts_follow_the_runs_reuses_finished_runs_and_resumes_an_interrupted_one(
        tmp_path):
    out = tmp_path / "deg"
    # gap 101%: "plain-14 trains worse than plain-8 by >= 101%" cannot hold for errors in [0, 1], so it must
    # come out not observed whatever the runs learned
    params = {**SMOKE, "epochs": 2, "gap": 1.01}
    doc = reproduce("degradation", seeds=1, params=params, out=str(out), device="cpu", quiet=True)
    assert [r["run_id"] for r in doc["runs"]] == ["plain8-s0", "resnet8-s0", "plain14-s0", "resnet14-s0"]
    assert all(r["status"] == "finished" and not r["reused"] for r in doc["runs"])
    assert len(doc["verdicts"]) == 4
    check_degradation_verdicts(out, doc)
    assert doc["verdicts"][0]["status"] == "not observed"
    assert re.fullmatch(r"plain-8 \d+\.\d%, plain-14 \d+\.\d% training error", doc["verdicts"][0]["detail"])
    saved = json.loads((out / "experiment.json").read_text())
    assert saved["provenance"]["torch"] and saved["provenance"]["commit"] and saved["scale"] == "quick"
    page = (out / "report.html").read_text()
    for section in ("summary", "verdicts", "results", "figures", "provenance"):
        assert f"id={section}" in page
    assert page.count("data:image/svg+xml;base64,") == len(saved["figures"]) >= 3
    assert "http://" not in page and "https://" not in page and "<script" not in page

    again = reproduce("degradation", seeds=1, params=params, out=str(out), device="cpu", quiet=True)
    assert all(r["reused"] for r in again["runs"])
    made_by = (f"depthlab reproduce degradation --seeds 1 --out {out} --param depths=8,14 --param epochs=2 "
               "--param gap=1.01")
    assert [r["made_by"] for r in again["runs"]] == [made_by] * 4  # the command that trained them
    assert made_by in (out / "report.html").read_text()
    assert [r["train_acc"] for r in again["runs"]] == [r["train_acc"] for r in doc["runs"]]

    # interrupt plain8 after epoch 1: drop its epoch-2 checkpoint and metrics line
    run = out / "runs" / "plain8-s0"
    (run / "checkpoints" / "epoch_0002.pt").unlink()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    resumed = reproduce("degradation", seeds=1, params=params, out=str(out), device="cpu", quiet=True)
    r0 = resumed["runs"][0]
    assert not r0["reused"] and all(r["reused"] for r in resumed["runs"][1:])
    assert r0["train_acc"] == doc["runs"][0]["train_acc"]  # exact resume
    check_degradation_verdicts(out, resumed)


def test_changed_settings_ask_for_fresh(tmp_path):
    out = tmp_path / "deg"
    reproduce("degradation", seeds=1, params=SMOKE, out=str(out), device="cpu", quiet=True)
    with pytest.raises(ConfigError, match="train.lr: saved 0.05, now 0.01.*--fresh"):  # a finished run
        reproduce("degradation", seeds=1, params={**SMOKE, "set": ["train.lr=0.01"]}, out=str(out),
                  device="cpu", quiet=True)
    run = out / "runs" / "plain8-s0"
    (run / "checkpoints" / "epoch_0001.pt").unlink()
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="--fresh"):  # an interrupted run
        reproduce("degradation", seeds=1, params={**SMOKE, "set": ["train.lr=0.01"]}, out=str(out),
                  device="cpu", quiet=True)
    doc = reproduce("degradation", seeds=1, params={**SMOKE, "set": ["train.lr=0.01"]}, out=str(out),
                    device="cpu", quiet=True, fresh=True)
    assert all(not r["reused"] for r in doc["runs"])


def test_paper_scale_runs_end_to_end_on_synthetic_cifar_shaped_data_says_so_and_verdicts_follow_the_runs(tmp_path):
    doc = reproduce("degradation", seeds=1, scale="paper", params={**SMOKE, "gap": 1.01}, out=str(tmp_path / "p"),
                    device="cpu", quiet=True)
    assert doc["data"]["name"] == "synthetic" and "cifar10 files are absent" in doc["data"]["note"]
    assert all(r["status"] == "finished" for r in doc["runs"])
    check_degradation_verdicts(tmp_path / "p", doc)
    assert doc["verdicts"][0]["status"] == "not observed"  # no training error is 101% above another
    cfg = json.loads((tmp_path / "p" / "runs" / "plain8-s0" / "config.json").read_text())
    assert cfg["train"]["recipe"] == "he2015" and cfg["model"]["in_channels"] == 3
    assert "synthetic CIFAR-shaped data" in (tmp_path / "p" / "report.html").read_text()


def test_cli_list_report_index_and_markdown(tmp_path, capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ALL)
    assert main(["reproduce", "nope"]) == 2
    assert "valid experiment names: degradation" in capsys.readouterr().err.lower()
    out = tmp_path / "exps" / "deg"
    assert main(["reproduce", "degradation", "--seeds", "1", "--param", "depths=8,14", "epochs=1", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed and ("OBSERVED" in printed or "NOT OBSERVED" in printed or "INCONCLUSIVE" in printed)
    check_degradation_verdicts(out, json.loads((out / "experiment.json").read_text()))
    md = tmp_path / "results.md"
    assert main(["report", str(tmp_path / "exps"), "--markdown", str(md)]) == 0
    index = (tmp_path / "exps" / "index.html").read_text()
    assert "deg/report.html" in index and "degradation" in index
    text = md.read_text()
    assert "| expectation | verdict | numbers |" in text and "depthlab reproduce degradation" in text
    assert main(["report", str(tmp_path / "nothing-here")]) == 2


def test_seeds_give_one_run_each_and_mean_sd_tables_and_verdicts_over_the_seeds(tmp_path):
    doc = reproduce("degradation", seeds=2, params=SMOKE, out=str(tmp_path / "s"), device="cpu", quiet=True)
    check_degradation_verdicts(tmp_path / "s", doc)  # mean +- sd of two seeds; undecided where they straddle
    assert sorted((r["id"], r["seed"]) for r in doc["runs"]) == [(f"{f}{d}", s) for f in ("plain", "resnet")
                                                                  for d in (14, 8) for s in (0, 1)]
    assert doc["runs"][0]["train_acc"] != doc["runs"][1]["train_acc"]  # different inits
    cells = [c for row in doc["tables"][0]["rows"] for c in row if isinstance(c, str)]
    assert any(" +- " in c for c in cells)
    assert all(v["seeds"] == 2 for v in doc["verdicts"])
    assert "One seed" not in " ".join(doc["notes"])


def test_a_grid_that_clashes_with_earlier_runs_or_cannot_be_built_stops_before_anything_trains(tmp_path, capsys):
    """The sequence that used to mix runs: a first grid, then other epochs over the same directory, then
    a depth the family does not have. Each bad call exits 2 with one line and trains nothing."""
    out = tmp_path / "deg"
    base = ["reproduce", "degradation", "--seeds", "1", "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(base + ["--param", "depths=8,14", "epochs=1"]) == 0
    files = lambda: {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}  # noqa: E731
    before = files()
    capsys.readouterr()
    assert main(base + ["--param", "depths=8,20", "epochs=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"run plain8-s0 and 1 more run\(s\) already exist\(s\) with other settings \(train.epochs: "
                     r"saved 1, now 2\); nothing was trained. Pass --fresh", err), err
    assert main(base + ["--param", "depths=8,21", "epochs=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "plain21-s0" in err and "21" in err, err
    assert main(base + ["--param", "depths=8"]) == 2
    assert "needs at least 2 different depths" in capsys.readouterr().err
    assert files() == before and not (out / "runs" / "plain20-s0").exists()
    assert main(base + ["--param", "depths=8,14", "epochs=2", "--fresh"]) == 0  # retrains, as suggested
    runs = json.loads((out / "experiment.json").read_text())["runs"]
    assert [r["reused"] for r in runs] == [False] * 4


def test_parallel_runs_give_the_runs_of_a_sequential_call_in_grid_order(tmp_path):
    params = {**SMOKE, "set": ["train.threads=1"]}  # one thread in both, so the runs are bit for bit the same
    one = reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "one"), device="cpu", quiet=True,
                    report=False)
    two = reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "two"), device="cpu", quiet=True,
                    report=False, jobs=2)
    assert [r["run_id"] for r in two["runs"]] == [r["run_id"] for r in one["runs"]]
    assert [(r["status"], r["train_acc"], r["test_acc"]) for r in two["runs"]] == [
        (r["status"], r["train_acc"], r["test_acc"]) for r in one["runs"]]
    assert [v["status"] for v in two["verdicts"]] == [v["status"] for v in one["verdicts"]]
    assert all((tmp_path / "two" / "runs" / r["run_id"] / "made_by.json").exists() for r in two["runs"])
    with pytest.raises(ConfigError, match="jobs must be an int >= 0"):
        reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "bad"), jobs=-1)


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="the ray extra is not installed")
def test_reproduce_on_the_sweeps_ray_executor_gives_the_same_runs(tmp_path):
    """experiments train on the sweep's executors: ``executor="ray"`` (a local Ray instance) gives the
    runs and verdicts of the local processes, and a bad executor is refused before anything runs."""
    params = {**SMOKE, "set": ["train.threads=1"]}
    local = reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "local"), device="cpu", quiet=True,
                      report=False, jobs=2)
    ray = reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "ray"), device="cpu", quiet=True,
                    report=False, jobs=2, executor="ray")
    assert [(r["run_id"], r["status"], r["train_acc"]) for r in ray["runs"]] == [
        (r["run_id"], r["status"], r["train_acc"]) for r in local["runs"]]
    with pytest.raises(ConfigError, match="executor 'slurm' is not valid"):
        reproduce("degradation", seeds=1, params=params, out=str(tmp_path / "bad"), jobs=2, executor="slurm")


def test_reproduce_all_runs_each_experiment_into_one_directory_with_an_index_and_a_time_breakdown(tmp_path):
    from depthlab.experiments.suite import breakdown, reproduce_all, split_params

    with pytest.raises(ConfigError, match="unknown parameter 'depthz' for every experiment; valid .*depths"):
        reproduce_all(params={"depthz": 3}, out=str(tmp_path / "x"))
    shares = split_params(["degradation", "shattered"], "quick", {"depths": [8, 14], "epochs": 1})
    assert shares["degradation"] == {"depths": [8, 14], "epochs": 1} and "depths" not in shares["shattered"]
    result = reproduce_all(params={"depths": [8, 14], "epochs": 1}, out=str(tmp_path), quiet=True, device="cpu",
                           seeds=1, names=["degradation", "stochastic-depth"])
    assert [r["name"] for r in result["experiments"]] == ["degradation", "stochastic-depth"]
    for r in result["experiments"]:
        doc = json.loads((tmp_path / r["name"] / "experiment.json").read_text())
        assert r["runs"] == len(doc["runs"]) and r["reused"] == 0
        assert r["observed"] + r["not observed"] + r["inconclusive"] == len(doc["verdicts"])
    index = (tmp_path / "index.html").read_text()
    assert "degradation/report.html" in index and "stochastic-depth/report.html" in index
    table = breakdown(result)
    assert table.splitlines()[-1].startswith("wall time: ") and " min; index: " in table
    assert re.search(r"^all +[\d.]+ +[\d.]+ +8 +0 ", table, re.M)  # 4 + 4 runs, none reused
    suite = json.loads((tmp_path / "suite.json").read_text())
    assert suite["seconds"] == result["seconds"] and suite["experiments"] == result["experiments"]
    md = report_markdown(tmp_path, command="depthlab report x --markdown y")
    minutes = f"{result['seconds'] / 60:.0f}"
    assert re.fullmatch(rf"wall time: {minutes} min for `depthlab reproduce all` on .+ cores.*", md.splitlines()[0])
    r = result["experiments"][0]
    assert f"| degradation | {r['seconds'] / 60:.1f} min | {r['ready'] / 60:.1f} min | 4 | 0 | {r['observed']} |" in md


def test_three_seeds_by_default_at_the_quick_scale_one_at_the_paper_scale(tmp_path):
    from depthlab.experiments.shattered import Shattered  # no training runs: measurements at init only

    quick = reproduce("shattered", params=Shattered.smoke, out=str(tmp_path / "q"), quiet=True, report=False)
    assert quick["seeds"] == 3 and " --seeds" not in quick["provenance"]["command"]
    paper = reproduce("shattered", scale="paper", params=Shattered.smoke, out=str(tmp_path / "p"), quiet=True,
                      report=False)
    assert paper["seeds"] == 1


def test_provenance_names_the_commit_that_started_and_a_checkout_changed_while_it_ran(tmp_path, monkeypatch):
    """A long experiment imports modules as it goes: the commit it started from is the one recorded, and a
    checkout moved meanwhile (a pull, a commit, an edit) is named beside it, not in its place."""
    from depthlab.experiments import runner
    from depthlab.training import provenance

    commits = iter(["aaaa", "bbbb+dirty"])
    for module in (runner, provenance):  # the start (the runner) and the end (provenance) read the same checkout
        monkeypatch.setattr(module, "git_commit", lambda: next(commits))
    doc = reproduce("shattered", seeds=1, params=EXPERIMENTS.get("shattered").smoke, out=str(tmp_path / "s"),
                    device="cpu", quiet=True, report=False)
    assert (doc["provenance"]["commit"], doc["provenance"]["commit_at_end"]) == ("aaaa", "bbbb+dirty")
    for module in (runner, provenance):
        monkeypatch.setattr(module, "git_commit", lambda: "aaaa")
    doc = reproduce("shattered", seeds=1, params=EXPERIMENTS.get("shattered").smoke, out=str(tmp_path / "t"),
                    device="cpu", quiet=True, report=False)
    assert doc["provenance"]["commit"] == "aaaa" and "commit_at_end" not in doc["provenance"]
