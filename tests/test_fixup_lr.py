"""Fixup trained as its authors train it: the biases and scalar multipliers at lr / 10 in their own
optimiser groups (reference code cifar/cifar_train.py), the factor kept through the schedule."""
import pytest
import torch

from depthlab.config import ConfigError, RunConfig
from depthlab.methods.fixup_lr import fixup_scalar_parameters, is_fixup
from depthlab.models import build_model
from depthlab.recipes import resolve_train
from depthlab.training.method_hooks import TrainingMethods, make_optimizer

pytestmark = pytest.mark.usefixtures("one_thread")


def optimizer(model, *overrides):
    cfg = RunConfig().with_overrides(["model.name=fixup-resnet20", *overrides]).validate()
    t = resolve_train(cfg.train, 20)
    return make_optimizer(model, t, TrainingMethods(cfg.methods)), t


def lr_of(opt):
    return {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}


def fixup(depth=8):
    return build_model("fixup-resnet", depth=depth, num_classes=10, in_channels=1, width=4)


def test_the_reference_rule_puts_every_bias_and_scale_at_a_tenth_of_the_lr():
    model = fixup()
    opt, t = optimizer(model)
    lrs = lr_of(opt)
    names = dict(model.named_parameters())
    # the reference code's rule, written out: 'bias' or 'scale' in the parameter's name
    slow = {n for n in names if "bias" in n or "scale" in n}
    assert "head.fc.bias" in slow and "blocks.0.branch.scale.scale" in slow and "stem.bias1.bias" in slow
    assert len(slow) == 3 * 5 + 3  # 5 scalars per block, the stem's and final scalar bias, the classifier bias
    for n, p in names.items():
        assert lrs[id(p)] == pytest.approx(t.lr * (0.1 if n in slow else 1.0), rel=1e-12), n
    assert opt.param_groups[0]["lr"] == t.lr  # the trainer reports group 0's lr: the base one
    assert len({g["weight_decay"] for g in opt.param_groups}) == 1  # weight decay alike for all groups


def test_only_nets_with_fixup_blocks_are_fixup_nets():
    assert is_fixup(fixup()) and not is_fixup(build_model("resnet", depth=8, num_classes=10, in_channels=1, width=4))
    assert not is_fixup(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 10)))  # no .blocks at all


def test_the_reference_rule_is_the_default_reading():
    model = fixup()
    assert fixup_scalar_parameters(model) == fixup_scalar_parameters(model, "reference")
    assert len(fixup_scalar_parameters(model)) > len(fixup_scalar_parameters(model, "scalars"))


def test_the_scalars_reading_leaves_the_classifier_bias_at_the_full_lr():
    model = fixup()
    opt, t = optimizer(model, "methods.fixup_scalar_params=scalars", "methods.fixup_scalar_lr=0.25")
    lrs = lr_of(opt)
    for n, p in model.named_parameters():
        scalar = p.numel() == 1  # ScalarBias / ScalarScale hold one number each; the classifier bias has 10
        assert lrs[id(p)] == pytest.approx(t.lr * (0.25 if scalar else 1.0), rel=1e-12), n
    assert fixup_scalar_parameters(model, "scalars") == [p for p in model.parameters() if p.numel() == 1]


def test_a_group_that_already_has_a_factor_multiplies_it():
    model = fixup()
    method = TrainingMethods(RunConfig().with_overrides(["methods.fixup_scalar_lr=0.25"]).validate().methods).get(
        "fixup_lr")
    slow = {id(p) for p in fixup_scalar_parameters(model)}
    groups = method.param_groups(model, [{"params": list(model.parameters()), "lr_factor": 0.5, "weight_decay": 0.1}])
    assert [g["lr_factor"] for g in groups] == [0.5, 0.125] and all(g["weight_decay"] == 0.1 for g in groups)
    assert {id(p) for p in groups[1]["params"]} == slow and not slow & {id(p) for p in groups[0]["params"]}


def test_factor_one_and_other_families_keep_a_single_group():
    opt, _ = optimizer(fixup(), "methods.fixup_scalar_lr=1")
    assert len(opt.param_groups) == 1
    resnet = build_model("resnet", depth=8, num_classes=10, in_channels=1, width=4)
    assert not is_fixup(resnet) and is_fixup(fixup())
    opt, t = optimizer(resnet)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == t.lr


def test_the_schedule_keeps_the_factor_at_every_step():
    model = fixup()
    opt, t = optimizer(model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 / (1 + it))
    slow = next(g for g in opt.param_groups if g["lr"] < t.lr)
    for it in range(5):
        assert slow["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"], rel=1e-12)
        assert opt.param_groups[0]["lr"] == pytest.approx(t.lr / (1 + it), rel=1e-12)
        opt.step()
        sched.step()


def test_the_options_are_checked_naming_the_field():
    with pytest.raises(ConfigError, match="methods.fixup_scalar_lr"):
        RunConfig().with_overrides(["methods.fixup_scalar_lr=0"]).validate()
    with pytest.raises(ConfigError, match="methods.fixup_scalar_lr"):
        RunConfig().with_overrides(["methods.fixup_scalar_lr=2"]).validate()
    with pytest.raises(ConfigError, match="methods.fixup_scalar_params.*reference.*scalars"):
        RunConfig().with_overrides(["methods.fixup_scalar_params=all"]).validate()
