"""What a training method is: a plug-in that changes how a network trains, with declared options
and only the hooks it needs; the trainer calls the hooks of every method a config switches on.

A method is one module in ``depthlab/methods/`` with a subclass of ``TrainingMethod`` registered
in ``METHODS``::

    @register
    class ClipGradNorm(TrainingMethod):
        name = "clip_grad_norm"
        options = {"clip_grad_norm": Option(float, None, "max global gradient norm", check=positive)}

        def after_backward(self, model, step):
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.clip_grad_norm)

Its options become config keys ``methods.<key>`` (the first one switches it on: a value other than
``None``, ``0`` or ``False``). Hooks, in the order the trainer calls them (all optional):

- ``configure(model)``: change the model itself; runs wherever the model is built (training,
  ``depthlab eval``, ``depthlab diagnose``), so it must not depend on training state;
- ``setup(model)``: training starts (attach hooks, find the weights to act on);
- ``param_groups(model, groups)``: the optimizer's parameter groups (per-group lr / weight decay);
- ``start_epoch(epoch)``: before each epoch (0-based);
- ``penalty(model)``: a term added to the loss (a 0-dim tensor), or ``None``;
- ``after_backward(model, step)``: after ``loss.backward()`` and before ``optimizer.step()``, with
  the 0-based global step; several methods (and the gradient tracker, which reads first) may use it;
- ``state_dict()`` / ``load_state_dict(state)``: tensors and plain values, saved in every
  checkpoint, for an exact resume;
- ``close()``: training ends (remove hooks).

A method is off by default, except one that acts only on the models it is made for and follows their
authors' code (``fixup_lr``: Fixup nets' scalars at lr/10); it declares ``on_by_default = True``.

Class attributes: ``example`` (option values that switch it on, for help and smoke tests),
``example_model`` (model overrides for the smoke tests when the method acts on some models only),
``example_off`` (option values under which it changes nothing, for a method on by default),
``conflicts`` (method names it cannot be combined with), ``skips_parameters``
(some parameters may get no gradient in a step, as with stochastic depth: data-parallel training
must look for unused parameters). ``validate(run_cfg)`` may refuse a combination with the rest of
the run's config with a ``ValueError`` that names the fields.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from depthlab.registry import Option, Registry

METHODS = Registry("training method")


class TrainingMethod:
    """Base class of a training method plug-in (see the module docstring); every hook is a no-op."""

    name: str = ""
    title: str = ""                       # one line for ``depthlab train --help`` and the docs
    source: str = ""                      # the paper
    options: Dict[str, Option] = {}       # config keys methods.<key>; the first switches it on
    example: Dict[str, Any] = {}          # option values that switch it on (help text, smoke tests)
    example_model: Tuple[str, ...] = ()   # model overrides it acts on, when that is not every model
    example_off: Dict[str, Any] = {}      # option values under which it changes nothing
    on_by_default: bool = False           # the defaults switch it on (it acts on its own models only)
    conflicts: Tuple[str, ...] = ()       # names of methods it cannot be combined with
    skips_parameters: bool = False        # some parameters may get no gradient in a step

    def __init__(self, cfg):
        self.cfg = cfg                    # the ``methods`` config section

    @classmethod
    def switch(cls) -> str:
        return next(iter(cls.options))

    @classmethod
    def enabled(cls, cfg) -> bool:
        return getattr(cfg, cls.switch()) not in (None, 0, 0.0, False)

    @classmethod
    def validate(cls, run_cfg) -> None:
        """Refuse what the method cannot work with, beyond its own options' checks: a
        ``ValueError`` naming the fields. ``run_cfg``: the whole ``RunConfig`` (model, train, ...)."""

    def configure(self, model) -> None:
        pass

    def setup(self, model) -> None:
        pass

    def param_groups(self, model, groups: List[dict]) -> List[dict]:
        return groups

    def start_epoch(self, epoch: int) -> None:
        pass

    def penalty(self, model):
        return None

    def after_backward(self, model, step: int) -> None:
        pass

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


def register(cls):
    """Class decorator: add a ``TrainingMethod`` subclass to ``METHODS``; its option names must be
    new (every option is a config key ``methods.<key>``)."""
    if not cls.options:
        raise ValueError(f"training method {cls.name!r} declares no options (the first one switches it on)")
    for other in METHODS:
        clash = set(METHODS.get(other).options) & set(cls.options)
        if clash:
            raise ValueError(f"training method {cls.name!r}: options {sorted(clash)} are already {other!r}'s")
    METHODS.register(cls.name, cls)
    return cls


def all_options() -> Dict[str, Option]:
    """``{key: Option}`` of every registered method, in registration order (the config's
    ``methods`` section)."""
    return {k: o for name in METHODS for k, o in METHODS.get(name).options.items()}


def enabled_methods(cfg) -> List[type]:
    """The method classes the ``methods`` section ``cfg`` switches on, in registration order."""
    return [METHODS.get(n) for n in METHODS if METHODS.get(n).enabled(cfg)]


def positive(value) -> Optional[str]:
    return None if value > 0 else f"must be > 0, got {value}"

