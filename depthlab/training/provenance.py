"""What a job ran and where: the checkout's commit, versions, device and times; a run's epochs and
parameter count from its saved config. Shared by experiments and sweeps."""
from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from depthlab.config import RunConfig
from depthlab.models import count_params
from depthlab.recipes import RECIPES
from depthlab.training.trainer import build_from_config, resolve_device
from depthlab.version import __version__


def run_epochs(cfg: RunConfig) -> int:
    """A run's epochs, its recipe's where the config leaves them open."""
    return cfg.train.epochs or RECIPES.get(cfg.train.recipe).epochs


def params_of(cfg: dict) -> Optional[int]:
    """Trainable parameters of a saved config's model, built on the meta device (no memory)."""
    try:
        with torch.device("meta"):
            return count_params(build_from_config(RunConfig.from_dict(cfg), cfg["model"]["num_classes"],
                                                  cfg["model"]["in_channels"]))
    except Exception:  # noqa: BLE001 - informative only; the run itself is what matters
        return None


def provenance(command: Optional[str], device: str, started: datetime, commit: str) -> dict:
    """What was run, where and when: command, commit (``commit``: the checkout's when it started; a
    checkout changed while it ran adds ``commit_at_end``), versions, device, time (seconds since
    ``started``, which may lie in another process: ``reproduce all`` analyses on a worker)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev_name = f"cuda: {torch.cuda.get_device_name(dev)}"
    else:
        dev_name = f"{dev.type}: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return {"command": command, "commit": commit, **commit_at_end(commit), "depthlab": __version__,
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": dev_name,
            "started": started.isoformat(timespec="seconds"),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": (datetime.now(timezone.utc) - started).total_seconds()}


def commit_at_end(commit: str) -> dict:
    """``{"commit_at_end": now}`` when the checkout's commit is no longer ``commit`` (edited or checked
    out while a long job ran: its first modules were imported from ``commit``, later ones maybe not)."""
    now = git_commit()
    return {} if now == commit else {"commit_at_end": now}


def git_commit() -> str:
    """The source checkout's commit (with ``+dirty`` when it has uncommitted changes), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]  # the checkout: depthlab/training/..
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
