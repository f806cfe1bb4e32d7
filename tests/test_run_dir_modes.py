"""What a run directory may become, on one process: ``resume="auto"`` starts a missing run, continues
this run and refuses another; ``overwrite`` replaces only a depthlab run directory; a torchrun restart
(its environment set by hand here) continues the run its own job started, never an earlier one."""
import json
import logging

import pytest
import torch
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.cli import main
from depthlab.cli.commands import build_parser
from depthlab.config import ConfigError, RunConfig
from depthlab.training import train
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint
from depthlab.training.distributed import JOB_FILE

TINY = ["model.name=resnet", "model.depth=8", "model.width=4", "data.name=digits", "train.batch_size=64",
        "train.device=cpu", "train.threads=1"]


def _cfg(tmp_path, run_id, *overrides):
    return RunConfig().with_overrides([*TINY, "train.epochs=2", f"out_dir={tmp_path}", f"run_id={run_id}",
                                       *overrides])


def _rows(cfg):
    return [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(cfg):
    return load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))["model"]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _snapshot(root):
    """Every path under ``root`` with its bytes (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _stopped_after(monkeypatch, steps):
    class Stop(StopAfter):
        n = steps

    monkeypatch.setattr(loop, "StopSignals", Stop)


# ------------------------------------------------------------------------------------ resume="auto"
def test_resume_auto_starts_a_missing_run_and_continues_this_one_bit_for_bit(tmp_path, monkeypatch):
    straight = _cfg(tmp_path, "straight")
    assert train(straight, resume="auto", quiet=True)["status"] == "finished"  # no run yet: it starts
    cfg = _cfg(tmp_path, "stopped")
    _stopped_after(monkeypatch, 30)  # 23 steps per epoch: stops in epoch 2, step 7
    assert train(cfg, resume="auto", quiet=True)["status"] == "interrupted"
    monkeypatch.undo()
    first_row = _rows(cfg)[0]
    assert train(cfg, resume="auto", quiet=True)["status"] == "finished"  # this run: it continues
    assert _rows(cfg)[0] == first_row  # epoch 1 was not trained again (its timings would differ)
    assert [r["epoch"] for r in _rows(cfg)] == [1, 2]
    assert _same_weights(_weights(straight), _weights(cfg))
    before = _snapshot(cfg.run_dir)
    assert train(cfg, resume="auto", quiet=True)["status"] == "finished"  # finished: nothing more to do
    assert [r["epoch"] for r in _rows(cfg)] == [1, 2] and _rows(cfg)[0] == first_row
    assert {k: v for k, v in _snapshot(cfg.run_dir).items() if k != "config.json"} == \
        {k: v for k, v in before.items() if k != "config.json"}


def test_resume_auto_refuses_a_different_run_naming_the_fields_and_writes_nothing(tmp_path):
    cfg = _cfg(tmp_path, "r", "train.epochs=1")
    train(cfg, quiet=True)
    before = _snapshot(tmp_path)
    other = _cfg(tmp_path, "r", "train.epochs=1", "train.lr=0.2", "train.seed=3")
    with pytest.raises(ConfigError, match=r"cannot resume .*different run \(train\.lr: saved 0\.05, now 0\.2; "
                                          r"train\.seed: saved 0, now 3\)"):
        train(other, resume="auto", quiet=True)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_resume_takes_only_true_false_or_auto(tmp_path, value):
    with pytest.raises(ConfigError, match=r"resume must be True, False or 'auto'"):
        train(_cfg(tmp_path, "r"), resume=value, quiet=True)
    assert not tmp_path.joinpath("r").exists()


def test_cli_resume_flag_plain_auto_or_absent():
    def parsed(*argv):
        return build_parser().parse_args(["train", *argv]).resume

    assert (parsed(), parsed("--resume"), parsed("--resume", "auto"), parsed("--resume=auto")) == \
        (False, True, "auto", "auto")
    assert parsed("--resume", "--quiet") is True  # the next option is not taken as its value
    with pytest.raises(SystemExit) as e:
        parsed("--resume", "always")
    assert e.value.code == 2


@pytest.mark.parametrize("flag", [["--resume", "auto"], ["--resume=auto"], ["--resume"], []])
def test_a_second_ctrl_c_names_a_command_that_resumes(tmp_path, flag):
    from types import SimpleNamespace

    from depthlab.cli.output import interrupted

    (tmp_path / "config.json").write_text("{}")
    argv = ["train", "--quiet", *flag]
    again = interrupted(SimpleNamespace(command="train", run_dir=tmp_path, argv=argv)).split("`")[1]
    assert build_parser().parse_args(again.split()[1:]).resume in (True, "auto")
    assert again.count("--resume") == 1


# ------------------------------------------------------------------------------------ overwrite
@pytest.mark.parametrize("config_json", [None, '{"name": "my-package", "version": "1.0"}', "{}"])
def test_overwrite_refuses_a_folder_that_holds_no_depthlab_run_and_touches_nothing(tmp_path, capsys, config_json):
    theirs = tmp_path / "r"
    (theirs / "data").mkdir(parents=True)
    (theirs / "thesis.tex").write_text("\\chapter{Results}")
    (theirs / "data" / "table.csv").write_text("a,b\n1,2\n")
    if config_json is not None:
        (theirs / "config.json").write_text(config_json)
    before = _snapshot(tmp_path)
    with pytest.raises(ConfigError, match=rf"run directory '{theirs}' does not hold a depthlab run \(it holds "
                                          rf"{'config.json, ' if config_json else ''}data/, thesis\.tex\)"):
        train(_cfg(tmp_path, "r"), overwrite=True, quiet=True)
    assert _snapshot(tmp_path) == before  # their files as they were, nothing added (no lock file left either)
    # the command line: one line, its own spelling, exit 2
    argv = ["train", "--overwrite", "--quiet", "--set", *TINY, f"out_dir={tmp_path}", "run_id=r"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not hold a depthlab run" in err
    assert "--overwrite replaces only a run directory" in err and "overwrite=True" not in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["current", "older version"])
def test_overwrite_replaces_a_depthlab_run_directory(tmp_path, kind):
    old = _cfg(tmp_path, "r", "train.epochs=1")
    train(old, quiet=True)
    if kind == "older version":  # a config this version cannot parse, beside the run's metrics and checkpoints
        (old.run_dir / "config.json").write_text(json.dumps({"model": {"retired_key": 1}, "data": {}, "train": {}}))
    (old.run_dir / "notes.txt").write_text("part of the old run directory")
    new = _cfg(tmp_path, "r", "train.epochs=1", "train.lr=0.2")
    assert train(new, overwrite=True, quiet=True)["status"] == "finished"
    assert json.loads((new.run_dir / "config.json").read_text())["train"]["lr"] == 0.2
    assert not (new.run_dir / "notes.txt").exists() and [r["epoch"] for r in _rows(new)] == [1]


# ------------------------------------------------------------------------------------ torchrun restarts
def _elastic(monkeypatch, job, restart):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", job)
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "3")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", str(restart))


def test_a_torchrun_restart_continues_the_run_its_own_job_started(tmp_path, monkeypatch, caplog):
    """Without --resume (and even with --overwrite) a restarted attempt continues its job's run, with a
    note; the result is bit for bit the uninterrupted run."""
    straight = _cfg(tmp_path, "straight", "train.epochs=3")
    train(straight, quiet=True)
    cfg = _cfg(tmp_path, "r", "train.epochs=3")
    _elastic(monkeypatch, "job-1", 0)
    _stopped_after(monkeypatch, 30)
    assert train(cfg, quiet=True)["status"] == "interrupted"  # attempt 0 started the run ...
    assert (cfg.run_dir / JOB_FILE).read_text() == "job-1"
    first_row = _rows(cfg)[0]
    _elastic(monkeypatch, "job-1", 1)
    _stopped_after(monkeypatch, 30)  # ... attempt 1 (no --resume) continues it, and stops again
    with caplog.at_level(logging.WARNING, logger="depthlab"):
        assert train(cfg, quiet=True)["status"] == "interrupted"
    assert f"torchrun restart 1: resuming '{cfg.run_dir}', which this torchrun job started" in caplog.text
    monkeypatch.undo()
    _elastic(monkeypatch, "job-1", 2)
    assert train(cfg, overwrite=True, quiet=True)["status"] == "finished"  # attempt 2 (--overwrite) too
    assert [r["epoch"] for r in _rows(cfg)] == [1, 2, 3] and _rows(cfg)[0] == first_row
    assert _same_weights(_weights(straight), _weights(cfg))


@pytest.mark.parametrize("marker", [None, "job-0"])
def test_a_torchrun_restart_refuses_a_run_another_command_made(tmp_path, monkeypatch, marker):
    """An attempt 0 refused to touch an existing run; its restart must refuse it too, not resume it."""
    cfg = _cfg(tmp_path, "r", "train.epochs=1")
    train(cfg, quiet=True)
    if marker is not None:  # made by an earlier torchrun job
        (cfg.run_dir / JOB_FILE).write_text(marker)
    before = _snapshot(tmp_path)
    _elastic(monkeypatch, "job-1", 1)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, quiet=True)
    assert _snapshot(tmp_path) == before
