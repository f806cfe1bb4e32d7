"""Error modulation: the rule ``delta <- delta RMS(ref) / RMS(delta)`` with the trainer's ``record=False``, a
loss that skips the top layer, reused layers, one-element errors, the eps boundary, half precision, and the
profile's ``nan`` where no error arrived."""
import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import assert_close, methods_cfg, tiny_resnet
from torch import nn

from depthlab.config import ConfigError
from depthlab.methods import (
    ErrorModulation,
    ModulationProfile,
)
from depthlab.training.method_hooks import TrainingMethods

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
    with pytest.raises(ConfigError, match="methods.modulation 'bottom' is not valid; use top-conv, fc, next or null"):
        methods_cfg("methods.modulation=bottom")
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match=r"methods\.modulation_epochs must be > 0"):
            methods_cfg("methods.modulation=top-conv", f"methods.modulation_epochs={bad}")
    assert methods_cfg("methods.modulation=top-conv", "methods.modulation_epochs=1").modulation_epochs == 1


class Probe(nn.Module):
    """conv1 -> conv2 -> fc with the errors arriving at each layer's output recorded (hooks run after
    the modulation's own, so they see what flows further down)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)  # fewer elements than conv1: rms and norm differ
        self.fc = nn.Linear(4, 5)
        self.seen = {}

    def forward(self, x):
        h1 = self.conv1(x)
        h2 = self.conv2(torch.relu(h1))
        out = self.fc(F.adaptive_avg_pool2d(torch.relu(h2), 1).flatten(1))
        for name, h in (("conv1", h1), ("conv2", h2), ("fc", out)):
            h.register_hook(lambda g, name=name: self.seen.__setitem__(name, g))
        return out


@pytest.mark.parametrize("reading, measure, layers, ref", [
    ("top-conv", "rms", ("conv1", "conv2"), "conv2"),
    ("next", "rms", ("conv1", "conv2"), "conv2"),  # a chain: the next conv's modulated error is the top conv's
    ("fc", "rms", ("conv1", "conv2", "fc"), "fc"),
    ("top-conv", "norm", ("conv1", "conv2"), "conv2"),
])
def test_each_reading_modulates_its_layers_to_its_reference(reading, measure, layers, ref):
    torch.manual_seed(0)
    net = Probe().double()
    x, y = torch.randn(6, 1, 6, 6, dtype=torch.float64), torch.arange(6) % 5
    methods = TrainingMethods(methods_cfg(f"methods.modulation={reading}", f"methods.modulation_measure={measure}"))
    methods.setup(net)
    mod = methods.get("modulation").modulation
    assert sorted(mod.layer_names.values()) == sorted(layers)  # the classifier is modulated only by "fc"
    F.cross_entropy(net(x), y).backward()
    methods.close()
    size = (lambda g: g.pow(2).mean().sqrt()) if measure == "rms" else (lambda g: g.pow(2).sum().sqrt())
    want = size(net.seen[ref])
    for name in ("conv1", "conv2", "fc"):
        if name in layers:
            assert size(net.seen[name]).item() == pytest.approx(want.item(), rel=1e-10), name
    assert size(net.seen["conv1"]).item() != pytest.approx(  # the other measure does not match: they differ here
        ((lambda g: g.pow(2).sum().sqrt()) if measure == "rms" else (lambda g: g.pow(2).mean().sqrt()))(
            net.seen[ref]).item(), rel=1e-3)


def test_the_measure_is_validated_in_the_class_and_the_config():
    with pytest.raises(ValueError, match="unknown measure 'l1'; valid measures: rms, norm"):
        ErrorModulation(tiny_resnet(), measure="l1")
    with pytest.raises(ConfigError, match="methods.modulation_measure 'l1' is not valid; use rms or norm"):
        methods_cfg("methods.modulation=fc", "methods.modulation_measure=l1")
