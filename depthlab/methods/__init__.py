"""Methods: things that change how a network trains (DESIGN.md Sec. 6).

- stochastic depth (Huang et al. 2016): ``survival_probs``, ``apply_stochastic_depth``,
  ``expected_active_blocks``
- orthonormality regulariser (Xie et al. 2017): ``orthonormal_weights``,
  ``orthonormality_penalty``, ``orthonormality_per_layer``
- backward error modulation (Xie et al. 2017, rule unverified): ``ErrorModulation``

This layer imports ``depthlab.models`` at most, never train / config / cli.
"""
from depthlab.methods.modulation import ErrorModulation, ModulationProfile
from depthlab.methods.orthonormal import (orthonormal_weights, orthonormality_penalty,
                                          orthonormality_per_layer)
from depthlab.methods.stochastic_depth import (apply_stochastic_depth, expected_active_blocks,
                                               survival_probs)

__all__ = [
    "survival_probs", "apply_stochastic_depth", "expected_active_blocks",
    "orthonormal_weights", "orthonormality_penalty", "orthonormality_per_layer",
    "ErrorModulation", "ModulationProfile",
]
