"""Where a run starts: a new run directory, the same run resumed (``resume=True``, or ``"auto"``:
resume if the directory holds this run), or a depthlab run replaced (``overwrite``); the checkpoint a
resume continues from (the newest good one its metrics cover) and the logs cut back to it. Anything
else is refused before a file is written: a different run, someone else's folder, damaged logs."""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Optional

import depthlab.fileio as fileio
import depthlab.training.checkpoint as ckpt
from depthlab.config import ConfigError, RunConfig
from depthlab.data import resolve_path
from depthlab.recipes import RECIPES, resolve_train
from depthlab.training.distributed import elastic_restart, made_by_this_job

# Fields that may change when a run is resumed (everything else must match the saved config).
# The fast-path fields change how a step runs, not the run (bf16 only within rounding).
FAST_PATH_FIELDS = {"train.bf16", "train.channels_last", "train.flush_denormal", "train.optimizer_impl",
                    "train.compile", "train.checkpoint_segments", "train.deterministic", "train.check_every"}
_RESUMABLE_CHANGES = {"train.epochs", "train.threads", "train.device", "data.data_dir", "data.download",
                      "out_dir"} | FAST_PATH_FIELDS


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def run_differences(saved: dict, wanted: RunConfig, epochs: bool = False) -> str:
    """How a run directory's saved config (``config.json``) differs from the run ``wanted``
    describes, as ``"field: saved X, now Y; ..."``; empty when it is that run. Fields ``wanted``
    leaves ``None`` and the resumable ones (device, threads, fast path; epochs unless ``epochs``)
    do not count; recipe defaults are resolved first. For callers that reuse runs (experiments,
    sweeps: they pass ``epochs=True``, since a run of another length is another run)."""
    want = wanted.to_dict()
    want["train"] = dataclasses.asdict(resolve_train(wanted.train, saved["model"].get("depth") or 0))
    want["data"]["path"] = resolve_path(wanted.data.path)  # saved absolute (resolve_config)
    old, new = _flat(saved), _flat(want)
    ignored = _RESUMABLE_CHANGES - ({"train.epochs"} if epochs else set())
    return _describe(old, new, [k for k, v in new.items() if v is not None and k not in ignored])


def _describe(old: dict, new: dict, keys) -> str:
    """``"field: saved X, now Y; ..."`` for the flattened ``keys`` whose values differ."""
    return "; ".join(f"{k}: saved {old.get(k)!r}, now {new[k]!r}" for k in sorted(keys) if old.get(k) != new[k])


def prepare_run_dir(cfg: RunConfig, resume, overwrite: bool) -> Optional[dict]:
    """Refuse to mix runs. Returns the saved config dict when resuming: ``resume=True``, or
    ``"auto"`` and the directory holds this run, or a torchrun restart of the job that started it."""
    run_dir = cfg.run_dir
    saved_path = run_dir / "config.json"
    if resume and overwrite:
        raise ConfigError("choose one of resume=True (CLI: --resume) and overwrite=True (CLI: --overwrite), not both")
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} is a file, not a directory; choose another run_id")
    if saved_path.exists():
        if not resume and made_by_this_job(run_dir) and not _resume_differences(cfg, run_dir)[1]:
            # the group's earlier attempt started this run: refusing (or replacing) it would lose its work
            logging.getLogger("depthlab").warning(
                "torchrun restart %d: resuming %r, which this torchrun job started (a restart continues its own "
                "run, as resume='auto' (CLI: --resume auto) would)", elastic_restart(), str(run_dir))
            resume, overwrite = "auto", False
        if overwrite:
            _check_replaceable(run_dir)
            shutil.rmtree(run_dir)
            return None
        if not resume:
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; pass resume=True (CLI: "
                              f"--resume) to continue it, overwrite=True (CLI: --overwrite) to replace it, or "
                              f"choose another run_id")
        saved, details = _resume_differences(cfg, run_dir)
        if details:
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it holds a different run ({details})")
        return saved
    if resume is True:
        raise ConfigError(f"nothing to resume: {str(run_dir)!r} holds no run (no config.json)")
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:  # someone else's files: replacing them is not ours to do
            _check_replaceable(run_dir)
        raise ConfigError(f"run directory {str(run_dir)!r} exists and is not empty; pass overwrite=True (CLI: "
                          f"--overwrite) or choose another run_id")
    return None


def _resume_differences(cfg: RunConfig, run_dir: Path) -> tuple:
    """``(saved config, "field: saved X, now Y; ...")`` for what differs from the run saved in
    ``run_dir`` (beyond the resumable fields); the text is empty when it is this run."""
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {str(run_dir / 'config.json')!r}: {e}") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{str(run_dir / 'config.json')!r} is not a depthlab run config (not a mapping)")
    new, old = _flat(cfg.to_dict()), _flat(saved)
    return saved, _describe(old, new, [k for k in new if k not in _RESUMABLE_CHANGES])


