"""The lecture's toolkit as model switches (activation, norm, dropout) and Xiao et al.'s vanilla
family with delta-orthogonal / Gaussian init at scales sigma_w, sigma_b: exact properties."""
import pytest
import torch
from arith import bn, conv
from torch import nn

from depthlab.config import ConfigError, RunConfig
from depthlab.diagnostics.jacobian import exact_jacobian, jacobian_spectrum, spectrum_over_depth
from depthlab.models import build_model, count_params

pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _seeded(name, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model(name, **kw)


@pytest.mark.parametrize("name", ["resnet", "plain", "mnist-resnet", "mnist-plain"])
def test_dropout_zero_builds_no_module_and_the_same_network(name):
    kw = dict(depth=8 if "mnist" not in name else 6, width=4, in_channels=1)
    base, zero = _seeded(name, **kw), _seeded(name, **kw, dropout=0.0)
    assert not any(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in zero.modules())
    x = torch.randn(4, 1, 8, 8)
    base.train(), zero.train()
    assert torch.equal(base(x), zero(x))


@pytest.mark.parametrize("mode,cls", [("channel", nn.Dropout2d), ("element", nn.Dropout)])
def test_dropout_sits_after_the_block_activation_and_is_the_identity_in_eval(mode, cls):
    kw = dict(depth=8, width=4, in_channels=1)
    base, dropped = _seeded("plain", **kw), _seeded("plain", **kw, dropout=0.5, dropout_mode=mode)
    assert count_params(base) == count_params(dropped)
    for block in dropped.blocks:
        names = list(block.branch._modules)
        assert names[names.index("relu1") + 1] == "drop1" and type(block.branch.drop1) is cls
        assert block.branch.drop1.p == 0.5
    assert not any(isinstance(m, cls) for m in dropped.stem.modules())  # blocks only
    x = torch.randn(6, 1, 8, 8)
    dropped.load_state_dict(base.state_dict())  # same keys: dropout holds no state
    base.eval(), dropped.eval()
    assert torch.equal(base(x), dropped(x))
    dropped.train()
    h = dropped.blocks[0].branch.relu1(dropped.blocks[0].branch.conv1(dropped.stem(x)))
    out = dropped.blocks[0].branch.drop1(h)
    if mode == "channel":  # whole feature maps zeroed, the kept ones scaled by 1 / (1 - p)
        kept = out.flatten(2).abs().sum(-1) > 0
        assert torch.allclose(out[kept], 2 * h[kept])
        assert (out.flatten(2)[~kept] == 0).all()
    else:
        assert torch.allclose(out[out != 0], 2 * h[out != 0])


def test_norm_none_leaves_no_normalisation_and_biases_every_conv():
    for name in ("resnet20", "plain20", "mnist-resnet"):
        model = build_model(name, norm="none")
        assert not any(isinstance(m, NORMS) for m in model.modules())
        assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))
    # resnet20 without BN: every BN's 2c affine parameters go, every conv gains c_out biases
    convs = [(3, 16)] + [(16, 16)] * 6 + [(16, 32)] + [(32, 32)] * 5 + [(32, 64)] + [(64, 64)] * 5
    no_bn = sum(conv(a, b) + b for a, b in convs) + 64 * 10 + 10
    assert count_params(build_model("resnet20", norm="none")) == no_bn == 269_722 - sum(bn(b) - b for _, b in convs)
    proj = build_model("resnet20", norm="none", shortcut="B")
    assert not any(isinstance(m, NORMS) for m in proj.modules())


def test_zero_init_residual_without_bn_zeroes_the_last_conv():
    model = _seeded("resnet", depth=8, width=4, in_channels=1, norm="none", zero_init_residual=True)
    block = model.blocks[0]
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(block.branch(x), torch.zeros_like(x))
    assert torch.equal(block(x), block.post(x))


