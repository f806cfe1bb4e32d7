"""Highway, DenseNet / DenseNet-BC and Xie et al. plain families: exact parameter counts from
independent arithmetic, the model contract (with each family's own tap names), lesion semantics,
the highway gate's identity limit, init survival of the gate bias, and option errors."""
import math

import pytest
import torch
from torch import nn

from depthlab.models import DepthNet, ModelSpec, build_model, count_params, list_models, model_summary
from depthlab.models.densenet import DenseLayer, Transition
from depthlab.models.highway import GateConv, HighwayBlock
from depthlab.models.init import INITS

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- independent arithmetic
from arith import bn, conv  # noqa: E402


def densenet_params(depth, k, bc, compression, classes=10):
    """Huang et al. 2017 CIFAR DenseNet(-BC): stem conv, 3 dense blocks, 2 transitions, BN, fc."""
    n = (depth - 4) // (6 if bc else 3)
    c = 2 * k if bc else 16
    total = conv(3, c)
    for stage in range(3):
        for _ in range(n):
            total += bn(c) + (conv(c, 4 * k, 1) + bn(4 * k) + conv(4 * k, k) if bc else conv(c, k))
            c += k
        if stage < 2:
            c_out = math.floor(compression * c)
            total += bn(c) + conv(c, c_out, 1)
            c = c_out
    return total + bn(c) + c * classes + classes


def plain_stack_params(m, gate=False, w=16, classes=10):
    """CIFAR stem conv-BN + 3 stages of m conv-BN units (+ a 3x3 gate conv with bias per unit), fc."""
    total, c = conv(3, w) + bn(w), w
    for width in (w, 2 * w, 4 * w):
        for _ in range(m):
            total += conv(c, width) + bn(width) + (conv(c, width) + width if gate else 0)
            c = width
    return total + c * classes + classes


EXPECTED = {
    "densenet40": densenet_params(40, 12, False, 1.0),
    "densenet-bc100": densenet_params(100, 12, True, 0.5),
    "densenet-bc190": densenet_params(190, 40, True, 0.5),
    "xie-plain44": plain_stack_params(14),
    "xie-plain110": plain_stack_params(36),
    "highway20": plain_stack_params(6, gate=True),
    "highway32": plain_stack_params(10, gate=True),
    "highway110": plain_stack_params(36, gate=True),
}
PAPER_MILLIONS = {"densenet40": 1.0, "densenet-bc100": 0.8, "densenet-bc190": 25.6}
OURS = [n for n in list_models() if n.startswith(("highway", "densenet", "xie-plain"))]


def test_param_counts_exact():
    assert set(OURS) == set(EXPECTED)
    assert EXPECTED["densenet40"] == 1_019_722 and EXPECTED["densenet-bc100"] == 769_162
    assert EXPECTED["densenet-bc190"] == 25_624_430
    # the same layers as He et al.'s plain44 / plain110 (= resnet44 / resnet110 counts)
    assert EXPECTED["xie-plain44"] == 658_586 and EXPECTED["xie-plain110"] == 1_727_962
    for name, count in EXPECTED.items():
        assert model_summary(name)["params"] == count, name
        if name != "densenet-bc190":
            assert count_params(build_model(name)) == count, name
    for name, millions in PAPER_MILLIONS.items():
        assert round(EXPECTED[name] / 1e6, 1) == millions


def test_depth_formulas_match_the_paper():
    assert [model_summary(n)["depth"] for n in ("densenet40", "densenet-bc100", "densenet-bc190")] == [40, 100, 190]
    assert len(build_model("densenet40").blocks) == 3 * 12 + 2
    assert len(build_model("densenet-bc100").blocks) == 3 * 16 + 2
    assert len(build_model("xie-plain44").blocks) == 42 and len(build_model("highway32").blocks) == 30


