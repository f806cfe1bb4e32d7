"""The diagnostics registry: quantity name -> ``compute(model, data, **options) -> list[dict]``.

Every quantity is compute-only and returns plain records, one per measured value::

    {"quantity": "gradient_flow", "layer": "stage2.block3.conv1" or None, "name": "weight_grad_norm",
     "value": float | list[float] | list[list[float]]}

``data`` is a ``depthlab.data.Dataset`` (or any object with train_x, train_y, test_x, test_y
tensors); a quantity picks the split and batch it needs and documents which. Plots and the CLI
read these records (written to ``diagnostics.jsonl``); diagnostics never plot.
"""
from __future__ import annotations

from depthlab.registry import Registry

DIAGNOSTICS = Registry("diagnostic")


def record(quantity: str, name: str, value, layer=None) -> dict:
    """One plain record; tensors are converted to Python floats / nested lists."""
    if hasattr(value, "detach"):
        value = value.detach().float().cpu()
        value = value.item() if value.dim() == 0 else value.tolist()
    elif hasattr(value, "tolist"):  # numpy
        value = value.tolist()
    return {"quantity": quantity, "layer": layer, "name": name, "value": value}


def describe(name: str) -> str:
    """The one-line description quantity ``name`` was registered with."""
    return DIAGNOSTICS.meta(name).get("description", "")
