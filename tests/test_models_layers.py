"""Mutation-testing gaps in depthlab/models/layers.py, each a named property checked against an independent
computation: conv helpers' shapes and padding, option-A/B shortcuts' exact values, the Bernoulli keep mask and
Fixup's scalar modules."""
import math

import pytest
import torch
import torch.nn.functional as F
from modelkit import assert_close
from torch import nn

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
