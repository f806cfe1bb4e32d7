"""The trainer applies config.methods and model options: checked on tiny digits runs."""
import json

import pytest
import torch

from depthlab.config import RunConfig
from depthlab.data import load_dataset
from depthlab.training import build_from_config, evaluate_run, train, validate_run
from depthlab.training.method_hooks import TrainingMethods, make_optimizer


def _cfg(tmp_path, *overrides):
    base = ["model.name=resnet", "model.depth=14", "train.epochs=2", "train.device=cpu", f"out_dir={tmp_path}",
            "run_id=m"]
    return RunConfig().with_overrides(base + list(overrides))


def test_stochastic_depth_from_config_reaches_the_model_and_eval(tmp_path):
    cfg = _cfg(tmp_path, "methods.stochastic_depth=0.5")
    data = load_dataset("digits")
    model = build_from_config(cfg, data.num_classes, data.in_channels)
    probs = [b.survival_prob for b in model.blocks]
    L = len(probs)
    assert probs == pytest.approx([1 - (k / L) * 0.5 for k in range(1, L + 1)])
    s = train(cfg, quiet=True, dataset=data)
    # eval rebuilds the model from config.json: the survival probabilities must be applied again
    assert evaluate_run(cfg.run_dir, device="cpu")["test_acc"] == pytest.approx(s["test_acc"])
    saved = json.loads((cfg.run_dir / "config.json").read_text())
    assert saved["methods"]["stochastic_depth"] == 0.5


def test_orthonormal_regulariser_replaces_weight_decay_on_conv_weights(tmp_path):
    from depthlab.methods import orthonormal_weights, orthonormality_penalty

    cfg = _cfg(tmp_path, "model.name=plain", "methods.orthonormal=0.01", "train.weight_decay=5e-4")
    data = load_dataset("digits")
    model = build_from_config(cfg, data.num_classes, data.in_channels)
    t = cfg.train.__class__(**{**cfg.train.__dict__, "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                               "nesterov": False})
    methods = TrainingMethods(cfg.methods)
    methods.setup(model)
    opt = make_optimizer(model, t, methods)
    conv_ids = {id(w) for _, w in orthonormal_weights(model)}
    assert {id(p) for p in opt.param_groups[1]["params"]} == conv_ids and opt.param_groups[1]["weight_decay"] == 0
    assert all(id(p) not in conv_ids for p in opt.param_groups[0]["params"])
    assert opt.param_groups[0]["weight_decay"] == 5e-4
    pen = methods.penalty(model)
    assert torch.allclose(pen, orthonormality_penalty(model, 0.01)) and pen > 0
    before = float(orthonormality_penalty(model, 1.0).detach())
    train(cfg, quiet=True, dataset=data)
    trained = build_from_config(cfg, data.num_classes, data.in_channels)
    from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint

    trained.load_state_dict(load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))["model"])
    assert float(orthonormality_penalty(trained, 1.0).detach()) < before  # the regulariser pulls towards orthonormal


def test_modulation_switches_off_after_its_epochs(tmp_path):
    cfg = _cfg(tmp_path, "model.name=plain", "methods.modulation=top-conv", "methods.modulation_epochs=1")
    model = build_from_config(cfg, 10, 1)
    tm = TrainingMethods(cfg.methods)
    tm.setup(model)
    modulation = tm.get("modulation").modulation
    tm.start_epoch(0)
    assert modulation.active
    tm.start_epoch(1)
    assert not modulation.active
    tm.close()
    assert train(cfg, quiet=True)["status"] == "finished"


def test_model_options_are_checked_per_family(tmp_path):
    with pytest.raises(ValueError, match="gate_bias.*valid keys"):
        train(_cfg(tmp_path, "model.gate_bias=-2"), quiet=True)
    assert not (tmp_path / "m").exists()


def test_scheduled_diagnostics_and_gradient_tracking_during_training(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=4", "diagnostics.quantities=orthonormality@2,lesion@last,responses@log",
               "diagnostics.at_init=true", "diagnostics.track_gradients=true")
    plain = _cfg(tmp_path / "plain", "train.epochs=4")
    s = train(cfg, quiet=True)
    rows = [json.loads(line) for line in (cfg.run_dir / "diagnostics.jsonl").read_text().splitlines()]
    epochs = lambda q: sorted({r["epoch"] for r in rows if r["quantity"] == q})  # noqa: E731
    assert epochs("orthonormality") == [0, 2, 4] and epochs("lesion") == [0, 4] and epochs("responses") == [0, 1, 2, 4]
    tracked = [r for r in rows if r["quantity"] == "gradient_tracking"]
    steps = -(-1437 // 64)
    assert sorted({r["epoch"] for r in tracked}) == [1, 2, 3, 4]
    assert all(len(r["value"]) == steps and all(v > 0 for v in r["value"]) for r in tracked)
    # diagnostics do not change training: same losses as the run without them
    assert train(plain, quiet=True)["train_loss"] == s["train_loss"]


def test_bad_diagnostics_schedule_names_the_field(tmp_path):
    from depthlab.config import ConfigError

    with pytest.raises(ConfigError, match="diagnostics.quantities.*rule 'often'"):
        _cfg(tmp_path, "diagnostics.quantities=lesion@often").validate()
    with pytest.raises(ConfigError, match="diagnostics.quantities.*unknown diagnostic 'lesions'"):
        validate_run(_cfg(tmp_path, "diagnostics.quantities=lesions"))  # the names: the diagnostics registry's
    with pytest.raises(ConfigError, match="diagnostics.quantities.*unknown diagnostic 'lesions'"):
        train(_cfg(tmp_path, "diagnostics.quantities=lesions"), quiet=True)
    assert not (tmp_path / "m").exists()
