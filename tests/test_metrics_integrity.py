"""Damage to metrics.jsonl is never silent: a torn last line (a write cut short) is dropped with a
warning naming file:line and the run resumes exactly; a damaged line before it, or an epoch
without a row, stops the resume naming file:line or the epoch, with the file untouched; sweeps do
not count such a run as finished, and reports name every line they skip."""
import logging
import shutil

import pytest
import torch
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.cli import main
from depthlab.config import ConfigError, RunConfig
from depthlab.diagnose_run import diagnose
from depthlab.fileio import LineDamage, read_jsonl, read_jsonl_checked
from depthlab.report.plots import read_metrics
from depthlab.sweep.task import RESUME, SKIP, existing_state
from depthlab.training import train
from depthlab.training.checkpoint import load_checkpoint

RUN = ["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=3", "train.batch_size=128",
       "train.device=cpu", "train.threads=1", "data.augment=crop-flip", "data.crop_padding=1"]


def _cfg(out, run_id, *overrides):
    return RunConfig().with_overrides([*RUN, f"out_dir={out}", f"run_id={run_id}", *overrides])


def _epochs(cfg):
    return [r["epoch"] for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]


def _numbers(cfg):
    return [(r["epoch"], r["train_loss"], r["train_acc"], r.get("test_acc"))
            for r in read_jsonl(cfg.run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]


def _same_weights(a, b):
    wa, wb = (load_checkpoint(c.run_dir / "checkpoints" / "epoch_0003.pt")["model"] for c in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "depthlab"]


def _lines(path):
    return path.read_text().splitlines(keepends=True)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("ref"), "straight")
    train(cfg, quiet=True)
    return cfg


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run and its metrics.jsonl bytes: tests damage a copy of the directory."""
    cfg = _cfg(tmp_path_factory.mktemp("fin"), "fin")
    train(cfg, quiet=True)
    return cfg


def _copy(finished, tmp_path):
    """The finished run, copied under ``tmp_path`` (same run_id: a resume checks it)."""
    shutil.copytree(finished.run_dir, tmp_path / "fin")
    return _cfg(tmp_path, "fin")


def test_a_torn_line_from_a_crash_mid_append_is_dropped_with_a_warning_and_the_run_resumes_bit_exact(
        tmp_path, straight, monkeypatch, caplog):
    cfg = _cfg(tmp_path, "crash")
    monkeypatch.setattr(loop, "StopSignals", StopAfter)  # SIGTERM during epoch 3
    assert train(cfg, quiet=True)["status"] == "interrupted"
    monkeypatch.undo()
    metrics = cfg.run_dir / "metrics.jsonl"
    assert _epochs(cfg) == [1, 2]
    with open(metrics, "a") as f:
        f.write('{"kind": "epoch", "epoch": 3, "step": 33, "lr": 0.0')  # the append a crash cut short
    caplog.set_level(logging.WARNING, logger="depthlab")
    assert train(cfg, resume=True, quiet=True)["status"] == "finished"
    torn = f"{metrics}:3: an incomplete last line (not valid JSON; a write cut short); dropped it"
    assert _warnings(caplog) == [torn]
    assert _epochs(cfg) == [1, 2, 3]
    assert _numbers(cfg) == _numbers(straight)
    assert _same_weights(cfg, straight)


def test_a_torn_last_row_of_a_checkpointed_epoch_is_retrained_from_the_checkpoint_before_it(
        tmp_path, straight, finished, caplog):
    cfg = _copy(finished, tmp_path)
    metrics = cfg.run_dir / "metrics.jsonl"
    lines = _lines(metrics)
    metrics.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # row 3 cut in half
    caplog.set_level(logging.WARNING, logger="depthlab")
    assert train(cfg, resume=True, quiet=True)["status"] == "finished"
    ckpt3 = cfg.run_dir / "checkpoints" / "epoch_0003.pt"
    assert _warnings(caplog) == [
        f"{metrics}:3: an incomplete last line (not valid JSON; a write cut short); dropped it",
        f"checkpoint {str(ckpt3)!r} is past the metrics, which end at epoch 2 (its epoch's row is missing) (set aside "
        f"as epoch_0003.pt.unlogged); resuming from epoch_0002.pt (epoch 2, step 0), the newest good checkpoint: "
        f"1 epoch(s) of training are redone"]
    assert _epochs(cfg) == [1, 2, 3]  # not [1, 2] reported as finished
    assert _numbers(cfg) == _numbers(straight)
    assert _same_weights(cfg, straight)


@pytest.mark.parametrize("damage, where", [
    (lambda lines: lines[:1] + ["#%! garbage\n"] + lines[2:], ":2: not valid JSON"),
    (lambda lines: lines[:1] + ["[1, 2]\n"] + lines[2:], ":2: not a JSON object (a JSON array)"),
    (lambda lines: lines[:1] + lines[2:], ": no row for epoch 2 (epoch 1 is followed by epoch 3)"),
])
def test_a_damaged_middle_line_or_a_missing_epoch_row_refuses_resume_in_one_line_with_the_file_untouched(
        tmp_path, finished, capsys, damage, where):
    cfg = _copy(finished, tmp_path)
    metrics = cfg.run_dir / "metrics.jsonl"
    metrics.write_text("".join(damage(_lines(metrics))))
    before = metrics.read_bytes()
    names = sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir())
    args = ["train", "--quiet", "--resume", "--set", *RUN, f"out_dir={tmp_path}", "run_id=fin"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"depthlab: error: cannot resume {str(cfg.run_dir)!r}: {metrics}{where}; resuming would rewrite "
                   f"the file without the lost rows. Restore metrics.jsonl from a backup, or train the run again with "
                   f"--overwrite"]
    assert metrics.read_bytes() == before
    assert sorted(p.name for p in (cfg.run_dir / "checkpoints").iterdir()) == names  # nothing set aside
    with pytest.raises(ConfigError, match="cannot resume"):
        train(cfg, resume=True, quiet=True)
    assert metrics.read_bytes() == before


def test_a_sweep_does_not_count_a_run_with_damaged_metrics_as_finished(tmp_path, finished):
    cfg = _copy(finished, tmp_path)
    metrics = cfg.run_dir / "metrics.jsonl"
    lines = _lines(metrics)
    assert existing_state(cfg)["action"] == SKIP  # intact: finished
    metrics.write_text("".join(lines[:1] + ["{not json\n"] + lines[2:]))
    with pytest.raises(ConfigError, match=rf"{metrics}:2: not valid JSON: the sweep cannot tell how far run 'fin' "
                                          rf"got. Restore the file from a backup, or delete"):
        existing_state(cfg)
    metrics.write_text("".join(lines[:1] + lines[2:]))
    with pytest.raises(ConfigError, match=rf"{metrics}: no row for epoch 2 \(epoch 1 is followed by epoch 3\)"):
        existing_state(cfg)
    metrics.write_text("".join(lines[:-1]) + lines[-1][:20])  # torn last row: resumed (which redoes it), not skipped
    assert existing_state(cfg)["action"] == RESUME


def test_reports_name_each_skipped_metrics_line_and_a_missing_epoch(tmp_path, finished, caplog):
    cfg = _copy(finished, tmp_path)
    metrics = cfg.run_dir / "metrics.jsonl"
    lines = _lines(metrics)
    metrics.write_text("".join(lines[:1] + ["\x00\x00garbage\n"] + lines[2:]))
    caplog.set_level(logging.WARNING, logger="depthlab")
    assert [r["epoch"] for r in read_metrics(cfg.run_dir)] == [1, 3]
    assert _warnings(caplog) == [f"{metrics}:2: not valid JSON; skipped that line",
                                 f"{metrics}: no row for epoch 2 (epoch 1 is followed by epoch 3); shown without it"]


def test_checked_reading_tells_a_torn_last_line_from_damage_and_the_lenient_reader_warns_for_each(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"a": 1}\n\n"text"\n\xff\xfe\n{"b": 2}\n{"c": ')
    rows, damage = read_jsonl_checked(path)
    assert rows == [{"a": 1}, {"b": 2}]
    assert damage == [LineDamage(str(path), 3, "not a JSON object (a JSON string)", False),
                      LineDamage(str(path), 4, "not UTF-8 text", False),
                      LineDamage(str(path), 6, "an incomplete last line (not valid JSON; a write cut short)", True)]
    path.write_bytes(b'{"a": 1}\n{"c": \n')  # a bad last line that ends with a newline: not a write cut short
    assert [d.torn for d in read_jsonl_checked(path)[1]] == [False]
    caplog.set_level(logging.WARNING, logger="depthlab")
    assert read_jsonl(path) == [{"a": 1}]
    assert _warnings(caplog) == [f"{path}:2: not valid JSON; skipped that line"]
    assert read_jsonl_checked(tmp_path / "missing.jsonl") == ([], [])


def test_diagnose_refuses_to_rewrite_a_diagnostics_file_with_a_damaged_line(tmp_path, finished):
    cfg = _copy(finished, tmp_path)
    path = cfg.run_dir / "diagnostics.jsonl"
    path.write_text('{"quantity": "x", "step": 0}\nnot json\n{"quantity": "y", "step": 0}\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError, match=rf"^{path}:2: not valid JSON; diagnose rewrites this file and would lose "
                                          rf"that line"):
        diagnose(cfg.run_dir, ["orthonormality"], device="cpu")
    assert path.read_bytes() == before