# ----------------------------------------------------------------------------- the model contract
def local_taps(block):
    if isinstance(block, HighwayBlock):
        return ["conv1", "gate", "sum"]
    if isinstance(block, DenseLayer) and hasattr(block.branch, "conv2"):
        return ["conv1", "conv2", "sum"]
    return ["conv1", "sum"]


@pytest.mark.parametrize("name", OURS)
def test_family_specific_contract(name):
    torch.manual_seed(0)
    model = build_model(name)
    spec = model.spec
    assert isinstance(model, DepthNet) and isinstance(spec, ModelSpec) and model.depth == spec.depth
    assert isinstance(model.blocks, nn.ModuleList) and len(model.blocks) == len(model.block_names)
    for block in model.blocks:
        assert isinstance(block.branch, nn.Module) and isinstance(block.shortcut, nn.Module)
        assert block.enabled is True and block.survival_prob == 1.0
        assert block.has_shortcut == (spec.residual and not isinstance(block, Transition))
        assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    taps = model.taps()
    expected = ["stem.conv"] + [f"{b}.{t}" for b, blk in zip(model.block_names, model.blocks) for t in local_taps(blk)]
    assert list(taps) == expected
    assert len(set(map(id, taps.values()))) == len(taps)
    assert sum(1 for n in taps if n.endswith(("conv", "conv1", "conv2"))) + 1 == model.depth

    # forward shapes, hook order, finiteness and gradients: test_models.py::test_model_contract


SMALL = [("highway", {"depth": 8}), ("highway", {"depth": 8, "shortcut": "B"}), ("densenet", {"depth": 10}),
         ("densenet", {"depth": 10, "bottleneck": True, "compression": 0.5, "growth_rate": 4}),
         ("xie-plain", {"depth": 8})]


@pytest.mark.parametrize("family,overrides", SMALL)
@pytest.mark.parametrize("hw", [(8, 8), (1, 40), (7, 5)])  # digits, mnist1d, odd
def test_small_odd_and_lesioned_inputs(family, overrides, hw):
    torch.manual_seed(0)
    model = build_model(family, in_channels=1, **overrides)
    x = torch.randn(3, 1, *hw)
    out = model(x)
    assert out.shape == (3, 10) and torch.isfinite(out).all()
    model.eval()
    h = model.stem(x)
    for block in model.blocks:  # a lesioned unit returns its shortcut exactly, shapes unchanged
        y = block(h)
        block.enabled = False
        assert torch.equal(block(h), block.shortcut(h)) and block(h).shape == y.shape
        block.enabled = True
        h = y
    for block in model.blocks[::2]:
        block.enabled = False
    assert torch.isfinite(model(x)).all()


# ----------------------------------------------------------------------------- highway
GENERIC_INITS = [s for s in ("kaiming", "kaiming-fan-in", "orthogonal", "xavier", "torch-default", "delta-orthogonal")
                 if s in INITS]  # schemes for any conv net (fixup / looks-linear need their own architectures)


@pytest.mark.parametrize("scheme", GENERIC_INITS)
def test_gate_bias_survives_every_init(scheme):
    model = build_model("highway", depth=8, init=scheme, gate_bias=-2.5)
    gates = [m for m in model.modules() if isinstance(m, GateConv)]
    assert len(gates) == len(model.blocks) == 6
    for g in gates:
        assert g.bias is None and torch.equal(g.gate_bias, torch.full_like(g.gate_bias, -2.5))
    assert build_model("highway20").blocks[0].branch.gate.gate_bias[0].item() == -2.0  # the default


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_very_negative_gate_bias_makes_every_layer_the_carry_path(shortcut):
    torch.manual_seed(0)
    model = build_model("highway", depth=20, gate_bias=-1e4, shortcut=shortcut).eval()
    x = torch.randn(2, 3, 8, 8)
    h = model.stem(x)
    for block in model.blocks:
        y = block(h)
        assert torch.equal(block.branch.transform_gate(h), torch.zeros_like(y))
        assert torch.equal(y, block.shortcut(h))
        if shortcut == "A" and block.shortcut.__class__ is nn.Identity:
            assert torch.equal(y, h)  # the identity on its input
        h = y
    out = model(x)
    for block in model.blocks:
        block.enabled = False
    assert torch.equal(out, model(x))


