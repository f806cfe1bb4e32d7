"""The fast path changes how a step runs, never what it computes: activation checkpointing is
exact, channels_last and the SGD implementations agree with the plain path to rounding, bf16 to
bf16 precision, flushed denormals only below what float32 weights can add; options validate and
resolve per device."""
import copy
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from stops import StopAfter

import depthlab.training.trainer as loop
from depthlab.config import ConfigError, RunConfig, TrainConfig
from depthlab.methods import apply_stochastic_depth
from depthlab.models import build_model
from depthlab.models.checkpointing import frozen_batchnorm_stats, segment_bounds
from depthlab.recipes import resolve_train
from depthlab.training import train
from depthlab.training.fastpath import (
    AUTO_DEFAULTS,
    FastStep,
    bf16_native,
    denormals_flushed,
    prepare_model,
    resolve_fast_path,
)

CPU = torch.device("cpu")


def _t(**fast):
    return resolve_fast_path(resolve_train(dataclasses.replace(TrainConfig(), **fast), 0), CPU)


@pytest.mark.parametrize("n,k", [(1, 1), (9, 3), (10, 3), (54, -1), (5, 9), (27, 4)])
def test_segments_partition_the_blocks_in_order(n, k):
    bounds = segment_bounds(n, k)
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [e - s for s, e in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
    assert len(bounds) == (min(k, n) if k > 0 else round(n ** 0.5))


def _grads_buffers_rng(model, x, y, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    return loss.detach(), grads, [b.clone() for b in model.buffers()], torch.get_rng_state()


@pytest.mark.parametrize("name,sd_mode", [("resnet20", "batch"), ("resnet20", "sample"), ("plain20", None),
                                          ("preact-resnet20", "batch")])
def test_activation_checkpointing_is_exact(name, sd_mode):
    """Same loss, bit-identical gradients and BN running statistics (each BN updates once per step,
    not again in the recomputation), same stochastic-depth drops, same RNG state after the step."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3)
    if sd_mode:
        apply_stochastic_depth(model, 0.5, mode=sd_mode)
    ckpt = copy.deepcopy(model)
    ckpt.checkpoint_segments = -1
    x, y = torch.randn(6, 3, 16, 16), torch.randint(0, 10, (6,))
    for seed in range(3):  # several seeds: different drops
        a = _grads_buffers_rng(model, x, y, seed)
        b = _grads_buffers_rng(ckpt, x, y, seed)
        assert torch.equal(a[0], b[0])
        for ga, gb in zip(a[1], b[1]):
            assert (ga is None and gb is None) or torch.equal(ga, gb)
        for ba, bb in zip(a[2], b[2]):
            assert torch.equal(ba, bb)
        assert torch.equal(a[3], b[3])


def test_checkpointing_keeps_only_segment_inputs():
    """Bytes saved for backward during the forward pass (measured by a saved-tensor hook): about
    n/k + k blocks' worth instead of n; here resnet110 (54 blocks, 7 segments) keeps < 1/3."""
    def saved_bytes(segments):
        torch.manual_seed(0)
        model = build_model("resnet110", num_classes=10, in_channels=3)
        model.checkpoint_segments = segments
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
        loss.backward()
        return total[0]
    full, ckpt = saved_bytes(0), saved_bytes(-1)
    assert ckpt < full / 3


def test_frozen_batchnorm_stats_restores_everything():
    bn = torch.nn.BatchNorm2d(3).train()
    before = [b.clone() for b in bn.buffers()]
    with frozen_batchnorm_stats([bn]):
        out = bn(torch.randn(4, 3, 5, 5) * 3 + 1)
    assert all(torch.equal(a, b) for a, b in zip(before, bn.buffers()))
    assert bn.momentum == 0.1 and abs(out.mean().item()) < 1e-5  # still normalised by batch statistics


def _steps(fast, n=3, name="resnet20"):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, in_channels=3)
    t = _t(lr=0.05, **fast)
    forward = prepare_model(model, t, CPU)
    opt = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=0.9, weight_decay=5e-4, nesterov=True,
                          **({"fused": True} if t.optimizer_impl == "fused" else
                             {"foreach": t.optimizer_impl == "foreach"}))
    step = FastStep(forward, opt, t, CPU)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(n):
        x, y = torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)
        losses.append(step(x, y)[0].item())
    return losses, [p.detach().clone() for p in model.parameters()]


