"""Gradient clipping by global norm (Pascanu, Mikolov, Bengio 2013, arXiv 1211.5063, Sec. 3.2):
when the norm of all gradients together exceeds ``max_norm``, every gradient is scaled by
``max_norm / norm``; below it nothing changes. ``methods.clip_grad_norm=<max norm>``.

The norm is over every trainable parameter's gradient (the 2-norm of their concatenation), taken
after ``backward`` and before the optimizer step; in data-parallel training the gradients are
already averaged then, so every process clips alike. No host-device sync."""
from __future__ import annotations

import torch

from depthlab.methods.base import TrainingMethod, positive, register
from depthlab.registry import Option


@register
class ClipGradNorm(TrainingMethod):
    name = "clip_grad_norm"
    title = "gradient clipping: scale all gradients down when their global 2-norm exceeds a maximum"
    source = "Pascanu, Mikolov, Bengio 2013, arXiv 1211.5063"
    options = {"clip_grad_norm": Option(float, None, "the maximum global gradient norm; None: off", check=positive)}
    example = {"clip_grad_norm": 0.1}

    def setup(self, model) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]

    def after_backward(self, model, step: int) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.cfg.clip_grad_norm)
