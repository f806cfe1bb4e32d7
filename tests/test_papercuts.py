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

    from depthlab.report.diagnostics import axis_labels, draw_quantity

    model, data = tiny
    records = depthlab.diagnose(model, ["lesion"], data=data, options={"lesion": {"max_k": 2, "samples": 2}})
    by = {r["name"]: r for r in records if r["layer"] is None}
    for name in ("error_delete_k", "error_delete_k_mean"):
        assert by[name]["x"] == [1, 2] and by[name]["x_label"] == "k (blocks deleted)"
    assert len(by["error_delete_k_mean"]["value"]) == 2  # values unchanged: one per k
    fig = draw_quantity({"a": records, "b": records}, "lesion")
    try:
        axes = {ax.get_title().split(" (")[0]: ax for ax in fig.axes if ax.get_title()}
        assert axis_labels(axes["error_delete_k_mean"])["xlabel"] == "k (blocks deleted)"
        per_block = axis_labels(axes["error"])  # one record per block: the block names are the ticks
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

    from depthlab.report.diagnostics import axis_labels, draw_quantity

    recs = [{"quantity": "lesion", "layer": None, "name": "error_delete_k_mean", "value": [0.1, 0.2, 0.4]},
            {"quantity": "lesion", "layer": None, "name": "error_delete_k", "value": [[0.1, 0.1], [0.2, 0.2],
                                                                                      [0.3, 0.5]]}]
    fig = draw_quantity({"old": recs}, "lesion")
    try:
        (ax,) = [a for a in fig.axes if a.get_title()]
        assert ax.get_title() == "error_delete_k_mean" and axis_labels(ax)["xlabel"] == "index"
    finally:
        plt.close(fig)
