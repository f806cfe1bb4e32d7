"""Mutation-testing gaps in depthlab/models/init.py: the initialisers' scale formulas on non-square layers
(fan_in != fan_out, non-square kernels), compared draw for draw with ``torch.nn.init`` under the same seed,
and what each scheme re-initialises."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import assert_close
from torch import nn

from depthlab.models import build_model
from depthlab.models.init import (
    delta_orthogonal_,
    init_model_,
    kaiming_normal_fan_in_,
    kaiming_normal_fan_out_,
    looks_linear_,
    orthogonal_,
    xavier_uniform_,
)
from depthlab.models.layers import (
    ScalarBias,
    ScalarScale,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# Shapes with fan_in != fan_out and non-square kernels, so a swapped fan or a wrong kernel dim shows.
SHAPES = [(40, 10, 3, 5), (12, 30, 5, 3), (50, 20, 7), (24, 36)]


def fans(shape):
    k = math.prod(shape[2:])
    return shape[1] * k, shape[0] * k


@pytest.mark.parametrize("shape", SHAPES)
def test_kaiming_and_xavier_draws_equal_the_paper_formulas(shape):
    """Under one seed each initialiser equals a fresh draw with the paper's scale: He fan_out
    sqrt(2/fan_out), He fan_in sqrt(2/fan_in), Glorot U(-a, a), a = sqrt(6/(fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    cases = [(kaiming_normal_fan_out_, lambda t: t.normal_(0.0, math.sqrt(2.0 / fan_out))),
             (kaiming_normal_fan_in_, lambda t: t.normal_(0.0, math.sqrt(2.0 / fan_in))),
             (xavier_uniform_, lambda t: t.uniform_(-math.sqrt(6.0 / (fan_in + fan_out)),
                                                    math.sqrt(6.0 / (fan_in + fan_out))))]
    for fn, ref in cases:
        w = nn.Parameter(torch.empty(shape, dtype=torch.float64))  # a leaf that requires grad
        torch.manual_seed(1)
        assert fn(w) is w
        torch.manual_seed(1)
        assert_close(w.detach(), ref(torch.empty(shape, dtype=torch.float64)), rtol=1e-12, atol=0)
    # and torch's own implementations agree (nonlinearity="relu": gain sqrt 2)
    w, ref = torch.empty(shape), torch.empty(shape)
    for fn, tfn in [(kaiming_normal_fan_out_, lambda t: nn.init.kaiming_normal_(t, mode="fan_out")),
                    (kaiming_normal_fan_in_, lambda t: nn.init.kaiming_normal_(t, mode="fan_in")),
                    (xavier_uniform_, nn.init.xavier_uniform_)]:
        torch.manual_seed(2)
        fn(w)
        torch.manual_seed(2)
        tfn(ref)
        assert_close(w, ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fn", [kaiming_normal_fan_out_, kaiming_normal_fan_in_, xavier_uniform_, orthogonal_,
                                looks_linear_])
def test_initialisers_reject_1d_tensors_naming_themselves_and_the_shape(fn):
    with pytest.raises(ValueError) as err:
        fn(torch.empty(6))
    msg = str(err.value)
    assert msg.startswith(f"{fn.__name__} needs") and "(6,)" in msg and ">= 2 dims" in msg


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_orthogonal_is_torch_orthogonal_with_gain(shape, gain):
    w, ref = torch.empty(shape, dtype=torch.float64), torch.empty(shape, dtype=torch.float64)
    torch.manual_seed(3)
    assert (orthogonal_(w, gain) if gain != 1.0 else orthogonal_(w)) is w
    torch.manual_seed(3)
    nn.init.orthogonal_(ref, gain=gain)
    assert torch.equal(w, ref)
    flat = w.reshape(shape[0], -1)
    small = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    assert_close(small, gain ** 2 * torch.eye(small.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(6, 4, 3, 5), (4, 6, 5, 1), (5, 5, 1, 3)])
@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_delta_orthogonal_on_non_square_kernels(shape, gain):
    """Only the centre tap (kh // 2, kw // 2) is non-zero: a semi-orthogonal C_out x C_in matrix
    times gain, orthogonal to the weight's own (float64) precision."""
    c_out, c_in, kh, kw = shape
    w = torch.randn(shape, dtype=torch.float64)
    torch.manual_seed(4)
    assert (delta_orthogonal_(w, gain) if gain != 1.0 else delta_orthogonal_(w)) is w
    torch.manual_seed(4)
    centre = nn.init.orthogonal_(torch.empty(c_out, c_in, dtype=torch.float64), gain=gain)
    want = torch.zeros(shape, dtype=torch.float64)
    want[:, :, kh // 2, kw // 2] = centre
    assert torch.equal(w, want)
    c = w[:, :, kh // 2, kw // 2]
    small = c @ c.T if c_out <= c_in else c.T @ c
    assert_close(small, gain ** 2 * torch.eye(min(c_out, c_in), dtype=torch.float64),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 4, 3, 4), (4, 4, 4, 3), (4, 4, 3), (4, 4, 3, 3, 3)])
def test_delta_orthogonal_needs_a_4d_odd_kernel(shape):
    with pytest.raises(ValueError) as err:
        delta_orthogonal_(torch.empty(shape))
    assert str(tuple(shape)) in str(err.value)


@pytest.mark.parametrize("shape", [(6, 8, 3, 5), (10, 4, 3, 3), (5, 12), (7, 6, 3)])
@pytest.mark.parametrize("gain", [1.0, 1.5])
def test_looks_linear_is_w_minus_w_with_w_orthogonal_over_its_fan_in(shape, gain):
    half = shape[1] // 2
    w = torch.randn(shape, dtype=torch.float64)
    torch.manual_seed(5)
    assert (looks_linear_(w, gain) if gain != 1.0 else looks_linear_(w)) is w
    torch.manual_seed(5)
    ref = nn.init.orthogonal_(torch.empty(shape[0], half, *shape[2:], dtype=torch.float64), gain=gain)
    assert torch.equal(w[:, :half], ref) and torch.equal(w[:, half:], -ref)
    flat = w[:, :half].reshape(shape[0], -1)
    small = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    assert_close(small, gain ** 2 * torch.eye(small.shape[0], dtype=torch.float64),
                               rtol=0, atol=1e-12)
    # [W, -W] . [relu(x), relu(-x)] = W x: linear in x
    x = torch.randn(3, half, *([6] * (len(shape) - 2)), dtype=torch.float64)
    c = torch.cat([torch.relu(x), torch.relu(-x)], 1)
    op = {2: F.linear, 3: F.conv1d, 4: F.conv2d}[len(shape)]
    assert_close(op(c, w), op(x, w[:, :half]))
    with pytest.raises(ValueError, match="even number of input channels"):
        looks_linear_(torch.empty(shape[0], 2 * half + 1, *shape[2:]))


def dirty(model):
    """Every parameter and BN statistic set to a recognisable junk value, so a re-init that skips
    one shows; conv biases too."""
    with torch.no_grad():
        for m in model.modules():
            for t in list(m.parameters(recurse=False)) + [b for n, b in m.named_buffers(recurse=False)
                                                           if n in ("running_mean", "running_var")]:
                t.fill_(3.0)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.num_batches_tracked.fill_(7)
    return model


def assert_fresh_bn(model):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            assert torch.equal(m.weight, torch.ones(c)) and torch.equal(m.bias, torch.zeros(c))
            assert torch.equal(m.running_mean, torch.zeros(c)) and torch.equal(m.running_var, torch.ones(c))
            assert m.num_batches_tracked.item() == 0


@pytest.mark.parametrize("scheme", ["kaiming", "kaiming-fan-in", "orthogonal", "xavier", "delta-orthogonal",
                                    "torch-default"])
def test_every_scheme_reinitialises_all_layers_of_a_biased_net(scheme):
    """mnist-resnet has conv biases: each scheme zeroes them (torch-default: re-draws them), resets
    BN to gamma 1 / beta 0 / fresh statistics and re-draws the classifier (bias 0 unless torch-default
    or the kaiming schemes, which keep torch's default Linear init)."""
    torch.manual_seed(0)
    model = dirty(build_model("mnist-resnet", depth=4, init=scheme))
    init_model_(model, scheme)
    assert_fresh_bn(model)
    fc = model.head.fc
    bound = 1 / math.sqrt(fc.in_features)  # torch's Linear default: U(-1/sqrt(fan_in), ...)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert (m.weight != 3.0).all()
            if scheme == "torch-default":
                assert (m.bias.abs() <= 1 / math.sqrt(m.weight[0].numel())).all()
            else:
                assert torch.equal(m.bias, torch.zeros_like(m.bias))
    if scheme in ("kaiming", "kaiming-fan-in", "torch-default"):
        assert (fc.weight.abs() <= bound).all() and (fc.bias.abs() <= bound).all() and fc.bias.abs().sum() > 0
    else:
        assert torch.equal(fc.bias, torch.zeros(10))
        if scheme == "xavier":
            assert (fc.weight.abs() <= math.sqrt(6 / (16 + 10))).all()
        else:
            assert_close(fc.weight @ fc.weight.T, torch.eye(10), atol=1e-5, rtol=0)


def test_kaiming_scheme_keeps_torch_default_linear_but_orthogonal_scheme_replaces_it():
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, in_channels=1, num_classes=10)
    fc = model.head.fc  # 10 x 64: orthonormal rows under "orthogonal"; torch's default is not
    torch.manual_seed(1)
    init_model_(model, "kaiming")
    gram = fc.weight @ fc.weight.T
    assert (gram - torch.eye(10)).abs().max() > 0.3
    want = copy.deepcopy(model)
    torch.manual_seed(1)
    for m in want.modules():
        if isinstance(m, nn.Conv2d):
            kaiming_normal_fan_out_(m.weight)
        elif isinstance(m, nn.Linear):
            m.reset_parameters()
    assert torch.equal(fc.weight, want.head.fc.weight)  # same draws in module order: fc is torch default


