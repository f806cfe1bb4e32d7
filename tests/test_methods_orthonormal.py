"""The orthonormality regulariser: ``lambda / 2 sum ||W W^T - I||_F^2`` and its gradient on matrices computed
by hand, lambda's validation, the dtype of the first weight, the names of the weights."""
import math

import pytest
import torch
from modelkit import assert_close, methods_cfg, tiny_resnet
from torch import nn

from depthlab.methods import (
    orthonormal_weights,
    orthonormality_penalty,
    orthonormality_per_layer,
)
from depthlab.training.method_hooks import TrainingMethods

# orthonormality regulariser (Xie et al. 2017)

def test_penalty_and_gradient_of_small_matrices_by_hand():
    """W = [[1, 1, 0], [0, 1, 0]]: W W^T - I = [[1, 1], [1, 0]], ||.||_F^2 = 3; R = lam / 2 * 3.
    dR/dW = 2 lam (W W^T - I) W = 2 lam [[1, 2, 0], [1, 1, 0]]. Its transpose (tall) uses W^T W:
    the same value, gradient transposed. 2-dim weights (Linear) are regularised like convs."""
    lam = 0.5
    wide = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    tall = wide.detach().T.clone().requires_grad_()
    for w in (wide, tall):
        value = orthonormality_penalty([w], lam)
        assert value.dim() == 0 and value.item() == 0.75
        (grad,) = torch.autograd.grad(value, w)
        want = 2 * lam * torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
        assert torch.equal(grad, want if w is wide else want.T)
    assert orthonormality_penalty([wide, tall], 2.0).item() == 6.0  # summed over weights
    square = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # ||diag(4, 1) - I||^2 = 9
    assert orthonormality_penalty([("fc", square)], 2.0).item() == 9.0
    assert orthonormality_per_layer([wide, square]) == {"0": math.sqrt(3.0), "1": 3.0}


def test_penalty_of_a_group_of_equal_shapes_is_per_weight():
    """Weights of one shape are stacked into one batched matmul; each keeps its own residual."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(3, 2, 1, 1, dtype=torch.float64, generator=g) for _ in range(3)]  # wide: 3 > 2, tall
    ws += [torch.randn(2, 3, 1, 1, dtype=torch.float64, generator=g) for _ in range(2)]  # wide
    per_layer = orthonormality_per_layer([(f"w{i}", w) for i, w in enumerate(ws)])
    want = {}
    for i, w in enumerate(ws):
        m = w.reshape(w.shape[0], -1)
        gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
        want[f"w{i}"] = torch.linalg.norm(gram - torch.eye(len(gram), dtype=m.dtype)).item()
    assert list(per_layer) == list(want)
    for name in want:
        assert per_layer[name] == pytest.approx(want[name], rel=1e-12)
    total = orthonormality_penalty(ws, 4.0).item()
    assert total == pytest.approx(2.0 * sum(v * v for v in want.values()), rel=1e-12)


@pytest.mark.parametrize("lam", [-1.0, float("inf"), float("nan"), -float("inf")])
def test_penalty_lambda_must_be_finite_and_non_negative(lam):
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        orthonormality_penalty([torch.eye(2)], lam)


def test_penalty_dtype_is_the_first_weights_and_no_weights_give_zero():
    a, b = torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64)  # ||[[3,3],[3,3]] - I||^2 = 26
    assert orthonormality_penalty([a, b], 1.0).dtype == torch.float32
    assert orthonormality_penalty([b, a], 1.0).dtype == torch.float64
    assert orthonormality_penalty([b, a], 1.0).item() == 26.0
    for empty in ([], nn.Linear(3, 2), nn.Sequential(nn.ReLU())):  # no conv: nothing to regularise
        value = orthonormality_penalty(empty, 1.0)
        assert value.shape == () and value.item() == 0.0
    assert orthonormality_per_layer([]) == {} and orthonormality_per_layer(nn.Linear(3, 2)) == {}


def test_weights_need_two_dims_and_are_named():
    with pytest.raises(ValueError, match=r"weight 'fc.bias' has shape \(3,\); need at least 2 dims"):
        orthonormality_penalty([("fc.bias", torch.ones(3))], 1.0)
    with pytest.raises(ValueError, match=r"weight '1' has shape \(3,\)"):
        orthonormality_per_layer([torch.eye(3), torch.ones(3)])
    conv = nn.Conv2d(2, 3, 1)
    assert orthonormal_weights(conv) == [("weight", conv.weight)]  # the model itself is a conv
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 4))
    assert [n for n, _ in orthonormal_weights(net)] == ["0.weight"]  # BN has a weight but is no conv
    assert [n for n, _ in orthonormal_weights(net, include_linear=True)] == ["0.weight", "3.weight"]
    assert list(orthonormality_per_layer(net)) == ["0.weight"]  # convs only by default
    assert list(orthonormality_per_layer(net, include_linear=True)) == ["0.weight", "3.weight"]
    lin = orthonormality_per_layer(net, include_linear=True)["3.weight"]
    assert orthonormality_penalty(net, 2.0, include_linear=True).item() == pytest.approx(
        orthonormality_penalty(net, 2.0).item() + lin ** 2, rel=1e-5)


def test_the_method_adds_the_penalty_and_moves_conv_weights_out_of_weight_decay_when_asked():
    model = tiny_resnet()
    convs = {id(w) for _, w in orthonormal_weights(model)}
    params = [p for p in model.parameters()]
    for replaces in (True, False):
        cfg = methods_cfg("methods.orthonormal=0.01", f"methods.orthonormal_replaces_wd={replaces}")
        methods = TrainingMethods(cfg)
        methods.setup(model)
        assert_close(methods.penalty(model), orthonormality_penalty(model, 0.01), rtol=0, atol=0)
        groups = methods.param_groups(model, [{"params": params, "lr": 0.5}])
        if not replaces:
            assert groups == [{"params": params, "lr": 0.5}]
            continue
        assert len(groups) == 2 and groups[0]["lr"] == 0.5 and "weight_decay" not in groups[0]
        assert [id(p) for p in groups[0]["params"]] == [id(p) for p in params if id(p) not in convs]
        assert [id(p) for p in groups[1]["params"]] == [id(p) for p in params if id(p) in convs]
        assert groups[1]["weight_decay"] == 0.0
