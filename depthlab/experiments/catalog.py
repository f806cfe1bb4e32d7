"""Imports every experiment module so that each registers itself in ``EXPERIMENTS``."""
from importlib import import_module

MODULES = ("degradation", "shattered", "looks_linear", "discriminability", "lesion", "stochastic_depth",
           "orthonormal", "highway", "beyond")

for _m in MODULES:
    import_module(f"depthlab.experiments.{_m}")
