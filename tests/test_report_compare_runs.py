"""depthlab report A B on runs (depthlab.report.comparison): one page with the runs' curves overlaid, what
differs in their configs, their final numbers and their diagnostics; from the CLI and the Python API."""
import json

import pytest

import depthlab
from depthlab.cli import main
from depthlab.config import RunConfig
from depthlab.report.comparison import config_differences
from depthlab.training import train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    for run_id, width in (("narrow", 4), ("wide", 8)):
        train(RunConfig().with_overrides([
            "model.name=resnet", "model.depth=8", f"model.width={width}", "data.name=digits", "train.epochs=2",
            "train.device=cpu", "train.threads=1", f"out_dir={root}", f"run_id={run_id}",
            "diagnostics.quantities=gradient_flow@2"]), quiet=True)
    return root


def test_the_cli_compares_two_runs_on_one_page(two_runs, capsys, monkeypatch):
    monkeypatch.chdir(two_runs)
    assert main(["report", "narrow", "wide"]) == 0
    page = (two_runs / "runs" / "compare.html").read_text()  # the default: under runs/, never the checkout
    assert capsys.readouterr().out.strip().endswith("runs/compare.html")
    rows = {r[0]: r[1:] for r in config_differences(
        [json.loads((two_runs / n / "config.json").read_text()) for n in ("narrow", "wide")])}
    assert rows["model.width"] == ["4", "8"] and "train.epochs" not in rows
    assert "<td class=l>model.width</td>" in page or ">model.width<" in page
    assert page.count("data:image/png;base64,") >= 2  # the curves and gradient_flow, inline
    for name in ("narrow", "wide"):
        assert f">{name}<" in page


def test_the_python_api_and_what_it_refuses(two_runs, tmp_path, capsys):
    out = depthlab.compare([two_runs / "narrow", two_runs / "wide"], tmp_path / "c.html")
    assert out == tmp_path / "c.html" and "2 runs compared" in out.read_text()
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "experiment.json").write_text("{}")
    with pytest.raises(ValueError, match="compare runs with runs"):
        depthlab.compare([two_runs / "narrow", exp], tmp_path / "x.html")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        depthlab.compare([two_runs / "narrow", tmp_path / "missing"], tmp_path / "x.html")
    assert main(["report", str(two_runs / "narrow"), str(two_runs / "wide"), "--markdown", str(tmp_path / "m.md")]) != 0
    assert "--markdown writes the verdicts of experiment directories" in capsys.readouterr().err
    assert not (tmp_path / "m.md").exists()


def test_a_hostile_config_value_is_escaped(two_runs, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(two_runs / "wide", bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["run_id"] = "<script>alert(1)</script>"
    (bad / "config.json").write_text(json.dumps(cfg))
    page = depthlab.compare([two_runs / "narrow", bad], tmp_path / "h.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
