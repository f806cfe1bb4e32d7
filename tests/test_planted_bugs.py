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
