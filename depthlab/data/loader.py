"""A device-resident loader with batched, on-device augmentation (in the spirit of airbench).

The whole dataset is one tensor on its device; a batch is an index into it. Shuffling and
augmentation draw from two separate generators whose seeds are a pure function of
``(seed, epoch, stream)``, so epoch ``e`` is reproduced exactly after a resume, whatever ran before.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

AUGMENTS = ("none", "crop", "crop-flip")

# Stream ids mixed into the per-epoch seed; fixed forever, or old runs stop resuming exactly.
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def make_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A generator on ``device`` where torch supports one there, else on the CPU."""
    try:
        gen = torch.Generator(device=device)
    except RuntimeError:  # a backend without device-side generators: draw on CPU, move the result
        gen = torch.Generator()
    return gen.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed depending only on ``(seed, epoch, stream)`` (numpy's SeedSequence mixing)."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


def draw_crop_offsets(n: int, padding: int, generator: torch.Generator,
                      device: torch.device | str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (row, col) offsets into the padded image, each uniform in ``[0, 2 * padding]``."""
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator,
                            device=generator.device)
    offsets = offsets.to(device)
    return offsets[0], offsets[1]


def crop_at(x: torch.Tensor, padding: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` (N, C, H, W) by ``padding``; crop sample i's H x W at (rows[i], cols[i])."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H + 2p, W + 2p)
    dev = x.device
    row_idx = rows.view(n, 1) + torch.arange(h, device=dev)  # (N, H)
    col_idx = cols.view(n, 1) + torch.arange(w, device=dev)  # (N, W)
    # One gather by broadcast advanced indexing: no Python loop over samples.
    return padded[
        torch.arange(n, device=dev).view(n, 1, 1, 1),
        torch.arange(c, device=dev).view(1, c, 1, 1),
        row_idx.view(n, 1, h, 1),
        col_idx.view(n, 1, 1, w),
    ]  # (N, C, H, W)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` and randomly crop each sample back to its H x W, batched."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    rows, cols = draw_crop_offsets(x.shape[0], padding, generator, x.device)
    return crop_at(x, padding, rows, cols)


def draw_flip_mask(n: int, generator: torch.Generator, device: torch.device | str) -> torch.Tensor:
    """A bool mask (N,) selecting each sample independently with probability 1/2."""
    return (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(device)


def random_hflip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the samples left-right (each with probability 1/2), batched."""
    mask = draw_flip_mask(x.shape[0], generator, x.device)
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def augment_batch(x: torch.Tensor, augment: str, crop_padding: int,
                  generator: torch.Generator) -> torch.Tensor:
    """Apply the named augmentation ("none", "crop" or "crop-flip") to a batch."""
    if augment == "none":
        return x
    x = random_crop(x, crop_padding, generator)
    if augment == "crop-flip":
        x = random_hflip(x, generator)
    return x


def _check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}")


def _check_nonneg_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


class DeviceLoader:
    """The whole dataset as one tensor on its device; batches by indexing; no per-sample Python.

    Each ``iter()`` runs the current epoch and then advances it by one; ``set_epoch(e)`` chooses the
    epoch the next ``iter()`` runs. Order and augmentation of epoch ``e`` depend only on
    ``(seed, e)``, drawn from separate generators (one for order, one for augmentation).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, augment: str = "none", crop_padding: int = 4,
                 seed: int = 0):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        _check_choice("augment", augment, AUGMENTS)
        _check_nonneg_int("crop_padding", crop_padding)
        _check_nonneg_int("seed", seed)
        if x.ndim != 4:
            raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"x and y disagree on N: x {tuple(x.shape)}, y {tuple(y.shape)}")
        self.x = x
        self.y = y.to(x.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.augment = augment
        self.crop_padding = crop_padding
        self.seed = seed
        self.epoch = 0

    @property
    def device(self) -> torch.device:
        return self.x.device

    def set_epoch(self, epoch: int) -> None:
        _check_nonneg_int("epoch", epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.x.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _order(self, epoch: int) -> torch.Tensor:
        n = self.x.shape[0]
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        gen = make_generator(self.device, epoch_seed(self.seed, epoch, _ORDER_STREAM))
        return torch.randperm(n, generator=gen, device=gen.device).to(self.device)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        # Claim the epoch now, not at the first next(), so set_epoch after iter() cannot leak in.
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.batches(epoch)

    def batches(self, epoch: int, start: int = 0) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch`` from batch ``start`` on, exactly as a full pass yields them
        (the skipped batches' augmentation is still drawn: a resume mid-epoch is exact)."""
        order = self._order(epoch)
        aug_gen: Optional[torch.Generator] = None
        if self.augment != "none":
            aug_gen = make_generator(self.device, epoch_seed(self.seed, epoch, _AUGMENT_STREAM))
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            xb = self.x[idx]
            if aug_gen is not None:
                xb = augment_batch(xb, self.augment, self.crop_padding, aug_gen)
            if i >= start:
                yield xb, self.y[idx]
