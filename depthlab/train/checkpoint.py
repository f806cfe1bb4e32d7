"""Checkpoints: atomic writes (temp file + rename), the last K kept, everything needed for an
exact resume (model, optimiser, scheduler, RNG states, epoch)."""
from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

_NAME = re.compile(r"epoch_(\d{4,})\.pt$")


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir: Path, epoch: int, state: dict, keep_last: int) -> Path:
    """Write ``checkpoints/epoch_XXXX.pt`` atomically, then drop all but the newest ``keep_last``."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / f"epoch_{epoch:04d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    # weights_only=False: the checkpoint holds RNG states and optimiser state written by us.
    return torch.load(path, map_location=map_location, weights_only=False)


def append_jsonl(path: Path, rows) -> None:
    """Append one JSON line per row (metrics.jsonl, diagnostics.jsonl)."""
    with open(path, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()


def read_jsonl(path: Path) -> list:
    """Every row of a JSON-lines file; a line cut by a crash mid-write is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
