import json

import pytest
import torch

import depthlab.training.trainer as loop
from depthlab.config import ConfigError, RunConfig
from depthlab.training import evaluate_run, train
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint


def _cfg(tmp_path, *overrides, run_id="r"):
    base = ["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=2",
            "train.batch_size=64", "train.device=cpu", f"out_dir={tmp_path}", f"run_id={run_id}"]
    return RunConfig().with_overrides(base + list(overrides))


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_lowers_the_loss_and_writes_the_run_dir(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=4", "train.lr=0.05")
    s = train(cfg, quiet=True)
    run_dir = cfg.run_dir
    rows = _rows(run_dir)
    assert s["status"] == "finished" and [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["test_acc"] > 0.8  # digits is easy; chance is 0.1
    saved = json.loads((run_dir / "config.json").read_text())
    # the resolved config: recipe and dataset fields are filled in
    assert saved["train"]["momentum"] == 0.9 and saved["model"]["num_classes"] == 10
    assert saved["model"]["in_channels"] == 1 and saved["model"]["depth"] == 8
    assert saved["data"]["augment"] == "none"
    assert latest_checkpoint(run_dir / "checkpoints").name == "epoch_0004.pt"
    assert len(list((run_dir / "checkpoints").glob("epoch_*.pt"))) == 2  # keep_last=2


def test_resume_after_interruption_is_exact(tmp_path, monkeypatch):
    straight = _cfg(tmp_path, run_id="straight")
    train(straight, quiet=True)

    interrupted = _cfg(tmp_path, run_id="interrupted")
    real_save = loop.ckpt.save_checkpoint

    def save_then_die(ckpt_dir, epoch, state, keep_last):
        path = real_save(ckpt_dir, epoch, state, keep_last)
        if epoch == 1:
            raise KeyboardInterrupt  # the process dies right after the epoch-1 checkpoint
        return path

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, quiet=True)
    monkeypatch.setattr(loop.ckpt, "save_checkpoint", real_save)
    assert latest_checkpoint(interrupted.run_dir / "checkpoints").name == "epoch_0001.pt"
    train(interrupted, resume=True, quiet=True)

    a = load_checkpoint(latest_checkpoint(straight.run_dir / "checkpoints"))
    b = load_checkpoint(latest_checkpoint(interrupted.run_dir / "checkpoints"))
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ra, rb = _rows(straight.run_dir), _rows(interrupted.run_dir)
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]


def test_run_dir_is_never_mixed(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=1")
    train(cfg, quiet=True)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train(cfg, quiet=True)
    other = _cfg(tmp_path, "train.epochs=1", "train.lr=0.01")
    with pytest.raises(ConfigError, match=r"different run \(train\.lr"):
        train(other, resume=True, quiet=True)
    s = train(other, overwrite=True, quiet=True)
    assert s["status"] == "finished"
    assert json.loads((cfg.run_dir / "config.json").read_text())["train"]["lr"] == 0.01
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(_cfg(tmp_path, run_id="fresh"), resume=True, quiet=True)


@pytest.mark.parametrize("override", ["train.lr=0", "train.epochs=-1", "train.batch_size=0",
                                      "model.depth=9", "model.name=nonet"])
def test_bad_input_fails_before_anything_is_written(tmp_path, override):
    cfg = _cfg(tmp_path, override)
    with pytest.raises(ValueError):
        train(cfg, quiet=True)
    assert not cfg.run_dir.exists()


def test_eval_reproduces_the_final_test_accuracy_and_best_uses_val(tmp_path):
    cfg = _cfg(tmp_path, "data.val_fraction=0.2", "train.keep_best=true")
    s = train(cfg, quiet=True)
    row = evaluate_run(cfg.run_dir, device="cpu")
    assert row["test_acc"] == pytest.approx(s["test_acc"])
    best = load_checkpoint(cfg.run_dir / "checkpoints" / "best.pt")
    val_by_epoch = {r["epoch"]: r["val_acc"] for r in _rows(cfg.run_dir) if r["kind"] == "epoch"}
    assert best["best_val"] == max(val_by_epoch.values())
    assert evaluate_run(cfg.run_dir, checkpoint="best", split="val", device="cpu")["val_acc"] == \
        pytest.approx(best["best_val"])


def test_divergence_is_recorded_not_crashed(tmp_path):
    cfg = _cfg(tmp_path, "train.lr=1e12", "train.epochs=3", "model.name=plain", "train.weight_decay=0")
    s = train(cfg, quiet=True)
    assert s["status"] == "diverged"
    assert _rows(cfg.run_dir)[-1]["status"] == "diverged"


def test_resume_before_the_first_checkpoint_keeps_one_copy_of_the_init_diagnostics(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "train.epochs=1", "diagnostics.quantities=orthonormality@1", "diagnostics.at_init=true",
               run_id="early")

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # dies at the end of epoch 1, before its checkpoint

    monkeypatch.setattr(loop.ckpt, "save_checkpoint", die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True)
    monkeypatch.undo()
    train(cfg, resume=True, quiet=True)
    rows = [json.loads(x) for x in (cfg.run_dir / "diagnostics.jsonl").read_text().splitlines()]
    per_epoch = {e: sum(1 for r in rows if r["epoch"] == e) for e in (0, 1)}
    assert per_epoch[0] == per_epoch[1] > 0  # the init rows once, like the epoch-1 rows
