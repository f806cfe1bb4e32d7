"""Where did a run diverge? Replay from the last good checkpoint with a check after every step.

The training loop notices a non-finite loss without waiting for the device (a flag on the device,
read every ``train.check_every`` steps). It then replays the steps since the last checkpoint --
exactly, since data order, augmentation and every RNG stream are restored -- and at each step
reads the loss, every parameter's gradient norm and (forward hooks on the leaf modules) the
first module whose output is not finite. At the first bad step the diagnosis names:

  * a non-finite loss: the first module, in forward order, whose output was non-finite;
  * non-finite gradients with a finite loss: the first layer, in backward order (from the
    output down), whose gradient was non-finite: where the overflow started;
  * in both cases, the layer whose gradient grew the most since the replay's first step
    (an explosion that preceded the overflow), with the factor.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch


def _leaf_modules(model):
    return [(n, m) for n, m in model.named_modules() if n and not any(True for _ in m.children())]


def find_divergence(model, make_step: Callable, restore: Callable[[], tuple], loader, steps_per_epoch: int,
                    end_step: int, shard: Callable) -> dict:
    """Replay from the checkpoint ``restore()`` loads (it returns its ``(epoch, step)``) up to
    global step ``end_step``; ``make_step(observer)`` builds the training step, with
    ``observer(step)`` called after backward."""
    epoch, step = restore()
    start = epoch * steps_per_epoch + step
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = [n for n, _ in named]
    record: dict = {}

    def after_backward(step):
        grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for _, p in named]
        record["norms"] = torch.stack([g.float().norm() for g in grads]).cpu()

    first_bad_output: list = []

    def hook_for(name):
        def hook(module, inputs, output):
            if not first_bad_output and torch.is_tensor(output) and not bool(torch.isfinite(output).all()):
                first_bad_output.append(name)
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in _leaf_modules(model)]
    step_fn = make_step(after_backward)
    baseline: Optional[torch.Tensor] = None
    previous: Optional[torch.Tensor] = None
    g = start
    try:
        batches = loader.batches(epoch, start=step)
        while g < end_step:
            try:
                xb, yb = next(batches)
            except StopIteration:
                epoch += 1
                batches = loader.batches(epoch)
                continue
            first_bad_output.clear()
            xb, yb, n = shard(xb, yb)
            loss, _ = step_fn(xb, yb, n_global=n, step=g)
            g += 1
            loss_v, norms = float(loss), record["norms"]
            if baseline is None:
                baseline = norms
            bad_grads = [names[i] for i in range(len(names)) if not math.isfinite(float(norms[i]))]
            if math.isfinite(loss_v) and not bad_grads:
                previous = norms
                continue
            return _diagnosis(g, steps_per_epoch, start, loss_v, first_bad_output[:1], bad_grads, names,
                              baseline, previous)
    finally:
        for h in handles:
            h.remove()
    return {"step": None, "replayed_from": start,
            "message": f"replaying steps {start + 1}..{end_step} from the last checkpoint did not reproduce the "
                       f"divergence (a non-deterministic kernel? try train.deterministic=true)"}


def _diagnosis(step, spe, start, loss, bad_output, bad_grads, names, baseline, previous) -> dict:
    epoch = (step - 1) // spe + 1
    d = {"step": step, "epoch": epoch, "replayed_from": start, "loss": loss,
         "first_nonfinite_output": bad_output[0] if bad_output else None,
         # backward order: parameters are registered input to output, gradients arrive output first
         "first_nonfinite_grad": bad_grads[-1] if bad_grads else None, "nonfinite_grads": len(bad_grads)}
    parts = [f"diverged at step {step} (epoch {epoch})"]
    if not math.isfinite(loss):
        where = f"; the forward pass first produced a non-finite value at {bad_output[0]}" if bad_output else ""
        parts.append(f"the loss became {loss}{where}")
    else:
        parts.append(f"the gradient first became non-finite at {d['first_nonfinite_grad']} (backward order; "
                     f"{len(bad_grads)} of {len(names)} parameter gradients non-finite)")
    if previous is not None and baseline is not None and previous is not baseline:
        ratio = previous / baseline.clamp_min(1e-30)
        ratio = torch.where(torch.isfinite(ratio), ratio, torch.zeros_like(ratio))
        i = int(ratio.argmax())
        d["most_grown_grad"] = {"layer": names[i], "norm": float(previous[i]), "factor": float(ratio[i]),
                                "since_step": start + 1}
        parts.append(f"before it, {names[i]}'s gradient norm had grown {float(ratio[i]):.3g}x since step "
                     f"{start + 1} (to {float(previous[i]):.3g})")
    parts.append("the last good checkpoint is kept; try a lower train.lr, a warm-up, or a remedy for depth")
    d["message"] = "; ".join(parts)
    return d
