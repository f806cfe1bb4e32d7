"""Reading a run directory back: its config, data and a checkpoint's weights (``depthlab eval``,
``depthlab diagnose``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Tuple

import depthlab.fileio as fileio
import depthlab.training.checkpoint as ckpt
from depthlab.config import ConfigError, RunConfig
from depthlab.data import load_dataset_from
from depthlab.training.safety import RunLock
from depthlab.training.trainer import build_from_config, evaluate, resolve_device

log = logging.getLogger("depthlab")


CHECKPOINTS = ("last", "best", "init")   # what diagnose takes (besides a checkpoint file)
EVAL_CHECKPOINTS = ("last", "best")      # eval needs trained weights: no init


def checkpoint_path(run_dir: Path, checkpoint: str, valid=CHECKPOINTS) -> Optional[Path]:
    """``last`` | ``best`` | a file name in ``checkpoints/`` | a path; ``init`` -> None (no weights).
    ``valid``: the names this caller accepts (errors list them). ``last`` is the furthest by name,
    unchecked: ``load_run`` loads the newest good one."""
    choices = f"use {', '.join(valid)} or a checkpoint file"
    if checkpoint == "init" and "init" not in valid:
        raise ConfigError(f"checkpoint 'init' has no trained weights to use here; {choices}")
    if checkpoint == "init":
        return None
    if checkpoint == "last":
        path = ckpt.latest_checkpoint(run_dir / "checkpoints")
    elif checkpoint == "best":
        path = run_dir / "checkpoints" / "best.pt"
    else:
        path = Path(checkpoint) if Path(checkpoint).exists() else run_dir / "checkpoints" / checkpoint
    if path is None or not path.exists():
        why = (": 'best' is kept only by runs trained with train.keep_best=true and a validation split "
               "(data.val_fraction > 0), e.g. --set data.val_fraction=0.1 train.keep_best=true"
               if checkpoint == "best" else "")
        raise ConfigError(f"no {checkpoint!r} checkpoint in {str(run_dir / 'checkpoints')!r}{why} ({choices})")
    return path


def load_weights(run_dir: Path, checkpoint: str, path: Path, map_location, steps_per_epoch: int) -> Tuple:
    """``(state, path)`` of the checkpoint ``checkpoint_path`` resolved. ``last`` is the newest good
    checkpoint: damaged newer ones are passed over with a warning (and left where they are: a
    reader never renames a run's files). A named file or ``best`` that is damaged is an error."""
    if checkpoint == "last":
        pick = ckpt.newest_good_checkpoint(run_dir / "checkpoints", map_location=map_location)
        if pick.passed:
            behind = ckpt.steps_between(pick, steps_per_epoch)
            log.warning(ckpt.fallback_message(pick, "using", f"its weights are {behind} of training behind the "
                                                             f"newest checkpoint"))
        return pick.state, pick.path
    try:
        return ckpt.load_checkpoint(path, map_location=map_location), path
    except ckpt.CheckpointDamaged as e:
        raise ckpt.CheckpointDamaged(e.path, f"{e.reason}; name another checkpoint, or use checkpoint='last' "
                                             f"(CLI: --checkpoint last) for the newest good one") from None


def steps_per_epoch(cfg: RunConfig, data) -> int:
    """Training steps per epoch of a run (a checkpoint at epoch E is step E * this)."""
    return -(-len(data.train_x) // (cfg.train.batch_size or 1))


def _saved_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.json").exists():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    return RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))


def load_run(run_dir, checkpoint: str = "last", device: str = "auto", valid=CHECKPOINTS) -> Tuple:
    """``(model in eval mode, dataset on the device, config, epoch, checkpoint path)`` for a run
    directory; ``checkpoint="init"`` gives the model at initialisation (epoch 0, path None)."""
    run_dir = Path(run_dir)
    cfg = _saved_config(run_dir)
    path = checkpoint_path(run_dir, checkpoint, valid)
    dev = resolve_device(device)
    data = load_dataset_from(cfg.data).to(dev)
    model = build_from_config(cfg, data.num_classes, data.in_channels).to(dev)
    epoch = 0
    if path is not None:
        state, path = load_weights(run_dir, checkpoint, path, dev, steps_per_epoch(cfg, data))
        model.load_state_dict(state["model"])
        epoch = int(state["epoch"])
    return model.eval(), data, cfg, epoch, path


def evaluate_run(run_dir, checkpoint: str = "last", split: str = "test", device: str = "auto") -> dict:
    """Re-evaluate a run's checkpoint (``last``, ``best`` or a path) on ``split`` (test/train/val)
    and append the result to its ``metrics.jsonl``, unless another process is training the run
    (one writer per run): then the result is only returned, and a line on the ``depthlab``
    logger says it was not written."""
    if split not in ("test", "train", "val"):
        raise ConfigError(f"split {split!r} is not valid; use test, train or val")
    run_dir = Path(run_dir)
    model, dataset, _, epoch, path = load_run(run_dir, checkpoint, device, valid=EVAL_CHECKPOINTS)
    x, y = getattr(dataset, f"{split}_x"), getattr(dataset, f"{split}_y")
    if x is None:
        raise ConfigError(f"run {str(run_dir)!r} has no {split} split: it was trained with data.val_fraction=0; "
                          f"train with e.g. --set data.val_fraction=0.1 to hold one out")
    loss, acc = evaluate(model, x, y)
    row = {"kind": "eval", "checkpoint": str(path), "epoch": epoch, "split": split,
           f"{split}_loss": loss, f"{split}_acc": acc}
    lock = RunLock(run_dir)
    if not lock.try_acquire():
        log.warning("run %s is being trained by another process (pid %s); the result is not appended to its "
                    "metrics.jsonl (one writer per run)", str(run_dir), lock.holder)
        return row
    try:
        fileio.append_jsonl(run_dir / "metrics.jsonl", [row])
    finally:
        lock.release()
    return row
