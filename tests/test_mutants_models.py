"""Mutation-testing gaps in the model building blocks (layers.py, blocks.py, init.py), each a named
property checked against an independent computation: conv helpers' shapes and padding, option-A/B
shortcuts' exact values, the Bernoulli keep mask, Fixup's scalar modules, the block contract
(lesion, stochastic depth in both modes, ReZero, taps, repr) against a hand-written forward, and
the initialisers' scale formulas on non-square layers (fan_in != fan_out, non-square kernels),
compared draw for draw with ``torch.nn.init`` under the same seed."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.models import build_model
from depthlab.models.blocks import BasicBlock, Block, PreActBlock
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
    ShortcutA,
    ShortcutB,
    conv1x1,
    conv3x3,
    make_shortcut,
    sample_mask,
    shortcut_a,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_close(actual, expected, rtol=1e-5, atol=1e-8):
    """torch.allclose with matching shapes and dtypes (torch.testing's first import alone takes seconds)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max()


def bn_eval(x, bn):
    """Eval-mode BatchNorm by hand: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1, 1, 1)
    return ((x - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


def randomise_bn(module, seed=0):
    """Non-trivial BN statistics and affine parameters, so every BN's place in a forward matters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(torch.rand(c, generator=g, dtype=m.running_var.dtype) + 0.5)
                m.weight.copy_(torch.randn(c, generator=g, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(c, generator=g, dtype=m.bias.dtype))
    return module


# ============================================================================= layers.py
@pytest.mark.parametrize("h,w", [(1, 1), (5, 8), (7, 3)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_helpers_give_ceil_h_over_stride_like_subsampling(h, w, stride):
    """conv3x3 (padding 1) and conv1x1 output ceil(H/s) x ceil(W/s), the size of x[..., ::s, ::s]."""
    x = torch.randn(2, 3, h, w)
    want = x[..., ::stride, ::stride].shape[-2:]
    assert conv3x3(3, 5, stride)(x).shape == (2, 5, *want)
    assert conv1x1(3, 5, stride)(x).shape == (2, 5, *want)


def test_conv_helpers_layout_defaults_and_bias():
    c3, c1 = conv3x3(3, 5), conv1x1(3, 5)
    assert c3.weight.shape == (5, 3, 3, 3) and c3.stride == (1, 1) and c3.padding == (1, 1) and c3.bias is None
    assert c1.weight.shape == (5, 3, 1, 1) and c1.stride == (1, 1) and c1.padding == (0, 0) and c1.bias is None
    assert conv3x3(3, 5, 2, bias=True).bias.shape == (5,) and conv1x1(3, 5, 2, bias=True).bias.shape == (5,)
    assert conv3x3(3, 5, 2).stride == (2, 2) and conv1x1(3, 5, 2).stride == (2, 2)
    # 3x3 / pad 1 is a "same" conv: the centre tap alone is the 1x1 conv at every pixel, borders included
    x = torch.randn(1, 3, 4, 6)
    c3 = conv3x3(3, 5)
    with torch.no_grad():
        c3.weight.zero_()
        c3.weight[:, :, 1, 1] = c1.weight[:, :, 0, 0]
    assert_close(c3(x), c1(x))


def test_shortcut_a_keeps_the_input_channels_first_and_zero_pads_the_rest():
    x = torch.randn(2, 3, 5, 4)  # H != C: the pad is counted in channels, not rows
    y = shortcut_a(x, 7)  # default stride 1: no subsampling
    assert y.shape == (2, 7, 5, 4)
    assert torch.equal(y[:, :3], x) and torch.equal(y[:, 3:], torch.zeros(2, 4, 5, 4))
    assert torch.equal(shortcut_a(x, 3), x)  # nothing to pad, nothing to subsample: the identity
    y = shortcut_a(x, 4, 2)  # one zero channel, stride 2
    assert y.shape == (2, 4, 3, 2)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and torch.equal(y[:, 3], torch.zeros(2, 3, 2))
    assert torch.equal(shortcut_a(x, 3, 2), x[:, :, ::2, ::2])
    assert torch.equal(shortcut_a(x, 3, 3), x[:, :, ::3, ::3])
    y = ShortcutA(3, 4, 2)(x)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2]) and torch.equal(y[:, 3], torch.zeros(2, 3, 2))


def test_shortcut_a_module_allows_equal_channels_rejects_fewer_and_reprs():
    sc = ShortcutA(4, 4)
    assert (sc.c_in, sc.c_out, sc.stride) == (4, 4, 1)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(sc(x), x)
    assert repr(ShortcutA(4, 8, 2)) == "ShortcutA(4, 8, stride=2)"
    with pytest.raises(ValueError, match="cannot reduce channels"):
        ShortcutA(4, 3)


def test_shortcut_b_is_a_strided_projection_with_optional_bn():
    sb = ShortcutB(3, 5)
    assert list(sb._modules) == ["conv", "bn"]
    assert sb.conv.weight.shape == (5, 3, 1, 1) and sb.conv.stride == (1, 1) and sb.conv.bias is None
    assert sb.bn.num_features == 5
    sb = ShortcutB(3, 5, stride=2, norm=False)
    assert list(sb._modules) == ["conv"] and sb.conv.stride == (2, 2)
    x = torch.randn(2, 3, 5, 5)
    assert_close(sb(x), F.conv2d(x[:, :, ::2, ::2], sb.conv.weight))


def test_make_shortcut_identity_a_b_and_errors():
    assert isinstance(make_shortcut("B", 4, 4), nn.Identity)
    assert isinstance(make_shortcut("A", 4, 4, 1), nn.Identity)
    a = make_shortcut("A", 4, 4, 2)  # same channels, stride 2: not the identity
    assert isinstance(a, ShortcutA) and (a.c_in, a.c_out, a.stride) == (4, 4, 2)
    a = make_shortcut("A", 4, 8)
    assert isinstance(a, ShortcutA) and (a.c_in, a.c_out, a.stride) == (4, 8, 1)
    b = make_shortcut("B", 4, 8, 2)
    assert isinstance(b, ShortcutB) and list(b._modules) == ["conv", "bn"]
    assert b.conv.weight.shape == (8, 4, 1, 1) and b.conv.stride == (2, 2)
    b = make_shortcut("B", 4, 8, 2, norm=False)
    assert list(b._modules) == ["conv"]
    with pytest.raises(ValueError) as err:
        make_shortcut("C", 4, 8)
    assert "'A' or 'B'" in str(err.value) and "'C'" in str(err.value)


@pytest.mark.parametrize("p", [0.2, 0.8])
def test_sample_mask_is_a_per_sample_bernoulli_p_mask_in_x_dtype(p):
    torch.manual_seed(0)
    x = torch.randn(2000, 3, 2, 2, dtype=torch.float64)
    m = sample_mask(x, p)
    assert m.shape == (2000, 1, 1, 1) and m.dtype == torch.float64
    assert set(m.unique().tolist()) == {0.0, 1.0}
    sd = math.sqrt(2000 * p * (1 - p))
    assert abs(m.sum().item() - 2000 * p) < 4 * sd
    assert torch.equal(sample_mask(x, 1.0), torch.ones(2000, 1, 1, 1, dtype=torch.float64))
    assert torch.equal(sample_mask(x, 0.0), torch.zeros(2000, 1, 1, 1, dtype=torch.float64))
    assert sample_mask(torch.randn(5, 7), p).shape == (5, 1)


def test_sample_mask_keeps_iff_the_draw_is_below_p():
    """Inverse-CDF Bernoulli: keep iff u < p for u ~ U[0, 1) (so P(keep) = p and p = 0 never keeps);
    a draw exactly equal to p is a drop."""
    x = torch.randn(6, 2, 3, 3)
    torch.manual_seed(7)
    u = torch.rand(6, 1, 1, 1)
    p = u[2].item()  # exactly one of the draws
    torch.manual_seed(7)
    m = sample_mask(x, p)
    assert torch.equal(m, (u < p).float()) and m[2].item() == 0.0


def test_scalar_bias_and_scale_fixup_scalars():
    b, s = ScalarBias(), ScalarScale()
    assert b.bias.shape == (1,) and b.bias.item() == 0.0 and b.bias.requires_grad
    assert s.scale.shape == (1,) and s.scale.item() == 1.0 and s.scale.requires_grad
    x = torch.randn(2, 3, 4, 4)
    with torch.no_grad():
        b.bias.fill_(0.5)
        s.scale.fill_(-2.0)
    assert torch.equal(b(x), x + 0.5) and b(x).shape == x.shape
    assert torch.equal(s(x), x * -2.0) and s(x).shape == x.shape
    b.reset_scalars_(), s.reset_scalars_()
    assert b.bias.item() == 0.0 and s.scale.item() == 1.0


# ============================================================================= blocks.py
def basic_forward(block, x, p=1.0, alpha=None):
    """He et al.'s post-activation block by hand, eval mode: relu(shortcut + p * alpha * branch)."""
    br = block.branch
    h = F.conv2d(x, br.conv1.weight, br.conv1.bias, stride=br.conv1.stride, padding=1)
    h = torch.relu(bn_eval(h, br.bn1))
    h = bn_eval(F.conv2d(h, br.conv2.weight, br.conv2.bias, padding=1), br.bn2)
    if alpha is not None:
        h = h * alpha
    h = h * p
    return torch.relu(block.shortcut(x) + h) if block.has_shortcut else torch.relu(h)


def preact_forward(block, x):
    br = block.branch
    h = F.conv2d(torch.relu(bn_eval(x, br.bn1)), br.conv1.weight, stride=br.conv1.stride, padding=1)
    h = F.conv2d(torch.relu(bn_eval(h, br.bn2)), br.conv2.weight, padding=1)
    return block.shortcut(x) + h


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_basic_block_matches_a_hand_written_forward(shortcut):
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(3, 5, stride=2, shortcut=shortcut)).eval()
    x = torch.relu(torch.randn(2, 3, 7, 6))
    assert list(block.branch._modules) == ["conv1", "bn1", "relu1", "conv2", "bn2"]
    assert block.branch.conv1.weight.shape == (5, 3, 3, 3) and block.branch.conv1.stride == (2, 2)
    assert block.branch.conv2.weight.shape == (5, 5, 3, 3) and block.branch.conv2.stride == (1, 1)
    assert block.branch.conv1.bias is None and block.branch.conv2.bias is None
    assert isinstance(block.shortcut, ShortcutA if shortcut == "A" else ShortcutB)
    if shortcut == "B":
        assert list(block.shortcut._modules) == ["conv", "bn"]  # post-activation option B keeps its BN
    assert block.has_shortcut and isinstance(block.post, nn.ReLU)
    assert_close(block(x), basic_forward(block, x), rtol=1e-5, atol=1e-5)


def test_plain_block_is_the_branch_then_relu_with_an_option_a_lesion_path():
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(3, 5, stride=2, residual=False, shortcut="B")).eval()
    assert not block.has_shortcut and isinstance(block.shortcut, ShortcutA)  # kept for lesions, always A
    x = torch.relu(torch.randn(2, 3, 6, 6))
    assert_close(block(x), basic_forward(block, x), rtol=1e-5, atol=1e-5)
    block.enabled = False
    assert torch.equal(block(x), shortcut_a(x, 5, 2))


