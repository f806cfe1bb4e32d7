"""The sweep file: parse, check and expand it into runs, before anything runs or is written.

Keys ``name``, ``description``, ``out_dir``, ``base_config``, ``base``, ``grid`` (a mapping of dotted keys to
lists, or a list of such mappings), ``seeds``, ``executor``, ``workers``, ``threads_per_worker``, ``ray``.
Every run's config is validated and its model built on the meta device first.
Format: docs/sweeps.md, section "The sweep file". Run ids: ``depthlab.sweep.ids``.
"""
from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from depthlab.config import ConfigError, RunConfig, valid_keys
from depthlab.sweep.ids import grid_points, point_ids
from depthlab.sweep.ids import show as _show
from depthlab.training import validate_run
from depthlab.training.trainer import check_model

EXECUTORS = ("local", "ray")
TOP_KEYS = ("name", "description", "out_dir", "base_config", "base", "grid", "seeds", "executor", "workers",
            "threads_per_worker", "ray")
RAY_KEYS = ("address",)
# config keys the sweep sets itself -> what to use instead
OWNED = {"out_dir": "the sweep's out_dir (runs go to <out_dir>/<name>/runs)", "run_id": "nothing: run ids "
         "come from the grid values", "train.seed": "seeds: (a count or a list)",
         "train.threads": "threads_per_worker:"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class SweepSpec:
    name: str
    base: Dict[str, Any]
    grid: List[Dict[str, list]]            # one or more mappings, each expanded as a product
    seeds: List[int]
    out_dir: str = "runs/sweeps"
    description: str = ""
    executor: str = "local"
    workers: int = 1
    threads_per_worker: int = 1
    ray_address: Optional[str] = None
    source_text: str = ""                  # the YAML as written (copied into the sweep directory)
    source_path: Optional[str] = None

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    @property
    def grid_keys(self) -> List[str]:
        """Every grid key, in first-seen order."""
        return list(dict.fromkeys(k for g in self.grid for k in g))


@dataclass
class PlannedRun:
    run_id: str
    point_id: str                          # the run id without the seed: one row of the results table
    point: Dict[str, Any]                  # grid key -> value
    seed: int
    config: RunConfig = field(repr=False)


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


def load_spec(src, executor: Optional[str] = None, workers: Optional[int] = None) -> SweepSpec:
    """A ``SweepSpec`` from a YAML path or a dict; ``executor`` / ``workers`` override the file's."""
    base_dir, where, path = Path("."), "sweep", None
    if isinstance(src, dict):
        d, text = copy.deepcopy(src), yaml.safe_dump(src, sort_keys=False)
    else:
        path = Path(src)
        where, base_dir = str(path), path.parent
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise ConfigError(f"sweep file {str(path)!r} does not exist") from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(d, dict):
        raise _err(where, f"a sweep must be a mapping with keys {', '.join(TOP_KEYS)}; got {type(d).__name__}")
    unknown = [k for k in d if k not in TOP_KEYS]
    if unknown:
        raise _err(where, f"unknown sweep key {unknown[0]!r}; valid keys: {', '.join(TOP_KEYS)}")
    if "name" not in d:
        raise _err(where, "name is required (the sweep directory is <out_dir>/<name>)")
    name = _typed(where, "name", d["name"], str)
    if not _NAME.fullmatch(name):
        raise _err(where, f"name {name!r} must be filesystem-safe: letters, digits, '.', '_', '-'")
    if executor is not None:
        d["executor"] = executor
    if workers is not None:
        d["workers"] = workers
    ex = _typed(where, "executor", d.get("executor", "local"), str)
    if ex not in EXECUTORS:
        raise _err(where, f"executor {ex!r} is not valid; use one of {', '.join(EXECUTORS)}")
    n_workers = _positive(where, "workers", d.get("workers", 1))
    threads = _positive(where, "threads_per_worker", d.get("threads_per_worker", 1))
    ray = d.get("ray") or {}
    if not isinstance(ray, dict):
        raise _err(where, f"ray must be a mapping like {{address: auto}}, got {ray!r}")
    if [k for k in ray if k not in RAY_KEYS]:
        raise _err(where, f"unknown ray key {[k for k in ray if k not in RAY_KEYS][0]!r}; valid keys: "
                          + ", ".join(RAY_KEYS))
    address = ray.get("address")
    if address is not None:
        address = _typed(where, "ray.address", address, str)
    return SweepSpec(name=name, base=_base(where, d, base_dir), grid=_grid(where, d.get("grid")),
                     seeds=_seeds(where, d.get("seeds", 1)), out_dir=_typed(where, "out_dir", d.get("out_dir",
                     "runs/sweeps"), str), description=_typed(where, "description", d.get("description", ""), str),
                     executor=ex, workers=n_workers, threads_per_worker=threads, ray_address=address,
                     source_text=text, source_path=None if path is None else str(path))


def _typed(where, key, value, typ):
    if not isinstance(value, typ) or isinstance(value, bool) and typ is not bool:
        raise _err(where, f"{key} expects {typ.__name__}, got {value!r} ({type(value).__name__})")
    return value


def _positive(where, key, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _err(where, f"{key} must be a positive integer, got {value!r}")
    return value


def _seeds(where, value) -> List[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise _err(where, f"seeds must be a count >= 1 or a list of seeds, got {value}")
        return list(range(value))
    if (not isinstance(value, list) or not value
            or any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in value)):
        raise _err(where, f"seeds must be a count >= 1 or a non-empty list of integers >= 0, got {value!r}")
    if len(set(value)) != len(value):
        raise _err(where, f"seeds lists a seed twice: {value}")
    return list(value)


def _base(where, d, base_dir: Path) -> Dict[str, Any]:
    merged: Dict[str, Any] = {}
    if d.get("base_config") is not None:
        p = Path(_typed(where, "base_config", d["base_config"], str))
        p = p if p.is_absolute() else base_dir / p
        merged = RunConfig.from_yaml(p).to_dict()
        merged = {k: v for k, v in merged.items() if k not in ("out_dir", "run_id")}
        merged["train"] = {k: v for k, v in merged["train"].items() if k not in ("seed", "threads")}
    base = _nested(where, d.get("base") or {})
    for key in OWNED:
        sec, _, leaf = key.rpartition(".")
        node = base.get(sec) if sec else base
        if isinstance(node, dict) and leaf in node:
            raise _err(where, f"base sets {key}, which the sweep sets; use {OWNED[key]}")
    for sec, val in base.items():
        if isinstance(val, dict) and isinstance(merged.get(sec), dict):
            merged[sec] = {**merged[sec], **val}
        else:
            merged[sec] = val
    try:
        RunConfig.from_dict(merged)
    except ConfigError as e:
        raise _err(where, f"base: {e}") from None
    return merged


def _nested(where, base) -> Dict[str, Any]:
    """``base`` with dotted keys (``train.epochs: 2``, as in ``grid`` and ``--set``) moved into their
    sections (``train: {epochs: 2}``); both spellings may be mixed, but not for the same field."""
    if not isinstance(base, dict):
        raise _err(where, f"base must be a mapping of config sections or dotted keys, got {type(base).__name__}")
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items() if "." not in str(k)}
    for key, value in base.items():
        if "." not in str(key):
            continue
        sec, _, leaf = str(key).partition(".")
        section = out.setdefault(sec, {})
        if section is None:  # `train:` with nothing under it
            section = out[sec] = {}
        if not isinstance(section, dict):
            raise _err(where, f"base sets {key} but also {sec}: {section!r}, which is not a section")
        if leaf in section:
            raise _err(where, f"base sets {key} twice: as {key} and under {sec}: (keep one)")
        section[leaf] = value
    return out


def _grid(where, grid) -> List[Dict[str, list]]:
    if grid is None:
        return [{}]
    grids = grid if isinstance(grid, list) else [grid]
    if not grids or not all(isinstance(g, dict) for g in grids):
        raise _err(where, "grid must map dotted config keys to lists (or be a list of such mappings)")
    keys = [k for k in valid_keys() if k not in OWNED]
    for g in grids:
        for k, values in g.items():
            if k in OWNED:
                raise _err(where, f"grid key {k!r} is set by the sweep; use {OWNED[k]}")
            if k not in keys:
                raise _err(where, f"unknown grid key {k!r}; valid keys: {', '.join(keys)}")
            if not isinstance(values, list) or not values:
                raise _err(where, f"grid {k} must be a non-empty list of values, got {values!r}")
            for v in values:
                if not (v is None or isinstance(v, (str, int, float, bool))):
                    raise _err(where, f"grid {k} values must be scalars (string, number, bool, null), got {v!r}")
            canon = [json.dumps(v) for v in values]
            if len(set(canon)) != len(canon):
                raise _err(where, f"grid {k} lists a value twice: {values}")
    return grids


# ----------------------------------------------------------------------------- expansion

def expand(spec: SweepSpec) -> List[PlannedRun]:
    """Every run of the sweep, each config validated (and its model built on the meta device, so a
    bad depth or option fails here, not an hour into the sweep)."""
    keys, runs = spec.grid_keys, []
    points = grid_points(spec.grid)
    pids = point_ids(points, keys)
    runs_dir = (spec.sweep_dir / "runs").resolve()
    checked = set()
    for p, pid in zip(points, pids):
        for seed in spec.seeds:
            rid = f"{pid}_s{seed}"
            d = copy.deepcopy(spec.base)
            for k, v in p.items():
                sec, _, leaf = k.partition(".")
                d.setdefault(sec, {})
                d[sec] = {**(d[sec] or {}), leaf: v}
            d.setdefault("train", {})
            d["train"] = {**(d["train"] or {}), "seed": seed, "threads": spec.threads_per_worker}
            d["out_dir"], d["run_id"] = str(runs_dir), rid
            try:
                cfg = validate_run(RunConfig.from_dict(d))
                sig = json.dumps([cfg.to_dict()["model"], cfg.to_dict()["methods"]], sort_keys=True)
                if sig not in checked:
                    _dry_build(cfg)
                    checked.add(sig)
            except ConfigError as e:
                raise ConfigError(f"grid point {pid} ({_show(p)}): {e}") from None
            runs.append(PlannedRun(run_id=rid, point_id=pid, point=p, seed=seed, config=cfg))
    return runs


def _dry_build(cfg: RunConfig) -> None:
    """The trainer's own check (a build on the meta device), as a ConfigError: bad depths and options."""
    try:
        check_model(cfg)
    except (ValueError, KeyError) as e:
        raise ConfigError(str(e).strip("'\"")) from None