def test_highway_layer_formula_and_stochastic_depth():
    torch.manual_seed(0)
    block = build_model("highway", depth=8, gate_bias=-1.0).blocks[2].eval()  # stage 2's first: stride 2, 16 -> 32
    x = torch.relu(torch.randn(2, 16, 8, 8))
    t = torch.sigmoid(nn.functional.conv2d(x, block.branch.gate.weight, stride=2, padding=1)
                      + block.branch.gate.gate_bias.view(1, -1, 1, 1))
    h = block.branch.transform(x)
    c = block.shortcut(x)
    torch.testing.assert_close(block(x), t * h + (1 - t) * c)
    torch.testing.assert_close(block.branch(x), t * h)
    block.survival_prob = 0.25
    torch.testing.assert_close(block(x), c + 0.25 * t * (h - c))
    block.train()
    block.survival_prob = 0.0
    assert torch.equal(block(x), c)


def test_per_sample_drop_takes_the_carry_path():
    torch.manual_seed(0)
    for block, x in [(build_model("highway", depth=8).blocks[2], torch.relu(torch.randn(64, 16, 4, 4))),
                     (build_model("densenet", depth=10, growth_rate=4).blocks[0], torch.randn(64, 16, 4, 4))]:
        block.train()
        full = block(x)
        block.survival_prob, block.drop_mode = 0.5, "sample"
        y = block(x)
        kept = [torch.equal(y[i], full[i]) for i in range(64)]
        dropped = [torch.equal(y[i], block.shortcut(x)[i]) for i in range(64)]
        assert all(k or d for k, d in zip(kept, dropped)) and 15 < sum(kept) < 49 and 15 < sum(dropped) < 49


# ----------------------------------------------------------------------------- densenet
def test_dense_layer_and_transition_lesions():
    torch.manual_seed(0)
    model = build_model("densenet", depth=10, growth_rate=4).eval()  # n = 2 basic layers per block
    assert model.block_names[:3] == ["stage1.block1", "stage1.block2", "stage1.transition"]
    assert model.block_names[-1] == "stage3.block2" and "stage2.transition.conv1" in model.taps()
    layer, trans = model.blocks[0], model.blocks[2]
    x = torch.randn(2, 16, 7, 7)
    y = layer(x)
    assert y.shape == (2, 20, 7, 7) and torch.equal(y[:, :16], x)
    assert torch.equal(y[:, 16:], layer.branch(x))
    layer.enabled = False
    assert torch.equal(layer(x), torch.cat([x, torch.zeros(2, 4, 7, 7)], 1))
    layer.enabled = True
    layer.survival_prob = 0.5
    torch.testing.assert_close(layer(x), torch.cat([x, 0.5 * layer.branch(x)], 1))

    z = torch.randn(2, 24, 7, 7)
    assert trans(z).shape == (2, 24, 4, 4)
    trans.enabled = False
    torch.testing.assert_close(trans(z)[:, :, :3, :3], nn.functional.avg_pool2d(z, 2))
    bc = build_model("densenet", depth=10, growth_rate=4, bottleneck=True, compression=0.5)
    t = [b for b in bc.blocks if isinstance(b, Transition)][0]
    t.enabled = False
    z = torch.randn(2, 12, 6, 6)
    assert torch.equal(t(z), nn.functional.avg_pool2d(z, 2)[:, :6])


def test_densenet_zero_init_residual_equals_lesion():
    torch.manual_seed(0)
    model = build_model("densenet", depth=16, bottleneck=True, compression=0.5, zero_init_residual=True).eval()
    x = torch.randn(2, 3, 8, 8)
    out = model(x)
    for block in model.blocks:
        if isinstance(block, DenseLayer):
            block.enabled = False
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)