def test_basic_block_defaults_bias_and_activation():
    block = BasicBlock(4, 4)
    assert isinstance(block.shortcut, nn.Identity) and block.has_shortcut
    assert isinstance(BasicBlock(4, 8).shortcut, ShortcutA)  # option A is the default
    biased = BasicBlock(4, 8, 2, bias=True)
    assert biased.branch.conv1.bias.shape == (8,) and biased.branch.conv2.bias.shape == (8,)
    lin = BasicBlock(4, 4, act=nn.Identity)
    assert isinstance(lin.branch.relu1, nn.Identity) and isinstance(lin.post, nn.Identity)


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_preact_block_matches_a_hand_written_forward(shortcut):
    torch.manual_seed(0)
    block = randomise_bn(PreActBlock(3, 5, stride=2, shortcut=shortcut)).eval()
    assert list(block.branch._modules) == ["bn1", "relu1", "conv1", "bn2", "relu2", "conv2"]
    assert block.branch.bn1.num_features == 3 and block.branch.bn2.num_features == 5
    assert block.branch.conv1.weight.shape == (5, 3, 3, 3) and block.branch.conv1.stride == (2, 2)
    assert block.branch.conv2.weight.shape == (5, 5, 3, 3) and block.branch.conv2.stride == (1, 1)
    if shortcut == "B":
        assert list(block.shortcut._modules) == ["conv"]  # pre-activation projection: no BN
        assert block.shortcut.conv.stride == (2, 2)
    assert block.has_shortcut and isinstance(block.post, nn.Identity)
    x = torch.randn(2, 3, 7, 6)  # raw (signed) input: the shortcut reads it unrectified
    assert_close(block(x), preact_forward(block, x), rtol=1e-5, atol=1e-5)
    assert PreActBlock(4, 4).shortcut.__class__ is nn.Identity
    assert isinstance(PreActBlock(4, 8).shortcut, ShortcutA)


