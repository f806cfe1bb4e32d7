"""gradient_flow, responses, jacobian, orthonormality: each against a brute-force reference on a
tiny model (as every diagnostic is)."""
from collections import OrderedDict
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from depthlab.diagnostics import gradient_flow as gf
from depthlab.diagnostics import jacobian as jc
from depthlab.diagnostics import orthonormality as on
from depthlab.diagnostics import responses as rs
from depthlab.diagnostics.registry import DIAGNOSTICS
from depthlab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name="resnet", seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(name, depth=8, width=4, in_channels=1, **kw)


def tiny_data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return SimpleNamespace(train_x=x, train_y=y, test_x=x.clone(), test_y=y.clone(), num_classes=10)


def bn_batch_stats_mode(model):
    """The gradient_flow mode: eval everywhere, BN on batch statistics."""
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


# --- gradient_flow ------------------------------------------------------------------------------

def test_weight_grad_norms_match_per_parameter_autograd():
    model, data = tiny(), tiny_data()
    flow = gf.gradient_flow(model, data.train_x, data.train_y)
    bn_batch_stats_mode(model)
    loss = F.cross_entropy(model(data.train_x), data.train_y)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    tap_names = {id(m): n for n, m in model.taps().items()}  # taps are named as taps, the rest by path
    assert flow.layers == [tap_names.get(id(m), n) for n, m in layers] and flow.layers[-1] == "head.fc"
    assert "stage1.block1.conv1" in flow.layers
    ref = [torch.autograd.grad(loss, m.weight, retain_graph=True)[0].norm().item() for _, m in layers]
    assert flow.weight_grad_norm == pytest.approx(ref, rel=1e-5, abs=1e-8)
    assert flow.loss == pytest.approx(loss.item(), rel=1e-6)
    assert flow.weight_grad_rms[0] == pytest.approx(ref[0] / layers[0][1].weight.numel() ** 0.5, rel=1e-5)
    assert flow.weight_grad_ratio == pytest.approx(ref[0] / ref[-1], rel=1e-4)


def test_error_norms_at_taps_match_autograd_grad():
    model, data = tiny(), tiny_data()
    flow = gf.gradient_flow(model, data.train_x, data.train_y)
    taps = model.taps()
    assert flow.taps == list(taps) and flow.taps[0] == "stem.conv" and flow.taps[-1].endswith(".sum")
    bn_batch_stats_mode(model)
    outs = OrderedDict()
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: outs.__setitem__(n, o)) for n, m in taps.items()]
    try:
        loss = F.cross_entropy(model(data.train_x), data.train_y)
    finally:
        for h in handles:
            h.remove()
    grads = torch.autograd.grad(loss, list(outs.values()))
    ref = [g.norm().item() for g in grads]
    assert flow.error_norm == pytest.approx(ref, rel=1e-5, abs=1e-8)
    rms = [g.norm().item() / g.numel() ** 0.5 for g in grads]
    assert flow.error_rms == pytest.approx(rms, rel=1e-5)
    assert flow.error_ratio == pytest.approx(rms[0] / rms[-1], rel=1e-4)


def test_gradient_flow_restores_model_state():
    model, data = tiny(), tiny_data()
    model.train()
    model.blocks[0].eval()                        # a mixed mode must come back as it was
    model.stem.conv.weight.requires_grad_(False)  # a frozen weight is still measured
    fc = model.head.fc.weight
    fc.grad = torch.full_like(fc, 3.0)
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    flow = gf.gradient_flow(model, data.train_x, data.train_y)
    assert flow.weight_grad_norm[0] > 0
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())
    assert torch.equal(fc.grad, torch.full_like(fc, 3.0))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "head.fc.weight")
    assert hooks_left(model) == 0


def test_gradient_flow_records_and_registry():
    model, data = tiny(), tiny_data()
    records = DIAGNOSTICS.get("gradient_flow")(model, data, batch_size=4)
    names = {r["name"] for r in records}
    assert names == {"loss", "weight_grad_norm", "weight_grad_rms", "error_norm", "error_rms",
                     "error_rms_first_last_ratio", "weight_grad_first_last_ratio"}
    assert all(r["quantity"] == "gradient_flow" and isinstance(r["value"], float) for r in records)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert sum(r["name"] == "weight_grad_norm" for r in records) == n_layers
    assert sum(r["name"] == "error_norm" for r in records) == len(model.taps())


def test_gradient_flow_needs_the_model_contract():
    with pytest.raises(ValueError, match="taps"):
        gf.gradient_flow(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), torch.randn(2, 1, 8, 8),
                         torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Conv2d or Linear"):
        gf.parametric_layers(nn.Sequential(nn.ReLU()))


def test_plain_net_error_ratio_far_above_resnet_at_init():
    """He et al.'s degradation at init, digits-like input: the backward error of plain56 grows
    ~10^3-10^4x from last tap to first, resnet56's only ~30-40x (measured over seeds 0-2: plain
    6.6e3-9e3, resnet 31-42). Assert a 20x margin."""
    data = tiny_data(n=32)
    ratios = {}
    for name in ("plain56", "resnet56"):
        torch.manual_seed(0)
        model = build_model(name, in_channels=1, num_classes=10)
        ratios[name] = gf.gradient_flow(model, data.train_x, data.train_y).error_ratio
    assert ratios["plain56"] > 20 * ratios["resnet56"], ratios


