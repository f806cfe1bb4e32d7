import json
import subprocess
import sys

from depthlab.cli import main


def test_models_lists_presets_with_exact_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "resnet56" in out and "853,018" in out and "mnist-resnet" in out and "117,802" in out


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    args = ["train", "--set", "model.name=plain", "model.depth=8", "train.epochs=1", "train.device=cpu",
            "--out-dir", str(tmp_path), "--run-id", "cli", "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["epoch"] == 1
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "cli"), "--device", "cpu"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["test_acc"] == summary["test_acc"]


def test_errors_name_the_field_and_the_valid_values(capsys):
    assert main(["train", "--set", "model.name=resnet57", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.name 'resnet57'" in err and "resnet56" in err
    assert main(["train", "--set", "model.depth=21", "--quiet"]) == 2
    assert "6n+2" in capsys.readouterr().err
    assert main(["eval", "/nonexistent/run"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_python_dash_m_and_help_lists_recipes():
    out = subprocess.run([sys.executable, "-m", "depthlab", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "he2015" in out and "quick" in out and "model.depth" in out
    assert "methods.stochastic_depth=0.5" in out and "looks-linear" in out


def test_remedies_writes_a_markdown_table_naming_its_command(tmp_path, capsys):
    out = tmp_path / "remedies.md"
    assert main(["remedies", "--depth", "8", "--epochs", "1", "--variants", "plain,resnet", "--runs",
                 str(tmp_path / "runs"), "--out", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "| plain |" in text and "| resnet |" in text and "Command: `depthlab remedies" in text
    assert main(["remedies", "--variants", "nosuch", "--quiet"]) == 2
    assert "valid: plain, resnet" in capsys.readouterr().err
