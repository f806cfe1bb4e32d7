"""How the trainer applies ``config.methods``: the training methods a config switches on
(``depthlab.methods.METHODS``), each hook called for every method in registration order, and the
optimizer built from their parameter groups."""
from __future__ import annotations

from typing import List, Optional

import torch

from depthlab.methods import enabled_methods
from depthlab.training.fastpath import optimizer_flags


class TrainingMethods:
    """The switched-on methods of a ``methods`` config section, called generically."""

    def __init__(self, cfg):
        self.methods = [cls(cfg) for cls in enabled_methods(cfg)]

    def get(self, name: str):
        """The instance of method ``name`` (KeyError if it is not switched on)."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"training method {name!r} is not switched on")

    @property
    def skips_parameters(self) -> bool:
        return any(m.skips_parameters for m in self.methods)

    def configure(self, model) -> None:
        for m in self.methods:
            m.configure(model)

    def setup(self, model) -> None:
        for m in self.methods:
            m.setup(model)

    def param_groups(self, model, groups: List[dict]) -> List[dict]:
        for m in self.methods:
            groups = m.param_groups(model, groups)
        return groups

    def start_epoch(self, epoch: int) -> None:
        for m in self.methods:
            m.start_epoch(epoch)

    def penalty(self, model) -> Optional[torch.Tensor]:
        """The sum of the methods' loss terms, or None."""
        terms = [t for t in (m.penalty(model) for m in self.methods) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def after_backward(self, model, step: int) -> None:
        for m in self.methods:
            m.after_backward(model, step)

    def state_dict(self) -> dict:
        """``{name: state}`` of the methods that keep state (saved in every checkpoint)."""
        return {m.name: s for m in self.methods if (s := m.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        for m in self.methods:
            if m.name in state:
                m.load_state_dict(state[m.name])

    def close(self) -> None:
        for m in self.methods:
            m.close()


def make_optimizer(model, t, methods: TrainingMethods) -> torch.optim.Optimizer:
    """SGD over the trainable parameters in the groups the methods make (e.g. the orthonormality
    regulariser's weights without weight decay, Fixup's scalars at a tenth of the learning rate)."""
    groups = methods.param_groups(model, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    # a method may ask for a fraction of the base learning rate (``lr_factor``, e.g. Fixup's scalars at lr/10);
    # the schedule then multiplies each group's own lr
    groups = [{**{k: v for k, v in g.items() if k != "lr_factor"}, "lr": t.lr * g["lr_factor"]}
              if "lr_factor" in g else g for g in groups]
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