def test_zero_init_residual_zeroes_the_last_bn_gamma_or_last_conv():
    basic, pre = BasicBlock(4, 4), PreActBlock(4, 4)
    basic.zero_init_residual_(), pre.zero_init_residual_()
    assert torch.equal(basic.branch.bn2.weight, torch.zeros(4))
    assert torch.equal(basic.branch.bn1.weight, torch.ones(4))
    assert torch.equal(pre.branch.conv2.weight, torch.zeros(4, 4, 3, 3))
    assert pre.branch.conv1.weight.abs().sum() > 0
    with pytest.raises(NotImplementedError, match="Block"):
        Block(nn.Sequential(), nn.Identity(), True, nn.Identity()).zero_init_residual_()


def test_new_block_state_taps_and_repr():
    block = BasicBlock(4, 4)
    assert block.enabled is True and block.survival_prob == 1.0 and block.drop_mode == "batch"
    assert block.alpha is None and [n for n, _ in block.named_parameters(recurse=False)] == []
    assert isinstance(block.sum, nn.Identity)
    taps = block.taps()
    assert list(taps) == ["conv1", "conv2", "sum"]
    assert taps["conv1"] is block.branch.conv1 and taps["conv2"] is block.branch.conv2 and taps["sum"] is block.sum
    assert block.extra_repr() == "has_shortcut=True, enabled=True, survival_prob=1.0"
    block.enabled, block.survival_prob, block.drop_mode = False, 0.5, "sample"
    assert block.extra_repr() == "has_shortcut=True, enabled=False, survival_prob=0.5, drop_mode='sample'"
    with pytest.raises(ValueError) as err:
        block.drop_mode = "layer"
    assert "'batch', 'sample'" in str(err.value) and "'layer'" in str(err.value)
    for bad in (-0.1, 1.01):
        with pytest.raises(ValueError, match="survival_prob"):
            block.survival_prob = bad
    block.survival_prob = 0  # both ends of [0, 1] are valid, stored as floats
    assert block.survival_prob == 0.0 and isinstance(block.survival_prob, float)


