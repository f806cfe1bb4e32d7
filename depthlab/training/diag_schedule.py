"""Diagnostics during training (``config.diagnostics``): per-quantity schedules and per-step
gradient-norm tracking, written to the run's ``diagnostics.jsonl``.

Schedule syntax, ``diagnostics.quantities``: comma-separated ``name@rule`` with rule
``N`` (every N epochs, the default 1), ``log`` (epochs 1, 2, 4, 8, ...), ``last`` (the final epoch)
or ``init`` (before step 0 only); e.g. ``gradient_flow@1,discriminability@log,lesion@last``.
``diagnostics.at_init`` also runs every scheduled quantity before step 0.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from depthlab.config import ConfigError, RunConfig, parse_schedule
from depthlab.diagnostics import DIAGNOSTICS
from depthlab.diagnostics.gradient_flow import GradientFlowTracker
from depthlab.fileio import append_jsonl
from depthlab.training.checkpoint import rng_state, set_rng_state


def validate_run(cfg: RunConfig) -> RunConfig:
    """``cfg.validate()`` plus the names in ``diagnostics.quantities`` (the diagnostics registry sits
    beside the config, not below it): everything a run needs checked before anything is written."""
    cfg.validate()
    for name in parse_schedule(cfg.diagnostics.quantities or ""):
        if name not in DIAGNOSTICS:
            raise ConfigError(f"diagnostics.quantities: {DIAGNOSTICS.unknown_message(name)}")
    return cfg


def due(rule: str, epoch: int, last_epoch: int) -> bool:
    """Is a quantity with ``rule`` due after 1-based ``epoch``? (epoch 0 = before training)"""
    if epoch == 0:
        return rule == "init"
    if rule == "last":
        return epoch == last_epoch
    if rule == "log":
        return epoch & (epoch - 1) == 0
    if rule == "init":
        return False
    return epoch % int(rule) == 0


class TrainingDiagnostics:
    """Runs the scheduled quantities at epoch ends and tracks weight-gradient norms every step."""

    def __init__(self, cfg, model, dataset, run_dir: Path, steps_per_epoch: int, tensorboard=None):
        self.cfg, self.model, self.dataset = cfg.diagnostics, model, dataset
        self.tensorboard = tensorboard  # a TensorBoardLog mirroring the scalar records, or None
        self.path = Path(run_dir) / "diagnostics.jsonl"
        self.steps_per_epoch, self.last_epoch = steps_per_epoch, cfg.train.epochs
        self.schedule = parse_schedule(self.cfg.quantities or "")
        self.tracker, self._history = None, []
        if self.cfg.track_gradients:
            self.tracker = GradientFlowTracker(model)
            self.tracker.attach()

    def run(self, epoch: int) -> None:
        """Quantities due after ``epoch`` (0: before training, with ``at_init``)."""
        names = [q for q, rule in self.schedule.items()
                 if due(rule, epoch, self.last_epoch) or (epoch == 0 and self.cfg.at_init)]
        if not names:
            return
        was_training, rng = self.model.training, rng_state()
        rows = []
        try:
            for q in names:
                for r in DIAGNOSTICS.get(q)(self.model, self.dataset):
                    rows.append({"step": epoch * self.steps_per_epoch, "epoch": epoch, **r})
        finally:  # training continues exactly as without diagnostics (exact resume holds)
            self.model.train(was_training)
            set_rng_state(rng)
        self._write(rows)

    def after_step(self, step: int) -> None:
        if self.tracker is not None:
            self._history.append(self.tracker.read())  # on device; no sync

    def state(self):
        """The current epoch's per-step gradient norms so far (for a mid-epoch checkpoint)."""
        return torch.stack(self._history).cpu() if self.tracker is not None and self._history else None

    def load_state(self, state) -> None:
        if self.tracker is not None and state is not None:
            device = next(self.model.parameters()).device
            self._history = [row.to(device) for row in state]

    def end_epoch(self, epoch: int) -> None:
        """Flush the per-step gradient norms of ``epoch``: one record per layer, a value per step."""
        if self.tracker is None or not self._history:
            return
        norms = torch.stack(self._history).float().cpu()  # (steps, layers): one sync per epoch
        self._history = []
        first = (epoch - 1) * self.steps_per_epoch + 1
        self._write([{"step": epoch * self.steps_per_epoch, "epoch": epoch, "quantity": "gradient_tracking",
                      "layer": name, "name": "weight_grad_norm_per_step", "value": norms[:, i].tolist(),
                      "first_step": first} for i, name in enumerate(self.tracker.names)])

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.detach()

    def _write(self, rows: List[dict]) -> None:
        append_jsonl(self.path, rows)
        if self.tensorboard is not None:
            self.tensorboard.diagnostics(rows)
