"""How long a run of an experiment will take, estimated before it starts, so that ``reproduce all``
can start the longest runs first (its global queue, ``depthlab.experiments.suite``).

    seconds per epoch = steps * (A * flops * batch + B * calls + C * values * batch) + D

``flops``: one image's forward pass (``torch.utils.flop_counter`` on the meta device: no memory, no
time), ``calls``: the leaf modules that forward calls (per-operation overhead, which dominates
1000-layer nets on 8x8 images), ``values``: the numbers in one input (the data pipeline's share),
``D``: evaluation and bookkeeping. A, B, C, D were fitted by ``python bench/cost_model.py`` on 350
runs of the quick and real scales (two runs at a time, one thread each); the estimate falls within
0.5x-1.3x of the measured time for 80% of them: enough to order a queue, not a timing.
"""
from __future__ import annotations

import json
import math
from typing import Dict, Optional, Tuple

import torch

from depthlab.config import RunConfig
from depthlab.recipes import resolve_train
from depthlab.training.trainer import build_from_config

# fitted by bench/cost_model.py (seconds; see the module docstring)
A, B, C, D = 2.5e-11, 1.4e-4, 1.7e-7, 0.11

_FEATURES: Dict[str, Tuple[float, int]] = {}


def model_features(cfg: RunConfig, input_shape: Tuple[int, ...], num_classes: int) -> Tuple[float, int]:
    """``(flops, calls)`` of one image's forward pass through ``cfg``'s model, in eval mode on the meta
    device; a model whose forward cannot run there counts ``2 * params * values`` flops, one call per
    module. Cached per model, methods and input shape (seeds share it)."""
    key = json.dumps([cfg.model.__dict__, cfg.methods.__dict__, list(input_shape), num_classes], sort_keys=True,
                     default=str)
    if key in _FEATURES:
        return _FEATURES[key]
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build_from_config(cfg, num_classes, input_shape[0]).eval()
        leaves = [m for m in model.modules() if not any(True for _ in m.children())]
        calls = [0]

        def count(*_):
            calls[0] += 1

        hooks = [m.register_forward_hook(count) for m in leaves]
        counter = FlopCounterMode(display=False)
        try:
            with counter, torch.no_grad():
                model(torch.zeros((1, *input_shape)))
            out = (float(counter.get_total_flops()), calls[0])
        except Exception:  # noqa: BLE001 - data-dependent forwards (.item()) do not run on meta
            params = sum(p.numel() for p in model.parameters())
            out = (2.0 * params * math.prod(input_shape), len(leaves))
        for h in hooks:
            h.remove()
    _FEATURES[key] = out
    return out


def epoch_terms(cfg: RunConfig, dataset) -> Tuple[float, float, float, float]:
    """The four terms that A, B, C, D multiply in one epoch of the run ``cfg`` on ``dataset`` (its
    loaded training images): ``steps * flops * batch, steps * calls, steps * values * batch, 1``."""
    shape = tuple(dataset.train_x.shape[1:])
    flops, calls = model_features(cfg, shape, dataset.num_classes)
    batch = resolve_train(cfg.train, cfg.model.depth or 0).batch_size
    steps = math.ceil(len(dataset.train_x) / batch)
    return steps * flops * batch, steps * calls, steps * math.prod(shape) * batch, 1.0


def estimate_seconds(cfg: RunConfig, dataset, epochs: Optional[int] = None) -> float:
    """The estimated training time of the run ``cfg`` on ``dataset``."""
    per_epoch = sum(c * t for c, t in zip((A, B, C, D), epoch_terms(cfg, dataset)))
    return (epochs or resolve_train(cfg.train, cfg.model.depth or 0).epochs) * per_epoch
