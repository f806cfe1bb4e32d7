"""The diagnostics registry: quantity name -> ``compute(model, data, **options) -> list[dict]``.

Every quantity is compute-only and returns plain records, one per measured value::

    {"quantity": "gradient_flow", "layer": "stage2.block3.conv1" or None, "name": "weight_grad_norm",
     "value": float | list[float] | list[list[float]]}

A list-valued record also says what its list is indexed by, so a plot can label its axis:
``"x"`` (the axis values, e.g. lesion's k = 1, 2, 3), ``"x_label"`` (``"k (blocks deleted)"``) and,
for a list of lists whose *inner* lists run along ``x`` (one curve per input), ``"x_axis": 1``
(default 0: ``x`` indexes the outer list; inner lists are then samples at each x).

``data`` is a ``depthlab.data.Dataset`` (or any object with train_x, train_y, test_x, test_y
tensors); a quantity picks the split and batch it needs and documents which. Plots and the CLI
read these records (written to ``diagnostics.jsonl``); diagnostics never plot.
"""
from __future__ import annotations

from depthlab.registry import Registry

DIAGNOSTICS = Registry("diagnostic")


def _plain(value):
    if hasattr(value, "detach"):
        value = value.detach().float().cpu()
        return value.item() if value.dim() == 0 else value.tolist()
    if hasattr(value, "tolist"):  # numpy
        return value.tolist()
    return value


def record(quantity: str, name: str, value, layer=None, *, x=None, x_label: str = None,
           x_axis: int = 0) -> dict:
    """One plain record; tensors are converted to Python floats / nested lists. ``x`` and
    ``x_label`` (and ``x_axis``, see the module docstring) are added only when given."""
    out = {"quantity": quantity, "layer": layer, "name": name, "value": _plain(value)}
    if x is not None:
        out["x"] = list(_plain(x))
        out["x_label"] = x_label or "index"
        if x_axis:
            out["x_axis"] = int(x_axis)
    return out


def describe(name: str) -> str:
    """The one-line description quantity ``name`` was registered with."""
    return DIAGNOSTICS.meta(name).get("description", "")
