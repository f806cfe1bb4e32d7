"""Gradient clipping by global norm, the training method added as one file
(depthlab/methods/clip_grad_norm.py): its exact property, its config key and its validation."""
import math

import pytest
import torch

from depthlab.config import ConfigError, RunConfig
from depthlab.methods import METHODS
from depthlab.models import build_model
from depthlab.training.method_hooks import TrainingMethods


def _grads_after(max_norm):
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, width=4, in_channels=1)
    model(torch.randn(8, 1, 8, 8)).square().mean().backward()
    raw = [p.grad.clone() for p in model.parameters()]
    methods = TrainingMethods(RunConfig().with_overrides([f"methods.clip_grad_norm={max_norm}"]).methods)
    methods.setup(model)
    methods.after_backward(model, step=0)
    return raw, [p.grad for p in model.parameters()]


def _global_norm(grads):
    return math.sqrt(sum(float(g.double().square().sum()) for g in grads))


def test_gradients_above_the_maximum_are_scaled_to_it_keeping_their_direction():
    raw, clipped = _grads_after(1e-3)
    norm = _global_norm(raw)
    assert norm > 1e-3
    assert _global_norm(clipped) == pytest.approx(1e-3, rel=1e-5)
    scale = 1e-3 / (norm + 1e-6)  # torch's clip_grad_norm_ divides by norm + 1e-6
    assert all(torch.allclose(c, r * scale, rtol=1e-5, atol=0) for r, c in zip(raw, clipped))


def test_gradients_below_the_maximum_are_unchanged():
    raw, clipped = _grads_after(1e6)
    assert all(torch.equal(r, c) for r, c in zip(raw, clipped))


def test_config_key_default_off_and_validation():
    assert RunConfig().methods.clip_grad_norm is None and not METHODS.get("clip_grad_norm").enabled(RunConfig().methods)
    assert RunConfig().with_overrides(["methods.clip_grad_norm=2.5"]).validate().methods.clip_grad_norm == 2.5
    for bad in ("0", "-1"):
        with pytest.raises(ConfigError, match=r"methods\.clip_grad_norm must be > 0"):
            RunConfig().with_overrides([f"methods.clip_grad_norm={bad}"]).validate()


def test_gradient_tracking_records_the_raw_gradients_before_clipping_changes_them(tmp_path, monkeypatch):
    """``diagnostics.track_gradients`` reads each step's gradients before any method changes them:
    the norms recorded equal the norms of the raw gradients that reach the clipping, per layer
    and step (with clipping at 1e-3 every step is clipped, so the other order records ~1e-3)."""
    import json

    from depthlab.diagnostics.gradient_flow import parametric_layers
    from depthlab.methods import clip_grad_norm
    from depthlab.training import train

    seen = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        seen.append([float(m.weight.grad.norm()) for _, m in layers])
        return real_clip(params, max_norm, *args, **kwargs)

    cfg = RunConfig().with_overrides(["model.name=resnet", "model.depth=8", "model.width=4", "data.name=digits",
                                      "train.epochs=2", "train.batch_size=256", "train.device=cpu",
                                      "train.threads=1", "methods.clip_grad_norm=1e-3",
                                      "diagnostics.track_gradients=true", f"out_dir={tmp_path}", "run_id=r"])
    original_setup = clip_grad_norm.ClipGradNorm.setup

    def setup(self, model):
        layers[:] = parametric_layers(model)
        original_setup(self, model)

    layers = []
    monkeypatch.setattr(clip_grad_norm.ClipGradNorm, "setup", setup)
    monkeypatch.setattr(clip_grad_norm.torch.nn.utils, "clip_grad_norm_", spy)
    train(cfg, quiet=True)
    rows = [json.loads(line) for line in (cfg.run_dir / "diagnostics.jsonl").read_text().splitlines()]
    by_layer = {}
    for r in rows:
        by_layer.setdefault(r["layer"], []).extend(r["value"])
    recorded = [[by_layer[name][step] for name, _ in layers] for step in range(len(seen))]
    assert len(seen) == sum(len(v) for v in by_layer.values()) // len(layers) > 2
    assert max(max(s) for s in seen) > 1e-2  # the raw norms are far above the clipping threshold
    for step, (want, got) in enumerate(zip(seen, recorded)):
        assert got == pytest.approx(want, rel=1e-5), step
