"""Properties of the training methods (depthlab/methods/) that the mutation run (docs/mutation.md)
found unchecked: each test names the rule it checks, from the module docstrings and docs/methods.md.

- stochastic depth: the paper's defaults (p_L = 0.5, per mini-batch), the linear decay for any
  block count, validation of L and p_L naming the field, and the contract with blocks from
  elsewhere (residual blocks only; a block without ``enabled`` always runs);
- orthonormality regulariser: ``lambda / 2 sum ||W W^T - I||_F^2`` and its gradient on matrices
  computed by hand, lambda's validation, the dtype of the first weight, the names of the weights;
- error modulation: the rule ``delta <- delta RMS(ref) / RMS(delta)`` with the trainer's
  ``record=False``, a loss that skips the top layer, reused layers, one-element errors, the eps
  boundary, half precision, and the profile's ``nan`` where no error arrived;
- the method registry: what switches a method on, and ``register``'s refusals.
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.config import ConfigError, RunConfig
from depthlab.methods import (
    METHODS,
    ErrorModulation,
    ModulationProfile,
    Option,
    TrainingMethod,
    all_options,
    apply_stochastic_depth,
    enabled_methods,
    expected_active_blocks,
    orthonormal_weights,
    orthonormality_penalty,
    orthonormality_per_layer,
    register,
    survival_probs,
)
from depthlab.models import build_model
from depthlab.training.methods import TrainingMethods

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread (conftest)

def tiny_resnet():
    """3 residual blocks, 4-channel stem: the smallest resnet."""
    return build_model("resnet", depth=8, width=4, in_channels=1, num_classes=10)


def methods_cfg(*overrides):
    return RunConfig().with_overrides(list(overrides)).validate().methods


def assert_close(got, want, rtol, atol=0.0):
    """``torch.testing.assert_close`` without its first-call import cost (~5 s)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape, got.dtype, want.dtype)
    assert torch.allclose(got, want, rtol=rtol, atol=atol), (got - want).abs().max()


def rms(t):
    return t.double().pow(2).mean().sqrt()


# ---------------------------------------------------------------------------------------------
# stochastic depth (Huang et al. 2016)

def test_survival_probs_default_to_the_paper_p_last_and_decay_linearly_for_any_block_count():
    assert survival_probs(4) == [0.875, 0.75, 0.625, 0.5]  # p_L = 0.5 by default, eq. 4
    assert survival_probs(1, 0.25) == [0.25]  # a single block is the last block
    assert survival_probs(2, 0.5) == [0.75, 0.5]
    assert survival_probs(3, 0.25) == [0.75, 0.5, 0.25]


@pytest.mark.parametrize("num_blocks", [0, -2, True, 2.0, "3", None])
def test_survival_probs_need_a_positive_int_block_count(num_blocks):
    with pytest.raises(ValueError, match=r"num_blocks must be a positive int"):
        survival_probs(num_blocks, 0.5)


def test_apply_defaults_to_the_paper_p_last_and_per_batch_dropping():
    model = tiny_resnet()
    for block in model.blocks:
        block.drop_mode = "sample"
    probs = apply_stochastic_depth(model)
    assert probs == [1 - 0.5 / 3, 1 - 1.0 / 3, 0.5] == [b.survival_prob for b in model.blocks]
    assert all(b.drop_mode == "batch" for b in model.blocks)


class ForeignBlock(nn.Module):
    """A residual block from outside depthlab: the contract's attributes only, no ``drop_mode``
    and no ``enabled`` (such a block always runs)."""

    def __init__(self, has_shortcut=True):
        super().__init__()
        if has_shortcut is not None:
            self.has_shortcut = has_shortcut
        self.survival_prob = 1.0


def foreign_model(*blocks):
    model = nn.Module()
    model.blocks = nn.ModuleList(blocks)
    return model


def test_blocks_from_elsewhere_take_stochastic_depth_per_batch_and_count_as_enabled():
    model = foreign_model(ForeignBlock(), ForeignBlock())
    assert apply_stochastic_depth(model, 0.5, mode="batch") == [0.75, 0.5]
    assert [b.survival_prob for b in model.blocks] == [0.75, 0.5]
    assert not any(hasattr(b, "drop_mode") for b in model.blocks)  # not given one
    assert expected_active_blocks(model) == 1.25  # no ``enabled`` attribute: the block runs
    one = foreign_model(ForeignBlock())  # one block: the smallest valid model
    assert apply_stochastic_depth(one, 0.25) == [0.25] and expected_active_blocks(one) == 0.25


