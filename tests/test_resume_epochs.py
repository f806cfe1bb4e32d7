"""Resuming with another ``train.epochs`` gives a run of the new length or is refused: the steps already
trained must have had exactly the learning rates of a run of the new length."""
import json

import pytest
import torch
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.config import ConfigError, RunConfig
from depthlab.training import train
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint


def _cfg(tmp_path, run_id, *overrides):
    # 1,437 digits in batches of 128: 12 steps per epoch
    return RunConfig().with_overrides([
        "model.name=resnet", "model.depth=8", "model.width=4", "data.name=digits", "train.batch_size=128",
        "train.device=cpu", "train.threads=1", f"out_dir={tmp_path}", f"run_id={run_id}", *overrides])


def _saved(cfg):
    return (json.loads((cfg.run_dir / "config.json").read_text())["train"]["epochs"],
            (cfg.run_dir / "metrics.jsonl").read_text())


def test_a_finished_run_is_neither_shortened_nor_stretched_and_its_files_stay(tmp_path):
    cfg = _cfg(tmp_path, "r", "train.epochs=2")
    assert train(cfg, quiet=True)["status"] == "finished"
    before = _saved(cfg)
    with pytest.raises(ConfigError, match=r"train.epochs=1 \(it was made with 2\): it has already trained 2 epoch"):
        train(cfg.with_overrides(["train.epochs=1"]), resume=True, quiet=True)
    # the quick recipe's one-cycle schedule depends on the run's length from the first step on
    with pytest.raises(ConfigError, match=r"train.epochs=3 .*quick schedule depends on the run's length.*24 steps "
                                          r"already trained.*at step 1:"):
        train(cfg.with_overrides(["train.epochs=3"]), resume=True, quiet=True)
    assert _saved(cfg) == before  # config.json and metrics untouched
    assert train(cfg, resume=True, quiet=True)["status"] == "finished"  # the same epochs: nothing to do


def test_a_step_schedule_stopped_before_its_first_drop_continues_as_a_run_of_the_new_length(tmp_path, monkeypatch):
    """he2015 at 4 epochs drops the lr at step 24; stopped after 12 steps, every step so far had the
    base lr, as in a 2-epoch run (drop at step 12): resuming at 2 epochs is that 2-epoch run exactly."""
    straight = _cfg(tmp_path, "straight", "train.recipe=he2015", "train.epochs=2")
    train(straight, quiet=True)
    long = _cfg(tmp_path, "long", "train.recipe=he2015", "train.epochs=4")

    class Stop(StopAfter):
        n = 12

    monkeypatch.setattr(loop, "StopSignals", Stop)
    assert train(long, quiet=True)["status"] == "interrupted"
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"he2015 schedule depends on the run's length.*at step 6"):
        train(long.with_overrides(["train.epochs=1"]), resume=True, quiet=True)  # drop at 6 < 12 steps done
    assert train(long.with_overrides(["train.epochs=2"]), resume=True, quiet=True)["status"] == "finished"
    a = load_checkpoint(latest_checkpoint(straight.run_dir / "checkpoints"))["model"]
    b = load_checkpoint(latest_checkpoint(long.run_dir / "checkpoints"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
