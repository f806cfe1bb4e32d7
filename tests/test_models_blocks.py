"""Mutation-testing gaps in depthlab/models/blocks.py: the block contract (lesion, stochastic depth in both
modes, ReZero, taps, repr) checked against a hand-written forward."""
import copy

import pytest
import torch
import torch.nn.functional as F
from modelkit import assert_close, bn_eval, randomise_bn
from torch import nn

from depthlab.models.blocks import BasicBlock, Block, PreActBlock
from depthlab.models.layers import (
    ShortcutA,
    ShortcutB,
    shortcut_a,
)

pytestmark = pytest.mark.usefixtures("one_thread")


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
