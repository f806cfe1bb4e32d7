"""Experiments: one module per published finding, each a grid of runs, measurements, an honest
verdict and a report (``depthlab reproduce NAME``); ``remedies`` is the side-by-side table of
remedies at one depth. Every module of this package except the helpers registers one experiment
(none is listed by hand), and a module that fails to import is an error."""
from importlib import import_module

from depthlab.experiments.base import EXPERIMENTS, Experiment, Findings, RunSpec
from depthlab.experiments.runner import list_experiments, parse_params, reproduce
from depthlab.registry import plugin_modules

# modules of this package that register no experiment
HELPERS = ("base", "cost", "firststeps", "plan", "runner", "remedies", "suite")

for _name in plugin_modules(__path__, skip=HELPERS):
    import_module(f"depthlab.experiments.{_name}")
EXPERIMENTS.sort(key=lambda name: (EXPERIMENTS.get(name).year(), name))  # the field's order, not import order

from depthlab.experiments.suite import reproduce_all  # noqa: E402

__all__ = ["EXPERIMENTS", "Experiment", "Findings", "RunSpec", "list_experiments", "parse_params", "reproduce",
           "reproduce_all"]
