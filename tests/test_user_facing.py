"""Small user-facing fixes in the library: plot axes that say what they are, a readable Dataset,
strict JSON metrics, sweep files with dotted base keys, eval and a run being trained."""
import json

import pytest
import torch

import depthlab
from depthlab.data import load_dataset
from depthlab.models import build_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    data = load_dataset("synthetic", shape=(1, 8, 8), n_train=64, n_test=32)
    return build_model("resnet", depth=8, width=4, in_channels=1), data


# ---------------------------------------------------------------- diagnostics plots say their x axis

def test_lesion_records_carry_k_and_the_plot_labels_its_axes(tiny):
    import matplotlib.pyplot as plt

    from depthlab.report.diagnostic_plots import axis_labels, draw_quantity

    model, data = tiny
    records = depthlab.diagnose(model, ["lesion"], data=data, options={"lesion": {"max_k": 2, "samples": 2}})
    by = {r["name"]: r for r in records if r["layer"] is None}
    for name in ("error_delete_k", "error_delete_k_mean"):
        assert by[name]["x"] == [1, 2] and by[name]["x_label"] == "k (blocks deleted)"
    assert len(by["error_delete_k_mean"]["value"]) == 2  # values unchanged: one per k
    fig = draw_quantity({"a": records, "b": records}, "lesion")
    try:
        axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
        assert axis_labels(axes["k blocks deleted"])["xlabel"] == "k (blocks deleted)"  # titled in words
        assert axes["k blocks deleted"].get_ylabel() == "test error (fraction)"
        per_block = axis_labels(axes["one block deleted"])  # one record per block: the block names are the ticks
        assert per_block["xticklabels"] == list(model.block_names)
    finally:
        plt.close(fig)


def test_every_list_valued_record_says_what_it_is_indexed_by(tiny):
    model, data = tiny
    small = {"paths": {"num_samples": 1}, "shattering": {"num_directions": 2, "n_points": 16},
             "jacobian": {"num_inputs": 2}}
    records = depthlab.diagnose(model, list(small), data=data, options=small)
    lists = [r for r in records if isinstance(r["value"], list) and r["name"] != "ks"]
    assert lists and all(r.get("x_label") for r in lists), [r["name"] for r in lists if not r.get("x_label")]
    sv = next(r for r in records if r["name"] == "singular_values")
    assert sv["x_axis"] == 1 and sv["x"][0] == 1 and len(sv["x"]) == len(sv["value"][0])  # one curve per input
    acf = next(r for r in records if r["name"] == "acf_mean")
    assert acf["x"] == list(range(16)) and acf["x_label"].startswith("lag")


def test_old_records_without_axis_fields_still_plot_over_their_index(tmp_path):
    import matplotlib.pyplot as plt

    from depthlab.report.diagnostic_plots import axis_labels, draw_quantity

    recs = [{"quantity": "lesion", "layer": None, "name": "error_delete_k_mean", "value": [0.1, 0.2, 0.4]},
            {"quantity": "lesion", "layer": None, "name": "error_delete_k", "value": [[0.1, 0.1], [0.2, 0.2],
                                                                                      [0.3, 0.5]]}]
    fig = draw_quantity({"old": recs}, "lesion")
    try:
        (ax,) = [a for a in fig.axes if a.get_title()]
        assert ax.get_title() == "k blocks deleted" and axis_labels(ax)["xlabel"] == "index"
    finally:
        plt.close(fig)


# ---------------------------------------------------------------- a readable Dataset, a clear mismatch

def test_dataset_repr_is_one_line():
    data = load_dataset("digits", val_fraction=0.1)
    text = repr(data)
    assert text == (f"Dataset('digits', train {len(data.train_x)}x1x8x8, test {len(data.test_x)}, "
                    f"val {len(data.val_x)}, 10 classes, augment none)")
    assert "\n" not in text and "tensor" not in text and str(data) == text


def test_diagnosing_a_three_channel_model_on_digits_says_how_to_build_it():
    with pytest.raises(ValueError, match=r"in_channels=1"):
        depthlab.diagnose(build_model("resnet56"), ["orthonormality"], data=load_dataset("digits"))


# ---------------------------------------------------------------- sweep base: dotted keys too

def test_sweep_base_takes_dotted_keys_nested_sections_or_both():
    from depthlab.config import ConfigError
    from depthlab.sweep.spec import expand, load_spec

    def spec(base):
        return load_spec({"name": "s", "base": base, "grid": {"model.name": ["plain20"]}})

    nested = spec({"data": {"name": "digits"}, "train": {"epochs": 2, "lr": 0.01}})
    dotted = spec({"data.name": "digits", "train.epochs": 2, "train.lr": 0.01})
    mixed = spec({"data": {"name": "digits"}, "train": {"lr": 0.01}, "train.epochs": 2})
    assert nested.base == dotted.base == mixed.base
    (run,) = expand(mixed)
    assert run.config.train.epochs == 2 and run.config.train.lr == 0.01 and run.config.data.name == "digits"
    with pytest.raises(ConfigError, match=r"base sets train\.epochs twice"):
        spec({"train": {"epochs": 3}, "train.epochs": 2})
    with pytest.raises(ConfigError, match=r"base sets train\.seed, which the sweep sets"):
        spec({"train.seed": 1})
    with pytest.raises(ConfigError, match=r"train\.nosuch"):
        spec({"train.nosuch": 1})


# ---------------------------------------------------------------- eval and a run being trained

def test_evaluate_run_does_not_append_while_the_run_is_locked(tmp_path, caplog):
    from depthlab.config import RunConfig
    from depthlab.training import evaluate_run, train
    from depthlab.training.safety import RunLock

    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=1",
                                      "data.name=digits", "train.device=cpu", f"out_dir={tmp_path}", "run_id=r"])
    run = train(cfg, quiet=True)["run_dir"]
    metrics = tmp_path / "r" / "metrics.jsonl"
    before = metrics.read_text()
    with RunLock(tmp_path / "r"), caplog.at_level("WARNING", logger="depthlab"):
        row = evaluate_run(run, device="cpu")
    assert row["kind"] == "eval" and metrics.read_text() == before
    assert any("not appended" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="use last, best or a checkpoint file"):
        evaluate_run(run, checkpoint="init", device="cpu")
    assert not list(tmp_path.glob(".*.lock"))  # the lock file goes with the lock


# ---------------------------------------------------------------- strict JSON from a diverged run

def _strict(line: str):
    def refuse(name):
        raise ValueError(f"non-strict JSON constant {name}")
    return json.loads(line, parse_constant=refuse)


def test_a_diverged_runs_metrics_are_strict_json_and_report_still_works(tmp_path, capsys):
    from depthlab.cli import main
    from depthlab.config import RunConfig
    from depthlab.training import train

    cfg = RunConfig().with_overrides(["model.name=plain", "model.depth=8", "model.width=4", "train.epochs=1",
                                      "data.name=digits", "train.device=cpu", "train.lr=1e6",
                                      f"out_dir={tmp_path}", "run_id=div"])
    summary = train(cfg, quiet=True)
    assert summary["status"] == "diverged"  # it really diverges
    run = tmp_path / "div"
    rows = [_strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["status"] == "diverged" and rows[-1]["train_loss"] is None  # NaN became null
    assert main(["report", str(run), "--markdown", str(tmp_path / "div.md")]) == 0
    assert "diverged" in (run / "report.html").read_text()
    md = (tmp_path / "div.md").read_text()
    assert "**diverged**" in md and "diverged at step" in md
    assert main(["report", str(tmp_path)]) == 0  # the index page over it
