"""The command line says true, clean things: quantities in diagnose --help, one line per skipped
diagnostic, a per-command Ctrl-C message, CLI spellings in library messages, report --markdown on a
run, eval's checkpoints and a run being trained, models' classes, help without one machine's timings."""
import json
import logging
import re

import pytest

from depthlab.cli import build_parser, main
from depthlab.config import ConfigError, RunConfig

TINY = ["model.name=plain", "model.depth=8", "model.width=4", "train.epochs=1", "data.name=digits",
        "train.device=cpu"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from depthlab.training import train

    out = tmp_path_factory.mktemp("runs")
    cfg = RunConfig().with_overrides(TINY + [f"out_dir={out}", "run_id=plain8"])
    return train(cfg, quiet=True)["run_dir"]


# ---------------------------------------------------------------- 1, 2: diagnose

def test_diagnose_help_and_list_name_every_quantity_with_its_description(capsys):
    from depthlab.diagnostics import DIAGNOSTICS, describe

    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert main(["diagnose", "--list"]) == 0  # no run directory needed
    listed = capsys.readouterr().out
    for name in DIAGNOSTICS.names():
        assert describe(name)
        for text in (help_text, listed):
            assert re.search(rf"^\s+{name}\s+{re.escape(describe(name))}$", text, re.M), (name, text)
    assert main(["diagnose"]) == 2  # neither run directories nor --list
    err = capsys.readouterr().err
    assert "needs one or more run directories" in err and "--list" in err


def test_a_skipped_diagnostic_is_one_clean_line_on_stderr(run_dir, tmp_path, capsys, recwarn):
    log = logging.getLogger("depthlab")
    handlers, propagate = list(log.handlers), log.propagate
    assert main(["diagnose", run_dir, "--out", str(tmp_path), "--device", "cpu", "--quantities", "all",
                 "--option", "lesion.max_k=1", "lesion.samples=1", "shattering.num_directions=1",
                 "shattering.n_points=16", "jacobian.num_inputs=1", "paths.num_samples=1"]) == 0
    err = capsys.readouterr().err.splitlines()
    skipped = [line for line in err if "skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("depthlab: diagnostic 'paths' skipped: ")  # a plain net
    assert "residual" in skipped[0] and not any("Warning" in line or ".py:" in line for line in err)
    assert not [w for w in recwarn if "skipped" in str(w.message)]
    assert log.handlers == handlers and log.propagate == propagate  # main() leaves logging as it found it


# ---------------------------------------------------------------- 5: Ctrl-C says what is true per command

def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv,target,expected", [
    (["train", "--set", "model.name=plain", "--quiet"], "depthlab.training.train",
     "interrupted before training started; nothing was written"),
    (["reproduce", "degradation"], "depthlab.experiments.reproduce",
     "interrupted; finished runs are kept and the interrupted run was checkpointed; run the same command again"),
    (["reproduce", "degradation", "--fresh"], "depthlab.experiments.reproduce", "without --fresh to continue"),
    (["demo", "--out", "somewhere"], "depthlab.demo.run_demo", "runs finished so far are kept under somewhere"),
    (["diagnose", "some-run"], "depthlab.diagnose_run.diagnose", "interrupted; nothing was lost"),
    (["report", "."], "depthlab.report.write_report", "interrupted; nothing was lost"),
])
def test_ctrl_c_message_is_per_command(monkeypatch, capsys, argv, target, expected):
    monkeypatch.setattr(target, _interrupt)  # the command's first call raises, as Ctrl-C there would
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert expected in err and "second Ctrl-C" not in err
    if argv[0] != "train":
        assert "--resume" not in err  # only train has --resume


def test_ctrl_c_during_training_says_how_to_resume(run_dir, monkeypatch, capsys):
    from pathlib import Path

    monkeypatch.setattr("depthlab.training.train", _interrupt)  # the run directory already holds a run
    out, rid = str(Path(run_dir).parent), Path(run_dir).name
    assert main(["train", "--set", *TINY, "--out-dir", out, "--run-id", rid, "--overwrite", "--quiet"]) == 130
    err = capsys.readouterr().err
    again = " ".join(["depthlab train --set", *TINY, "--out-dir", out, "--run-id", rid, "--quiet --resume"])
    assert f"stopped; the last checkpoint is kept; continue with `{again}`" in err


# ---------------------------------------------------------------- 6: CLI spellings