def _check_replaceable(run_dir: Path) -> None:
    """``overwrite`` deletes only a depthlab run directory: a ``config.json`` that parses as a run
    config, or one beside ``metrics.jsonl`` or ``checkpoints/`` (a run of an older version)."""
    config = run_dir / "config.json"
    try:
        d = json.loads(config.read_text())
        if isinstance(d, dict) and {"model", "data", "train"} <= set(d):
            RunConfig.from_dict(d)
            return
    except (OSError, ValueError, TypeError, KeyError):  # unreadable, not JSON, or not a run config
        pass
    if config.is_file() and ((run_dir / "metrics.jsonl").is_file() or (run_dir / "checkpoints").is_dir()):
        return
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir())
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise ConfigError(f"run directory {str(run_dir)!r} does not hold a depthlab run (it holds {shown}); "
                      f"overwrite=True (CLI: --overwrite) replaces only a run directory; choose another run_id "
                      f"or out_dir")


def check_epochs_change(saved: dict, cfg: RunConfig, n_train: int) -> None:
    """A resume with another ``train.epochs`` continues only a run whose trained steps had exactly the
    learning rates of a run of the new length (e.g. a step schedule before its first drop); otherwise
    (a one-cycle schedule, or a run already past the new end) it is refused: the result would be
    neither the old run nor a run of the new length. The position is that of the checkpoint resume
    will use (the newest good one its metrics cover)."""
    t, old = cfg.train, saved["train"]["epochs"]
    if old == t.epochs:
        return
    epoch, step = resume_point(cfg.run_dir, "cpu", set_aside=False).position
    spe = -(-n_train // t.batch_size)
    done = epoch * spe + step
    where = f"cannot resume {str(cfg.run_dir)!r} with train.epochs={t.epochs} (it was made with {old})"
    if done > t.epochs * spe:
        raise ConfigError(f"{where}: it has already trained {epoch} epoch(s); train a new run (another run_id, "
                          f"or overwrite=True / CLI --overwrite)")
    recipe = RECIPES.get(t.recipe)
    was = recipe.lr_factor(old * spe, t.warmup_iters, t.warmup_lr, t.lr)
    now = recipe.lr_factor(t.epochs * spe, t.warmup_iters, t.warmup_lr, t.lr)
    bad = next((i for i in range(done) if not math.isclose(was(i), now(i), rel_tol=1e-12)), None)
    if bad is not None:
        raise ConfigError(f"{where}: its {t.recipe} schedule depends on the run's length, so the {done} steps "
                          f"already trained had other learning rates than a {t.epochs}-epoch run (at step {bad}: "
                          f"x{was(bad):.4g} trained, x{now(bad):.4g} for {t.epochs} epochs); train a new run "
                          f"(another run_id, or overwrite=True / CLI --overwrite)")


def resume_point(run_dir: Path, map_location, set_aside: bool) -> ckpt.Pick:
    """The checkpoint a resume continues from, once the run's logs are known to be intact: the
    newest good checkpoint whose epochs metrics.jsonl covers (a checkpoint is written after its
    epoch's row, so a later one means lost rows), damaged ones passed over (``set_aside``: renamed).
    Damage to the logs other than a torn last line (a write cut short; truncation drops it), and
    epoch rows that skip an epoch, are a ConfigError naming file:line: resuming would rewrite the
    file without the lost rows."""
    epochs = 0
    for name in ("metrics.jsonl", "diagnostics.jsonl"):
        path = run_dir / name
        rows, damage = fileio.read_jsonl_checked(path)
        bad = next((str(d) for d in damage if not d.torn), None)
        gap = fileio.epoch_gap(rows) if name == "metrics.jsonl" else None
        if bad is None and gap:
            bad = f"{path}: {gap}"
        if bad is not None:
            raise ConfigError(f"cannot resume {str(run_dir)!r}: {bad}; resuming would rewrite the file without "
                              f"the lost rows. Restore {name} from a backup, or train the run again with "
                              f"overwrite=True (CLI: --overwrite)")
        if name == "metrics.jsonl":
            epochs = max((r["epoch"] for r in rows if r.get("kind") == "epoch"), default=0)
    return ckpt.newest_good_checkpoint(run_dir / "checkpoints", map_location=map_location, max_epoch=epochs,
                                       set_aside=set_aside)


def truncate_logs(path: Path, epoch: int) -> int:
    """Drop epoch lines (metrics, or diagnostics written during training) past the checkpoint we
    resume from, so the logs match the weights, and a torn last line, with a warning naming it
    (``resume_point`` has refused any other damage). Returns how many epoch rows were dropped."""
    rows, damage = fileio.read_jsonl_checked(path)
    for d in damage:
        logging.getLogger("depthlab").warning("%s; dropped it", d)
    kept = [r for r in rows if not (r.get("kind", "epoch") == "epoch" and r.get("epoch", 0) > epoch)]
    fileio.write_jsonl(path, kept)
    return len(rows) - len(kept)


def last_epoch_row(path: Path) -> dict:
    rows = [r for r in fileio.read_jsonl(path) if r.get("kind") == "epoch"]
    return rows[-1] if rows else {}
