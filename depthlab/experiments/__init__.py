"""Experiments: one module per published finding, each a grid of runs, measurements, an honest
verdict and a report (``depthlab reproduce NAME``); ``remedies`` is the side-by-side table of
remedies at one depth."""
from depthlab.experiments.base import EXPERIMENTS, Experiment, Findings, RunSpec
from depthlab.experiments.runner import list_experiments, parse_params, reproduce

__all__ = ["EXPERIMENTS", "Experiment", "Findings", "RunSpec", "list_experiments", "parse_params", "reproduce"]

from depthlab.experiments import catalog  # noqa: E402,F401  (last: registers every experiment)
