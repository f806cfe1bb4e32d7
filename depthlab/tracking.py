"""``depthlab.track``: depthlab's instruments inside your own training loop, on any model.

``tracker.step()`` after ``backward`` reads every Conv2d / Linear weight-gradient norm on the device (no sync);
every ``every`` steps they go to ``diagnostics.jsonl`` and TensorBoard, and with ``data`` the heavier quantities
run too, restoring the model's mode and every RNG. Also the loaders behind ``depthlab diagnose --model``.
Details: docs/own-model.md, sections "Inside your own loop: `depthlab.track`" and "From the command line".
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import torch
from torch import nn

from depthlab.data.checks import check_dataset, check_xy, load_tensor_file
from depthlab.data.files import DataFileError
from depthlab.diagnostics import run_quantities
from depthlab.diagnostics.gradient_flow import GradientFlowTracker
from depthlab.diagnostics.runner import resolve_quantities
from depthlab.fileio import append_jsonl, atomic_write_text
from depthlab.models.adapt import adapt
from depthlab.training.checkpoint import rng_state, set_rng_state
from depthlab.training.tensorboard import TensorBoardLog

MARKER = "tracked.json"  # what a tracked run directory holds instead of a config.json


def as_dataset(data, where: str = "data"):
    """A depthlab dataset as is; ``(x, y)`` tensors (checked: ``depthlab.data.checks.check_xy``) as a
    dataset whose train and test split are both them."""
    if data is None or hasattr(data, "test_x"):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        check_xy(x, y, where)
        return SimpleNamespace(name="user data", train_x=x, train_y=y, test_x=x, test_y=y,
                               num_classes=int(y.max()) + 1, in_channels=x.shape[1])
    raise TypeError("data must be a depthlab dataset (load_dataset) or an (x, y) pair of tensors, "
                    f"got {type(data).__name__}")


class Tracker:
    """See the module docstring; made by ``track``."""

    def __init__(self, model: nn.Module, run_dir, every: int = 50, data=None, quantities: Optional[str] = None,
                 tensorboard: bool = True, overwrite: bool = False):
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every must be a positive number of steps, got {every!r}")
        self.model, self.run_dir, self.every = model, Path(run_dir), every
        self.data = as_dataset(data)
        if quantities is not None and self.data is None:
            raise ValueError("quantities need data=: a depthlab dataset or an (x, y) pair of tensors")
        self.quantities = resolve_quantities(quantities or "gradient_flow") if self.data is not None else []
        self.path = self.run_dir / "diagnostics.jsonl"
        self.tb = TensorBoardLog(self.run_dir / "tensorboard") if tensorboard else None
        self.overwrite, self.steps, self._pending = overwrite, 0, []
        self._grads = GradientFlowTracker(model)
        self._view = None  # the model read through ``adapt``, made once, on the first measurement

    # -- the loop ---------------------------------------------------------------------------------
    def __enter__(self) -> "Tracker":
        if self.path.exists() or (self.run_dir / MARKER).exists():
            if not self.overwrite:
                raise FileExistsError(f"{str(self.run_dir)!r} already holds a tracked run; pass overwrite=True to "
                                      "replace it, or track into a new directory")
            for old in (self.path, self.run_dir / MARKER):
                old.unlink(missing_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._grads.attach()
        params = sum(p.numel() for p in self.model.parameters())
        atomic_write_text(self.run_dir / MARKER, json.dumps({
            "model": type(self.model).__name__, "params": params, "layers": self._grads.names,
            "every": self.every, "quantities": self.quantities, "blocks": [],
            "data": getattr(self.data, "name", None), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
        self._diagnose()  # at init (step 0)
        return self

    def step(self) -> None:
        """Call after ``loss.backward()``, before the optimiser step (or after: the gradients stay)."""
        self._pending.append(self._grads.read())
        self.steps += 1
        if self.steps % self.every == 0:
            self.flush()
            self._diagnose()

    def flush(self) -> None:
        """Write the buffered per-step gradient norms (one host-device transfer)."""
        if not self._pending:
            return
        norms = torch.stack(self._pending).float().cpu()  # (steps, layers)
        first, self._pending = self.steps - len(self._pending) + 1, []
        rows = [{"step": self.steps, "quantity": "gradient_tracking", "layer": name,
                 "name": "weight_grad_norm_per_step", "value": norms[:, i].tolist(), "first_step": first}
                for i, name in enumerate(self._grads.names)]
        self._write(rows)
        if self.tb is not None:
            for r in rows:
                self.tb.series(f"gradient_tracking/weight_grad_norm/{r['layer']}", r["value"], first)

    def __exit__(self, *exc) -> None:
        try:
            self.flush()
            if exc[0] is None and self.steps % self.every:
                self._diagnose()  # at the end, unless the last step just ran them
        finally:
            self._grads.detach()
            if self.tb is not None:
                self.tb.close()

    # -- helpers ----------------------------------------------------------------------------------
    def _diagnose(self) -> None:
        if not self.quantities:
            return
        if self._view is None:  # adapting traces the model (torch.fx) at most once, not at every measurement
            self._view = adapt(self.model)
        was_training, rng = self.model.training, rng_state()
        try:
            rows = [{"step": self.steps, **r} for r in run_quantities(self._view, self.data, self.quantities)]
        finally:  # the loop continues exactly as it would have without the measurement
            self.model.train(was_training)
            set_rng_state(rng)
        self._write(rows)

    def _write(self, rows) -> None:
        append_jsonl(self.path, rows)
        if self.tb is not None:
            self.tb.diagnostics(rows)


def track(model: nn.Module, run_dir="runs/tracked", every: int = 50, data=None, quantities: Optional[str] = None,
          tensorboard: bool = True, overwrite: bool = False) -> Tracker:
    """A ``Tracker`` to use as a context manager around your loop; see the module docstring. A
    directory that already holds a tracked run is refused unless ``overwrite``."""
    return Tracker(model, run_dir, every=every, data=data, quantities=quantities, tensorboard=tensorboard,
                   overwrite=overwrite)


# -- a user's model from the command line (``depthlab diagnose --model pkg.mod:make_net``) -----------

def load_factory(spec: str):
    """``"pkg.module:function"`` or ``"path/to/file.py:function"`` -> the callable it names."""
    import importlib.util
    import pkgutil

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ValueError(f"--model must look like package.module:function or file.py:function, got {spec!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.exists():
            raise FileNotFoundError(f"--model: no file {where!r}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        fn = getattr(module, name, None)
    else:
        try:
            fn = pkgutil.resolve_name(spec)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"--model {spec!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"--model: {where!r} has no callable {name!r}")
    return fn


def load_user_model(spec: str, weights=None) -> nn.Module:
    """The model ``spec``'s factory builds (called without arguments), with the state dict in
    ``weights`` (a ``torch.save``d state dict, or a dict holding one under ``model`` or
    ``state_dict``; tensors only, ``weights_only=True``). A state dict that does not fit is refused
    with its missing, unexpected and mis-shaped keys."""
    model = load_factory(spec)()
    if not isinstance(model, nn.Module):
        raise TypeError(f"--model {spec!r} returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        state = load_tensor_file(weights, "weights")
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        check_state_dict(model, state, str(weights), spec)
        model.load_state_dict(state)
    return model


def _few(keys, n: int = 3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def check_state_dict(model: nn.Module, state, where: str, spec: str = "the model") -> None:
    """Raise ``DataFileError`` in one line unless ``state`` fits ``model``: a few of the missing and
    unexpected keys with their counts, and the shape mismatches."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        got = type(state).__name__ if not isinstance(state, dict) else "a dict that is not all name -> tensor"
        raise DataFileError(f"{where}: expected a state dict (parameter name -> tensor, as "
                            f"model.state_dict() gives), got {got}")
    own = model.state_dict()
    missing, unexpected = own.keys() - state.keys(), state.keys() - own.keys()
    shapes = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key{'s' if len(missing) > 1 else ''} ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key{'s' if len(unexpected) > 1 else ''} ({_few(unexpected)})")
    if shapes:
        shown = "; ".join(f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}" for k in shapes[:3])
        parts.append(f"{len(shapes)} shape mismatch{'es' if len(shapes) > 1 else ''} ({shown}"
                     + (f"; ... ({len(shapes) - 3} more)" if len(shapes) > 3 else "") + ")")
    stripped = {k.removeprefix("module.") for k in unexpected}
    hint = ("; the file's keys start with 'module.' (saved from DataParallel/DDP): save model.module.state_dict()"
            if unexpected and all(k.startswith("module.") for k in unexpected) and stripped >= missing else "")
    raise DataFileError(f"{where}: the weights do not fit {spec}: " + ", ".join(parts) + hint)