def test_init_model_applies_zero_init_residual_only_on_request():
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, in_channels=1, num_classes=10)
    assert init_model_(model, "kaiming") is model
    assert all(torch.equal(b.branch.bn2.weight, torch.ones_like(b.branch.bn2.weight)) for b in model.blocks)
    assert init_model_(model, "xavier", zero_init_residual=True) is model
    assert all(torch.equal(b.branch.bn2.weight, torch.zeros_like(b.branch.bn2.weight)) for b in model.blocks)
    x = model.stem(torch.randn(2, 1, 6, 6))
    assert torch.equal(model.blocks[0](x), torch.relu(model.blocks[0].shortcut(x)))


def test_schemes_reset_rezero_alpha_and_fixup_scalars():
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, in_channels=1, num_classes=10, rezero=True)
    with torch.no_grad():
        for b in model.blocks:
            b.alpha.fill_(0.9)
    for scheme in ("kaiming", "torch-default"):
        init_model_(model, scheme)
        assert all(b.alpha.item() == 0.0 for b in model.blocks)
        with torch.no_grad():
            for b in model.blocks:
                b.alpha.fill_(0.9)
    fixup = build_model("fixup-resnet", depth=8, in_channels=1, num_classes=10)
    scalars = [m for m in fixup.modules() if isinstance(m, (ScalarBias, ScalarScale))]
    assert scalars
    with torch.no_grad():
        for p in fixup.parameters():
            p.fill_(0.9)
    init_model_(fixup, "orthogonal")
    for m in scalars:
        assert (m.bias.item() == 0.0) if isinstance(m, ScalarBias) else (m.scale.item() == 1.0)


def test_looks_linear_scheme_uses_plain_orthogonal_off_crelu_inputs():
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, in_channels=1, num_classes=10, activation="crelu",
                        init="looks-linear")
    stem = model.stem.conv.weight  # reads the raw 1-channel input: no CReLU, so no [W, -W]
    assert not getattr(model.stem.conv, "after_crelu", False)
    flat = stem.reshape(stem.shape[0], -1)
    small = flat @ flat.T if flat.shape[0] <= flat.shape[1] else flat.T @ flat
    assert_close(small, torch.eye(small.shape[0]), atol=1e-5, rtol=0)
    flagged = [m for m in model.modules() if getattr(m, "after_crelu", False)]
    assert flagged
    for m in flagged:
        half = m.weight.shape[1] // 2
        assert torch.equal(m.weight[:, :half], -m.weight[:, half:])
