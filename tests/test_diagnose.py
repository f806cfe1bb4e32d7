"""diagnose() on models and run directories, diagnostics.jsonl, the CLI and the plots."""
import json

import pytest

from depthlab.cli import main
from depthlab.config import RunConfig
from depthlab.diagnose_run import diagnose, read_diagnostics
from depthlab.diagnostics import DIAGNOSTICS, resolve_quantities
from depthlab.report.diagnostic_plots import plot_quantity, summary_numbers
from depthlab.training import train

ALL = ("gradient_flow", "responses", "jacobian", "orthonormality", "shattering", "paths", "discriminability",
       "lesion")


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    dirs = []
    for family in ("plain", "resnet"):
        cfg = RunConfig().with_overrides([f"model.name={family}", "model.depth=8", "model.width=8",
                                          "train.epochs=1", "train.device=cpu", f"out_dir={out}",
                                          f"run_id={family}8"])
        dirs.append(train(cfg, quiet=True)["run_dir"])
    return dirs


def test_every_quantity_is_registered():
    assert set(ALL) <= set(DIAGNOSTICS.names())
    assert resolve_quantities("all") == DIAGNOSTICS.names()
    with pytest.raises(ValueError, match="unknown diagnostic 'gradflow'.*gradient_flow"):
        resolve_quantities("gradflow,lesion")


@pytest.mark.parametrize("quantity", DIAGNOSTICS.names())  # every registered one: a new diagnostic gets this test
def test_each_quantity_runs_on_a_trained_run_and_is_written(run_dirs, quantity):
    run = run_dirs[1]
    records = diagnose(run, [quantity], device="cpu")
    assert records and all(r["quantity"] == quantity and r["step"] > 0 for r in records)
    on_disk = [r for r in read_diagnostics(run) if r["quantity"] == quantity]
    assert on_disk[-len(records):] == json.loads(json.dumps(records))  # plain data, round-trips


def test_diagnose_errors_are_clear(run_dirs):
    with pytest.raises(ValueError, match="needs data="):
        diagnose(object(), ["orthonormality"])
    with pytest.raises(ValueError, match="not requested: lesion"):
        diagnose(run_dirs[0], ["orthonormality"], options={"lesion": {}})
    with pytest.raises(ValueError, match="not a run directory"):
        diagnose("/nonexistent", ["orthonormality"])


