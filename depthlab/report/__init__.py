"""Plots and HTML, reading run and experiment directories only."""
from depthlab.report.comparison import compare
from depthlab.report.html import write_demo_report
from depthlab.report.pages import write_experiment_report, write_index, write_report
from depthlab.report.plots import plot_training_curves, read_metrics

__all__ = ["compare", "write_demo_report", "write_experiment_report", "write_index", "write_report",
           "plot_training_curves", "read_metrics"]
