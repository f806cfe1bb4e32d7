"""Training recipes: an optimiser and a learning-rate schedule with their defaults.

A recipe fills the ``train.*`` fields a user leaves empty; the resolved values are saved with
the run. Schedules are functions of the *iteration*, so they resume exactly.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from depthlab.registry import Registry

RECIPES = Registry("recipe")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    schedule: str            # "step" | "onecycle"
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool
    warmup_lr: float = 0.0
    warmup_iters: int = 0
    warmup_min_depth: int = 0  # apply the warm-up only to nets at least this deep

    def lr_factor(self, total_steps: int, warmup_iters: int, warmup_lr: float, lr: float) -> Callable[[int], float]:
        """Multiplier of ``lr`` at iteration ``it`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""
        if self.schedule == "step":
            m1, m2 = int(0.5 * total_steps), int(0.75 * total_steps)

            def f(it):
                if it < warmup_iters:
                    return warmup_lr / lr
                return 1.0 if it < m1 else (0.1 if it < m2 else 0.01)
        elif self.schedule == "onecycle":
            up = max(1, int(0.25 * total_steps))

            def f(it):
                if it < up:
                    return 0.1 + 0.9 * it / up
                return max(0.0, (total_steps - it) / max(1, total_steps - up))
        else:  # pragma: no cover - guarded by the registry
            raise ValueError(f"unknown schedule {self.schedule!r}")
        return f


RECIPES.register("he2015", Recipe(
    name="he2015",
    description="He et al. 2015 CIFAR: SGD 0.1, momentum 0.9, wd 1e-4, batch 128, lr /10 at 50% and "
                "75% of the iterations; 0.01 for the first 400 iterations when depth >= 110",
    schedule="step", epochs=164, batch_size=128, lr=0.1, momentum=0.9, weight_decay=1e-4,
    nesterov=False, warmup_lr=0.01, warmup_iters=400, warmup_min_depth=110))

RECIPES.register("quick", Recipe(
    name="quick",
    description="short one-cycle schedule for the bundled datasets: SGD+Nesterov 0.05, momentum 0.9, "
                "wd 5e-4, batch 64, 12 epochs, linear warm-up over 25% then linear decay to 0",
    schedule="onecycle", epochs=12, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
    nesterov=True))


def resolve_train(train_cfg, depth: int):
    """Return a copy of ``train_cfg`` with every ``None`` filled from its recipe."""
    recipe: Recipe = RECIPES.get(train_cfg.recipe)
    filled = {}
    for name in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "nesterov", "warmup_lr"):
        if getattr(train_cfg, name) is None:
            filled[name] = getattr(recipe, name)
    if train_cfg.warmup_iters is None:
        filled["warmup_iters"] = recipe.warmup_iters if depth >= recipe.warmup_min_depth else 0
    return dataclasses.replace(train_cfg, **filled)
