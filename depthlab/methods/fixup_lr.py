"""Fixup's learning rate for its scalars, as the authors train them (Zhang, Dauphin, Ma 2019, arXiv
1901.09321; reference code hongyi-zhang/Fixup, ``cifar/cifar_train.py``): every parameter whose name
contains ``bias`` or ``scale`` (``methods.fixup_scalar_params=reference``; ``scalars``: the Fixup
scalar modules only, a reading of the paper) trains at ``methods.fixup_scalar_lr`` (0.1) times the
learning rate, in its own optimiser group, on Fixup networks only. Details and what it prevents:
docs/methods.md, "Fixup".
"""
from __future__ import annotations

from typing import List

from torch import nn

from depthlab.methods.base import TrainingMethod, register
from depthlab.models.layers import ScalarBias, ScalarScale
from depthlab.registry import Option

SCALAR_PARAMS = ("reference", "scalars")


def _factor(value):
    return None if 0 < value <= 1 else f"must be in (0, 1], got {value}"


def is_fixup(model: nn.Module) -> bool:
    """Whether ``model`` has Fixup blocks (blocks that define ``fixup_init_``)."""
    return any(callable(getattr(b, "fixup_init_", None)) for b in getattr(model, "blocks", None) or ())


def fixup_scalar_parameters(model: nn.Module, which: str = "reference") -> List[nn.Parameter]:
    """The parameters that train at the reduced learning rate, in ``named_parameters`` order.

    ``reference``: every parameter whose name contains ``bias`` or ``scale`` (the reference code);
    ``scalars``: the parameters of the ``ScalarBias`` / ``ScalarScale`` modules only."""
    if which == "reference":
        return [p for n, p in model.named_parameters() if "bias" in n or "scale" in n]
    if which == "scalars":
        return [p for m in model.modules() if isinstance(m, (ScalarBias, ScalarScale))
                for p in m.parameters(recurse=False)]
    raise ValueError(f"fixup_scalar_params must be one of {', '.join(SCALAR_PARAMS)}, got {which!r}")


@register
class FixupScalarLR(TrainingMethod):
    name = "fixup_lr"
    title = "Fixup nets: scalar biases and multipliers at a fraction of the learning rate (the authors' lr/10)"
    source = "Zhang, Dauphin, Ma 2019, arXiv 1901.09321; reference code cifar/cifar_train.py"
    options = {
        "fixup_scalar_lr": Option(float, 0.1, "learning-rate factor of a Fixup net's biases and scalar "
                                              "multipliers (the reference code: 0.1); 1: one learning rate",
                                  check=_factor),
        "fixup_scalar_params": Option(str, "reference", "which parameters take the factor: reference (names "
                                                        "containing bias or scale, the classifier bias too) or "
                                                        "scalars (the Fixup scalar modules only)",
                                      choices=SCALAR_PARAMS),
    }
    example = {"fixup_scalar_lr": 0.1}
    example_model = ("model.name=fixup-resnet",)
    example_off = {"fixup_scalar_lr": 1.0}
    on_by_default = True

    def param_groups(self, model, groups: List[dict]) -> List[dict]:
        """The chosen parameters leave their groups for groups of their own with ``lr_factor``
        times each group's learning rate (``lr`` is set by the trainer's base lr when a group has none)."""
        factor = self.cfg.fixup_scalar_lr
        if factor == 1 or not is_fixup(model):
            return groups
        chosen = {id(p) for p in fixup_scalar_parameters(model, self.cfg.fixup_scalar_params)}
        out = []
        for g in groups:
            rest = [p for p in g["params"] if id(p) not in chosen]
            mine = [p for p in g["params"] if id(p) in chosen]
            if rest:
                out.append({**g, "params": rest})
            if mine:
                out.append({**g, "params": mine, "lr_factor": g.get("lr_factor", 1.0) * factor})
        return out
