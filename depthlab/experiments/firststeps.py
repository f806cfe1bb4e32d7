"""The first SGD steps of a run, replayed and measured: where a run fails, what goes wrong first.

``first_steps(cfg, dataset, steps)`` rebuilds a run's initial weights (its seed, its config), its
optimiser groups, training methods and learning-rate schedule (of the run's full length), and takes
``steps`` SGD steps on seeded random batches of the training set, recording after each backward pass:
the loss (and the methods' penalty), the first / last conv layer's weight-gradient norm ratio (the
gradients the optimiser applies, after the methods changed them), and the mean and largest Frobenius
norm of the conv weights. It stops at the first non-finite loss. Augmentation and the data order of
the real run are not replayed: this measures the dynamics of the first steps, not the run itself.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from depthlab.config import RunConfig
from depthlab.recipes import RECIPES
from depthlab.training.method_hooks import TrainingMethods, make_optimizer
from depthlab.training.trainer import build_from_config, seed_everything


def first_steps(cfg: RunConfig, dataset, steps: int, device: str = "cpu") -> List[dict]:
    """One row per step taken (see the module docstring); the last row has ``finite: False`` when the
    loss stopped being finite."""
    t = cfg.train
    seed_everything(t.seed)
    model = build_from_config(cfg, dataset.num_classes, dataset.in_channels).to(device).train()
    x_all, y_all = dataset.train_x.to(device), dataset.train_y.to(device)
    methods = TrainingMethods(cfg.methods)
    methods.setup(model)
    opt = make_optimizer(model, t, methods)
    spe = -(-len(x_all) // t.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, RECIPES.get(t.recipe).lr_factor(t.epochs * spe, t.warmup_iters, t.warmup_lr, t.lr))
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    gen = torch.Generator().manual_seed(t.seed)
    rows = []
    try:
        for step in range(steps):
            methods.start_epoch(step // spe)
            idx = torch.randint(len(x_all), (t.batch_size,), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            penalty = methods.penalty(model)
            total = loss if penalty is None else loss + penalty
            finite = bool(torch.isfinite(total))
            row = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": float(loss.detach()),
                   "penalty": None if penalty is None else float(penalty.detach()), "finite": finite}
            if finite:
                total.backward()
                methods.after_backward(model, step)
                grads = [float(c.weight.grad.norm()) if c.weight.grad is not None else 0.0 for c in convs]
                row["grad_ratio"] = grads[0] / grads[-1] if grads[-1] > 0 else math.inf
            norms = [float(c.weight.detach().norm()) for c in convs]
            row.update(filter_norm_mean=sum(norms) / len(norms), filter_norm_max=max(norms))
            rows.append(row)
            if not finite:
                break
            opt.step()
            sched.step()
    finally:
        methods.close()
    return rows


def describe(rows: List[dict]) -> str:
    """One line: where the loss stopped being finite (or that it stayed finite), and how the gradient
    ratio and the filter norms moved."""
    first, last = rows[0], rows[-1]
    ratio = f"first/last conv gradient ratio {first.get('grad_ratio', math.nan):.3g} at step 0"
    norms = (f"mean conv filter norm {first['filter_norm_mean']:.3g} -> {last['filter_norm_mean']:.3g}, largest "
             f"{first['filter_norm_max']:.3g} -> {last['filter_norm_max']:.3g}")
    if len(rows) > 1:
        norms += f" ({rows[1]['filter_norm_mean']:.3g} after one step)"
    if first.get("penalty") is not None:
        norms += f"; regulariser penalty {first['penalty']:.3g} -> {last['penalty']:.3g}"
    if not last["finite"]:
        return (f"loss not finite at step {last['step']} (lr {last['lr']:.3g}); {ratio}; {norms} by then")
    return f"loss finite over {len(rows)} steps ({first['loss']:.3g} -> {last['loss']:.3g}); {ratio}; {norms}"
