"""Properties checked by name, each one a test that a small plausible bug would fail: stochastic
depth's train-mode outputs and drop rates away from p = 0.5 (where keeping and dropping look alike),
and Fixup-110 actually learning in a few steps (its loss must fall, not merely stay finite)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from depthlab.models import build_model
from depthlab.models.blocks import BasicBlock

N_DRAWS = 400


def _band(p, n):
    """Counts within 4 binomial standard deviations of n p."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - 4 * sd, n * p + 4 * sd


@pytest.mark.parametrize("p", [0.8, 0.2])
def test_stochastic_depth_batch_mode_returns_the_shortcut_or_the_undropped_block_exactly(p):
    torch.manual_seed(0)
    block = BasicBlock(4, 4).train()
    block.survival_prob = p
    undropped = copy.deepcopy(block)
    undropped.survival_prob = 1.0
    x = torch.relu(torch.randn(8, 4, 5, 5))  # post-ReLU inputs, as inside a network
    kept = 0
    for _ in range(N_DRAWS):
        out = block(x)
        if torch.equal(out, undropped(x)):  # train-mode BN: the same batch gives the same statistics
            kept += 1
        else:
            assert torch.equal(out, block.shortcut(x)), "a train-mode output is neither the block nor its shortcut"
    lo, hi = _band(p, N_DRAWS)
    assert lo <= kept <= hi, f"kept {kept} of {N_DRAWS} at survival probability {p}"


@pytest.mark.parametrize("p", [0.8, 0.2])
def test_stochastic_depth_sample_mode_keeps_each_sample_with_probability_p(p):
    torch.manual_seed(0)
    block = BasicBlock(2, 2).train()
    block.survival_prob, block.drop_mode = p, "sample"
    undropped = copy.deepcopy(block)
    undropped.survival_prob = 1.0
    x = torch.relu(torch.randn(N_DRAWS, 2, 3, 3))
    out, full, short = block(x), undropped(x), torch.relu(block.shortcut(x))
    kept = sum(bool(torch.equal(out[i], full[i])) for i in range(N_DRAWS))
    dropped = sum(bool(torch.equal(out[i], short[i])) for i in range(N_DRAWS))
    assert kept + dropped == N_DRAWS  # every sample is exactly one of the two
    lo, hi = _band(p, N_DRAWS)
    assert lo <= kept <= hi, f"kept {kept} of {N_DRAWS} samples at survival probability {p}"


def test_fixup_110_loss_falls_below_0_9_ln10_in_ten_sgd_steps():
    torch.manual_seed(0)
    model = build_model("fixup-resnet110")
    x, y = torch.randn(16, 3, 8, 8), torch.randint(10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    final = F.cross_entropy(model(x), y).item()
    assert abs(losses[0] - math.log(10)) < 1e-6  # logits exactly 0 at init
    assert final < 0.9 * math.log(10), [v / math.log(10) for v in losses + [final]]


# ----------------------------------------------------------------------------- init scales
# On layers whose fan_in and fan_out differ (a downsampling conv, 16 -> 32 channels): square layers
# cannot tell a fan_in scale from a fan_out one. Sample std of 4,608 weights: about 1% error.

def _std(w):
    return float(w.detach().double().std())


def _downsampling_conv(model):
    return model.blocks[3].branch.conv1.weight  # stage 2's first block: 16 -> 32 channels, stride 2


@pytest.mark.parametrize("scheme,fan", [("kaiming", 32 * 9), ("kaiming-fan-in", 16 * 9)])
def test_kaiming_schemes_use_their_own_fan_on_a_downsampling_conv(scheme, fan):
    torch.manual_seed(0)
    w = _downsampling_conv(build_model("resnet20", init=scheme))
    assert w.shape == (32, 16, 3, 3)
    assert _std(w) == pytest.approx(math.sqrt(2.0 / fan), rel=0.05)


def test_fixup_scales_the_first_branch_conv_from_fan_out():
    torch.manual_seed(0)
    model = build_model("fixup-resnet20")  # L = 9 branches of m = 2 convs: scale L^(-1/(2m-2)) = 1/3
    assert _std(_downsampling_conv(model)) == pytest.approx(math.sqrt(2.0 / (32 * 9)) / 3, rel=0.05)
    assert float(model.blocks[3].branch.conv2.weight.detach().abs().max()) == 0.0  # a branch's last conv: 0


def test_xavier_bound_and_std_on_a_downsampling_conv():
    torch.manual_seed(0)
    w = _downsampling_conv(build_model("resnet20", init="xavier"))
    bound = math.sqrt(6.0 / (16 * 9 + 32 * 9))
    largest = float(w.detach().abs().max())
    assert 0.99 * bound < largest <= bound  # U(-a, a) fills its range
    assert _std(w) == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
