"""Depth remedies in the models layer: delta-orthogonal init, SkipInit/ReZero, Fixup, CReLU +
looks-linear, per-sample stochastic depth. Each checks the exact property docs/methods.md states."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.models import INITS, build_model, count_params, model_summary, resolve_spec
from depthlab.models.blocks import Block
from depthlab.models.crelu import CReLUBlock, crelu
from depthlab.models.fixup import FixupBlock
from depthlab.models.init import delta_orthogonal_, looks_linear_

pytestmark = pytest.mark.usefixtures("one_thread")


def contract(model, x):
    """The model contract (docs/design.md), without the BN-specific checks of test_models.py."""
    taps = model.taps()
    names = ["stem.conv"] + [f"{b}.{t}" for b in model.block_names for t in ("conv1", "conv2", "sum")]
    assert list(taps) == names
    n_convs = sum(1 for n in taps if n.endswith(("conv", "conv1", "conv2")))
    assert n_convs + 1 == model.depth
    fired = []
    handles = [m.register_forward_hook(lambda *a, n=n: fired.append(n)) for n, m in taps.items()]
    out = model(x)
    for h in handles:
        h.remove()
    assert fired == names and out.shape == (x.shape[0], model.spec.num_classes)
    out.logsumexp(1).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- delta-orthogonal
@pytest.mark.parametrize("shape", [(16, 32, 3, 3), (32, 16, 3, 3), (24, 24, 5, 5), (8, 3, 3, 1), (10, 10, 1, 1)])
@pytest.mark.parametrize("gain", [1.0, math.sqrt(2)])
def test_delta_orthogonal_centre_singular_values(shape, gain):
    torch.manual_seed(0)
    w = torch.randn(shape)
    assert delta_orthogonal_(w, gain) is w
    c = w[:, :, shape[2] // 2, shape[3] // 2]
    sv = torch.linalg.svdvals(c.double())
    assert sv.numel() == min(shape[:2])
    torch.testing.assert_close(sv, torch.full_like(sv, gain), atol=1e-5, rtol=0)
    off = w.clone()
    off[:, :, shape[2] // 2, shape[3] // 2] = 0
    assert torch.equal(off, torch.zeros_like(off))


@pytest.mark.parametrize("shape", [(8, 8, 2, 2), (8, 8, 3, 4), (8, 8), (8, 8, 3)])
def test_delta_orthogonal_bad_shapes(shape):
    with pytest.raises(ValueError) as err:
        delta_orthogonal_(torch.empty(shape))
    assert str(tuple(shape)) in str(err.value)


def test_delta_orthogonal_scheme():
    torch.manual_seed(0)
    for name, kw in [("resnet20", {}), ("resnet20", {"shortcut": "B"}), ("plain20", {}), ("preact-resnet20", {})]:
        model = build_model(name, init="delta-orthogonal", **kw)
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                k = m.kernel_size[0] // 2
                sv = torch.linalg.svdvals(m.weight[:, :, k, k].double())
                torch.testing.assert_close(sv, torch.ones_like(sv), atol=1e-5, rtol=0)
                off = m.weight.detach().clone()
                off[:, :, k, k] = 0
                assert torch.equal(off, torch.zeros_like(off))
        fc = model.head.fc.weight
        torch.testing.assert_close(fc @ fc.T, torch.eye(fc.shape[0]), atol=1e-5, rtol=0)
        assert torch.isfinite(model(torch.randn(2, 3, 8, 8))).all()


# ----------------------------------------------------------------------------- SkipInit / ReZero
@pytest.mark.parametrize("name,post", [("resnet20", torch.relu), ("preact-resnet20", lambda t: t)])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_rezero_blocks_are_identity_at_init(name, post, shortcut):
    torch.manual_seed(0)
    model = build_model(name, rezero=True, shortcut=shortcut)
    assert model.spec.options["rezero"] is True
    assert count_params(model) == count_params(build_model(name, shortcut=shortcut)) + len(model.blocks)
    x = model.stem(torch.randn(4, 3, 16, 16))
    for block in model.blocks:
        assert isinstance(block.alpha, nn.Parameter) and block.alpha.item() == 0.0
        y = block(x)
        assert torch.equal(y, post(block.shortcut(x)))
        if shortcut == "A" and post is torch.relu:  # post-ReLU input, zero-pad: exactly the identity path
            assert torch.equal(y, block.shortcut(x))
        x = y
    model.zero_grad()
    F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    grads = torch.stack([b.alpha.grad.abs().sum() for b in model.blocks])
    assert (grads > 0).all()


def test_rezero_off_keeps_presets_and_validates():
    for name in ("resnet56", "preact-resnet110", "plain20"):
        assert all(b.alpha is None for b in build_model(name).blocks)
    assert model_summary("resnet56")["params"] == 853_018
    assert model_summary("resnet56", rezero=True)["params"] == 853_018 + 27
    for scheme in ("kaiming", "orthogonal", "torch-default", "delta-orthogonal"):
        m = build_model("resnet20", rezero=True, init=scheme)
        assert all(b.alpha.item() == 0.0 for b in m.blocks)
    with pytest.raises(ValueError, match="rezero"):
        build_model("resnet20", rezero="yes")
    with pytest.raises(ValueError, match="rezero"):
        build_model("plain20", rezero=True)  # unknown override for plain


# ----------------------------------------------------------------------------- Fixup
def fixup_params(n, w=16, classes=10):
    """He et al. CIFAR ResNet without BN, + 5 scalars per block + stem bias + pre-fc bias."""
    total, c = 27 * w + 1, w
    for width in (w, 2 * w, 4 * w):
        for _ in range(n):
            total += 9 * c * width + 9 * width * width + 5
            c = width
    return total + 1 + c * classes + classes


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_fixup_presets(depth):
    name = f"fixup-resnet{depth}"
    assert model_summary(name)["params"] == fixup_params((depth - 2) // 6)
    torch.manual_seed(0)
    model = build_model(name)
    assert model.spec.init == "fixup" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                  for m in model.modules())
    assert count_params(model) == fixup_params((depth - 2) // 6)
    L = len(model.blocks)
    for b in model.blocks:
        assert isinstance(b, FixupBlock)
        assert torch.equal(b.branch.conv2.weight, torch.zeros_like(b.branch.conv2.weight))
        assert b.scale.item() == 1.0 and b.bias1a.item() == b.bias1b.item() == b.bias2a.item() == b.bias2b.item() == 0
    if depth == 110:  # statistical check on the big convs: std = sqrt(2 / fan_out) * L^(-1/2)
        w = model.blocks[-1].branch.conv1.weight
        assert abs(w.std().item() / (math.sqrt(2 / (64 * 9)) / math.sqrt(L)) - 1) < 0.05
    contract(model, torch.randn(2, 3, 8, 8))


def test_fixup_initial_logits_zero_and_loss_ln_classes():
    torch.manual_seed(0)
    for classes in (10, 100):
        model = build_model("fixup-resnet20", num_classes=classes)
        x = torch.randn(8, 3, 16, 16) * 5
        logits = model(x)
        assert torch.equal(logits, torch.zeros_like(logits))
        loss = F.cross_entropy(logits, torch.randint(classes, (8,)))
        assert abs(loss.item() - math.log(classes)) < 1e-6


@pytest.mark.parametrize("overrides,words", [
    ({"init": "kaiming"}, ["init", "Fixup defines its own init"]),
    ({"init": "delta-orthogonal"}, ["init", "Fixup defines its own init"]),
    ({"zero_init_residual": True}, ["zero_init_residual", "Fixup defines its own init"]),
    ({"shortcut": "B"}, ["shortcut", "'A'"]),
])
def test_fixup_rejects(overrides, words):
    with pytest.raises(ValueError) as err:
        build_model("fixup-resnet20", **overrides)
    assert all(w in str(err.value) for w in words)
    with pytest.raises(ValueError, match="fixup"):
        build_model("resnet20", init="fixup")


def test_fixup_lesion_and_scalars_reset():
    torch.manual_seed(0)
    model = build_model("fixup-resnet20")
    x = model.stem(torch.randn(2, 3, 8, 8))
    for block in model.blocks:
        block.enabled = False
        assert torch.equal(block(x), block.shortcut(x))
        block.enabled = True
        x = block(x)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    INITS.get("fixup")(model)
    assert torch.equal(model(torch.randn(2, 3, 8, 8)), torch.zeros(2, 10))
    assert all(b.scale.item() == 1.0 and b.bias2b.item() == 0.0 for b in model.blocks)


# ----------------------------------------------------------------------------- CReLU + looks-linear
def test_crelu_and_looks_linear_functions():
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64)
    c = crelu(x)
    assert c.shape == (3, 8, 5, 5) and torch.equal(c[:, :4] - c[:, 4:], x)
    w = torch.empty(6, 8, 3, 3, dtype=torch.float64)
    assert looks_linear_(w) is w
    assert torch.equal(w[:, :4], -w[:, 4:])
    torch.testing.assert_close(F.conv2d(c, w, padding=1), F.conv2d(x, w[:, :4], padding=1))
    flat = w[:, :4].reshape(6, -1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(6, dtype=torch.float64))
    with pytest.raises(ValueError, match="even"):
        looks_linear_(torch.empty(4, 3, 3, 3))


def linear_model(name, **kw):
    model = build_model(name, activation="crelu", init="looks-linear", **kw).double().eval()
    assert all(isinstance(b, CReLUBlock) for b in model.blocks)
    return model


@pytest.mark.parametrize("name,kw", [("resnet20", {}), ("plain20", {}), ("resnet20", {"shortcut": "B"}),
                                     ("plain56", {})])
def test_looks_linear_network_is_linear_at_init(name, kw):
    torch.manual_seed(0)
    model = linear_model(name, **kw)
    x, y = torch.randn(2, 3, 12, 12, dtype=torch.float64), torch.randn(2, 3, 12, 12, dtype=torch.float64)
    a, b = 0.7, -1.9
    lhs, rhs = model(a * x + b * y), a * model(x) + b * model(y)
    assert lhs.abs().max() > 1e-3
    torch.testing.assert_close(lhs, rhs, atol=1e-10, rtol=1e-10)
    grads = []
    for _ in range(3):  # input gradient of one logit is the same at every input
        z = torch.randn(1, 3, 12, 12, dtype=torch.float64, requires_grad=True) * 3
        z.retain_grad()
        model(z)[0, 3].backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(grads[0], grads[2], atol=1e-10, rtol=1e-10)


def test_looks_linear_breaks_after_training():
    torch.manual_seed(0)
    model = linear_model("resnet20").train()
    data, target = torch.randn(16, 3, 8, 8, dtype=torch.float64), torch.randint(10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(data), target).backward()
        opt.step()
    model.eval()
    x, y = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    lhs, rhs = model(x + y), model(x) + model(y)
    assert (lhs - rhs).abs().max() > 1e-2 * rhs.abs().max()


def test_crelu_params_taps_and_validation():
    torch.manual_seed(0)
    contract(build_model("resnet20", activation="crelu"), torch.randn(2, 3, 8, 8))
    contract(build_model("plain20", activation="crelu"), torch.randn(2, 3, 8, 8))
    assert model_summary("resnet56")["params"] == 853_018
    budgets = {w: model_summary("resnet56", activation="crelu", width=w)["params"] for w in (11, 12, 16)}
    assert budgets == {11: 805_485, 12: 958_198, 16: 1_701_530}  # crelu.py docstring
    assert resolve_spec("resnet20").options == {"activation": "relu", "norm": "batch", "dropout": 0.0,
                                                "dropout_mode": "channel", "rezero": False}
    with pytest.raises(ValueError) as err:
        build_model("resnet20", init="looks-linear")
    assert "activation='crelu'" in str(err.value)
    with pytest.raises(ValueError, match="activation='crelu'"):
        build_model("preact-resnet20", init="looks-linear")
    with pytest.raises(ValueError, match="activation"):
        build_model("resnet20", activation="swish")
    with pytest.raises(TypeError, match="activation"):
        build_model("preact-resnet20", activation="crelu")  # unknown override for this family
    m = build_model("resnet20", activation="crelu", rezero=True, zero_init_residual=True)
    x = m.stem(torch.randn(2, 3, 8, 8))
    assert torch.equal(m.blocks[0](x), x)


# ----------------------------------------------------------------------------- per-sample stochastic depth
def test_drop_mode_sample():
    torch.manual_seed(0)
    model = build_model("resnet20")
    block = model.blocks[1]
    assert block.drop_mode == "batch"
    with pytest.raises(ValueError, match="drop_mode"):
        block.drop_mode = "layer"
    x = torch.relu(torch.randn(400, 16, 6, 6))
    block.drop_mode = "sample"
    block.survival_prob = 0.5
    block.train()
    with torch.no_grad():
        out = block(x)
        full = torch.relu(block.shortcut(x) + block.branch(x))
    dropped = (out == block.shortcut(x)).flatten(1).all(1)
    kept = (out == full).flatten(1).all(1)
    assert (dropped ^ kept).all()  # every sample is one or the other
    assert 150 < dropped.sum().item() < 250
    block.eval()
    torch.testing.assert_close(block(x), torch.relu(block.shortcut(x) + 0.5 * block.branch(x)), rtol=0, atol=0)


def test_drop_mode_sample_plain_and_batch_unchanged():
    torch.manual_seed(0)
    plain = build_model("plain20").blocks[2]
    plain.drop_mode, plain.survival_prob = "sample", 0.5
    x = torch.relu(torch.randn(300, 16, 6, 6))
    with torch.no_grad():
        out = plain(x)
    dropped = (out == plain.shortcut(x)).flatten(1).all(1)
    assert 100 < dropped.sum().item() < 200
    block = build_model("resnet20").blocks[2]
    block.survival_prob = 0.5
    torch.manual_seed(3)
    outs = [block(x[:4]) for _ in range(20)]
    whole = [torch.equal(o, block.shortcut(x[:4])) for o in outs]
    assert any(whole) and not all(whole)  # batch mode: whole batch dropped or kept
    assert isinstance(block, Block) and "drop_mode" not in repr(block)


@pytest.mark.parametrize("name", ["plain", "resnet"])
def test_linear_activation_net_is_exactly_linear_with_relu_parameter_count(name):
    """activation="linear" (Balduzzi et al. Fig. 6 baseline): every ReLU is the identity, so in eval
    mode (BN affine) f(a x + b y) - f(0) = a (f(x) - f(0)) + b (f(y) - f(0)); same parameters as ReLU."""
    torch.manual_seed(0)
    lin = build_model(name, depth=14, activation="linear", num_classes=10, in_channels=1).double().eval()
    relu = build_model(name, depth=14, num_classes=10, in_channels=1)
    assert count_params(lin) == count_params(relu)
    for m in lin.modules():  # non-trivial BN statistics, so the affine offsets are exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x, y = torch.randn(2, 1, 8, 8, dtype=torch.float64), torch.randn(2, 1, 8, 8, dtype=torch.float64)
    f0 = lin(torch.zeros_like(x))
    with torch.no_grad():
        torch.testing.assert_close(lin(2 * x - 3 * y) - f0, 2 * (lin(x) - f0) - 3 * (lin(y) - f0))
    nonlinear = build_model(name, depth=14, num_classes=10, in_channels=1).double().eval()
    with torch.no_grad():
        g0 = nonlinear(torch.zeros_like(x))
        assert not torch.allclose(nonlinear(2 * x - 3 * y) - g0, 2 * (nonlinear(x) - g0) - 3 * (nonlinear(y) - g0))
