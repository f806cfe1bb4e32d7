"""Plots and HTML, reading run directories only."""
from depthlab.report.html import write_demo_report, write_run_report
from depthlab.report.plots import plot_training_curves, read_metrics

__all__ = ["write_demo_report", "write_run_report", "plot_training_curves", "read_metrics"]