def load_user_data(spec: str):
    """A registered dataset name, a folder or archive of class folders (``imagefolder``), or a ``.pt``
    file holding ``(x, y)`` or ``{"x": ..., "y": ...}``
    (checked: float x (N, C, ...) finite, integer y (N,) >= 0, the same length)."""
    if spec.endswith(".pt"):
        obj = load_tensor_file(spec, "data")
        if isinstance(obj, dict):
            if not {"x", "y"} <= obj.keys():
                raise DataFileError(f"{spec}: a dict of data must hold 'x' and 'y', got keys "
                                    f"{_few(map(repr, obj), 6) or 'none'}")
            obj = (obj["x"], obj["y"])
        if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
            got = f"a {type(obj).__name__}" + (f" of {len(obj)}" if isinstance(obj, (tuple, list)) else "")
            raise DataFileError(f"{spec}: expected (x, y) or {{'x': x, 'y': y}}, got {got}")
        for name, t in zip("xy", obj):
            if not isinstance(t, torch.Tensor):
                raise DataFileError(f"{spec}: {name} must be a tensor, got {type(t).__name__}")
        return as_dataset(tuple(obj), where=spec)  # checks x and y
    from depthlab.data import load_dataset
    from depthlab.data.images import is_archive

    if os.path.isdir(spec) or is_archive(spec):  # class folders: the imagefolder dataset
        return load_dataset("imagefolder", path=spec)
    return load_dataset(spec)