PLAIN = dict(bf16=False, channels_last=False, optimizer_impl="for-loop")


@pytest.mark.parametrize("fast", [dict(optimizer_impl="foreach"), dict(optimizer_impl="fused"),
                                  dict(channels_last=True, optimizer_impl="fused"), dict(checkpoint_segments=2)])
def test_fast_path_matches_the_plain_path_to_rounding(fast):
    base_l, base_w = _steps(PLAIN)
    loss, w = _steps({**PLAIN, **fast})
    assert loss == pytest.approx(base_l, rel=1e-4, abs=1e-5)
    for a, b in zip(base_w, w):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bf16_matches_fp32_to_bf16_precision():
    base_l, base_w = _steps(PLAIN)
    loss, w = _steps({**PLAIN, "bf16": True})
    assert loss == pytest.approx(base_l, rel=0.03)   # bf16 has an 8-bit mantissa (relative step 2^-8)
    a, b = torch.cat([p.flatten() for p in base_w]), torch.cat([p.flatten() for p in w])
    assert ((a - b).norm() / a.norm()).item() < 0.01


def test_auto_resolves_per_device_and_explicit_choices_stay():
    t = _t()
    auto = AUTO_DEFAULTS["cpu"]
    assert t.channels_last == auto["channels_last"] and t.optimizer_impl == auto["optimizer_impl"]
    assert t.bf16 == (auto["bf16"] and bf16_native(CPU))
    t = _t(bf16=True, channels_last=False, optimizer_impl="for-loop")
    assert (t.bf16, t.channels_last, t.optimizer_impl) == (True, False, "for-loop")
    mps = torch.device("mps")
    with pytest.raises(ConfigError, match="train.bf16"):
        resolve_fast_path(resolve_train(dataclasses.replace(TrainConfig(), bf16=True), 0), mps)
    assert resolve_fast_path(resolve_train(TrainConfig(), 0), mps).optimizer_impl == "foreach"


@pytest.mark.parametrize("override,field", [("train.optimizer_impl=adam", "train.optimizer_impl"),
                                            ("train.compile=fast", "train.compile"),
                                            ("train.checkpoint_segments=-3", "train.checkpoint_segments"),
                                            ("train.channels_last=maybe", "train.channels_last"),
                                            ("train.flush_denormal=maybe", "train.flush_denormal")])
def test_bad_fast_path_values_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        RunConfig().with_overrides([override]).validate()


def _run(tmp_path, run_id, *overrides):
    cfg = RunConfig().with_overrides([
        "model.name=resnet", "model.depth=14", "data.name=digits", "train.epochs=2", "train.device=cpu",
        "train.bf16=false", f"out_dir={tmp_path}", f"run_id={run_id}", *overrides])
    train(cfg, quiet=True)
    rows = [json.loads(s) for s in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return rows, json.loads((cfg.run_dir / "config.json").read_text())


def test_trainer_with_checkpointing_trains_bit_for_bit_the_same(tmp_path):
    a, _ = _run(tmp_path, "a")
    b, saved = _run(tmp_path, "b", "train.checkpoint_segments=-1")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["test_acc"] for r in a] == [r["test_acc"] for r in b]
    assert saved["train"]["checkpoint_segments"] == -1
    assert saved["train"]["optimizer_impl"] in ("foreach", "fused", "for-loop")  # resolved, never "auto"
    assert saved["train"]["channels_last"] in (True, False) and saved["train"]["bf16"] is False