def test_sum_hook_fires_with_the_pre_post_value_even_when_the_branch_is_off():
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(3, 4, 2)).eval()
    seen = []
    block.sum.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 3, 5, 5)  # signed: relu(sum) != sum
    out = block(x)
    assert seen[0].shape == (2, 4, 3, 3) and torch.equal(out, torch.relu(seen[0]))
    assert (seen[0] < 0).any()
    block.enabled = False
    assert torch.equal(block(x), shortcut_a(x, 4, 2)) and torch.equal(seen[1], shortcut_a(x, 4, 2))


def test_rezero_alpha_scales_the_branch_and_starts_at_zero():
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(3, 4, 2)).eval()
    assert block.use_rezero_() is block
    assert isinstance(block.alpha, nn.Parameter) and block.alpha.shape == (1,) and block.alpha.item() == 0.0
    assert [n for n, _ in block.named_parameters(recurse=False)] == ["alpha"]
    x = torch.relu(torch.randn(2, 3, 6, 6))
    assert torch.equal(block(x), torch.relu(block.shortcut(x)))
    with torch.no_grad():
        block.alpha.fill_(0.7)
    assert_close(block(x), basic_forward(block, x, alpha=0.7), rtol=1e-5, atol=1e-5)
    block.survival_prob = 0.4  # eval: both scales apply
    assert_close(block(x), basic_forward(block, x, p=0.4, alpha=0.7), rtol=1e-5, atol=1e-5)
    block.reset_scalars_()
    assert block.alpha.item() == 0.0
    BasicBlock(3, 4).reset_scalars_()  # no alpha: nothing to reset, no error


@pytest.mark.parametrize("residual", [True, False])
def test_eval_mode_scales_the_branch_by_p_in_both_drop_modes(residual):
    torch.manual_seed(0)
    block = randomise_bn(BasicBlock(3, 4, 2, residual=residual)).eval()
    x = torch.relu(torch.randn(3, 3, 6, 6))
    for mode in ("batch", "sample"):
        block.drop_mode, block.survival_prob = mode, 0.3
        assert_close(block(x), basic_forward(block, x, p=0.3), rtol=1e-5, atol=1e-5)
    block.survival_prob = 0.0  # eval at p = 0: the branch contributes nothing, but is not "off"
    assert_close(block(x), basic_forward(block, x, p=0.0), rtol=0, atol=0)


