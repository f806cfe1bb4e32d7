"""A run's own config.json is a valid --config: the resolved config round-trips to the same run.
train.warmup_lr = 0 is what a recipe without a warm-up resolves to, so it is accepted exactly where
no warm-up can run. run_id names one directory inside out_dir, never a path."""
import json

import pytest

from depthlab.cli import main
from depthlab.config import ConfigError, RunConfig

TINY = ["--set", "model.name=plain", "model.depth=8", "train.epochs=1", "train.threads=1", "data.name=synthetic",
        "train.device=cpu"]


def last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_saved_config_json_trains_again_and_resumes(tmp_path, capsys):
    assert main(["train", *TINY, "--out-dir", str(tmp_path), "--run-id", "a", "--quiet"]) == 0
    first = last_json(capsys)
    saved = tmp_path / "a" / "config.json"
    # the saved file, as is: the resolved config is valid and describes this very run
    assert RunConfig.from_yaml(saved).validate() == RunConfig.from_dict(json.loads(saved.read_text()))
    assert main(["train", "--config", str(saved), "--resume", "--quiet"]) == 0
    again = last_json(capsys)
    assert again["status"] == "finished" and again["run_dir"] == first["run_dir"] and again["epoch"] == 1
    # the same config under another run_id trains the same run from scratch: the same numbers
    assert main(["train", "--config", str(saved), "--run-id", "b", "--quiet"]) == 0
    other = last_json(capsys)
    assert (other["train_acc"], other["test_acc"]) == (first["train_acc"], first["test_acc"])
    assert json.loads((tmp_path / "b" / "config.json").read_text()) == {**json.loads(saved.read_text()), "run_id": "b"}


@pytest.mark.parametrize("overrides", [
    ["train.warmup_lr=0"],                                            # quick: no warm-up
    ["train.warmup_lr=0", "train.warmup_iters=0"],
    ["train.recipe=he2015", "train.warmup_lr=0", "train.warmup_iters=0"],
])
def test_warmup_lr_zero_is_accepted_where_no_warmup_runs(overrides):
    RunConfig().with_overrides(overrides).validate()


@pytest.mark.parametrize("overrides", [
    ["train.recipe=he2015", "train.warmup_lr=0"],        # its warm-up runs for depth >= 110
    ["train.warmup_lr=0", "train.warmup_iters=5"],
    ["train.warmup_lr=-0.01", "train.warmup_iters=0"],
])
def test_warmup_lr_zero_or_below_is_refused_where_a_warmup_can_run(overrides):
    with pytest.raises(ConfigError, match=r"train\.warmup_lr must be > 0 when a warm-up runs .*"
                                          r"0 is accepted only with train\.warmup_iters=0"):
        RunConfig().with_overrides(overrides).validate()


@pytest.mark.parametrize("run_id, why", [
    ("../../x", "is a path"), ("/abs/run", "is a path"), ("a/b", "is a path"), ("a\\b", "is a path"),
    ("..", "is '.' or '..'"), (".", "is '.' or '..'"), ("", "is empty or blank"), ("  ", "is empty or blank"),
])
def test_a_run_id_must_be_one_directory_name(run_id, why):
    with pytest.raises(ConfigError) as info:
        RunConfig(run_id=run_id).validate()
    assert str(info.value).startswith(f"run_id {run_id!r} {why}; it must be a single directory name inside out_dir")


@pytest.mark.parametrize("run_id", ["plain56-a", "x..y", "run 1", "010"])
def test_ordinary_run_ids_are_accepted(run_id):
    assert RunConfig(run_id=run_id).validate().run_dir.name == run_id
