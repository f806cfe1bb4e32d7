"""Training methods: things that change how a network trains, each one plug-in module.

- stochastic depth (Huang et al. 2016): ``survival_probs``, ``apply_stochastic_depth``,
  ``expected_active_blocks``
- orthonormality regulariser (Xie et al. 2017): ``orthonormal_weights``,
  ``orthonormality_penalty``, ``orthonormality_per_layer``
- backward error modulation (Xie et al. 2017, the rule is a reading): ``ErrorModulation``
- gradient clipping by global norm (Pascanu et al. 2013)

``METHODS`` holds each module's ``TrainingMethod`` (``depthlab.methods.base``): its config options
``methods.<key>`` and the hooks the trainer calls. Every module of this package is imported here
(none is listed by hand) and one that fails to import is an error. This layer imports
``depthlab.models`` at most, never training, config or cli.
"""
from importlib import import_module

from depthlab.methods.base import METHODS, Option, TrainingMethod, all_options, enabled_methods, register
from depthlab.registry import plugin_modules

for _name in plugin_modules(__path__, skip=("base",)):
    import_module(f"depthlab.methods.{_name}")

from depthlab.methods.modulation import ErrorModulation, ModulationProfile  # noqa: E402
from depthlab.methods.orthonormal import orthonormal_weights, orthonormality_penalty, orthonormality_per_layer  # noqa: E402
from depthlab.methods.stochastic_depth import apply_stochastic_depth, expected_active_blocks, survival_probs  # noqa: E402

__all__ = [
    "METHODS", "TrainingMethod", "Option", "register", "all_options", "enabled_methods",
    "survival_probs", "apply_stochastic_depth", "expected_active_blocks",
    "orthonormal_weights", "orthonormality_penalty", "orthonormality_per_layer",
    "ErrorModulation", "ModulationProfile",
]
