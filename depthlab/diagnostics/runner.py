"""Run quantities on a model (``depthlab.diagnose`` adds run directories on top of this)."""
from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Optional, Union

from torch import nn

from depthlab.diagnostics.registry import DIAGNOSTICS
from depthlab.models.adapt import adapt

log = logging.getLogger("depthlab")


def resolve_quantities(quantities: Union[str, Iterable[str], None]) -> List[str]:
    """``"all"``/None -> every registered quantity; ``"a,b"`` or a list -> validated names."""
    if quantities is None or quantities == "all":
        return DIAGNOSTICS.names()
    names = [q.strip() for q in quantities.split(",")] if isinstance(quantities, str) else list(quantities)
    for q in names:
        DIAGNOSTICS.get(q)  # an unknown name lists the valid ones
    return names


def check_model_and_data(model: nn.Module, data) -> None:
    """A model whose first layer expects other input channels than ``data`` has gets a message that
    says how to build it, not a raw convolution error."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
    x = getattr(data, "train_x", None)
    if first is not None and x is not None and x.dim() >= 2 and first.in_channels != x.shape[1]:
        raise ValueError(f"the model takes {first.in_channels} input channels but the data "
                         f"{getattr(data, 'name', '')!r} has {x.shape[1]}; build the model for it, e.g. "
                         f"build_model(name, in_channels={x.shape[1]}, num_classes="
                         f"{getattr(data, 'num_classes', 10)})")


def run_quantities(model: nn.Module, data, quantities="all",
                   options: Optional[Dict[str, dict]] = None) -> List[dict]:
    """Run ``quantities`` on ``model`` with ``data``; records in quantity order.

    With ``quantities="all"`` a quantity the model cannot support (paths on a plain net, responses
    without BN) is skipped with one line on the ``depthlab`` logger; named explicitly, its
    ValueError is raised. ``options`` maps a quantity to its keyword options, e.g.
    ``{"lesion": {"max_k": 5}}``. A model depthlab did not build is read through ``adapt`` (its
    readable points and blocks found by layout; ``depthlab.models.adapt``)."""
    model = adapt(model)
    names = resolve_quantities(quantities)
    skip_inapplicable = quantities is None or quantities == "all"
    options = options or {}
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise ValueError(f"options given for quantities not requested: {', '.join(unknown)}")
    check_model_and_data(model, data)
    out = []
    for q in names:
        try:
            out += DIAGNOSTICS.get(q)(model, data, **options.get(q, {}))
        except ValueError as e:
            if not skip_inapplicable:  # asked for by name: its error is the answer
                raise
            log.warning("diagnostic %r skipped: %s", q, e)  # e.g. paths on a plain net
    return out
