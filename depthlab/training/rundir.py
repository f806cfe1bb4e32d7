"""Reading a run directory back: its config, data and a checkpoint's weights (``depthlab eval``,
``depthlab diagnose``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Tuple

import depthlab.training.checkpoint as ckpt
from depthlab import fileio
from depthlab.config import ConfigError, RunConfig
from depthlab.data import load_dataset
from depthlab.training.loop import build_from_config, evaluate, resolve_device


def checkpoint_path(run_dir: Path, checkpoint: str) -> Optional[Path]:
    """``last`` | ``best`` | a file name in ``checkpoints/`` | a path; ``init`` -> None (no weights)."""
    if checkpoint == "init":
        return None
    if checkpoint == "last":
        path = ckpt.latest_checkpoint(run_dir / "checkpoints")
    elif checkpoint == "best":
        path = run_dir / "checkpoints" / "best.pt"
    else:
        path = Path(checkpoint) if Path(checkpoint).exists() else run_dir / "checkpoints" / checkpoint
    if path is None or not path.exists():
        raise ConfigError(f"no {checkpoint!r} checkpoint in {str(run_dir / 'checkpoints')!r} "
                          f"(use last, best, init or a checkpoint file)")
    return path


def load_run(run_dir, checkpoint: str = "last", device: str = "auto") -> Tuple:
    """``(model in eval mode, dataset on the device, config, epoch, checkpoint path)`` for a run
    directory; ``checkpoint="init"`` gives the model at initialisation (epoch 0, path None)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    path = checkpoint_path(run_dir, checkpoint)
    dev = resolve_device(device)
    data = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, seed=cfg.data.seed,
                        val_fraction=cfg.data.val_fraction, download=cfg.data.download).to(dev)
    model = build_from_config(cfg, data).to(dev)
    epoch = 0
    if path is not None:
        state = ckpt.load_checkpoint(path, map_location=dev)
        model.load_state_dict(state["model"])
        epoch = int(state["epoch"])
    return model.eval(), data, cfg, epoch, path


def evaluate_run(run_dir, checkpoint: str = "last", split: str = "test", device: str = "auto") -> dict:
    """Re-evaluate a run's checkpoint (``last``, ``best`` or a path) on ``split`` (test/train/val)."""
    if split not in ("test", "train", "val"):
        raise ConfigError(f"split {split!r} is not valid; use test, train or val")
    if checkpoint == "init":
        raise ConfigError("evaluate a trained checkpoint: last, best or a checkpoint file")
    model, dataset, _, epoch, path = load_run(run_dir, checkpoint, device)
    x, y = getattr(dataset, f"{split}_x"), getattr(dataset, f"{split}_y")
    if x is None:
        raise ConfigError(f"run {str(run_dir)!r} has no {split} split (data.val_fraction is 0)")
    loss, acc = evaluate(model, x, y)
    row = {"kind": "eval", "checkpoint": str(path), "epoch": epoch, "split": split,
           f"{split}_loss": loss, f"{split}_acc": acc}
    fileio.append_jsonl(Path(run_dir) / "metrics.jsonl", [row])
    return row
