"""Diagnostics that explain depth: one module per quantity, compute only, plain records out.

    import depthlab
    records = depthlab.diagnose(model, ["gradient_flow", "lesion"], data=depthlab.load_dataset("digits"))
    records = depthlab.diagnose("runs/demo/runs/plain56", "all")   # also appends to diagnostics.jsonl

Each record: ``{"quantity", "layer", "name", "value"}`` (+ ``"step"`` when read from a run).
"""
from __future__ import annotations

from importlib import import_module

from depthlab.diagnostics.registry import DIAGNOSTICS, record

_MODULES = ("gradient_flow", "responses", "jacobian", "orthonormality", "shattering", "paths",
            "discriminability", "lesion")
for _m in _MODULES:  # each registers its quantity; a module still being written is skipped
    try:
        import_module(f"depthlab.diagnostics.{_m}")
    except ModuleNotFoundError as e:
        if e.name != f"depthlab.diagnostics.{_m}":
            raise

from depthlab.diagnostics.runner import diagnose, resolve_quantities  # noqa: E402

__all__ = ["DIAGNOSTICS", "record", "diagnose", "resolve_quantities"]