@pytest.mark.parametrize("act,cls", [("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU), ("tanh", nn.Tanh),
                                     ("sigmoid", nn.Sigmoid), ("linear", nn.Identity)])
def test_activation_switch_replaces_every_nonlinearity(act, cls):
    model = build_model("plain20", activation=act)
    assert count_params(model) == 269_722
    acts = [model.stem.relu] + [m for b in model.blocks for m in (b.branch.relu1, b.post)]
    assert all(type(m) is cls for m in acts)
    assert not any(isinstance(m, nn.ReLU) for m in model.modules()) or act == "relu"


@pytest.mark.parametrize("override,message", [
    (dict(activation="crelu", norm="none"), "activation 'crelu' .* needs norm='batch' and dropout=0.0"),
    (dict(dropout=1.0), r"dropout must be a drop probability in \[0, 1\), got 1.0"),
    (dict(dropout=-0.1), r"dropout must be a drop probability in \[0, 1\)"),
    (dict(dropout_mode="pixel"), "dropout_mode must be one of 'channel', 'element'"),
    (dict(norm="layer"), "norm must be one of 'batch', 'none'"),
])
def test_bad_toolkit_options_name_the_field_and_the_valid_values(override, message):
    with pytest.raises(ValueError, match=message):
        build_model("plain", depth=8, **override)


def test_toolkit_options_are_config_keys():
    cfg = RunConfig().with_overrides(["model.name=plain", "model.norm=none", "model.dropout=0.2",
                                      "model.dropout_mode=element", "model.activation=tanh"])
    cfg.validate()
    assert (cfg.model.norm, cfg.model.dropout, cfg.model.dropout_mode) == ("none", 0.2, "element")
    with pytest.raises(ConfigError, match="model.norm 'layer' is not valid; use batch or none"):
        RunConfig().with_overrides(["model.norm=layer"]).validate()


# ----------------------------------------------------------------------------- vanilla (Xiao et al. 2018)
def test_vanilla_layout_and_validation():
    model = build_model("vanilla", depth=6, width=4, in_channels=1)
    assert len(model.blocks) == 4 and model.depth == 6
    assert not any(isinstance(m, NORMS) for m in model.modules())
    assert all(not b.has_shortcut and type(b.post) is nn.Tanh for b in model.blocks)
    assert count_params(model) == (9 * 4 + 4) + 4 * (conv(4, 4) + 4) + 4 * 10 + 10
    strided = build_model("vanilla", depth=6, width=4, strided=3)
    assert [b.branch.conv1.stride for b in strided.blocks] == [(2, 2), (2, 2), (1, 1), (1, 1)]
    assert strided.stem.conv.stride == (2, 2) and strided(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    for bad, message in [(dict(activation="crelu"), "activation must be one of 'tanh', 'relu'"),
                         (dict(strided=6), "strided must be an integer from 0 to depth - 1 = 5"),
                         (dict(sigma_w=-1.0), "sigma_w must be a non-negative number"),
                         (dict(zero_init_residual=True), "zero_init_residual must be False")]:
        with pytest.raises(ValueError, match=message):
            build_model("vanilla", depth=6, **bad)


def test_delta_orthogonal_kernels_at_scale_sigma_w():
    torch.manual_seed(0)
    model = build_model("vanilla", depth=5, width=6, in_channels=2, sigma_w=1.3, sigma_b=0.0)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.detach()
            off = w.clone()
            off[:, :, 1, 1] = 0
            assert torch.equal(off, torch.zeros_like(off))  # every off-centre tap is exactly zero
            s = torch.linalg.svdvals(w[:, :, 1, 1].double())
            assert torch.allclose(s, torch.full_like(s, 1.3), atol=1e-6)  # all min(C_out, C_in) of them
            assert torch.equal(m.bias.detach(), torch.zeros_like(m.bias))
    torch.manual_seed(0)
    biased = build_model("vanilla", depth=40, width=64, in_channels=2, sigma_b=0.2)
    b = torch.cat([blk.branch.conv1.bias.detach() for blk in biased.blocks])
    assert abs(b.std().item() - 0.2) < 0.02 and torch.equal(biased.head.fc.bias, torch.zeros(10))


@pytest.mark.parametrize("init,sigma_w,std", [("gaussian", 1.5, lambda fan_in: 1.5 / fan_in ** 0.5),
                                              ("small-gaussian", 1.5, lambda fan_in: 0.01)])
def test_gaussian_inits_have_their_scale(init, sigma_w, std):
    torch.manual_seed(0)
    model = build_model("vanilla", depth=4, width=64, init=init, sigma_w=sigma_w, sigma_b=0.3)
    w = model.blocks[0].branch.conv1.weight.detach()
    assert abs(w.std().item() / std(64 * 9) - 1) < 0.03 and abs(w.mean().item()) < 3 * std(64 * 9) / 190
    bias = model.blocks[0].branch.conv1.bias.detach()
    assert (bias.abs().sum() > 0) == (init == "gaussian")


def test_linear_vanilla_net_has_jacobian_singular_values_sigma_w_to_the_depth():
    """Delta-orthogonal, sigma_b = 0, identity activation: each conv acts on every pixel as an
    orthogonal matrix times sigma_w, so d features / d input has every singular value sigma_w^L."""
    torch.manual_seed(0)
    L, sigma_w = 7, 1.1  # depth 7: 6 convs
    model = build_model("vanilla", depth=L, width=3, in_channels=2, activation="linear", sigma_w=sigma_w)
    x = torch.randn(2, 5, 5)
    jac = exact_jacobian(model, x, output="features")  # K = 3*25 > D = 2*25: the jacfwd path
    brute = torch.autograd.functional.jacobian(lambda v: model.forward_features(v[None]).reshape(-1), x)
    assert torch.allclose(jac, brute.reshape(75, 50), atol=1e-6)
    s = torch.linalg.svdvals(jac.double())
    assert s.numel() == 50 and torch.allclose(s, torch.full_like(s, sigma_w ** (L - 1)), rtol=1e-5)
    spec = jacobian_spectrum(model, x[None], output="features")
    assert spec.method == "exact" and max(abs(v - sigma_w ** (L - 1)) for v in spec.singular_values[0]) < 1e-5
    gauss = build_model("vanilla", depth=L, width=3, in_channels=2, activation="linear", init="gaussian")
    g = torch.linalg.svdvals(exact_jacobian(gauss, x, output="features").double())
    assert g.max() / g.min() > 10  # a Gaussian net of the same scale is far from isometric


def test_jacobian_output_is_checked():
    with pytest.raises(ValueError, match="output must be one of 'logits', 'features'"):
        exact_jacobian(build_model("vanilla", depth=3, width=2), torch.randn(3, 4, 4), output="body")


def test_spectrum_over_depth_stays_at_one_for_delta_orthogonal_and_spreads_for_gaussian():
    """Linear vanilla nets at sigma_w = 1: delta-orthogonal keeps every singular value of the feature
    Jacobian exactly 1 at every depth; Gaussian init of the same scale spreads with depth."""
    x = torch.randn(2, 1, 4, 4)

    def build(init):
        def make(depth):
            torch.manual_seed(depth)
            return build_model("vanilla", depth=depth, width=4, in_channels=1, activation="linear", init=init)
        return make

    delta = spectrum_over_depth(build("delta-orthogonal"), [3, 10, 30], x)
    assert [r["depth"] for r in delta] == [3, 10, 30]
    for r in delta:
        assert abs(r["max"] - 1) < 1e-5 and abs(r["min"] - 1) < 1e-5 and abs(r["q0.5"] - 1) < 1e-5
    gauss = spectrum_over_depth(build("gaussian"), [3, 10, 30], x)
    spreads = [r["spread"] for r in gauss]
    assert spreads[0] > 1.5 and spreads[0] < spreads[1] < spreads[2]
    assert all(r["min"] <= r["q0.1"] <= r["q0.5"] <= r["q0.9"] <= r["max"] for r in gauss)