def test_train_mode_p1_and_p0_are_deterministic_and_draw_nothing():
    torch.manual_seed(0)
    block = BasicBlock(3, 4, 2).train()
    x = torch.relu(torch.randn(4, 3, 6, 6))
    undropped = copy.deepcopy(block)
    for mode in ("batch", "sample"):
        block.drop_mode = mode
        block.survival_prob = 1.0
        state = torch.get_rng_state()
        assert torch.equal(block(x), undropped(x))
        assert torch.equal(torch.get_rng_state(), state)  # p = 1 draws no random number
    block.drop_mode, block.survival_prob = "batch", 0.0
    assert torch.equal(block(x), shortcut_a(x, 4, 2))


def test_batch_mode_drop_draws_one_cpu_number_per_forward_against_p():
    """Batch mode: the branch is dropped iff one U[0, 1) draw is >= p (so p is the keep rate)."""
    torch.manual_seed(0)
    block = BasicBlock(3, 4, 2).train()
    block.survival_prob = 0.6
    undropped = copy.deepcopy(block)
    undropped.survival_prob = 1.0
    x = torch.relu(torch.randn(4, 3, 6, 6))
    full, short = undropped(x), shortcut_a(x, 4, 2)
    for seed in range(12):
        torch.manual_seed(seed)
        keep = bool(torch.rand(()) < 0.6)
        torch.manual_seed(seed)
        out = block(x)
        assert torch.equal(out, full if keep else short), seed


def test_batch_mode_draw_equal_to_p_is_a_drop():
    """Keep iff u < p (P(keep) = p exactly): a draw u exactly equal to p drops the branch."""
    torch.manual_seed(0)
    block = BasicBlock(3, 4, 2).train()
    x = torch.relu(torch.randn(2, 3, 5, 5))
    torch.manual_seed(11)
    block.survival_prob = torch.rand(()).item()
    torch.manual_seed(11)
    assert torch.equal(block(x), shortcut_a(x, 4, 2))


@pytest.mark.parametrize("residual", [True, False])
def test_sample_mode_train_uses_the_mask_per_sample(residual):
    """Sample mode: y = mask * branch (+ shortcut); a dropped plain sample takes the lesion path."""
    torch.manual_seed(0)
    block = BasicBlock(3, 4, 2, residual=residual).train()
    block.drop_mode, block.survival_prob = "sample", 0.5
    x = torch.relu(torch.randn(16, 3, 6, 6))
    undropped = copy.deepcopy(block)
    undropped.survival_prob = 1.0
    full, short = undropped(x), torch.relu(shortcut_a(x, 4, 2))
    torch.manual_seed(5)
    out = block(x)
    torch.manual_seed(5)
    mask = (torch.rand(16, 1, 1, 1) < 0.5).float()
    assert 0 < mask.sum() < 16
    want = torch.where(mask.bool(), full, short)
    assert_close(out, want, rtol=1e-6, atol=1e-6)


def test_survival_scale_for_blocks_that_combine_the_branch_themselves():
    block = BasicBlock(2, 2)
    y = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    for mode in ("batch", "sample"):  # p = 1: untouched, and no random number drawn
        block.drop_mode = mode
        state = torch.get_rng_state()
        assert torch.equal(block.survival_scale(y), y) and torch.equal(torch.get_rng_state(), state)
    block.drop_mode, block.survival_prob = "batch", 0.25
    assert torch.equal(block.survival_scale(y), y)  # train, batch mode: drops happen before the branch runs
    block.eval()
    assert torch.equal(block.survival_scale(y), y * 0.25)
    block.drop_mode = "sample"
    assert torch.equal(block.survival_scale(y), y * 0.25)  # eval is the same in both modes
    block.train()
    torch.manual_seed(0)
    out = block.survival_scale(y)
    torch.manual_seed(0)
    mask = (torch.rand(6, 1, 1, 1) < 0.25).to(torch.float64)
    assert torch.equal(out, y * mask) and out.dtype == torch.float64
    assert 0 < mask.sum() < 6


def test_lesion_skips_the_branch_in_every_mode():
    torch.manual_seed(0)
    block = BasicBlock(3, 4, 2)
    calls = []
    block.branch.conv1.register_forward_hook(lambda *a: calls.append(1))
    block.enabled = False
    x = torch.randn(2, 3, 5, 5)
    for training in (True, False):
        block.train(training)
        assert torch.equal(block(x), shortcut_a(x, 4, 2))
    assert not calls


# ============================================================================= init.py
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