# ----------------------------------------------------------------------------- xie plain
def test_xie_plain_is_he_plain_split_into_single_conv_units():
    torch.manual_seed(0)
    xie, plain = build_model("xie-plain44"), build_model("plain44")
    state = {}
    for k, v in plain.state_dict().items():
        if k.startswith("blocks."):
            _, i, part, layer, p = k.split(".")
            j = 2 * int(i) + (layer[-1] == "2")
            k = f"blocks.{j}.{part}.{layer[:-1]}1.{p}"
        state[k] = v
    xie.load_state_dict(state)
    xie.eval(), plain.eval()
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(xie(x), plain(x))
    assert all(not b.has_shortcut for b in xie.blocks)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name,overrides,words", [
    ("highway", {"depth": 21}, ["depth", "3n+2", "5, 8, 11"]),
    ("highway", {"gate_bias": "neg"}, ["gate_bias", "finite number"]),
    ("highway", {"gate_bias": float("nan")}, ["gate_bias"]),
    ("highway", {"zero_init_residual": True}, ["zero_init_residual", "gate_bias"]),
    ("densenet", {"depth": 41}, ["depth", "3n+4", "7, 10, 13"]),
    ("densenet-bc100", {"depth": 43}, ["depth", "bottleneck", "6n+4", "10, 16, 22"]),
    ("densenet", {"growth_rate": 0}, ["growth_rate", "positive integer"]),
    ("densenet", {"growth_rate": 1.5}, ["growth_rate"]),
    ("densenet", {"compression": 0}, ["compression", "(0, 1]"]),
    ("densenet", {"compression": 1.5}, ["compression", "(0, 1]"]),
    ("densenet", {"bottleneck": "yes"}, ["bottleneck", "True", "False"]),
    ("densenet", {"shortcut": "B"}, ["shortcut", "'A'"]),
    ("densenet-bc100", {"width": 32}, ["width", "growth_rate"]),
    ("xie-plain44", {"depth": 45}, ["depth", "3n+2"]),
    ("xie-plain44", {"shortcut": "B"}, ["shortcut", "plain"]),
])
def test_bad_values_name_the_field(name, overrides, words):
    with pytest.raises(ValueError) as err:
        build_model(name, **overrides)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_unknown_option_lists_family_options():
    with pytest.raises(TypeError) as err:
        build_model("densenet40", growth=12)
    assert "growth_rate" in str(err.value) and "compression" in str(err.value)
    with pytest.raises(TypeError) as err:
        build_model("resnet20", gate_bias=-2.0)  # options belong to their family only
    assert "gate_bias" in str(err.value)


def test_gate_weight_scale_applies_after_every_init_scheme():
    for scheme in ("kaiming", "orthogonal", "torch-default"):
        torch.manual_seed(0)
        full = build_model("highway20", init=scheme, gate_weight_scale=1.0)
        torch.manual_seed(0)
        small = build_model("highway20", init=scheme)  # default 0.1
        for a, b in zip(full.blocks, small.blocks):
            torch.testing.assert_close(b.branch.gate.weight, 0.1 * a.branch.gate.weight)
            assert torch.equal(b.branch.gate.gate_bias, a.branch.gate.gate_bias)
    with pytest.raises(ValueError, match="gate_weight_scale"):
        build_model("highway20", gate_weight_scale=-1.0)


def test_deep_highway_gradient_does_not_explode_at_init():
    """With He-scaled gate convs the stem's gradient is ~700x the classifier's at 56 layers (the net
    then does not train); the default gate_weight_scale keeps them within a small factor."""
    def ratio(scale):
        torch.manual_seed(0)
        m = build_model("highway", depth=56, in_channels=1, gate_weight_scale=scale)
        x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 10
        torch.nn.functional.cross_entropy(m(x), y).backward()
        return (m.stem.conv.weight.grad.norm() / m.head.fc.weight.grad.norm()).item()

    assert ratio(0.1) < 5 < 50 < ratio(1.0)
