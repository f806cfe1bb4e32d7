"""The training loop people write by hand (the PyTorch CIFAR-10 tutorial's shape), as the baseline
of bench_throughput.py: a ``Dataset`` of uint8 HWC images whose ``__getitem__`` applies per-sample
transforms (to-tensor, normalise, pad-4 random crop, random horizontal flip: what torchvision's
``ToTensor``, ``Normalize``, ``RandomCrop(32, 4)`` and ``RandomHorizontalFlip`` do, written with
torch ops because torchvision is not a dependency), a ``DataLoader`` with shuffling and worker
processes, float32, contiguous NCHW tensors, ``torch.optim.SGD`` with its default implementation,
and ``loss.item()`` every step for the running loss.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from common import CIFAR_MEAN, CIFAR_STD, Cycling, sync
from torch.utils.data import DataLoader, Dataset


class TransformedImages(Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, padding: int = 4):
        self.images, self.labels, self.padding = images, labels, padding
        self.mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div(255)  # ToTensor
        x = (x - self.mean) / self.std                                           # Normalize
        p = self.padding
        x = F.pad(x, (p, p, p, p))                                               # RandomCrop(32, 4)
        r, c = torch.randint(0, 2 * p + 1, (2,)).tolist()
        x = x[:, r:r + 32, c:c + 32]
        if torch.rand(()) < 0.5:                                                 # RandomHorizontalFlip
            x = x.flip(-1)
        return x, int(self.labels[i])


class ReferenceRun(Cycling):
    """``run(steps) -> seconds`` of the hand-written loop on ``model``."""

    def __init__(self, model: torch.nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device,
                 batch: int, workers: int):
        self.model, self.device = model.to(device).train(), device
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        self.loader = DataLoader(TransformedImages(images, labels), batch_size=batch, shuffle=True,
                                 num_workers=workers, drop_last=True, pin_memory=device.type == "cuda",
                                 persistent_workers=workers > 0)
        self.running_loss = 0.0

    def __call__(self, steps: int) -> float:
        sync(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            x, y = self._next()
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            loss = F.cross_entropy(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            self.running_loss += loss.item()
        sync(self.device)
        return time.perf_counter() - start