@pytest.mark.parametrize("has_shortcut", [False, None])
def test_blocks_without_a_shortcut_are_refused_before_anything_changes(has_shortcut):
    model = foreign_model(ForeignBlock(), ForeignBlock(has_shortcut))
    with pytest.raises(ValueError, match=r"needs residual blocks .*blocks \[1\]"):
        apply_stochastic_depth(model, 0.5)
    assert [b.survival_prob for b in model.blocks] == [1.0, 1.0]


def test_a_model_without_blocks_or_with_none_is_refused():
    for model in (foreign_model(), nn.Linear(2, 2)):
        with pytest.raises(ValueError, match="no non-empty 'blocks' ModuleList"):
            apply_stochastic_depth(model, 0.5)
        with pytest.raises(ValueError, match="no non-empty 'blocks' ModuleList"):
            expected_active_blocks(model)


def test_stochastic_depth_options_are_validated_naming_the_field_and_the_valid_values():
    assert methods_cfg("methods.stochastic_depth=1.0").stochastic_depth == 1.0  # p_L = 1: the plain ResNet
    assert methods_cfg("methods.stochastic_depth=0.01").stochastic_depth == 0.01
    for bad in ("0", "-0.5", "1.5", "2"):
        with pytest.raises(ConfigError, match=r"methods\.stochastic_depth \(p_L\) must be in \(0, 1\]"):
            methods_cfg(f"methods.stochastic_depth={bad}")
    with pytest.raises(ConfigError, match="methods.stochastic_depth_mode 'layer' is not valid; use batch or sample"):
        methods_cfg("methods.stochastic_depth=0.5", "methods.stochastic_depth_mode=layer")


def test_the_method_applies_the_configured_p_last_and_mode_to_the_model():
    cfg = methods_cfg("methods.stochastic_depth=0.8", "methods.stochastic_depth_mode=sample")
    methods = TrainingMethods(cfg)
    assert methods.skips_parameters  # a dropped branch gets no gradient: DDP must look for unused ones
    model = tiny_resnet()
    methods.configure(model)
    assert [b.survival_prob for b in model.blocks] == survival_probs(3, 0.8)
    assert all(b.drop_mode == "sample" for b in model.blocks)


# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# backward error modulation (Xie et al. 2017; rule unverified)

class Chain(nn.Module):
    """conv1 -> conv2 -> fc; ``forward`` returns the logits and conv2's output."""

    def __init__(self, out=5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, out)

    def forward(self, x):
        h1 = self.conv1(x)
        h2 = self.conv2(torch.relu(h1))
        return self.fc(F.adaptive_avg_pool2d(torch.relu(h2), 1).flatten(1)), h2


def chain(seed, dtype=torch.float64, out=5, batch=3):
    torch.manual_seed(seed)
    return Chain(out).to(dtype), torch.randn(batch, 1, 5, 5, dtype=dtype)


def weight_grads(net, loss_fn, x, modulation=None):
    net.zero_grad()
    if modulation is None:
        loss_fn(*net(x)).backward()
    else:
        with modulation:
            loss_fn(*net(x)).backward()
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def logits_loss(logits, h2):
    return logits.square().sum()


@pytest.mark.parametrize("reference", ["top", "next"])
def test_modulation_without_recording_still_rescales_each_error_to_the_top_rms(reference):
    """The trainer modulates with ``record=False``: the gradients are those of ``record=True``
    (each layer's weight gradient times RMS(top error) / RMS(its error), in a chain)."""
    net, x = chain(0)
    probe = ErrorModulation(net, active=False)  # records, changes nothing
    plain = weight_grads(net, logits_loss, x, probe)
    prof = probe.last_profile.to_floats()
    assert prof["names"] == ["conv1", "conv2", "fc"] and prof["after"] == prof["before"]
    recorded = weight_grads(net, logits_loss, x, ErrorModulation(net, reference=reference))
    silent = ErrorModulation(net, reference=reference, record=False)
    unrecorded = weight_grads(net, logits_loss, x, silent)
    assert all(v is None for v in silent.last_profile.before)
    for layer, rms_l in zip(prof["names"], prof["before"]):
        factor = prof["before"][-1] / rms_l
        assert factor != pytest.approx(1.0, rel=1e-3) or layer == "fc"
        for kind in ("weight", "bias"):
            name = f"{layer}.{kind}"
            assert_close(recorded[name], plain[name] * factor, rtol=1e-10, atol=0)
            assert torch.equal(unrecorded[name], recorded[name])