def test_cli_writes_one_png_per_quantity_for_several_runs(run_dirs, tmp_path, capsys):
    assert main(["diagnose", *run_dirs, "--quantities", "orthonormality,lesion", "--option", "lesion.max_k=1",
                 "--out", str(tmp_path), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(tmp_path / f"diagnostics_{q}.png") for q in ("lesion", "orthonormality"))
    assert all((tmp_path / f"diagnostics_{q}.png").stat().st_size > 5000 for q in ("lesion", "orthonormality"))


def test_plot_kinds_from_records(tmp_path):
    recs = [{"quantity": "q", "layer": f"l{i}", "name": "per_layer", "value": float(i + 1)} for i in range(4)]
    recs += [{"quantity": "q", "layer": None, "name": "sequence", "value": [0.1, 0.5, 0.2]},
             {"quantity": "q", "layer": None, "name": "scalar", "value": 3.0},
             {"quantity": "q", "layer": None, "name": "matrix", "value": [[1.0, 0.2], [0.2, 1.0]]},
             {"quantity": "q", "layer": None, "name": "ragged", "value": [[0.1], [0.2, 0.3]]},
             {"quantity": "q", "layer": None, "name": "text", "value": "ignored"}]
    path = plot_quantity({"a": recs, "b": recs}, "q", tmp_path / "q.png")
    assert path.stat().st_size > 5000
    with pytest.raises(ValueError, match="no curves to draw"):
        plot_quantity({"a": recs}, "other", tmp_path / "o.png")
    single = [r for r in recs if r["name"] == "scalar"]
    with pytest.raises(ValueError, match="single numbers go to the summary table"):  # never a one-bar panel
        plot_quantity({"a": single}, "q", tmp_path / "s.png")
    assert summary_numbers({"a": recs, "b": single}) == [["q", "scalar", 3.0, 3.0]]


def test_all_skips_what_a_model_cannot_support_but_a_named_quantity_raises(run_dirs, caplog, recwarn):
    with caplog.at_level("WARNING", logger="depthlab"):
        records = diagnose(run_dirs[0], "all", device="cpu", write=False)  # plain net: no paths
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 1 and "'paths' skipped" in skipped[0] and "\n" not in skipped[0]  # one clean line
    assert not [w for w in recwarn if "skipped" in str(w.message)]  # not a Python warning with a source line
    assert "paths" not in {r["quantity"] for r in records} and "lesion" in {r["quantity"] for r in records}
    with pytest.raises(ValueError, match="residual"):
        diagnose(run_dirs[0], ["paths"], device="cpu", write=False)


FAMILIES_SMALL = [("resnet", {"depth": 8, "width": 4}), ("plain", {"depth": 8, "width": 4}),
                  ("preact-resnet", {"depth": 8, "width": 4}), ("highway", {"depth": 8, "width": 4}),
                  ("densenet", {"depth": 10, "growth_rate": 4}), ("xie-plain", {"depth": 8, "width": 4}),
                  ("fixup-resnet", {"depth": 8, "width": 4}), ("mnist-resnet", {"depth": 6, "width": 4}),
                  ("resnet", {"depth": 8, "width": 4, "activation": "crelu", "init": "looks-linear"}),
                  ("resnet-imagenet", {"depth": 18, "width": 4})]


@pytest.mark.parametrize("family,overrides", FAMILIES_SMALL, ids=lambda v: v if isinstance(v, str) else "")
def test_every_quantity_on_every_family_runs_or_says_why(family, overrides):
    import warnings

    import torch

    from depthlab.data import load_dataset
    from depthlab.models import build_model

    torch.manual_seed(0)
    data = load_dataset("synthetic", shape=(1, 8, 8), n_train=64, n_test=32)
    model = build_model(family, in_channels=1, **overrides)
    small = {"paths": {"num_samples": 2}, "shattering": {"num_directions": 1, "n_points": 32},
             "lesion": {"max_k": 1, "samples": 1}, "jacobian": {"num_inputs": 1}}
    for q in DIAGNOSTICS.names():
        try:
            records = diagnose(model, [q], data=data, options={q: small[q]} if q in small else None)
        except ValueError as e:  # a quantity the family cannot support must say why
            assert len(str(e)) > 30, (q, e)
            assert (q, family) in {("paths", "plain"), ("paths", "xie-plain"), ("responses", "fixup-resnet"),
                                   ("paths", "densenet")}, (q, family, e)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            json.dumps(records)  # plain data
        assert records, q


def test_a_scheduled_quantity_is_drawn_per_epoch_and_a_snapshot_names_its_epoch():
    import matplotlib.pyplot as plt

    from depthlab.report.diagnostic_plots import draw_quantity

    recs = [{"quantity": "gradient_flow", "layer": f"l{i}", "name": "error_rms", "value": 10.0 ** -(e * i),
             "step": 10 * e, "epoch": e} for e in range(4) for i in range(3)]
    fig = draw_quantity({"run": recs}, "gradient_flow")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]
    assert ax.get_ylabel() == "RMS of dL/d(layer output)" and ax.get_yscale() == "log"  # spans 6 decades
    assert [t.get_text() for t in fig.legends[0].texts] == ["epoch 0", "epoch 1", "epoch 2", "epoch 3"]
    plt.close(fig)
    fig = draw_quantity({"run": [r for r in recs if r["epoch"] == 3]}, "gradient_flow")
    assert fig._suptitle.get_text() == "gradient_flow (epoch 3)" and not fig.legends
    plt.close(fig)


def test_a_range_and_a_one_layer_record_go_to_the_table_not_to_panels():
    recs = [{"quantity": "paths", "layer": None, "name": "effective_range", "value": [2, 9], "x": ["k_lo", "k_hi"]},
            {"quantity": "paths", "layer": None, "name": "magnitude", "value": [1.0, 0.5, 0.1], "x": [0, 1, 2]},
            {"quantity": "d", "layer": "s3.sum", "name": "probe_stops_rising", "value": 3}]
    assert summary_numbers({"a": recs}) == [["d", "probe_stops_rising (s3.sum)", 3],
                                            ["paths", "effective_range", "k_lo=2, k_hi=9"]]
    import matplotlib.pyplot as plt

    from depthlab.report.diagnostic_plots import draw_quantity

    fig = draw_quantity({"a": recs}, "paths")
    assert [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.lines] == [
        "gradient through paths of length k"]
    plt.close(fig)