def output_width(model: nn.Module, x: torch.Tensor, spec: str = "the model", where: str = "data") -> Optional[int]:
    """The number of outputs ``model`` gives for one sample of ``x`` (one forward in eval mode, the
    model's mode restored); None for an output that is not (1, K). A model that cannot take ``x``
    is a ``ValueError`` naming both."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:1])
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # shape errors of the user's forward
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise ValueError(f"{where}: {spec} cannot take a sample of shape {tuple(x[:1].shape)}: {first}") from None
    finally:
        model.train(was_training)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() == 2 else None


def diagnose_user_model(spec: str, data: str, out, quantities="all", weights=None, blocks=None,
                        options=None) -> list:
    """``depthlab diagnose --model``: the quantities on the user's model, written to
    ``out/diagnostics.jsonl`` with a ``tracked.json`` saying what was diagnosed (``depthlab report
    out`` draws it)."""
    model = load_user_model(spec, weights)
    dataset = load_user_data(data)
    width = output_width(model, dataset.test_x, spec, data)
    if width is not None:  # a label the model has no output for would fail deep in a diagnostic
        check_dataset(dataset, width, f"a model with {width} outputs", where=data)
    adapted = adapt(model, blocks=blocks)
    records = [{"step": 0, **r} for r in run_quantities(adapted, dataset, quantities, options)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    atomic_write_text(out / MARKER, json.dumps({
        "model": spec, "params": sum(p.numel() for p in model.parameters()), "layers": layers, "every": None,
        "quantities": sorted({r["quantity"] for r in records}), "data": getattr(dataset, "name", data),
        "weights": str(weights) if weights else None, "blocks": list(getattr(adapted, "block_names", [])),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2) + "\n")
    path = out / "diagnostics.jsonl"
    if path.exists():
        path.unlink()  # one diagnosis per directory: a second run replaces the first
    append_jsonl(path, records)
    return records