def test_a_loss_that_skips_the_top_layer():
    """The loss reads conv2's output only: fc, the top layer, gets no error. ``top`` refuses
    (naming both layers); ``next`` makes conv2 its own reference (unchanged) and rescales conv1 to
    RMS(conv2's error); the profile has ``nan`` for fc."""
    net, x = chain(1)
    loss_fn = lambda logits, h2: h2.pow(3).sum()  # noqa: E731
    with pytest.raises(RuntimeError, match="layer 'conv2' received its error before the top layer 'fc'"):
        weight_grads(net, loss_fn, x, ErrorModulation(net, reference="top"))
    probe = ErrorModulation(net, active=False)
    plain = weight_grads(net, loss_fn, x, probe)
    prof = probe.last_profile.to_floats()
    assert prof["names"] == ["conv1", "conv2", "fc"] and math.isnan(prof["before"][2])
    mod = ErrorModulation(net, reference="next")
    got = weight_grads(net, loss_fn, x, mod)
    after = mod.last_profile.to_floats()
    assert math.isnan(after["before"][2]) and math.isnan(after["after"][2])
    assert after["after"][0] == pytest.approx(after["before"][1], rel=1e-12)
    factor = prof["before"][1] / prof["before"][0]
    for kind in ("weight", "bias"):
        assert torch.equal(got[f"conv2.{kind}"], plain[f"conv2.{kind}"])
        assert_close(got[f"conv1.{kind}"], plain[f"conv1.{kind}"] * factor, rtol=1e-10, atol=0)
    assert "fc.weight" not in got


def test_profile_to_floats_puts_nan_where_no_error_arrived():
    one, two = torch.tensor(1.5), torch.tensor(2.5, dtype=torch.float64)
    prof = ModulationProfile(names=["a", "b", "c"], before=[one, None, two], after=[None, None, None])
    floats = prof.to_floats()
    assert floats["names"] == ["a", "b", "c"] and floats["before"][0::2] == [1.5, 2.5]
    assert math.isnan(floats["before"][1]) and all(math.isnan(v) for v in floats["after"])
    assert ModulationProfile().to_floats() == {"names": [], "before": [], "after": []}


