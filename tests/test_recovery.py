"""Never lose a run: a clean stop on SIGINT/SIGTERM mid-epoch resumes bit for bit, divergence is
diagnosed down to a layer with the last good checkpoint kept, one writer per run directory, and
checkpoints load with weights_only=True (a pickle payload is refused)."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.config import ConfigError, RunConfig
from depthlab.training import train
from depthlab.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint
from depthlab.training.safety import RunLock


def _cfg(tmp_path, run_id, *overrides):
    return RunConfig().with_overrides([
        "model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=2", "train.batch_size=64",
        "train.device=cpu", "data.augment=crop-flip", "data.crop_padding=1", f"out_dir={tmp_path}",
        f"run_id={run_id}", *overrides])


def _rows(cfg, kind="epoch"):
    return [r for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("kind", "epoch") == kind]


def _weights(cfg):
    return load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))["model"]


_StopAfter = StopAfter  # SIGTERM after 30 steps: epoch 2, step 7 (23 steps per epoch)


@pytest.mark.parametrize("extra", [[], ["diagnostics.track_gradients=true", "methods.stochastic_depth=0.5"]])
def test_stop_mid_epoch_saves_the_exact_position_and_resumes_bit_for_bit(tmp_path, monkeypatch, extra):
    straight = _cfg(tmp_path, "straight", *extra)
    train(straight, quiet=True)

    stopped = _cfg(tmp_path, "stopped", *extra)
    monkeypatch.setattr(loop, "StopSignals", _StopAfter)
    s = train(stopped, quiet=True)
    monkeypatch.undo()
    assert s["status"] == "interrupted" and s["signal"] == "SIGTERM"
    names = [p.name for p in list_checkpoints(stopped.run_dir / "checkpoints")]
    assert names[-1] == "epoch_0001_step_000007.pt"  # 23 steps per epoch: step 30 = epoch 2, step 7
    assert len(_rows(stopped)) == 1  # the partial epoch wrote no row

    s = train(stopped, resume=True, quiet=True)
    assert s["status"] == "finished"
    assert [r["train_loss"] for r in _rows(straight)] == [r["train_loss"] for r in _rows(stopped)]
    assert [r["test_acc"] for r in _rows(straight)] == [r["test_acc"] for r in _rows(stopped)]
    a, b = _weights(straight), _weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if extra:  # per-step gradient norms: the resumed epoch still has one value per step
        diag = [json.loads(line) for line in (stopped.run_dir / "diagnostics.jsonl").read_text().splitlines()]
        ref = [json.loads(line) for line in (straight.run_dir / "diagnostics.jsonl").read_text().splitlines()]
        assert [d["value"] for d in diag] == [d["value"] for d in ref]


def test_sigterm_to_the_cli_saves_and_exits_cleanly_then_resume_finishes(tmp_path):
    # he2015 at 40 epochs keeps the base lr for 20 epochs: stopped in the first few, the run resumes as a
    # run of twice the epochs it finished (every step so far had the lr that run would have had)
    cfg = _cfg(tmp_path, "cli", "train.epochs=40", "train.recipe=he2015", "train.batch_size=64")
    args = [sys.executable, "-m", "depthlab", "train", "--quiet", "--set", *[
        "model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=40", "train.recipe=he2015",
        "train.batch_size=64", "train.device=cpu",
        "train.threads=1", "data.augment=crop-flip", "data.crop_padding=1", f"out_dir={tmp_path}", "run_id=cli"]]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = cfg.run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "interrupted"
    state = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))
    assert 1 <= state["epoch"] < 40
    assert not list((cfg.run_dir / "checkpoints").glob(".*.tmp"))
    s = train(cfg.with_overrides([f"train.epochs={2 * state['epoch']}"]), resume=True, quiet=True)
    assert s["status"] == "finished" and s["epoch"] == 2 * state["epoch"]


def test_divergence_names_the_layer_keeps_the_last_good_checkpoint_and_ignores_check_cadence(tmp_path):
    diagnoses = []
    for every in (1, 32):
        cfg = _cfg(tmp_path, f"div{every}", "train.lr=1e4", "train.epochs=3", f"train.check_every={every}")
        s = train(cfg, quiet=True)
        assert s["status"] == "diverged"
        row = _rows(cfg)[-1]
        assert row["status"] == "diverged"
        # a full metrics row (what reports and experiments read) plus the diagnosis
        assert {"epoch", "step", "lr", "train_loss", "train_acc", "seconds", "elapsed"} <= set(row)
        d = row["diagnosis"]
        diagnoses.append({k: d[k] for k in ("step", "first_nonfinite_output", "first_nonfinite_grad")})
        named = d["first_nonfinite_output"] or d["first_nonfinite_grad"]
        from depthlab.training.rundir import load_run
        model, *_ = load_run(cfg.run_dir)  # the last good checkpoint loads, with finite weights
        assert all(torch.isfinite(p).all() for p in model.parameters())
        names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
        assert named in names and named in d["message"]
        assert d["step"] >= 1 and f"step {d['step']}" in d["message"]
    assert diagnoses[0] == diagnoses[1]  # where it diverged does not depend on how often we look


def test_a_second_process_cannot_write_a_locked_run(tmp_path):
    cfg = _cfg(tmp_path, "locked")
    with RunLock(cfg.run_dir):
        with pytest.raises(ConfigError, match=rf"in use by another process \(pid {os.getpid()}\)"):
            train(cfg, quiet=True)
    assert not cfg.run_dir.exists()  # nothing written by the refused process
    train(dataclasses_replace_epochs(cfg, 1), quiet=True)  # free again once released


def dataclasses_replace_epochs(cfg, epochs):
    return cfg.with_overrides([f"train.epochs={epochs}"])


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_checkpoints_with_a_pickle_payload_or_truncated_are_refused_by_name(tmp_path):
    cfg = _cfg(tmp_path, "evil", "train.epochs=1")
    train(cfg, quiet=True)
    ckpt_dir = cfg.run_dir / "checkpoints"
    good = latest_checkpoint(ckpt_dir)
    state = load_checkpoint(good)
    state["extra"] = _Payload()
    evil = ckpt_dir / "epoch_0005.pt"
    torch.save(state, evil)
    with pytest.raises(CheckpointError, match=r"epoch_0005\.pt.*pickled object \(posix\.getcwd\)"):
        train(cfg, resume=True, quiet=True)
    evil.unlink()
    cut = ckpt_dir / "epoch_0006.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"epoch_0006\.pt.*unreadable"):
        load_checkpoint(cut)


def test_callers_running_many_runs_stop_when_one_is_interrupted(tmp_path, monkeypatch):
    """demo / reproduce / remedies train through train_or_stop: SIGTERM saves the run, then stops
    the caller instead of starting the next run."""
    from depthlab.training.trainer import train_or_stop

    monkeypatch.setattr(loop, "StopSignals", _StopAfter)
    cfg = _cfg(tmp_path, "many")
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        train_or_stop(cfg, quiet=True)
    assert latest_checkpoint(cfg.run_dir / "checkpoints").name == "epoch_0001_step_000007.pt"
