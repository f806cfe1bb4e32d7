"""Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger 2016, "Deep Networks with Stochastic
Depth", arXiv 1603.09382).

Block ``l`` of ``L`` survives with the linear-decay probability (eq. 4)

    p_l = 1 - (l / L) (1 - p_L),        l = 1..L,  p_L = 0.5 in the paper,

so the expected number of active blocks is ``sum_l p_l = L - (1 - p_L)(L + 1) / 2``, i.e.
``(3L - 1) / 4`` for ``p_L = 0.5`` (40.25 for the 54 blocks of ResNet-110).

The dropping itself lives in the block (``depthlab.models.blocks.Block``): in train mode the whole
branch is skipped per mini-batch with probability ``1 - p_l`` (eq. 2; it is not computed, which is
where the ~25% time saving comes from); in eval mode the branch is scaled by ``p_l`` (eq. 5). This
module only computes and assigns the ``survival_prob`` of every block.
"""
from __future__ import annotations

import math
from typing import List, Optional

from torch import nn

from depthlab.methods.base import TrainingMethod, register
from depthlab.models.blocks import DROP_MODES
from depthlab.registry import Option


def survival_probs(num_blocks: int, p_last: float = 0.5) -> List[float]:
    """Linear-decay survival probabilities ``[p_1, ..., p_L]`` (Huang et al. 2016, eq. 4).

    ``p_l = 1 - (l / L)(1 - p_last)``; the first block is the most likely to survive and the last
    survives with ``p_last``. Raises ``ValueError`` for ``num_blocks < 1`` or ``p_last`` outside
    ``(0, 1]``.
    """
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
    p_last = _check_p_last(p_last)
    drop = 1.0 - p_last
    # l * drop / L rather than (l / L) * drop: exact for the paper's p_L = 0.5 and any L.
    return [1.0 - (layer * drop) / num_blocks for layer in range(1, num_blocks + 1)]


def apply_stochastic_depth(model: nn.Module, p_last: float = 0.5, mode: str = "batch") -> List[float]:
    """Set ``block.survival_prob = p_l`` (eq. 4) for every block in ``model.blocks``, in order.

    ``mode`` is how a branch is dropped in train mode: ``"batch"`` (the paper: one draw per
    mini-batch, the branch is not computed) or ``"sample"`` (one draw per example); it is written
    to ``block.drop_mode`` where blocks have that attribute. ``p_last = 1`` leaves the network
    deterministic (the plain ResNet). Validates everything before changing anything.

    Raises ``ValueError`` for ``p_last`` outside ``(0, 1]``, an unknown ``mode``, a model without
    ``blocks``, blocks without a shortcut (dropping a plain block's branch deletes the layer from
    the only path: that is not stochastic depth, which needs residual blocks), or ``mode="sample"``
    on blocks that have no ``drop_mode``. Returns the list of survival probabilities.
    """
    if mode not in DROP_MODES:
        raise ValueError(f"unknown stochastic-depth mode {mode!r}; valid modes: {', '.join(DROP_MODES)}")
    blocks = _blocks(model)
    plain = [i for i, b in enumerate(blocks) if not getattr(b, "has_shortcut", False)]
    if plain:
        raise ValueError(
            f"stochastic depth needs residual blocks (has_shortcut=True); blocks {plain[:5]}"
            f"{'...' if len(plain) > 5 else ''} of {type(model).__name__} have no shortcut "
            f"(a plain net: dropping its branch removes the layer, use a resnet family)")
    if mode != "batch" and not all(hasattr(b, "drop_mode") for b in blocks):
        raise ValueError(f"mode={mode!r} needs blocks with a 'drop_mode' attribute; "
                         f"{type(blocks[0]).__name__} only drops per mini-batch (mode='batch')")
    probs = survival_probs(len(blocks), p_last)
    for block, p in zip(blocks, probs):
        block.survival_prob = p
        if hasattr(block, "drop_mode"):
            block.drop_mode = mode
    return probs


def expected_active_blocks(model: nn.Module) -> float:
    """Expected number of blocks whose branch runs in a training forward pass: ``sum_l p_l`` over
    enabled blocks (a lesioned block, ``enabled=False``, never runs its branch). 40.25 for
    ResNet-110 with ``p_L = 0.5`` (Huang et al. 2016, Sec. 3)."""
    return math.fsum(b.survival_prob for b in _blocks(model) if getattr(b, "enabled", True))


def _check_p_last(p_last: float) -> float:
    try:
        p = float(p_last)
    except (TypeError, ValueError):
        raise ValueError(f"p_last must be a number in (0, 1], got {p_last!r}") from None
    if not 0.0 < p <= 1.0:  # also rejects NaN
        raise ValueError(f"p_last must be in (0, 1] (the last block's survival probability), got {p_last!r}")
    return p


def _blocks(model: nn.Module) -> List[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no non-empty 'blocks' ModuleList "
                         f"(the depthlab model contract, docs/design.md)")
    return list(blocks)


def _p_last_problem(p) -> Optional[str]:
    return None if 0.0 < p <= 1.0 else f"(p_L) must be in (0, 1], got {p}"


@register
class StochasticDepth(TrainingMethod):
    """Huang et al. 2016: each residual block's branch survives with ``p_l`` (linear decay to p_L)."""

    name = "stochastic_depth"
    title = "stochastic depth: drop whole residual branches, survival linear in depth down to p_L"
    source = "Huang, Sun, Liu, Sedra, Weinberger 2016, arXiv 1603.09382"
    options = {
        "stochastic_depth": Option(float, None, "p_L, the last block's survival probability (0.5 in the paper)",
                                   check=_p_last_problem),
        "stochastic_depth_mode": Option(str, "batch", "drop per mini-batch (the paper) or per sample",
                                        choices=DROP_MODES),
    }
    example = {"stochastic_depth": 0.5}
    skips_parameters = True  # a dropped branch's parameters get no gradient in that step

    def configure(self, model) -> None:
        apply_stochastic_depth(model, self.cfg.stochastic_depth, mode=self.cfg.stochastic_depth_mode)