def test_a_run_resumes_under_a_different_fast_path(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "StopSignals", StopAfter)  # stopped at step 30 of 46
    _run(tmp_path, "r", "train.channels_last=false", "train.optimizer_impl=fused")
    monkeypatch.undo()
    cfg = RunConfig().with_overrides([
        "model.name=resnet", "model.depth=14", "data.name=digits", "train.epochs=2", "train.device=cpu",
        f"out_dir={tmp_path}", "run_id=r", "train.channels_last=true", "train.optimizer_impl=for-loop",
        "train.bf16=false"])
    s = train(cfg, resume=True, quiet=True)
    assert s["status"] == "finished" and s["epoch"] == 2


def test_denormals_read_as_zero_while_flushed_and_come_back_after():
    tiny = torch.tensor([1e-39, 3e-39], dtype=torch.float32)  # float32 denormals (below 1.18e-38)
    assert (tiny * 1.0).ne(0).all()
    with denormals_flushed(True):
        assert torch.equal(tiny * 1.0, torch.zeros(2))
        assert torch.equal(torch.tensor([1e-30]) * 1e-10, torch.zeros(1))  # a result in that range: 0 too
        assert (torch.tensor([1e-30]) * 1e-5).item() == pytest.approx(1e-35)  # normal numbers: unchanged
    assert (tiny * 1.0).ne(0).all()
    with denormals_flushed(False):
        assert (tiny * 1.0).ne(0).all()
    assert _t().flush_denormal is AUTO_DEFAULTS["cpu"]["flush_denormal"] is True
    assert _t(flush_denormal=False).flush_denormal is False
    assert resolve_fast_path(resolve_train(TrainConfig(), 0), torch.device("mps")).flush_denormal is False


def test_the_trainer_flushes_denormals_on_the_cpu_unless_told_not_to(tmp_path, monkeypatch):
    calls = []
    real = torch.set_flush_denormal
    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: calls.append(on) or real(on))
    _, saved = _run(tmp_path, "auto", "train.epochs=1")
    assert calls == [True, False] and saved["train"]["flush_denormal"] is True
    calls.clear()
    _, saved = _run(tmp_path, "off", "train.epochs=1", "train.flush_denormal=false")
    assert calls == [] and saved["train"]["flush_denormal"] is False
    assert RunConfig().with_overrides(["train.flush_denormal=auto"]).train.flush_denormal is None


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile (inductor, CPU: needs a C++ compiler) trains like eager: the same first step
    to float32 rounding, the same one-epoch mean loss to the rounding that grows over 22 steps."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=3)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    eager = F.cross_entropy(model(x), y)
    compiled = F.cross_entropy(prepare_model(model, _t(compile="default"), CPU)(x), y)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    a, _ = _run(tmp_path, "eager", "train.epochs=1")
    b, _ = _run(tmp_path, "compiled", "train.epochs=1", "train.compile=default")
    assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=1e-2)


def test_stochastic_depth_trains_with_every_sgd_implementation(tmp_path):
    """A dropped block's parameters get their first gradient steps later than the others: fused SGD
    needs every momentum buffer up front (zero buffers: the same arithmetic as SGD's lazy start)."""
    losses = {}
    for impl in ("for-loop", "foreach", "fused"):
        rows, _ = _run(tmp_path, impl, "methods.stochastic_depth=0.5", f"train.optimizer_impl={impl}",
                       "train.channels_last=false")
        losses[impl] = [r["train_loss"] for r in rows]
    assert losses["foreach"] == pytest.approx(losses["for-loop"], rel=1e-5)
    assert losses["fused"] == pytest.approx(losses["for-loop"], rel=1e-4)


def test_zero_momentum_buffers_change_nothing():
    from depthlab.training.method_hooks import fill_momentum_buffers

    def run(fill):
        torch.manual_seed(0)
        a, b = torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3))
        opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3, foreach=False)
        if fill:
            fill_momentum_buffers(opt)
        for step in range(4):
            opt.zero_grad(set_to_none=True)
            loss = a.pow(2).sum() + (b.pow(3).sum() if step >= 2 else 0)  # b unused in steps 0 and 1
            loss.backward()
            opt.step()
        return a.detach().clone(), b.detach().clone()
    for x, y in zip(run(False), run(True)):
        assert torch.equal(x, y)
