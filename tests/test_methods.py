"""depthlab.methods: stochastic depth, orthonormality regulariser, backward error modulation.
Each property is checked exactly or against a brute-force reference (docs/methods.md)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.methods import (
    ErrorModulation,
    apply_stochastic_depth,
    expected_active_blocks,
    orthonormal_weights,
    orthonormality_penalty,
    orthonormality_per_layer,
    survival_probs,
)
from depthlab.models import build_model


def tiny_resnet110():
    """54 residual blocks, 4-channel stem: cheap enough for many forward passes."""
    return build_model("resnet", depth=110, width=4, in_channels=1)


# ---------------------------------------------------------------------------------------------
# stochastic depth (Huang et al. 2016)

def test_survival_probs_linear_decay_and_paper_sum():
    probs = survival_probs(54, 0.5)
    assert len(probs) == 54 and probs[-1] == 0.5 and probs[0] == 1 - 0.5 / 54
    assert math.fsum(probs) == 40.25  # (3L - 1) / 4, Huang et al. Sec. 3
    for L in (1, 9, 18, 27, 600):
        assert math.fsum(survival_probs(L)) == (3 * L - 1) / 4
    assert survival_probs(5, 1.0) == [1.0] * 5
    assert survival_probs(4, 0.2) == pytest.approx([0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize("p_last", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_survival_probs_rejects_bad_p_last(p_last):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        survival_probs(10, p_last)


def test_apply_sets_every_block_and_expected_active():
    model = tiny_resnet110()
    assert len(model.blocks) == 54
    probs = apply_stochastic_depth(model, 0.5)
    assert [b.survival_prob for b in model.blocks] == probs == survival_probs(54, 0.5)
    assert expected_active_blocks(model) == 40.25
    model.blocks[0].enabled = False  # a lesioned block never runs
    assert expected_active_blocks(model) == 40.25 - probs[0]


def test_apply_validates_before_changing_anything():
    model = tiny_resnet110()
    with pytest.raises(ValueError, match="batch, sample"):
        apply_stochastic_depth(model, 0.5, mode="layer")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        apply_stochastic_depth(model, 0.0)
    with pytest.raises(ValueError, match="residual blocks"):
        apply_stochastic_depth(build_model("plain", depth=20, width=4), 0.5)
    with pytest.raises(ValueError, match="blocks"):
        apply_stochastic_depth(nn.Linear(2, 2), 0.5)
    assert all(b.survival_prob == 1.0 for b in model.blocks)


def test_mean_active_blocks_matches_sum_of_survival_probs():
    """Count branches that actually ran (forward hooks on each branch) over N training passes.
    The count is a sum of independent Bernoullis: variance sum p(1 - p), so the mean over N
    passes has standard error sqrt(sum p(1 - p) / N); allow 5 of them (seeded, so not flaky)."""
    torch.manual_seed(0)
    model = tiny_resnet110().train()
    probs = apply_stochastic_depth(model, 0.5)
    ran = [0]
    for block in model.blocks:
        block.branch.register_forward_hook(lambda *_: ran.__setitem__(0, ran[0] + 1))
    x = torch.randn(2, 1, 8, 8)
    n = 150
    with torch.no_grad():
        for _ in range(n):
            model(x)
    se = math.sqrt(sum(p * (1 - p) for p in probs) / n)
    assert abs(ran[0] / n - 40.25) < 5 * se, (ran[0] / n, se)
    assert ran[0] < 54 * n  # some blocks were dropped (and their branch not computed)


def test_eval_is_deterministic_and_scales_branch_by_p():
    torch.manual_seed(1)
    model = tiny_resnet110()
    apply_stochastic_depth(model, 0.5)
    model.eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        for i in (1, 18):  # identity shortcut; stride-2 option-A shortcut
            block = model.blocks[i]
            h = torch.randn(2, block.branch.conv1.in_channels, 8, 8)
            expected = block.post(block.shortcut(h) + block.survival_prob * block.branch(h))
            assert block.survival_prob < 1
            torch.testing.assert_close(block(h), expected, rtol=0, atol=1e-6)


def test_p_last_one_equals_the_plain_resnet_in_train_mode():
    torch.manual_seed(2)
    base = tiny_resnet110().train()
    sd = copy.deepcopy(base)
    assert apply_stochastic_depth(sd, 1.0) == [1.0] * 54
    x = torch.randn(2, 1, 8, 8)
    torch.manual_seed(3)
    out_base = base(x)
    torch.manual_seed(3)
    out_sd = sd(x)
    assert torch.equal(out_base, out_sd)


def test_sample_mode_sets_drop_mode_and_needs_blocks_that_have_it():
    class NoDropMode(torch.nn.Module):  # a residual block from elsewhere, without per-sample dropping
        has_shortcut, survival_prob = True, 1.0

    foreign = torch.nn.Module()
    foreign.blocks = torch.nn.ModuleList([NoDropMode()])
    with pytest.raises(ValueError, match="drop_mode"):
        apply_stochastic_depth(foreign, 0.5, mode="sample")
    model = tiny_resnet110()
    apply_stochastic_depth(model, 0.5, mode="sample")
    assert all(b.drop_mode == "sample" for b in model.blocks)
    out = model.train()(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    apply_stochastic_depth(model, 0.5, mode="batch")
    assert all(b.drop_mode == "batch" for b in model.blocks)


# ---------------------------------------------------------------------------------------------
# orthonormality regulariser (Xie et al. 2017)

def orthonormal_conv(c_out, c_in, k, generator):
    """Orthonormal rows (wide: C_out <= C_in k k) or orthonormal columns (tall) via QR."""
    rows, cols = c_out, c_in * k * k
    q, _ = torch.linalg.qr(torch.randn(max(rows, cols), min(rows, cols), dtype=torch.float64,
                                       generator=generator))
    mat = q.T if rows <= cols else q  # (rows, cols)
    return mat.reshape(c_out, c_in, k, k)


def brute_force_penalty(weights, lam):
    """lam/2 sum ||G - I||_F^2 with every Gram entry a separate dot product."""
    total = 0
    for w in weights:
        m = w.reshape(w.shape[0], -1)
        vecs = m if m.shape[0] <= m.shape[1] else m.T  # rows (wide) or columns (tall)
        n = vecs.shape[0]
        for i in range(n):
            for j in range(n):
                total = total + ((vecs[i] * vecs[j]).sum() - (1.0 if i == j else 0.0)) ** 2
    return lam / 2 * total


@pytest.mark.parametrize("shape", [(4, 2, 3), (6, 6, 1), (20, 1, 3), (5, 1, 1)])
def test_penalty_zero_for_orthonormal_filters(shape):
    g = torch.Generator().manual_seed(0)
    w = orthonormal_conv(*shape, g)
    assert orthonormality_penalty([w], lam=3.0).abs() < 1e-10
    assert orthonormality_per_layer([("w", w)])["w"] < 1e-7


def test_penalty_gradient_matches_brute_force_and_closed_form():
    g = torch.Generator().manual_seed(1)
    wide = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=g).requires_grad_()   # 4 <= 18
    tall = torch.randn(12, 1, 3, 3, dtype=torch.float64, generator=g).requires_grad_()  # 12 > 9
    wide2 = torch.randn(4, 2, 3, 3, dtype=torch.float64, generator=g).requires_grad_()  # same group
    lam = 0.3
    weights = [wide, tall, wide2]
    value = orthonormality_penalty(weights, lam)
    grads = torch.autograd.grad(value, weights)
    ref = brute_force_penalty(weights, lam)
    ref_grads = torch.autograd.grad(ref, weights)
    torch.testing.assert_close(value, ref, rtol=1e-12, atol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        for w, got in ((wide, grads[0]), (wide2, grads[2])):
            m = w.reshape(4, -1)
            closed = 2 * lam * (m @ m.T - torch.eye(4, dtype=m.dtype)) @ m
            torch.testing.assert_close(got, closed.reshape(w.shape), rtol=1e-10, atol=1e-12)
        m = tall.reshape(12, -1)
        closed = 2 * lam * m @ (m.T @ m - torch.eye(9, dtype=m.dtype))
        torch.testing.assert_close(grads[1], closed.reshape(tall.shape), rtol=1e-10, atol=1e-12)


def test_penalty_on_a_model_and_per_layer_diagnostics():
    torch.manual_seed(4)
    model = build_model("resnet", depth=20, width=4, in_channels=1).double()
    named = orthonormal_weights(model)
    assert named[0][0] == "stem.conv.weight" and len(named) == 19  # stem + 18 branch convs
    assert all(isinstance(m, nn.Conv2d) for n, m in model.named_modules()
               if f"{n}.weight" in dict(named))
    with_fc = orthonormal_weights(model, include_linear=True)
    assert with_fc[-1][0] == "head.fc.weight" and len(with_fc) == 20
    value = orthonormality_penalty(model, 1e-2)
    assert value.item() > 0 and value.dtype == torch.float64
    torch.testing.assert_close(value, brute_force_penalty([w for _, w in named], 1e-2), rtol=1e-10, atol=0)
    assert orthonormality_penalty(model, 0.0).item() == 0.0
    per_layer = orthonormality_per_layer(model)
    assert list(per_layer) == [n for n, _ in named]
    with torch.no_grad():
        for name, w in named:
            m = w.reshape(w.shape[0], -1)
            gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
            expected = torch.linalg.norm(gram - torch.eye(len(gram), dtype=m.dtype)).item()
            assert per_layer[name] == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="lam"):
        orthonormality_penalty(model, -1.0)


# ---------------------------------------------------------------------------------------------
# backward error modulation (Xie et al. 2017; rule unverified)

class TinyConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def parts(self, x):
        h1 = self.conv1(x)
        h2 = self.conv2(torch.relu(h1))
        h3 = self.fc(F.adaptive_avg_pool2d(torch.relu(h2), 1).flatten(1))
        return h1, h2, h3

    def forward(self, x):
        return self.parts(x)[-1]


def rms(t):
    return t.pow(2).mean().sqrt()


def tiny_setup(seed=5, batch=3):
    torch.manual_seed(seed)
    net = TinyConvNet().double()
    x = torch.randn(batch, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 5, (batch,))
    return net, x, y


def grads_of(net, x, y, modulation=None):
    net.zero_grad()
    if modulation is None:
        F.cross_entropy(net(x), y).backward()
    else:
        with modulation:
            F.cross_entropy(net(x), y).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters()}


def test_modulation_matches_manual_layer_by_layer_rescaling():
    net, x, y = tiny_setup()
    got = grads_of(net, x, y, ErrorModulation(net, reference="top"))
    # brute force: walk backward one layer at a time with torch.autograd.grad
    h1, h2, h3 = net.parts(x)
    loss = F.cross_entropy(h3, y)
    g3 = torch.autograd.grad(loss, h3, retain_graph=True)[0]
    ref = rms(g3)
    g2 = torch.autograd.grad(h3, h2, g3, retain_graph=True)[0]
    g2 = g2 * ref / rms(g2)
    g1 = torch.autograd.grad(h2, h1, g2, retain_graph=True)[0]
    g1 = g1 * ref / rms(g1)
    want = {}
    for h, g, layer in ((h3, g3, "fc"), (h2, g2, "conv2"), (h1, g1, "conv1")):
        mod = getattr(net, layer)
        dw, db = torch.autograd.grad(h, (mod.weight, mod.bias), g, retain_graph=True)
        want[f"{layer}.weight"], want[f"{layer}.bias"] = dw, db
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-12, atol=1e-14)
    # in a chain, reference="next" telescopes to the top layer's RMS: the same gradients
    nxt = grads_of(net, x, y, ErrorModulation(net, reference="next"))
    for name in want:
        torch.testing.assert_close(nxt[name], want[name], rtol=1e-12, atol=1e-14)


def test_each_weight_gradient_changes_by_the_expected_factor():
    """Backward is linear in the incoming error, so in a chain layer l's weight gradient is the
    unmodulated one times RMS(top error) / RMS(unmodulated error at l)."""
    for batch in (1, 4):
        net, x, y = tiny_setup(seed=6, batch=batch)
        probe = ErrorModulation(net, active=False)
        plain = grads_of(net, x, y, probe)
        before = probe.last_profile.to_floats()
        assert before["names"] == ["conv1", "conv2", "fc"]
        assert before["after"] == before["before"]
        modulated = grads_of(net, x, y, ErrorModulation(net))
        for layer, rms_l in zip(before["names"], before["before"]):
            factor = before["before"][-1] / rms_l
            for kind in ("weight", "bias"):
                name = f"{layer}.{kind}"
                torch.testing.assert_close(modulated[name], plain[name] * factor, rtol=1e-10, atol=1e-15)


def test_profile_flat_with_modulation_and_not_without_on_plain50():
    torch.manual_seed(7)
    model = build_model("plain", depth=50, in_channels=1)  # 50 = 6 * 8 + 2
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    mod = ErrorModulation(model, active=False)
    plain = grads_of(model, x, y, mod)
    off = mod.last_profile.to_floats()
    assert len(off["names"]) == 50 and off["names"][0] == "stem.conv" and off["names"][-1] == "head.fc"
    assert max(off["before"]) / min(off["before"]) > 10  # measured ~3e3 at this seed
    mod.active = True
    modulated = grads_of(model, x, y, mod)
    on = mod.last_profile.to_floats()
    assert max(on["after"]) / min(on["after"]) - 1 < 0.01
    assert on["after"][-1] == on["before"][-1] == off["before"][-1]  # the top is left unchanged
    for name, rms_l in zip(on["names"], off["before"]):  # per-layer factor; float32: relative norm
        want = plain[f"{name}.weight"] * (off["before"][-1] / rms_l)
        assert torch.linalg.norm(modulated[f"{name}.weight"] - want) <= 1e-4 * torch.linalg.norm(want), name


def test_next_reference_flat_on_a_resnet_and_zero_errors_stay_zero():
    torch.manual_seed(8)
    model = build_model("resnet", depth=20, width=4, in_channels=1)
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    mod = ErrorModulation(model, reference="next").attach()
    measured = []  # RMS of the error that really flows on: tensor hooks registered after mod's
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]

    def measure(module, args, out):  # returns None: the output is not replaced
        out.register_hook(lambda g: measured.append(rms(g).item()))
    handles = [m.register_forward_hook(measure) for m in convs]
    F.cross_entropy(model(x), y).backward()
    mod.detach()
    for h in handles:
        h.remove()
    after = mod.last_profile.to_floats()["after"]
    assert len(measured) == 20 and max(measured) / min(measured) - 1 < 1e-5
    assert sorted(measured) == pytest.approx(sorted(after), rel=1e-5)
    assert len(after) == 20 and max(after) / min(after) - 1 < 0.01
    model.zero_grad()
    with ErrorModulation(model) as mod:
        (model(x) * 0).sum().backward()  # every error is zero: no 0/0
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters() if p.grad is not None)
    assert mod.last_profile.to_floats()["after"] == [0.0] * 20


def test_detach_and_inactive_leave_autograd_untouched():
    net, x, y = tiny_setup(seed=9)
    reference = grads_of(net, x, y)
    mod = ErrorModulation(net, active=False, record=False)
    for got in (grads_of(net, x, y, mod), grads_of(net, x, y)):
        for name in reference:
            assert torch.equal(got[name], reference[name])
    mod.attach()
    mod.detach()
    assert not mod.attached and not net._forward_pre_hooks and not net.conv1._forward_hooks
    with pytest.raises(ValueError, match="top, next"):
        ErrorModulation(net, reference="bottom")
    with torch.no_grad(), ErrorModulation(net) as mod:  # nothing to hook without autograd
        net(x)
    assert mod.last_profile.names == []


def test_given_layers_only_are_modulated():
    net, x, y = tiny_setup(seed=10)
    plain = grads_of(net, x, y)
    mod = ErrorModulation(net, layers=[net.conv1, net.fc])  # conv2 is neither scaled nor a reference
    got = grads_of(net, x, y, mod)
    prof = mod.last_profile.to_floats()
    assert prof["names"] == ["conv1", "fc"]
    assert all(torch.equal(got[n], plain[n]) for n in ("fc.weight", "fc.bias", "conv2.weight", "conv2.bias"))
    factor = prof["before"][-1] / prof["before"][0]
    torch.testing.assert_close(got["conv1.weight"], plain["conv1.weight"] * factor, rtol=1e-10, atol=0)
