"""What a training method is: a ``TrainingMethod`` subclass registered in ``METHODS``, with declared
options (config keys ``methods.<key>``; the first switches it on) and only the hooks it needs; the
trainer calls the hooks of every switched-on method in registration order. The hooks, when each
is called and by whom: docs/design.md, "Training methods"; a worked example: CONTRIBUTING.md.
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

