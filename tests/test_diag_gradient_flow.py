"""Properties of gradient_flow (depthlab/diagnostics/gradient_flow.py) that the mutation run
(docs/notes/mutation.md) found unchecked: records named per layer, the first/last ratios' zero cases, the
input dtype/device contract, the restored state and the every-step tracker."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diagkit import image_data, tiny
from torch import nn

from depthlab.diagnostics import gradient_flow as gf
from depthlab.diagnostics.registry import record

pytestmark = pytest.mark.usefixtures("one_thread")


# ============================================================================== gradient_flow
def test_first_to_last_ratios_are_inf_for_a_zero_denominator_and_nan_for_zero_over_zero():
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[1.0, 0.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[0.0, 0.0], error_numel=[1, 1])
    assert flow.weight_grad_ratio == math.inf and math.isnan(flow.error_ratio)
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[3.0, 2.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[6.0, 1.0], error_numel=[9, 1])
    assert flow.weight_grad_rms == [1.5, 2.0 / 3.0] and flow.error_rms == [2.0, 1.0]
    assert flow.weight_grad_ratio == 1.5 and flow.error_ratio == 2.0  # b = 1 divides, it is not zero


def test_gradient_flow_records_list_every_value_in_forward_order():
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[3.0, 2.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[6.0, 1.0], error_numel=[9, 1])
    q = "gradient_flow"
    assert flow.records() == [
        record(q, "loss", 0.5),
        record(q, "weight_grad_norm", 3.0, "a"), record(q, "weight_grad_rms", 1.5, "a"),
        record(q, "weight_grad_norm", 2.0, "b"), record(q, "weight_grad_rms", 2.0 / 3.0, "b"),
        record(q, "error_norm", 6.0, "t"), record(q, "error_rms", 2.0, "t"),
        record(q, "error_norm", 1.0, "u"), record(q, "error_rms", 1.0, "u"),
        record(q, "error_rms_first_last_ratio", 2.0), record(q, "weight_grad_first_last_ratio", 1.5)]


def test_take_batch_converts_to_the_model_dtype_and_int64_labels():
    model = tiny().double()
    data = image_data()
    x, y = gf.take_batch(SimpleNamespace(train_x=data.train_x, train_y=data.train_y.int()), "train", 1, model)
    assert x.dtype == torch.float64 and y.dtype == torch.int64 and len(x) == len(y) == 1
    assert torch.equal(gf.take_batch(data, "test", 5, model, labels=False), data.test_x[:5].double())
    assert gf.model_device_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="batch_size"):
        gf.take_batch(data, "train", 0, model)
    with pytest.raises(ValueError, match="val_x"):
        gf.take_batch(data, "val", 4, model)


def test_gradient_flow_casts_the_batch_and_reads_zero_for_a_layer_off_the_loss_path():
    model, data = tiny(), image_data(n_train=6)
    ref = gf.gradient_flow(model, data.train_x, data.train_y)
    model.add_module("unused", nn.Linear(2, 2))  # parametric, never called
    flow = gf.gradient_flow(model, data.train_x.double(), data.train_y.int())
    assert flow.layers == ref.layers + ["unused"]
    assert flow.weight_grad_norm[:-1] == pytest.approx(ref.weight_grad_norm, rel=1e-6)
    assert flow.weight_grad_norm[-1] == 0.0 and flow.weight_grad_ratio == math.inf
    assert flow.error_norm == pytest.approx(ref.error_norm, rel=1e-6)


class TupleTap(nn.Module):
    def forward(self, x):
        return x, x


def test_parametric_layers_of_a_model_without_taps_are_named_by_module_path():
    conv, lin = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)
    assert gf.parametric_layers(nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU(), lin)) == [("0", conv), ("3", lin)]


def test_gradient_flow_errors_for_a_missing_or_empty_tap_list_and_for_a_tap_without_a_tensor_output():
    with pytest.raises(ValueError, match="taps"):
        gf.gradient_flow(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4), torch.tensor([0, 1]))
    model = tiny()
    data = image_data(n_train=4)
    model.taps = lambda: {}
    with pytest.raises(ValueError, match="empty"):
        gf.gradient_flow(model, data.train_x, data.train_y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.pair = nn.Linear(4, 3), TupleTap()

        def taps(self):
            return {"fc": self.fc, "pair": self.pair}

        def forward(self, x):
            return self.pair(self.fc(x))[0]

    with pytest.raises(ValueError, match="no gradient"):
        gf.gradient_flow(Net(), torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))


def test_tracker_history_is_empty_before_any_step_and_after_clear():
    model = tiny()
    tracker = gf.GradientFlowTracker(model)
    assert not tracker.attached and tracker.names == []
    tracker.attach()
    n = len(gf.parametric_layers(model))
    assert tracker.history().shape == (0, n)
    assert torch.equal(tracker.read(), torch.zeros(n))  # no gradient yet: every layer reads 0
    F.cross_entropy(model(image_data().train_x[:4]), torch.tensor([0, 1, 2, 0])).backward()
    first = tracker.step()
    assert torch.equal(tracker.history(), first[None]) and (first > 0).all()
    tracker.clear()
    assert tracker.history().shape == (0, n)
    second = tracker.step()
    assert torch.equal(tracker.history(), second[None])  # stepping again after clear() starts afresh
    tracker.detach()
    assert not tracker.attached
    single = gf.GradientFlowTracker(nn.Linear(3, 2)).attach()  # one layer, no gradient yet
    assert torch.equal(single.read(), torch.zeros(1))
