"""Stochastic depth (depthlab/methods/): the paper's defaults (p_L = 0.5, per mini-batch), the linear decay for
any block count, validation of L and p_L naming the field, and the contract with blocks from elsewhere (residual
blocks only; a block without ``enabled`` always runs)."""

import pytest
from modelkit import methods_cfg, tiny_resnet
from torch import nn

from depthlab.config import ConfigError
from depthlab.methods import (
    apply_stochastic_depth,
    expected_active_blocks,
    survival_probs,
)
from depthlab.training.method_hooks import TrainingMethods

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
