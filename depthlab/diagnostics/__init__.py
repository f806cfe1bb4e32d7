"""Diagnostics that explain depth: one module per quantity, compute only, plain records out.

    import depthlab
    records = depthlab.diagnose(model, ["gradient_flow", "lesion"], data=depthlab.load_dataset("digits"))
    records = depthlab.diagnose("runs/demo/runs/plain56", "all")   # also writes diagnostics.jsonl

Each record: ``{"quantity", "layer", "name", "value"}`` (+ ``"step"`` when read from a run). Every
module of this package except the helpers registers one quantity in ``DIAGNOSTICS``; none is listed
by hand, and a module that fails to import is an error.
"""
from __future__ import annotations

from importlib import import_module

from depthlab.diagnostics.registry import DIAGNOSTICS, describe, record
from depthlab.registry import plugin_modules

HELPERS = ("common", "registry", "runner")  # modules of this package that register no quantity

for _name in plugin_modules(__path__, skip=HELPERS):
    import_module(f"depthlab.diagnostics.{_name}")
DIAGNOSTICS.sort(key=str)  # by name, not by the order the modules happened to import each other

from depthlab.diagnostics.runner import resolve_quantities, run_quantities  # noqa: E402

__all__ = ["DIAGNOSTICS", "record", "describe", "resolve_quantities", "run_quantities"]
