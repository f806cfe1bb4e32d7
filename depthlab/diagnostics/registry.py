"""The diagnostics registry: quantity name -> ``compute(model, data, **options) -> list[dict]``.

Every quantity is compute-only and returns plain records, ``{"quantity", "layer", "name", "value"}``, made by
``record``; a list-valued one may say what its list is indexed by (``x``, ``x_label``, ``x_axis``).
Details: docs/design.md, section "Diagnostics: compute, then show".
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