def test_library_messages_are_shown_in_cli_spellings(monkeypatch, tmp_path, capsys):
    def refuse(cfg, **kwargs):
        raise ConfigError("run directory 'r' already holds a run; pass resume=True (CLI: --resume) to continue it, "
                          "overwrite=True (CLI: --overwrite) to replace it")

    monkeypatch.setattr("depthlab.training.train", refuse)
    assert main(["train", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "pass --resume to continue it, --overwrite to replace it" in err and "=True" not in err
    monkeypatch.undo()
    # a real library message: data files missing with downloads off (conftest: no network)
    assert main(["train", "--set", "data.name=mnist", "data.download=false", "--quiet", "--out-dir",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "(data.download=false)" in err and "data.download=true" in err and "data.data_dir" in err
    assert "download=False" not in err and "download=True" not in err and "data_dir=" not in err


def test_cli_spelling_keeps_cli_first_messages_and_python_messages_stay_python():
    from depthlab.cli import cli_spelling
    from depthlab.data import load_dataset

    assert cli_spelling("pass --fresh (fresh=True) to retrain") == "pass --fresh to retrain"
    with pytest.raises(ValueError, match=r"Download is off \(download=False\)"):  # Python callers see Python
        load_dataset("mnist", download=False)


# ---------------------------------------------------------------- 8: report --markdown on a run directory

def test_report_markdown_on_a_run_directory_writes_a_run_summary(run_dir, tmp_path, capsys):
    md = tmp_path / "run.md"
    assert main(["report", run_dir, "--markdown", str(md)]) == 0
    text = md.read_text()
    assert text.startswith("# Run `plain8`") and "**finished** after 1 of 1 epochs" in text
    assert "| epoch | train loss | train acc | test acc |" in text and '"recipe": "quick"' in text
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--markdown", str(tmp_path / "no.md")]) == 2
    assert "holds no experiment" in capsys.readouterr().err
    assert not list(empty.iterdir()) and not (tmp_path / "no.md").exists()  # refused before writing anything


# ---------------------------------------------------------------- 9: eval

def test_eval_lists_only_its_valid_checkpoints(run_dir, capsys):
    assert main(["eval", run_dir, "--checkpoint", "init", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "use last, best or a checkpoint file" in err and "best, init" not in err
    assert main(["eval", run_dir, "--checkpoint", "nosuch.pt", "--device", "cpu"]) == 2
    assert "(use last, best or a checkpoint file)" in capsys.readouterr().err


def test_eval_of_best_or_val_names_the_settings_that_make_them(run_dir, capsys):
    assert main(["eval", run_dir, "--checkpoint", "best", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "train.keep_best=true" in err and "data.val_fraction" in err
    assert main(["eval", run_dir, "--split", "val", "--device", "cpu"]) == 2
    assert "data.val_fraction=0" in capsys.readouterr().err


def test_diagnose_model_prints_a_reading_not_only_a_count(tmp_path, capsys):
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    assert main(["diagnose", "--model", f"{examples}/tvnets.py:mlp", "--data", "digits", "--quantities",
                 "gradient_flow", "--out", str(tmp_path / "d")]) == 0
    err = capsys.readouterr().err
    assert "records ->" in err and "gradient_flow: gradients" in err


def test_eval_does_not_write_into_a_run_that_is_being_trained(run_dir, capsys):
    from pathlib import Path

    from depthlab.training.safety import RunLock

    metrics = Path(run_dir) / "metrics.jsonl"
    before = metrics.read_text()
    lock = RunLock(Path(run_dir)).acquire()  # as a training process holds it
    try:
        assert main(["eval", run_dir, "--device", "cpu"]) == 0
    finally:
        lock.release()
    out, err = capsys.readouterr()
    assert json.loads(out)["kind"] == "eval" and metrics.read_text() == before
    assert "being trained by another process" in err and "not appended to its metrics.jsonl" in err
    assert main(["eval", run_dir, "--device", "cpu"]) == 0  # lock free: the row is appended
    assert len(metrics.read_text().splitlines()) == len(before.splitlines()) + 1


# ---------------------------------------------------------------- 11, 12: models, help texts

def test_models_table_shows_each_presets_classes(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "10 classes)" not in out
    row = next(line for line in out.splitlines() if " resnet18 " in f" {line} ")
    assert "1000" in row and "11,689,512" in row
    row = next(line for line in out.splitlines() if " resnet56 " in f" {line} ")
    assert " 10 " in row and "3 ch" in row


def test_help_texts_do_not_state_one_machines_timings():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    texts = [parser.format_help()] + [p.format_help() for p in sub.choices.values()]
    texts += [a.help or "" for a in sub._choices_actions]
    for text in texts:
        assert not re.search(r"~\s*\d+\s*(s|min)\b|CPU, ~", text), text
    demo = next(a.help for a in sub._choices_actions if a.dest == "demo")
    assert "on a 2-core CPU" in demo  # a timing says on what machine
