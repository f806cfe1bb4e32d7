"""The first-steps probe replays a run's real start: its seeded initial weights, its loss on the seeded
batch, its gradients, and it stops where the loss stops being finite."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.config import RunConfig
from depthlab.data import load_dataset
from depthlab.experiments.firststeps import describe, first_steps
from depthlab.training import train
from depthlab.training.checkpoint import list_checkpoints, load_checkpoint
from depthlab.training.trainer import build_from_config, resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(tmp_path, *overrides):
    return RunConfig().with_overrides([
        "model.name=plain", "model.depth=8", "model.width=4", "data.name=digits", "train.epochs=1",
        "train.batch_size=64", "train.device=cpu", "train.keep_last=100", f"out_dir={tmp_path}", "run_id=r",
        *overrides]).validate()


def test_the_first_step_is_the_runs_own_start(tmp_path):
    cfg = _cfg(tmp_path, "train.seed=3")
    train(cfg, quiet=True)
    init = load_checkpoint(list_checkpoints(cfg.run_dir / "checkpoints")[0])["model"]  # epoch_0000: before step 0
    data = load_dataset("digits")
    rows = first_steps(resolve_config(cfg, build_from_config(cfg, 10, 1), data), data, steps=2)
    assert [r["step"] for r in rows] == [0, 1] and all(r["finite"] for r in rows)
    convs = [k for k, v in init.items() if k.endswith("weight") and v.dim() == 4]
    norms = [float(init[k].norm()) for k in convs]
    assert rows[0]["filter_norm_mean"] == pytest.approx(sum(norms) / len(norms), rel=1e-6)
    assert rows[0]["filter_norm_max"] == pytest.approx(max(norms), rel=1e-6)
    # the loss and gradients of the seeded batch, by hand, on the run's initial weights
    model = build_from_config(cfg, data.num_classes, data.in_channels)
    model.load_state_dict(init)
    model.train()
    idx = torch.randint(len(data.train_x), (64,), generator=torch.Generator().manual_seed(3))
    loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
    loss.backward()
    grads = [m.weight.grad.norm() for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert rows[0]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert rows[0]["grad_ratio"] == pytest.approx(float(grads[0] / grads[-1]), rel=1e-4)
    assert rows[1]["filter_norm_mean"] != rows[0]["filter_norm_mean"]  # a step was taken
    assert describe(rows).startswith("loss finite over 2 steps")


def test_it_stops_at_the_first_non_finite_loss_and_says_where(tmp_path):
    cfg = _cfg(tmp_path, "train.lr=1e8", "train.recipe=he2015", "train.batch_size=64")
    data = load_dataset("digits")
    rows = first_steps(resolve_config(cfg, build_from_config(cfg, 10, 1), data), data, steps=40)
    assert not rows[-1]["finite"] and all(r["finite"] for r in rows[:-1]) and len(rows) < 40
    assert not math.isfinite(rows[-1]["loss"]) or rows[-1]["penalty"] is not None
    assert describe(rows).startswith(f"loss not finite at step {rows[-1]['step']}")


def test_the_replay_separates_the_plain_nets_filter_inflation_from_the_regularisers_overflow(tmp_path):
    """xie-plain-110 on digits, the orthonormal experiment's setting: the first step inflates the bare
    plain net's filters (BN keeps it finite); with the regulariser the penalty, quartic in the filters,
    overflows. The experiment's sentence carries exactly the replayed numbers."""
    from depthlab.experiments.orthonormal import _mechanism
    data = load_dataset("digits")
    probe = {}
    for v, extra in (("plain", []), ("plain+orthonormal", ["methods.orthonormal=1e-3"])):
        cfg = _cfg(tmp_path, "model.name=xie-plain", "model.depth=110", "model.width=16", "train.recipe=quick",
                   "train.epochs=12", *extra)
        probe[v] = first_steps(resolve_config(cfg, build_from_config(cfg, 10, 1), data), data, steps=5)
    plain, orth = probe["plain"], probe["plain+orthonormal"]
    assert all(r["finite"] for r in plain) and len(plain) == 5
    assert plain[1]["filter_norm_mean"] > 10 * plain[0]["filter_norm_mean"]
    assert plain[0]["filter_norm_mean"] == pytest.approx(orth[0]["filter_norm_mean"])  # the same start
    assert not orth[-1]["finite"] and orth[1]["penalty"] > 1e6 * orth[0]["penalty"]
    text = _mechanism(probe)
    assert f"{plain[0]['filter_norm_mean']:.3g} -> {plain[1]['filter_norm_mean']:.3g}" in text
    assert f"plain+orthonormal: {orth[0]['penalty']:.3g} -> {orth[1]['penalty']:.3g} after one step" in text
    assert f"loss not finite at step {orth[-1]['step']}" in text
    assert "regulariser penalty" in describe(orth) and "after one step" in describe(plain)
    # no inflation in the reference net (or no failure): no mechanism is claimed
    assert _mechanism({"plain": plain[:1] + plain[:1], "plain+orthonormal": orth}) is None
    assert _mechanism({"plain": plain, "plain+orthonormal": plain}) is None
    no_penalty = [dict(r, penalty=None) for r in orth]  # a failure without the regulariser: not its mechanism
    assert _mechanism({"plain": plain, "plain+orthonormal": no_penalty}) is None
