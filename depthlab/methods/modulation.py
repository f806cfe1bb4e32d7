"""Backward error modulation (Xie, Xiong, Pu 2017, "All You Need is Beyond a Good Init",
arXiv 1703.01827). The paper's exact rule and schedule were not available to us: this is a reading
of its description (docs/methods.md), kept configurable.

    delta_l  <-  delta_l * RMS(ref) / RMS(delta_l),        RMS(t) = sqrt(mean(t ** 2))

``reference="top"``: the top parametric layer's error; ``"next"``: the modulated error of the next layer
above. Details: docs/methods.md, section "Backward error modulation".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from depthlab.methods.base import TrainingMethod, positive, register
from depthlab.registry import Option

REFERENCES = ("top", "next")
MEASURES = ("rms", "norm")
PARAMETRIC = (nn.modules.conv._ConvNd, nn.Linear)
# methods.modulation: the readings of "the reference" (module doc): which layers are modulated, and against what
READINGS = {"top-conv": ("top", "conv"), "fc": ("top", "all"), "next": ("next", "conv")}


@dataclass
class ModulationProfile:
    """Per-layer error RMS of one backward pass, in forward order (``None``: no error arrived).
    Entries are 0-dim tensors (float32, or float64 for float64 errors) on the model's device;
    ``to_floats()`` syncs once."""
    names: List[str] = field(default_factory=list)
    before: List[Optional[torch.Tensor]] = field(default_factory=list)
    after: List[Optional[torch.Tensor]] = field(default_factory=list)

    def to_floats(self) -> Dict[str, list]:
        """``{"names", "before", "after"}`` with floats (``nan`` where no error arrived)."""
        def floats(values):
            present = [v for v in values if v is not None]
            got = iter(torch.stack(present).double().cpu().tolist()) if present else iter(())
            return [next(got) if v is not None else math.nan for v in values]
        return {"names": list(self.names), "before": floats(self.before), "after": floats(self.after)}


class ErrorModulation:
    """Rescale each parametric layer's backward error to the RMS of a reference (see module doc).

        with ErrorModulation(model, reference="top"):
            loss_fn(model(x), y).backward()
        # or: mod = ErrorModulation(model).attach(); ...; mod.detach()

    ``layers``: the modules to modulate (default: every ``Conv*d`` and ``nn.Linear`` of ``model``);
    the top layer is the last of them to run in the forward pass. ``measure``: ``rms`` compares
    per-element RMS (default), ``norm`` the whole tensors' 2-norms (layers of different sizes then get
    errors of equal total size instead of equal per-element size). ``active=False`` keeps the hooks
    but leaves gradients unchanged (the profile is still recorded when ``record``). ``eps``: an
    error with RMS <= eps is left unchanged (no division by zero). ``last_profile``: the
    ``ModulationProfile`` of the latest backward pass.
    """

    def __init__(self, model: nn.Module, reference: str = "top", layers: Optional[Iterable[nn.Module]] = None,
                 active: bool = True, record: bool = True, eps: float = 1e-30, measure: str = "rms"):
        if reference not in REFERENCES:
            raise ValueError(f"unknown reference {reference!r}; valid references: {', '.join(REFERENCES)}")
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; valid measures: {', '.join(MEASURES)}")
        self.measure = measure
        self.model = model
        self.reference = reference
        self.active = bool(active)
        self.record = bool(record)
        self.eps = float(eps)
        names = {m: n or type(model).__name__ for n, m in model.named_modules()}
        layers = [m for m in model.modules() if isinstance(m, PARAMETRIC)] if layers is None else list(layers)
        if not layers:
            raise ValueError(f"no parametric layers (Conv*d / Linear) to modulate in {type(model).__name__}")
        self.layer_names = {m: names.get(m, f"layer{i}") for i, m in enumerate(layers)}
        self.last_profile = ModulationProfile()
        self._handles: list = []
        self._pass: Optional[_Pass] = None

    # -- attach / detach --------------------------------------------------------------------------
    def attach(self) -> "ErrorModulation":
        if self._handles:
            raise RuntimeError("ErrorModulation is already attached")
        self._handles.append(self.model.register_forward_pre_hook(self._new_pass))
        for layer in self.layer_names:
            self._handles.append(layer.register_forward_hook(self._on_layer_output))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pass = None

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def __enter__(self) -> "ErrorModulation":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- hooks ------------------------------------------------------------------------------------
    def _new_pass(self, module, args) -> None:
        self._pass = _Pass()

    def _on_layer_output(self, layer: nn.Module, args, output) -> None:
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return  # eval / no_grad: nothing flows back
        if not (self.active or self.record):
            return
        if self._pass is None:  # layer called outside model.forward
            self._pass = _Pass()
        run = self._pass
        k = len(run.profile.names)
        name = self.layer_names[layer]
        run.profile.names.append(name if name not in run.seen else f"{name}#{k}")
        run.seen.add(name)
        run.profile.before.append(None)
        run.profile.after.append(None)
        output.register_hook(lambda grad, k=k, run=run: self._on_error(run, k, grad))

    def _on_error(self, run: "_Pass", k: int, grad: torch.Tensor) -> torch.Tensor:
        profile = run.profile
        self.last_profile = profile
        before = _rms(grad) if self.measure == "rms" else _norm(grad)
        top = len(profile.names) - 1
        ref = None
        if self.active and k != top:
            ref = self._reference(profile, k, top)
        if ref is None:
            out, after = grad, before
        else:
            scale = torch.where(before > self.eps, ref / before.clamp_min(self.eps), torch.ones_like(before))
            out = grad * scale.to(grad.dtype)  # a new tensor: autograd's own grad is untouched
            after = before * scale  # = RMS(out) up to rounding, without another pass over out
        if self.record:
            profile.before[k], profile.after[k] = before, after
        else:
            profile.after[k] = after  # "next" reads it; dropped with the pass
        return out

    def _reference(self, profile: ModulationProfile, k: int, top: int) -> Optional[torch.Tensor]:
        if self.reference == "top":
            if profile.after[top] is None:
                raise RuntimeError(
                    f"error modulation (reference='top'): layer {profile.names[k]!r} received its error "
                    f"before the top layer {profile.names[top]!r}; the loss must depend on the top "
                    f"layer's output (or pass layers=... / reference='next')")
            return profile.after[top]
        for j in range(k + 1, top + 1):  # "next": the nearest layer above that has its error
            if profile.after[j] is not None:
                return profile.after[j]
        return None  # nothing above has an error yet: this layer is its own reference


class _Pass:
    """State of one forward pass: the layers in the order they ran, and their error RMS."""

    def __init__(self):
        self.profile = ModulationProfile()
        self.seen: set = set()


def _norm(t: torch.Tensor) -> torch.Tensor:
    """2-norm as a 0-dim tensor, accumulated in at least float32 (half-precision errors)."""
    dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    return torch.linalg.vector_norm(t, dtype=dtype)


def _rms(t: torch.Tensor) -> torch.Tensor:
    """RMS as a 0-dim tensor, accumulated in at least float32 (half-precision errors)."""
    return _norm(t) / math.sqrt(max(t.numel(), 1))


def modulated_layers(model: nn.Module, which: str) -> List[nn.Module]:
    """``conv``: every ``Conv*d`` of ``model``; ``all``: every ``Conv*d`` and ``nn.Linear``."""
    kinds = nn.modules.conv._ConvNd if which == "conv" else PARAMETRIC
    return [m for m in model.modules() if isinstance(m, kinds)]


@register
class BackwardErrorModulation(TrainingMethod):
    """Xie et al. 2017 (rule unverified): each parametric layer's backward error rescaled to the RMS
    of a reference layer's, for the first ``modulation_epochs`` epochs (all when unset).

    ``methods.modulation`` names the reading of the reference (the paper describes the modulation
    between "two consecutive parametric layers"; its exact rule is not available to us):

    - ``top-conv`` (default reading): every conv's error rescaled to the top conv's; the classifier
      is neither modulated nor the reference. Measured earlier on digits (2 seeds, before this option
      existed): plain+orthonormal+modulation-44
      trains to about resnet-44's level with it.
    - ``fc``: every conv's and the classifier's error rescaled to the classifier's (the logits'
      error is ~14x the top conv's at init, so every conv's error is pushed far above its natural
      level; the 44-layer run diverges).
    - ``next``: every conv's error rescaled to the (modulated) error of the next conv above; in a
      chain this telescopes to ``top-conv`` exactly, and differs only where the graph branches.

    ``methods.modulation_measure``: ``rms`` (per-element RMS, default) or ``norm`` (whole-tensor 2-norm).
    """

    name = "modulation"
    title = "backward error modulation: each layer's error rescaled to a reference RMS (rule is a reading)"
    source = "Xie, Xiong, Pu 2017, arXiv 1703.01827"
    options = {
        "modulation": Option(str, None, "the reading of the reference: top-conv, fc or next; None: off",
                             choices=tuple(READINGS)),
        "modulation_measure": Option(str, "rms", "error size compared: per-element rms or the tensor's 2-norm",
                                     choices=MEASURES),
        "modulation_epochs": Option(int, None, "modulate only during the first N epochs; None: all",
                                    check=positive),
    }

    example = {"modulation": "top-conv"}

    def setup(self, model) -> None:
        reference, which = READINGS[self.cfg.modulation]
        # record=False: nothing reads the per-layer profile during training
        self.modulation = ErrorModulation(model, reference=reference, layers=modulated_layers(model, which),
                                          record=False, measure=self.cfg.modulation_measure).attach()

    def start_epoch(self, epoch: int) -> None:
        if self.cfg.modulation_epochs is not None:
            self.modulation.active = epoch < self.cfg.modulation_epochs

    def close(self) -> None:
        self.modulation.detach()