def test_tracker_reads_grad_norms_every_step():
    model, data = tiny(), tiny_data()
    with gf.GradientFlowTracker(model) as tracker:
        assert tracker.attached
        for step in range(2):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(data.train_x[step * 4:(step + 1) * 4]), data.train_y[:4]).backward()
            norms = tracker.step()
            ref = [m.weight.grad.norm() for _, m in gf.parametric_layers(model)]
            torch.testing.assert_close(norms, torch.stack(ref), rtol=1e-6, atol=0)
        assert tracker.history().shape == (2, len(tracker.names))
        model.head.fc.weight.grad = None  # an unused layer reads 0
        assert tracker.read()[-1].item() == 0.0
    assert not tracker.attached
    with pytest.raises(RuntimeError, match="attach"):
        tracker.read()


# --- responses ----------------------------------------------------------------------------------

def test_responses_match_manual_forward_to_branch_bn():
    model, data = tiny(), tiny_data()
    for m in model.modules():  # non-trivial running statistics so eval-mode BN is not the identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.train()
    result = rs.responses(model, data.test_x)
    assert model.training and hooks_left(model) == 0
    model.eval()
    ref = []
    with torch.no_grad():
        h = model.stem(data.test_x)
        for block in model.blocks:
            b = block.branch
            z = b.bn2(b.conv2(b.relu1(b.bn1(b.conv1(h)))))  # post-act branch up to its last BN
            ref.append(z.std(correction=0).item())
            h = block(h)
    assert result.std == pytest.approx(ref, rel=1e-5)
    assert result.blocks == model.block_names and set(result.bn) == {"branch.bn2"}


def test_responses_one_record_per_bn_block_and_errors():
    model, data = tiny(), tiny_data()
    records = DIAGNOSTICS.get("responses")(model, data, batch_size=4)
    assert len(records) == len(model.blocks) == 3  # every block of the tiny resnet bears BN
    assert [r["layer"] for r in records] == model.block_names
    model.blocks[0].branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1))  # a BN-less block is skipped
    assert [r["layer"] for r in rs.compute(model, data, batch_size=4)] == ["stage2.block1", "stage3.block1"]
    for block in model.blocks:
        block.branch = nn.Sequential(nn.Identity())
    with pytest.raises(ValueError, match="BatchNorm2d"):
        rs.compute(model, data)
    with pytest.raises(ValueError, match="blocks"):
        rs.compute(nn.Linear(2, 2), data)


# --- jacobian -----------------------------------------------------------------------------------

def dense_jacobian(model, x):
    """Column by column: J[:, j] = d logits / d x_j via one reverse pass per logit."""
    xi = x.clone().requires_grad_(True)
    out = model(xi.unsqueeze(0)).squeeze(0)
    rows = [torch.autograd.grad(out[k], xi, retain_graph=True)[0].reshape(-1) for k in range(out.numel())]
    return torch.stack(rows)


def test_exact_jacobian_singular_values_match_dense_reference():
    model, data = tiny(), tiny_data()
    model.train()
    spec = jc.jacobian_spectrum(model, data.test_x[:2])
    assert spec.method == "exact" and model.training
    model.eval()
    for i in range(2):
        s = torch.linalg.svdvals(dense_jacobian(model, data.test_x[i]).double())
        assert spec.singular_values[i] == pytest.approx(s.tolist(), rel=1e-4, abs=1e-7)
        assert spec.mean_squared_singular_value[i] == pytest.approx(s.pow(2).mean().item(), rel=1e-4)
        assert spec.condition_number[i] == pytest.approx((s[0] / s[-1]).item(), rel=1e-3)
    assert all(p.grad is None for p in model.parameters())


def test_randomized_top_singular_value_close_to_exact():
    model, data = tiny(), tiny_data()
    exact = jc.jacobian_spectrum(model, data.test_x[:2])
    approx = jc.jacobian_spectrum(model, data.test_x[:2], exact_max=0, rank=3, oversample=2)
    assert approx.method == "randomized"
    for e, a in zip(exact.singular_values, approx.singular_values):
        assert len(a) == 3
        assert a[0] == pytest.approx(e[0], rel=0.03)


def test_jacobian_records():
    records = jc.compute(tiny(), tiny_data(), num_inputs=3)
    assert [r["name"] for r in records] == ["singular_values", "mean_squared_singular_value",
                                            "condition_number"]
    assert len(records[0]["value"]) == 3 and len(records[0]["value"][0]) == 10


# --- orthonormality -----------------------------------------------------------------------------

def test_orthonormality_zero_for_orthonormal_weights_positive_otherwise():
    model = tiny()
    records = on.compute(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert [r["layer"] for r in records] == convs
    assert all(r["value"] > 0 for r in records)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight.reshape(m.weight.shape[0], -1)
                q = torch.linalg.qr(torch.randn(w.shape[1], w.shape[0])).Q  # orthonormal columns
                m.weight.copy_(q.T.reshape(m.weight.shape))                  # -> orthonormal rows
    assert all(r["value"] == pytest.approx(0, abs=1e-5) for r in on.compute(model))
    with pytest.raises(ValueError, match="conv"):
        on.compute(nn.Linear(2, 2))


def test_float32_inside_autocast():
    model, data = tiny(), tiny_data()
    plain = gf.gradient_flow(model, data.train_x, data.train_y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = gf.gradient_flow(model, data.train_x, data.train_y)
        spec = jc.jacobian_spectrum(model, data.test_x[:1])
    assert cast.error_norm == plain.error_norm and cast.weight_grad_norm == plain.weight_grad_norm
    assert spec.singular_values == jc.jacobian_spectrum(model, data.test_x[:1]).singular_values
