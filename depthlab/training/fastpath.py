"""The training fast path: how a step runs, never what it computes.

``FastStep`` is the trainer's training step and the one ``bench/`` times; it never waits for the device. Options
``train.bf16``, ``channels_last``, ``flush_denormal``, ``optimizer_impl``, ``compile``, ``checkpoint_segments``;
``None`` / ``"auto"``
take ``AUTO_DEFAULTS`` for the device type (measured: docs/performance.md, "Fast-path ablation").
Details: docs/design.md, section "The training step and its hook points"; options: docs/usage.md, "Speed and memory".
"""
from __future__ import annotations

import dataclasses
import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from depthlab.config import ConfigError

# What None / "auto" resolve to. cpu: measured (docs/performance.md, "Fast-path ablation"); bf16
# is opt-in there although it is faster on CPUs with native bf16, so that one command gives the
# same numbers on laptops with and without bf16 hardware. cuda: not measured by this project yet
# (no GPU was available); the settings of the fastest published CIFAR trainers (airbench: reduced
# precision, channels_last) and PyTorch's performance guide. bf16 only where it is native.
AUTO_DEFAULTS = {
    "cpu": {"bf16": False, "channels_last": True, "optimizer_impl": "fused", "flush_denormal": True},
    "cuda": {"bf16": True, "channels_last": True, "optimizer_impl": "fused"},
}
_FALLBACK = {"bf16": False, "channels_last": False, "optimizer_impl": "foreach"}


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 convolutions natively (CUDA: Ampere or newer; CPU:
    AVX512-BF16 or AMX, as oneDNN reports it). Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def resolve_fast_path(t, device: torch.device):
    """A copy of the ``TrainConfig`` ``t`` with every ``None`` / ``"auto"`` fast-path field made
    concrete for ``device``; explicit choices the device cannot honour are errors."""
    auto = AUTO_DEFAULTS.get(device.type, _FALLBACK)
    bf16 = t.bf16 if t.bf16 is not None else (auto["bf16"] and bf16_native(device))
    if bf16 and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"train.bf16 is supported on cuda and cpu, not {device.type}; set train.bf16=false")
    impl = t.optimizer_impl if t.optimizer_impl != "auto" else auto["optimizer_impl"]
    if impl == "fused" and device.type not in ("cuda", "cpu"):
        if t.optimizer_impl == "fused":
            raise ConfigError(f"train.optimizer_impl 'fused' is supported on cuda and cpu, not {device.type}; "
                              f"use foreach or for-loop")
        impl = "foreach"
    channels_last = t.channels_last if t.channels_last is not None else auto["channels_last"]
    # denormals are flushed on the CPU's own threads only: elsewhere there is nothing for the flag to change
    flush = device.type == "cpu" and (t.flush_denormal if t.flush_denormal is not None else auto["flush_denormal"])
    return dataclasses.replace(t, bf16=bool(bf16), channels_last=bool(channels_last), optimizer_impl=impl,
                               flush_denormal=bool(flush))


@contextmanager
def denormals_flushed(on: bool):
    """While active, the CPU reads and writes float32 denormals (magnitudes below 1.2e-38) as 0
    (``torch.set_flush_denormal``: FTZ/DAZ); afterwards torch's default (off) again. A net whose
    signal or gradient vanishes (sigmoid layers, small init) otherwise runs through the CPU's slow
    denormal path: measured 11-23x slower per step (docs/performance.md). What it changes is below what
    float32 weights can add: ``w + lr * g`` with ``|g| < 1.2e-38`` is ``w`` for any ``|w| > 1e-30``.

    The flag is per thread: the calling thread's, and intra-op threads started after it (so with one
    thread per run, as ``--jobs N`` gives on N cores, it holds throughout; several threads that a
    process already started keep their own)."""
    if not on:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def optimizer_flags(impl: str) -> dict:
    """Keyword arguments selecting a torch optimizer's implementation."""
    return {"foreach": {"foreach": True}, "fused": {"fused": True}, "for-loop": {"foreach": False},
            "auto": {}}[impl]


def autocast_factory(device: torch.device, bf16: bool) -> Callable[[], object]:
    """A zero-argument callable giving a fresh autocast context (or a no-op one)."""
    if not bf16:
        return nullcontext
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def to_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def prepare_model(model, t, device: torch.device):
    """Apply the resolved fast path to ``model`` (in place) and return the callable that runs its
    training forward pass (the compiled model, or the model itself). Diagnostics, evaluation and
    checkpoints keep using ``model``: compiling leaves its parameters and modules shared."""
    if t.checkpoint_segments:
        if not hasattr(model, "checkpoint_segments"):
            raise ConfigError(f"train.checkpoint_segments needs a depthlab network built of blocks; "
                              f"{type(model).__name__} has none")
        model.checkpoint_segments = t.checkpoint_segments
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    if device.type == "cuda" and not t.deterministic:
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv algorithm once
    if t.compile == "off":
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.compile(model, mode=None if t.compile == "default" else t.compile)


class FastStep:
    """``step(x, y) -> (loss, logits)``, both detached device tensors: forward under autocast,
    cross-entropy in float32 plus the methods' penalty, zero_grad, backward, the after-backward
    hooks, optimizer step, scheduler step. No host sync. The hook points, in order:

    ``penalty()``: a loss term (the training methods'), or None;
    ``after_backward``: callables ``hook(step)`` with the 0-based global step, called in order
    after ``backward`` and before ``optimizer.step()`` (observers such as the gradient tracker
    first, then the methods that change gradients, such as clipping)."""

    def __init__(self, forward, opt, t, device: torch.device, sched=None,
                 penalty: Optional[Callable[[], Optional[torch.Tensor]]] = None,
                 after_backward: Sequence[Callable[[int], None]] = ()):
        self.forward, self.opt, self.sched = forward, opt, sched
        self.penalty, self.after_backward = penalty, [h for h in after_backward if h is not None]
        self.channels_last = bool(t.channels_last)
        self.autocast = autocast_factory(device, bool(t.bf16))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, n_global: Optional[int] = None, world: int = 1,
                 step: int = 0):
        """``n_global``, ``world``: in data-parallel training ``(x, y)`` is this rank's shard of a
        global batch of ``n_global``; its loss is scaled so that DDP's gradient average is the
        global batch's mean gradient. The returned loss is the shard's mean either way. ``step``:
        the global step, for the hooks."""
        x = to_layout(x, self.channels_last)
        with self.autocast():
            out = self.forward(x)
        if world > 1:
            total = F.cross_entropy(out.float(), y, reduction="sum")
            loss, objective = total.detach() / max(1, len(y)), total * (world / n_global)
        else:
            loss = objective = F.cross_entropy(out.float(), y)
        penalty = self.penalty() if self.penalty is not None else None
        self.opt.zero_grad(set_to_none=True)
        (objective if penalty is None else objective + penalty).backward()
        for hook in self.after_backward:
            hook(step)
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        return loss.detach(), out.detach()
