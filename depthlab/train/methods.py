"""How the trainer applies ``config.methods``: optimiser parameter groups, the orthonormality
penalty added to the loss, and backward error modulation switched on for the first N epochs."""
from __future__ import annotations

import torch


def make_optimizer(model, t, methods) -> torch.optim.Optimizer:
    """SGD; with the orthonormality regulariser replacing weight decay (Xie et al. 2017), the
    regularised conv weights get no weight decay and every other parameter keeps ``t.weight_decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}]
    if methods.orthonormal > 0 and methods.orthonormal_replaces_wd:
        from depthlab.methods import orthonormal_weights

        reg = {id(w) for _, w in orthonormal_weights(model)}
        groups = [{"params": [p for p in params if id(p) not in reg]},
                  {"params": [p for p in params if id(p) in reg], "weight_decay": 0.0}]
    from depthlab.train.fastpath import optimizer_flags

    opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                          nesterov=t.nesterov and t.momentum > 0, **optimizer_flags(t.optimizer_impl))
    fill_momentum_buffers(opt)
    return opt


def fill_momentum_buffers(opt: torch.optim.Optimizer) -> None:
    """Give every SGD parameter without one a zero momentum buffer. The same arithmetic as
    SGD's lazy first step (``buf = grad`` equals ``0 * momentum + grad`` when dampening is 0), but
    fused SGD needs all buffers or none: with stochastic depth a dropped block's parameters
    first get a gradient steps after the others, and fused SGD would fail on the mixed list."""
    for group in opt.param_groups:
        if not group.get("momentum") or group.get("dampening", 0):
            continue
        for p in group["params"]:
            state = opt.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class TrainingMethods:
    """Per-step and per-epoch effects of ``config.methods`` on a model being trained."""

    def __init__(self, model, methods):
        self.model, self.cfg = model, methods
        self.modulation, self.weights = None, []
        if methods.orthonormal > 0:  # found once, not re-walked every step
            from depthlab.methods import orthonormal_weights

            self.weights = orthonormal_weights(model)
        if methods.modulation is not None:
            from depthlab.methods import ErrorModulation

            # record=False: nothing reads the per-layer profile during training
            self.modulation = ErrorModulation(model, reference=methods.modulation, record=False)
            self.modulation.attach()

    def start_epoch(self, epoch: int) -> None:
        if self.modulation is not None and self.cfg.modulation_epochs is not None:
            self.modulation.active = epoch < self.cfg.modulation_epochs

    def penalty(self):
        """The regulariser to add to the loss, or None."""
        if self.cfg.orthonormal > 0:
            from depthlab.methods import orthonormality_penalty

            return orthonormality_penalty(self.weights, self.cfg.orthonormal)
        return None

    def close(self) -> None:
        if self.modulation is not None:
            self.modulation.detach()
