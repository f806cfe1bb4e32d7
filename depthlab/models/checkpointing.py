"""Activation checkpointing over a network's blocks, so that very deep nets fit in memory.

The blocks are split into ``k`` consecutive segments; during the forward pass only each
segment's input is kept, and a segment's activations are recomputed during the backward pass
(Chen et al. 2016, "Training deep nets with sublinear memory cost", arXiv 1604.06174). Memory for
activations goes from ``n`` blocks' worth to about ``n / k + k`` (least at ``k ~ sqrt(n)``), for
one extra forward pass of the checkpointed segments. The last segment is not checkpointed: its
activations are needed first in the backward pass.

Results are those of the plain forward pass: ``torch.utils.checkpoint`` restores the CPU and
device RNG states before recomputing (stochastic depth draws the same drops), and batch-norm
running statistics are frozen during the recomputation (momentum 0 and ``num_batches_tracked``
restored), so each BN layer updates its running statistics exactly once per step.
"""
from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint


def segment_bounds(n_blocks: int, segments: int) -> List[Tuple[int, int]]:
    """``[(start, end), ...]`` splitting ``n_blocks`` into ``segments`` near-equal consecutive
    runs; ``segments = -1`` picks ``round(sqrt(n_blocks))``, the memory optimum."""
    if n_blocks <= 0:
        return []
    if segments == -1:
        segments = max(1, round(math.sqrt(n_blocks)))
    if segments <= 0:
        raise ValueError(f"segments must be a positive integer or -1 (sqrt of the block count), got {segments}")
    segments = min(segments, n_blocks)
    base, extra = divmod(n_blocks, segments)
    bounds, start = [], 0
    for i in range(segments):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


@contextmanager
def frozen_batchnorm_stats(modules: Sequence[nn.Module]):
    """Inside: training-mode batch norms in ``modules`` normalise as usual but leave their running
    statistics (and ``num_batches_tracked``) unchanged."""
    saved = []
    for module in modules:
        for m in module.modules():
            if isinstance(m, _BatchNorm) and m.training and m.track_running_stats:
                saved.append((m, m.momentum, m.num_batches_tracked.clone()))
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch statistic
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)


class _Segment:
    """Runs blocks in order; its second call (the recomputation) freezes BN running statistics."""

    def __init__(self, blocks: Sequence[nn.Module]):
        self.blocks, self.calls = blocks, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        with frozen_batchnorm_stats(self.blocks) if self.calls > 1 else nullcontext():
            for block in self.blocks:
                x = block(x)
        return x


def run_checkpointed(blocks: Sequence[nn.Module], x: torch.Tensor, segments: int) -> torch.Tensor:
    """``blocks[-1](...blocks[0](x))`` keeping only segment inputs for the backward pass."""
    bounds = segment_bounds(len(blocks), segments)
    for i, (start, end) in enumerate(bounds):
        run = _Segment(blocks[start:end])
        if i == len(bounds) - 1:
            x = run(x)
        else:
            x = checkpoint(run, x, use_reentrant=False, preserve_rng_state=True)
    return x