class Reuse(nn.Module):
    """One conv applied twice (a reused layer), then a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        h = self.conv(torch.relu(self.conv(x)))
        return self.fc(h.mean(dim=(2, 3)))


def test_a_reused_layer_is_modulated_at_each_use_and_named_by_use():
    torch.manual_seed(2)
    net = Reuse().double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    mod = ErrorModulation(net)
    with mod:
        net(x).square().sum().backward()
    prof = mod.last_profile.to_floats()
    assert prof["names"] == ["conv", "conv#1", "fc"]  # forward order; a second use gets its index
    assert prof["after"][0] == pytest.approx(prof["before"][2], rel=1e-12)
    assert prof["after"][1] == pytest.approx(prof["before"][2], rel=1e-12)


def test_layer_names_for_a_bare_layer_and_for_layers_outside_the_model():
    torch.manual_seed(3)
    lin = nn.Linear(3, 2).double()
    mod = ErrorModulation(lin)
    with mod:
        lin(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    assert mod.last_profile.names == ["Linear"]  # the model itself: its class name
    outside = [nn.Linear(3, 3).double(), nn.Linear(3, 2).double()]
    model = nn.Module()
    model.forward = lambda x: outside[1](torch.tanh(outside[0](x)))
    mod = ErrorModulation(model, layers=outside)
    with mod:
        model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    assert mod.last_profile.names == ["layer0", "layer1"]  # not submodules of the model: by position
    with pytest.raises(ValueError, match="no parametric layers"):
        ErrorModulation(nn.Sequential(nn.ReLU()))


def test_layers_called_outside_the_models_forward_are_modulated_too():
    """A pass starts at the model's forward; a layer called on its own (before any forward, or
    after a detach) starts one itself."""
    net, x = chain(4)
    mod = ErrorModulation(net, layers=[net.conv1, net.conv2])
    for _ in range(2):
        mod.attach()
        h2 = net.conv2(net.conv1(x))
        h2.pow(2).sum().backward()
        mod.detach()
        prof = mod.last_profile.to_floats()
        assert prof["names"] == ["conv1", "conv2"]
        assert prof["after"][0] == pytest.approx(prof["before"][1], rel=1e-12) != prof["before"][0]
    with pytest.raises(RuntimeError, match="already attached"):
        mod.attach().attach()
    mod.detach()


def test_rms_of_a_one_element_error_is_its_absolute_value():
    """RMS(t) = sqrt(mean(t^2)): one sample, one output, loss = 3 * output: the top error is 3."""
    net, x = chain(5, out=1, batch=1)
    probe = ErrorModulation(net, active=False)
    loss_fn = lambda logits, h2: 3.0 * logits.sum()  # noqa: E731
    plain = weight_grads(net, loss_fn, x, probe)
    prof = probe.last_profile.to_floats()
    assert prof["before"][2] == 3.0
    mod = ErrorModulation(net)
    got = weight_grads(net, loss_fn, x, mod)
    assert mod.last_profile.to_floats()["after"][:2] == pytest.approx([3.0, 3.0], rel=1e-12)
    assert_close(got["conv1.weight"], plain["conv1.weight"] * (3.0 / prof["before"][0]),
                               rtol=1e-10, atol=0)


@pytest.mark.parametrize("reference", ["top", "next"])
def test_an_error_with_rms_at_most_eps_is_left_unchanged(reference):
    """eps = conv2's error RMS: conv2's error is left unchanged, and with ``next`` that unchanged
    RMS is conv1's reference (with ``top`` it is still the fc's)."""
    net, x = chain(6)
    with torch.no_grad():
        net.conv2.weight.mul_(20.0)  # conv1's error RMS above conv2's, so above eps
    probe = ErrorModulation(net, active=False)
    plain = weight_grads(net, logits_loss, x, probe)
    before = probe.last_profile.before  # float64 0-dim tensors
    assert before[0] > before[1]
    mod = ErrorModulation(net, reference=reference, eps=float(before[1]))  # conv2's RMS is exactly eps
    got = weight_grads(net, logits_loss, x, mod)
    assert torch.equal(got["conv2.weight"], plain["conv2.weight"])
    assert mod.last_profile.after[1] == before[1]
    ref = before[2] if reference == "top" else before[1]
    assert_close(got["conv1.weight"], plain["conv1.weight"] * (ref / before[0]), rtol=1e-10)
    small = ErrorModulation(net, reference=reference, eps=float(before[1]) * (1 - 1e-9))  # just below: rescaled
    got = weight_grads(net, logits_loss, x, small)
    assert_close(got["conv2.weight"], plain["conv2.weight"] * (before[2] / before[1]), rtol=1e-10)
    assert_close(got["conv1.weight"], plain["conv1.weight"] * (before[2] / before[0]), rtol=1e-10)


def test_the_default_eps_only_spares_zero_errors():
    """With the default eps (1e-30) a tiny but nonzero error is still rescaled."""
    net, x = chain(7)
    tiny = lambda logits, h2: 1e-12 * logits.square().sum()  # noqa: E731
    probe = ErrorModulation(net, active=False)
    plain = weight_grads(net, tiny, x, probe)
    before = probe.last_profile.to_floats()["before"]
    assert max(before) < 1e-9
    got = weight_grads(net, tiny, x, ErrorModulation(net))
    assert_close(got["conv1.weight"], plain["conv1.weight"] * (before[2] / before[0]),
                               rtol=1e-10, atol=0)


def test_half_precision_errors_are_measured_in_float32():
    """Profile entries are float32 for bfloat16 errors (float64 for float64 ones) and the
    rescaled gradient keeps the layer's dtype."""
    net, x = chain(8, dtype=torch.bfloat16)
    mod = ErrorModulation(net)
    grads = weight_grads(net, logits_loss, x, mod)
    assert all(v.dtype == torch.float32 for v in mod.last_profile.before + mod.last_profile.after)
    assert all(g.dtype == torch.bfloat16 and torch.isfinite(g).all() for g in grads.values())
    after = mod.last_profile.to_floats()["after"]
    assert max(after) / min(after) - 1 < 1e-2  # flat up to bfloat16 rounding of the scale
    net64, x64 = chain(8)
    mod = ErrorModulation(net64)
    weight_grads(net64, logits_loss, x64, mod)
    assert all(v.dtype == torch.float64 for v in mod.last_profile.before)


