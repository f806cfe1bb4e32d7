"""An experiment's plan, checked before the first run trains: the parameters, every run's config and
model, and the run directories an earlier command left.

A run directory is reused only when it holds the very run the experiment would train (every resolved
config field equal, epochs included; device, threads and the fast path aside). Anything else stops
the command before it trains anything, naming the runs and what differs, and suggests ``--fresh``
(retrain) or ``--out`` (another directory). Each run the experiment trains records the command that
made it (``made_by.json``), so a report can say which runs it reused and from which command.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import List, Optional

import torch

from depthlab.config import ConfigError, RunConfig
from depthlab.fileio import atomic_write_text
from depthlab.training.resume import run_differences
from depthlab.training.trainer import build_from_config

MADE_BY = "made_by.json"


def check_depths(name: str, p: dict, min_depths: int) -> None:
    """``p["depths"]`` (when the experiment has it) as positive ints, sorted and without repeats, in place;
    an experiment that compares depths needs ``min_depths`` different ones."""
    if "depths" not in p:
        return
    depths = p["depths"]
    if (not isinstance(depths, (list, tuple)) or not depths
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in depths)):
        raise ConfigError(f"parameter depths of {name} must be a list of positive ints, e.g. depths=8,20; "
                          f"got {depths!r}")
    p["depths"] = sorted(set(depths))
    if len(p["depths"]) < min_depths:
        raise ConfigError(f"parameter depths of {name} needs at least {min_depths} different depths (its verdicts "
                          f"compare a shallow net with a deep one); got {list(depths)}")


def data_overrides(p: dict, data_name: Optional[str] = None) -> List[str]:
    """The ``data.*`` overrides of an experiment's parameters: ``dataset`` (or ``data_name``, when
    the data fell back to another), ``data_path`` (a folder or archive: ``data.path``)."""
    out = [f"data.name={data_name or p['dataset']}"]
    if p.get("data_path") and (data_name is None or data_name == p["dataset"]):
        out.append(f"data.path={p['data_path']}")
    return out


def data_config(p: dict):
    """The data section every run of the experiment shares (``dataset``, ``data_path`` and the
    ``data.*`` entries of ``set``): the dataset the experiment loads once and analyses."""
    overrides = data_overrides(p) + [o for o in (p.get("set") or ()) if str(o).strip().startswith("data.")]
    try:
        return RunConfig().with_overrides(overrides).validate().data
    except ConfigError as e:
        raise ConfigError(f"experiment data: {e}") from None


def run_config(spec, seed: int, p: dict, data_name: str, out_dir: Path, device: str) -> RunConfig:
    """The config of one run of the grid (run id ``<spec.id>-s<seed>`` under ``out_dir/runs``)."""
    run_id = f"{spec.id}-s{seed}"
    base = [*data_overrides(p, data_name), f"train.seed={seed}", f"train.device={device}",
            f"out_dir={out_dir / 'runs'}", f"run_id={run_id}"]
    if p.get("recipe"):
        base.append(f"train.recipe={p['recipe']}")
    if p.get("epochs"):
        base.append(f"train.epochs={p['epochs']}")
    try:
        return RunConfig().with_overrides(base + list(spec.overrides) + list(p.get("set") or ())).validate()
    except ConfigError as e:
        raise ConfigError(f"experiment run {run_id}: {e}") from None


def check_plan(name: str, grid: List[tuple], dataset, fresh: bool) -> None:
    """Before anything trains: every run's model can be built (on the meta device: no memory, no time)
    and every existing run directory holds the same run (unless ``fresh``). ``grid``: ``(spec, seed,
    cfg)``. Raises ``ConfigError`` naming the runs."""
    classes, channels = getattr(dataset, "num_classes", 10), getattr(dataset, "in_channels", 3)
    built = {}
    for _, _, cfg in grid:
        key = json.dumps(cfg.model.__dict__, sort_keys=True, default=str) + json.dumps(cfg.methods.__dict__,
                                                                                        sort_keys=True, default=str)
        if key not in built:
            try:
                with torch.device("meta"):
                    build_from_config(cfg, classes, channels)
                built[key] = None
            except (ValueError, TypeError) as e:
                raise ConfigError(f"experiment {name}, run {cfg.resolved_run_id}: {e}") from None
    if fresh:
        return
    clashes = [(cfg.resolved_run_id, why) for _, _, cfg in grid if (why := differs(cfg.run_dir, cfg))]
    if clashes:
        first_id, first_why = clashes[0]
        more = f" and {len(clashes) - 1} more run(s)" if len(clashes) > 1 else ""
        raise ConfigError(f"experiment {name}: run {first_id}{more} already exist(s) with other settings "
                          f"({first_why}); nothing was trained. Pass --fresh to retrain (fresh=True in Python), or "
                          f"--out DIR for a new directory")


def differs(run_dir: Path, wanted: RunConfig) -> str:
    """How the run in ``run_dir`` differs from ``wanted`` (epochs included); empty when it is the same run
    or there is none."""
    path = run_dir / "config.json"
    if not path.exists():
        return ""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return "its config.json is unreadable"
    return run_differences(saved, wanted, epochs=True)


def record_maker(run_dir: Path, command: str, experiment: str) -> None:
    """Write which command trained the run in ``run_dir``."""
    atomic_write_text(run_dir / MADE_BY, json.dumps({
        "command": command, "experiment": experiment,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}))


def maker_of(run_dir: Path) -> Optional[str]:
    """The command that trained the run in ``run_dir`` (None when it was not recorded)."""
    try:
        return json.loads((run_dir / MADE_BY).read_text()).get("command")
    except (OSError, ValueError):
        return None
