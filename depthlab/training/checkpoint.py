"""Checkpoints: atomic writes (temp file, fsync, rename, fsync of the directory), the last K kept,
everything needed for an exact resume (model, optimiser, scheduler, RNG states, position), and
nothing else: every value is a tensor or a plain container, so checkpoints load with
``torch.load(weights_only=True)`` and a file carrying any other pickled object is refused.

Names: ``epoch_0003.pt`` after epoch 3; ``epoch_0003_step_000012.pt`` 12 steps into epoch 4 (an
interrupted run's checkpoint). The latest is the furthest position.
"""
from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from depthlab.fileio import atomic_write_bytes

_NAME = re.compile(r"epoch_(\d{4,})(?:_step_(\d+))?\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


def rng_state() -> dict:
    """Every RNG stream as tensors and plain values (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_name(epoch: int, step: int = 0) -> str:
    return f"epoch_{epoch:04d}.pt" if step == 0 else f"epoch_{epoch:04d}_step_{step:06d}.pt"


def save_checkpoint(ckpt_dir: Path, epoch: int, state: dict, keep_last: int, step: int = 0) -> Path:
    """Write the checkpoint of position ``(epoch, step)`` atomically, then drop all but the newest
    ``keep_last``."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / checkpoint_name(epoch, step)
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list:
    """Checkpoint files in position order (temp files of interrupted writes are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in ckpt_dir.iterdir()
             if not p.name.startswith(".") and (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_position(path: Path) -> tuple:
    """``(epoch, step)`` of a checkpoint file, from its name (``epoch_0003.pt`` -> (3, 0))."""
    m = _NAME.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{str(path)!r} is not named like a checkpoint (epoch_NNNN.pt or epoch_NNNN_step_NNNNNN.pt)")
    return int(m.group(1)), int(m.group(2) or 0)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only. A file that needs any
    other pickled object (code could run while unpickling it) or that is cut short is refused."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        found = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if found:  # a pickle naming an object beyond tensors; anything else is not a torch file at all
            raise CheckpointError(f"refusing checkpoint {str(path)!r}: it carries a pickled object "
                                  f"({found.group(1)}) beyond tensors and plain containers; depthlab never "
                                  f"writes one, and loading it could run code") from None
        first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0]
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable (truncated or not a torch file): "
                              f"{first}") from None