def test_the_modulation_option_picks_the_reference_and_the_epochs():
    model = tiny_resnet()
    methods = TrainingMethods(methods_cfg("methods.modulation=next", "methods.modulation_epochs=2"))
    methods.setup(model)
    mod = methods.get("modulation").modulation
    assert mod.reference == "next" and mod.attached and mod.active and mod.model is model
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(v is None for v in mod.last_profile.before)  # training keeps no profile (record=False)
    assert [(methods.start_epoch(e), mod.active)[1] for e in range(4)] == [True, True, False, False]
    methods.close()
    assert not mod.attached
    with pytest.raises(ConfigError, match="methods.modulation 'bottom' is not valid; use top, next or null"):
        methods_cfg("methods.modulation=bottom")
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match=r"methods\.modulation_epochs must be > 0"):
            methods_cfg("methods.modulation=top", f"methods.modulation_epochs={bad}")
    assert methods_cfg("methods.modulation=top", "methods.modulation_epochs=1").modulation_epochs == 1


# ---------------------------------------------------------------------------------------------
# the method registry (depthlab.methods.base)

def test_any_value_but_none_zero_or_false_switches_a_method_on():
    clip = METHODS.get("clip_grad_norm")
    for on in (1, 1.0, 0.5, True, "top"):
        assert clip.enabled(SimpleNamespace(clip_grad_norm=on)), on
    for off in (None, 0, 0.0, False):
        assert not clip.enabled(SimpleNamespace(clip_grad_norm=off)), off
    cfg = methods_cfg("methods.stochastic_depth=1.0", "methods.clip_grad_norm=1")
    assert [m.name for m in enabled_methods(cfg)] == [n for n in METHODS if n in ("stochastic_depth", "clip_grad_norm")]
    assert methods_cfg("methods.clip_grad_norm=0.5").clip_grad_norm == 0.5  # > 0 is enough


@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test methods into a copy of ``METHODS``, dropped after the test."""
    monkeypatch.setattr(METHODS, "_items", dict(METHODS._items))
    monkeypatch.setattr(METHODS, "_meta", dict(METHODS._meta))


def test_register_adds_a_method_with_new_options_and_refuses_the_rest(scratch_registry):
    class Silent(TrainingMethod):
        name = "silent"

    with pytest.raises(ValueError, match="training method 'silent' declares no options"):
        register(Silent)

    class Clash(TrainingMethod):
        name = "clash"
        options = {"fresh_key": Option(int, None), "orthonormal": Option(float, 0.0)}

    with pytest.raises(ValueError, match=r"method 'clash': options \['orthonormal'\] are already 'orthonormal''s"):
        register(Clash)
    assert "silent" not in METHODS and "clash" not in METHODS

    class Fresh(TrainingMethod):
        name = "fresh"
        options = {"fresh_level": Option(int, None), "fresh_mode": Option(str, "a")}

    assert register(Fresh) is Fresh and METHODS.get("fresh") is Fresh and Fresh.switch() == "fresh_level"
    options = all_options()
    assert all(options[k] is Fresh.options[k] for k in ("fresh_level", "fresh_mode"))
    cfg = SimpleNamespace(**{k: o.default for k, o in options.items()})
    assert enabled_methods(cfg) == []
    cfg.fresh_level = 3
    assert enabled_methods(cfg) == [Fresh]
    assert Fresh(cfg).cfg is cfg
