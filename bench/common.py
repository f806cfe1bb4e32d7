"""Shared by the bench scripts: machine description, device sync, side-by-side timing, the
depthlab training step as the trainer builds it, and the reference loop people write by hand.

Every script prints its command, the machine and the date first, so a table pasted into
docs/performance.md carries its provenance.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from depthlab.config import MethodConfig, TrainConfig  # noqa: E402
from depthlab.data import DeviceLoader  # noqa: E402
from depthlab.models import build_model  # noqa: E402
from depthlab.recipes import resolve_train  # noqa: E402
from depthlab.training.fastpath import FastStep, prepare_model, resolve_fast_path  # noqa: E402
from depthlab.training.method_hooks import TrainingMethods, make_optimizer  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> str:
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (f"torch {torch.__version__} | device {device} ({dev}) | threads {torch.get_num_threads()} "
            f"| cpus visible {os.cpu_count()} | python {platform.python_version()}")


def header(device: torch.device, note: str = "") -> None:
    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print("date:", datetime.date.today().isoformat())
    print(machine_info(device))
    if note:
        print(note)
    print(flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(runs: Dict[str, Callable[[], float]], repeats: int) -> Dict[str, float]:
    """Median over ``repeats`` of each callable's returned seconds; within a repeat every callable
    runs once, in turn, so drift on a shared machine hits all of them alike."""
    times: Dict[str, List[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return {k: statistics.median(v) for k, v in times.items()}


def cifar_like(n: int, seed: int = 0):
    """``n`` random CIFAR-shaped images as uint8 HWC (as CIFAR's pickles decode) and labels."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def normalized(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float (N, C, H, W), per-channel mean/std normalised."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    return (x - torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR_STD).view(1, 3, 1, 1)


def train_config(**fast) -> TrainConfig:
    """The he2015 recipe's TrainConfig with fast-path fields set (unset: auto)."""
    return resolve_train(dataclasses.replace(TrainConfig(recipe="he2015"), **fast), depth=0)


class Cycling:
    """Batches from ``self.loader``, epoch after epoch, for as many steps as are timed."""
    _it = iter(())

    def _next(self):
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)


class DepthlabRun(Cycling):
    """The trainer's step on the device-resident loader (crop + flip on the device), timed over
    ``steps`` steps: loss and accuracy summed on the device and read once at the end, as the
    trainer does once per epoch."""

    def __init__(self, model_name: str, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 batch: int, model_options: Optional[dict] = None, **fast):
        self.device = device
        self.t = resolve_fast_path(dataclasses.replace(train_config(**fast), batch_size=batch), device)
        torch.manual_seed(0)
        self.model = build_model(model_name, num_classes=10, in_channels=3, **(model_options or {}))
        self.model = self.model.to(device).train()
        forward = prepare_model(self.model, self.t, device)
        opt = make_optimizer(self.model, self.t, TrainingMethods(MethodConfig()))  # no method: one group
        self.step = FastStep(forward, opt, self.t, device)
        self.loader = DeviceLoader(x.to(device), y.to(device), batch_size=batch, shuffle=True,
                                   drop_last=True, augment="crop-flip", crop_padding=4)
        self.batch = batch

    def __call__(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        for _ in range(steps):
            xb, yb = self._next()
            loss, out = self.step(xb, yb)
            loss_sum += loss
        loss_sum.item()
        return time.perf_counter() - start

    @property
    def label(self) -> str:
        t = self.t
        parts = ["bf16" if t.bf16 else "fp32", "channels_last" if t.channels_last else "NCHW", t.optimizer_impl]
        if t.compile != "off":
            parts.append(f"compile={t.compile}")
        return ", ".join(parts)
