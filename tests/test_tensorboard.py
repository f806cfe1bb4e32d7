"""TensorBoard event files mirror metrics.jsonl and the scalar diagnostics, across a resume too."""
import json
import sys

import numpy as np
import pytest

import depthlab.training.trainer as loop
from depthlab.config import RunConfig
from depthlab.training import train
from depthlab.training.tensorboard import METRICS, TensorBoardLog, available, diagnostic_tag

needs_tensorboard = pytest.mark.skipif(not available(), reason="the tensorboard extra is not installed "
                                                              "(pip install -e '.[tensorboard]')")


def _cfg(tmp_path, *overrides, run_id="r"):
    base = ["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=2", "train.batch_size=128",
            "train.device=cpu", f"out_dir={tmp_path}", f"run_id={run_id}"]
    return RunConfig().with_overrides(base + list(overrides))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scalars(log_dir) -> dict:
    """tag -> {step: value} as TensorBoard shows it (purged events dropped); a step logged twice fails."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = {e.step: e.value for e in events}
        assert len(out[tag]) == len(events), f"{tag}: a step shows twice: {[(e.step, e.value) for e in events]}"
    return out


def _expected(run_dir) -> dict:
    """What the event files should hold, from the jsonl files; TensorBoard stores float32."""
    out = {}
    for row in _jsonl(run_dir / "metrics.jsonl"):
        for k in METRICS:
            if k in row:
                out.setdefault(f"metrics/{k}", {})[row["step"]] = float(np.float32(row[k]))
    for r in _jsonl(run_dir / "diagnostics.jsonl"):
        if isinstance(r["value"], (int, float)):
            out.setdefault(diagnostic_tag(r), {})[r["step"]] = float(np.float32(r["value"]))
    return out


@needs_tensorboard
def test_event_files_hold_the_metrics_and_scalar_diagnostics(tmp_path):
    cfg = _cfg(tmp_path, "diagnostics.quantities=responses@1", "diagnostics.at_init=true",
               "diagnostics.track_gradients=true")
    train(cfg, quiet=True)
    run_dir = cfg.run_dir
    got, want = _scalars(run_dir / "tensorboard"), _expected(run_dir)
    assert got == want
    steps = sorted(r["step"] for r in _jsonl(run_dir / "metrics.jsonl"))
    assert len(steps) == 2 and got["metrics/train_loss"].keys() == set(steps)
    assert {"metrics/test_acc", "metrics/lr", "metrics/seconds"} <= got.keys()
    responses = [t for t in got if t.startswith("responses/std/")]
    assert responses and all(sorted(got[t]) == [0] + steps for t in responses)  # init + every epoch
    assert not any(t.startswith("gradient_tracking") for t in got)  # per-step lists stay in the jsonl


@needs_tensorboard
def test_resume_purges_what_the_interrupted_process_logged_past_the_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "diagnostics.quantities=responses@1")
    real_save = loop.ckpt.save_checkpoint

    def die_before_epoch_2_is_saved(ckpt_dir, epoch, state, keep_last):
        if epoch == 2:  # epoch 2 is in metrics.jsonl and the event file, not in a checkpoint
            raise KeyboardInterrupt
        return real_save(ckpt_dir, epoch, state, keep_last)

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", die_before_epoch_2_is_saved)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    interrupted = _scalars(cfg.run_dir / "tensorboard")
    monkeypatch.setattr(loop.ckpt, "save_checkpoint", real_save)
    train(cfg, resume=True, quiet=True)

    assert len(list((cfg.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2  # appended
    got, want = _scalars(cfg.run_dir / "tensorboard"), _expected(cfg.run_dir)
    assert got == want  # one value per step: the resumed one (its wall-clock seconds differ)
    last = max(want["metrics/seconds"])
    assert got["metrics/seconds"][last] != interrupted["metrics/seconds"][last]


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr("depthlab.training.tensorboard.available", lambda: False)
    cfg = _cfg(tmp_path, "train.epochs=1")
    assert train(cfg, quiet=True)["status"] == "finished"
    assert not (cfg.run_dir / "tensorboard").exists()


def test_a_tensorboard_that_cannot_be_imported_turns_the_log_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("depthlab.training.tensorboard.available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # importing it raises ImportError
    log = TensorBoardLog(tmp_path / "tb")
    log.epoch({"step": 1, "train_loss": 1.0})
    log.diagnostics([{"step": 1, "quantity": "q", "name": "n", "layer": None, "value": 1.0}])
    log.close()
    assert not (tmp_path / "tb").exists() and not log.enabled
    assert capsys.readouterr().err.count("note: no TensorBoard logging") == 1
