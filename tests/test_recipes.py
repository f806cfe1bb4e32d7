import pytest

from depthlab.config import TrainConfig
from depthlab.recipes import RECIPES, resolve_train


def test_he2015_schedule_steps_at_half_and_three_quarters():
    t = resolve_train(TrainConfig(recipe="he2015"), depth=56)
    assert (t.lr, t.momentum, t.weight_decay, t.batch_size, t.warmup_iters) == (0.1, 0.9, 1e-4, 128, 0)
    f = RECIPES.get("he2015").lr_factor(64000, t.warmup_iters, t.warmup_lr, t.lr)
    assert [f(0), f(31999), f(32000), f(47999), f(48000), f(63999)] == [1, 1, 0.1, 0.1, 0.01, 0.01]


def test_he2015_warmup_for_depth_110_only():
    deep = resolve_train(TrainConfig(recipe="he2015"), depth=110)
    assert deep.warmup_iters == 400 and deep.warmup_lr == 0.01
    f = RECIPES.get("he2015").lr_factor(64000, deep.warmup_iters, deep.warmup_lr, deep.lr)
    assert f(0) * deep.lr == pytest.approx(0.01) and f(399) * deep.lr == pytest.approx(0.01) and f(400) == 1
    assert resolve_train(TrainConfig(recipe="he2015", warmup_iters=10), depth=20).warmup_iters == 10


def test_user_values_win_over_recipe():
    t = resolve_train(TrainConfig(recipe="quick", lr=0.3, epochs=2), depth=20)
    assert t.lr == 0.3 and t.epochs == 2 and t.batch_size == RECIPES.get("quick").batch_size


def test_quick_one_cycle_rises_then_falls_to_zero():
    f = RECIPES.get("quick").lr_factor(100, 0, 0.0, 0.05)
    vals = [f(i) for i in range(101)]
    peak = vals.index(max(vals))
    assert peak == 25 and vals[0] < vals[10] < vals[peak] and vals[100] == 0 and vals[60] > vals[90]
