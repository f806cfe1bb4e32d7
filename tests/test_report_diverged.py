"""A diverged run in an experiment's report: its status says in which epoch and what the diagnosis
found, and its curves stop at its last completed epoch with a mark (or say why nothing is drawn)."""
import json

import matplotlib.pyplot as plt

from depthlab.report.figures import _curves
from depthlab.report.pages import run_status_text


def _run(path, rows):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps({"kind": "epoch", **r}) + "\n" for r in rows))


def test_curves_stop_at_the_last_completed_epoch_and_an_empty_plot_says_why(tmp_path):
    _run(tmp_path / "a", [{"epoch": 1, "train_acc": 0.5}, {"epoch": 2, "train_acc": 0.6},
                          {"epoch": 3, "train_acc": 0.1, "train_loss": float("nan"), "status": "diverged"}])
    _run(tmp_path / "b", [{"epoch": 1, "train_acc": 0.3, "status": "diverged"}])
    fig, ax = plt.subplots()
    _curves(ax, {"plain-8": "a"}, "train_error", tmp_path)
    curve = [line for line in ax.lines if line.get_label().startswith("plain-8")]
    assert len(curve) == 1 and curve[0].get_label() == "plain-8 (diverged in epoch 3)"
    assert list(curve[0].get_xdata()) == [1, 2] and list(curve[0].get_ydata()) == [50.0, 40.0]
    assert any(line.get_marker() == "x" and list(line.get_xdata()) == [2] for line in ax.lines)
    fig2, ax2 = plt.subplots()
    _curves(ax2, {"plain-14": "b"}, "train_error", tmp_path)
    assert not ax2.lines and "no completed epoch to draw\nplain-14: diverged in epoch 1" == ax2.texts[0].get_text()
    plt.close(fig)
    plt.close(fig2)


def test_a_diverged_runs_status_names_the_epoch_and_the_diagnosis():
    row = {"status": "diverged", "epoch": 3, "diagnosis": "diverged at step 50 (epoch 3); the gradient ..."}
    assert run_status_text(row) == ("diverged in epoch 3 (2 epoch(s) completed): diverged at step 50 (epoch 3); "
                                    "the gradient ...")
    assert run_status_text({"status": "finished", "epoch": 3}) == "finished"


def test_a_diverged_runs_own_page_shows_the_diagnosis(tmp_path):
    from depthlab.config import RunConfig
    from depthlab.report import write_report
    from depthlab.training import train

    cfg = RunConfig().with_overrides(["model.name=plain", "model.depth=8", "model.width=4", "data.name=digits",
                                      "train.epochs=2", "train.lr=1e6", "train.device=cpu", "train.threads=1",
                                      f"out_dir={tmp_path}", "run_id=boom"])
    assert train(cfg, quiet=True)["status"] == "diverged"
    message = [json.loads(line) for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()
               if '"diverged"' in line][0]["diagnosis"]["message"]
    page = write_report(cfg.run_dir).read_text()
    import html
    assert "diverged in epoch 1" in page and html.escape(message, quote=True)[:60] in page
