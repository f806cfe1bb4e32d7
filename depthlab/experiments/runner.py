"""``reproduce``: run an experiment's grid (reusing finished runs), analyse it, write
``experiment.json`` and a self-contained ``report.html`` into the experiment directory."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import yaml

from depthlab.config import ConfigError, RunConfig
from depthlab.data import DATASETS, DataFileError, default_data_dir, folders, load_dataset_from
from depthlab.experiments.base import EXPERIMENTS, Experiment, Findings, RunSpec
from depthlab.experiments.cost import estimate_seconds
from depthlab.experiments.plan import check_depths, check_plan, data_config, maker_of, record_maker, run_config
from depthlab.fileio import atomic_write_text, epoch_gap, read_jsonl
from depthlab.sweep.executors import execute
from depthlab.sweep.spec import EXECUTORS
from depthlab.training import load_run
from depthlab.training.progress import GridProgress
from depthlab.training.provenance import commit_at_end, git_commit, params_of, provenance, run_epochs  # noqa: F401
from depthlab.training.trainer import train_or_stop as train

SCALES = ("quick", "real", "paper")  # digits/mnist1d; CIFAR-10 images on a 2-core CPU; the paper's recipe
# parameters every experiment understands, besides its own
# (data_path: a folder or archive of class folders for dataset=imagefolder, or CIFAR's class-folder form)
COMMON_PARAMS = {"dataset": None, "data_path": None, "recipe": None, "epochs": None, "set": ()}


def list_experiments() -> List[dict]:
    """Name, title, source and expectation of every registered experiment."""
    out = []
    for name in EXPERIMENTS.names():
        e = EXPERIMENTS.get(name)
        out.append({"name": name, "title": e.title, "source": e.source, "expected": e.expected,
                    "scales": sorted(e.scales)})
    return out


def resolve_params(exp: Experiment, scale: str, params: Optional[Dict[str, Any]] = None) -> dict:
    """The scale's defaults updated with ``params``; an unknown name lists the valid ones."""
    if scale not in exp.scales:
        raise ConfigError(f"scale {scale!r} is not valid for {exp.name}; valid scales: {', '.join(sorted(exp.scales))}")
    p = {**COMMON_PARAMS, **exp.scales[scale]}
    for k, v in (params or {}).items():
        if k not in p:
            raise ConfigError(f"unknown parameter {k!r} for experiment {exp.name}; valid parameters: "
                              + ", ".join(sorted(p)))
        if isinstance(p[k], (list, tuple)) and not isinstance(v, (list, tuple)):
            v = [v]  # `--param depths=110`: a one-element list
        p[k] = v
    check_depths(exp.name, p, exp.min_depths)
    return p


def _check_dataset_param(p: dict) -> None:
    """``dataset`` is a dataset name; a folder or archive given there gets the spelling that works."""
    name = p.get("dataset")
    if name is not None and str(name) not in DATASETS and (Path(str(name)).expanduser().exists()
                                                          or str(name).lower().endswith((".zip", ".tar", ".tgz",
                                                                                         ".tar.gz"))):
        raise ConfigError(f"parameter dataset takes a dataset name; for the folder or archive {name!r} use "
                          f"--param dataset=imagefolder data_path={name} (params={{'dataset': 'imagefolder', "
                          f"'data_path': ...}} in Python)")


def parse_params(items: Sequence[str]) -> Dict[str, Any]:
    """``["depths=[8,20]", "epochs=3"]`` -> dict; values parsed as YAML (``8,20`` becomes a list)."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"parameter {item!r} must look like name=value")
        k, raw = item.split("=", 1)
        v = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(v, str) and "," in v:
            v = [yaml.safe_load(s) for s in v.split(",")]
        out[k.strip()] = v
    return out


# ----------------------------------------------------------------------------- context

class Context:
    """What an experiment's ``analyse`` sees: parameters, per-run results, cached measurements."""

    def __init__(self, exp: Experiment, scale: str, params: dict, seeds: List[int], out: Path, device: str,
                 dataset, data_note: str, quiet: bool):
        self.exp, self.scale, self.p, self.seeds, self.out = exp, scale, params, seeds, out
        self.device, self.dataset, self.data_note, self.quiet = device, dataset, data_note, quiet
        self.results: List[dict] = []

    # runs -------------------------------------------------------------------------------
    def rows(self, **labels) -> List[dict]:
        """Result rows whose labels match every ``key=value`` given (all seeds)."""
        return [r for r in self.results if all(r.get(k) == v for k, v in labels.items())]

    def values(self, key: str, **labels) -> List[float]:
        """``key`` (e.g. ``train_acc``) over the seeds of the matching runs; diverged or failed runs
        give nan for accuracies' complements (they count as not trained, never silently dropped)."""
        return [_value(r, key) for r in self.rows(**labels)]

    def run_dir(self, row: dict) -> Path:
        return self.out / row["run_dir"]

    def load(self, row: dict, checkpoint: str = "last"):
        """``(model in eval mode, dataset)`` of a finished run, on the experiment's device."""
        model, data, *_ = load_run(self.run_dir(row), checkpoint=checkpoint, device=self.device)
        return model, data

    # measurements -----------------------------------------------------------------------
    def measure(self, name: str, fn: Callable[[], Any], key: Any = None) -> Any:
        """``fn()`` cached as JSON in ``measurements/<name>.json``; recomputed when ``key`` (plus the
        parameters and seeds) differs from the cached one. ``fn`` must return JSON-able data."""
        path = self.out / "measurements" / f"{name}.json"
        stamp = json.loads(json.dumps({"params": self.p, "seeds": self.seeds, "key": key}, default=str))
        if path.exists():
            try:
                cached = json.loads(path.read_text())
                if cached.get("stamp") == stamp:
                    return cached["value"]
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged cache is recomputed
        t0 = time.perf_counter()
        value = fn()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"stamp": stamp, "value": value, "seconds": time.perf_counter() - t0},
                                           default=_jsonable))
        return json.loads(json.dumps(value, default=_jsonable))

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"  {msg}", file=sys.stderr, flush=True)


def _value(row: dict, key: str) -> float:
    v = row.get(key)
    return math.nan if v is None else float(v)


def _jsonable(o):
    try:
        import numpy as np
        import torch

        if isinstance(o, torch.Tensor):
            return o.detach().cpu().tolist()
        if isinstance(o, (np.ndarray, np.generic)):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


# ----------------------------------------------------------------------------- data

def _has_class_folders(data) -> bool:
    """Whether CIFAR's class-folder form lies under the data dir (``folders.find_cifar_folders``)."""
    root = Path(data.data_dir).expanduser() if data.data_dir else default_data_dir()
    try:
        return folders.find_cifar_folders(data.name, root) is not None
    except DataFileError:  # several candidates
        return True


def load_experiment_data(data, quiet: bool = True, fallback: bool = True):
    """``(dataset, config name, note)`` for the experiment's data section (``plan.data_config``); CIFAR
    files that are absent (and cannot be downloaded here; no ``data.path`` given) fall back to
    CIFAR-shaped synthetic data, and the note says so, unless ``fallback`` is off (the real-image
    scale: its verdicts are about real images or nothing)."""
    name = data.name
    try:
        return load_dataset_from(data, quiet=quiet), name, ""
    except DataFileError as e:
        if not fallback or not name.startswith("cifar") or data.path is not None or _has_class_folders(data):
            raise  # the user's own copy is at fault: say so, never train on something else
        note = (f"{name} files are absent here and could not be downloaded ({str(e).splitlines()[0]}); "
                f"this run used synthetic CIFAR-shaped data (3x32x32, 10 classes, 512 train / 256 test "
                f"images): it checks that the paper-scale pipeline runs end to end, not the paper's numbers")
        if not quiet:
            print(f"note: {note}", file=sys.stderr)
        return load_dataset_from(dataclasses.replace(data, name="synthetic")), "synthetic", note


# ----------------------------------------------------------------------------- reproduce

DEFAULT_SEEDS = {"quick": 3, "real": 3, "paper": 1}  # a verdict needs the spread over seeds; paper: one GPU run each


def reproduce(name: str, scale: str = "quick", seeds: Optional[int] = None, out: Optional[str] = None, *,
              params: Optional[Dict[str, Any]] = None, device: str = "auto", fresh: bool = False,
              quiet: bool = False, report: bool = True, command: Optional[str] = None, jobs: int = 1,
              executor: str = "local") -> dict:
    """Run experiment ``name`` at ``scale`` over ``seeds`` seeds (0..seeds-1; default 3 at the quick
    and real scales, 1 at the paper scale) into ``out``
    (default ``runs/reproduce/<name>[-paper]``). Finished runs are reused, interrupted ones resumed,
    ``fresh=True`` retrains everything; ``jobs`` runs train at once in worker processes (0: one per
    CPU core) on ``executor`` (``local`` or ``ray``: the sweep's executors, ``depthlab.sweep``).
    Returns the content of ``experiment.json`` (plus ``report``)."""
    jobs = check_jobs(jobs, executor)
    plan = plan_experiment(name, scale, seeds, out, params=params, device=device, fresh=fresh, quiet=quiet,
                           command=command)
    rows = _train_grid(plan.grid, plan.dataset, fresh, quiet, plan.command, plan.exp.name, jobs, executor)
    return analyse(plan.info, rows, quiet=quiet, report=report, dataset=plan.dataset)


def check_jobs(jobs: int, executor: str) -> int:
    """``jobs`` checked (0: one per CPU core) and ``executor`` one of ``EXECUTORS``."""
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ConfigError(f"jobs must be an int >= 0 (0: one per CPU core), got {jobs!r}")
    if executor not in EXECUTORS:
        raise ConfigError(f"executor {executor!r} is not valid; use one of {', '.join(EXECUTORS)}")
    return jobs or (os.cpu_count() or 1)


@dataclasses.dataclass
class Plan:
    """An experiment ready to train: ``grid`` (``(spec, seed, cfg)``, checked by ``check_plan``), the
    data it loaded, and ``info``: what its analysis needs, JSON-able (it may run in another process)."""
    exp: Experiment
    grid: list
    dataset: Any
    info: dict

    @property
    def command(self) -> str:
        return self.info["command"]


def plan_experiment(name: str, scale: str = "quick", seeds: Optional[int] = None, out: Optional[str] = None, *,
                    params: Optional[Dict[str, Any]] = None, device: str = "auto", fresh: bool = False,
                    quiet: bool = False, command: Optional[str] = None) -> Plan:
    """Everything ``reproduce`` does before the first run trains: parameters, data, the grid, checks."""
    exp: Experiment = EXPERIMENTS.get(name)()
    if seeds is None:
        seeds = DEFAULT_SEEDS.get(scale, 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ConfigError(f"seeds must be an int >= 1, got {seeds!r}")
    p = resolve_params(exp, scale, params)
    _check_dataset_param(p)
    out_dir = Path(out) if out else Path("runs") / "reproduce" / (name if scale == "quick" else f"{name}-{scale}")
    out_dir.mkdir(parents=True, exist_ok=True)
    started, commit = datetime.now(timezone.utc), git_commit()  # the code that runs
    specs = exp.runs(p)
    dataset, data_name, note = (None, p["dataset"], "")
    if specs or p.get("dataset"):
        dataset, data_name, note = load_experiment_data(data_config(p), quiet=quiet, fallback=scale != "real")
    if command is None:  # called from Python: the equivalent command line
        command = (f"depthlab reproduce {name}" + (f" --scale {scale}" if scale != "quick" else "")
                   + (f" --seeds {seeds}" if seeds != DEFAULT_SEEDS.get(scale, 1) else "")
                   + (f" --out {out}" if out else "")
                   + "".join(f" --param {k}={_param_text(v)}" for k, v in (params or {}).items()))
    grid = [(s, k, run_config(s, k, p, data_name, out_dir, device)) for s in specs for k in range(seeds)]
    check_plan(exp.name, grid, dataset, fresh)  # before anything trains
    if not quiet:
        print(f"{exp.name} ({scale}, {seeds} seed{'s' if seeds > 1 else ''}): {len(grid)} runs -> {out_dir}",
              file=sys.stderr, flush=True)
    info = {"name": exp.name, "scale": scale, "seeds": seeds, "params": p, "out": str(out_dir), "device": device,
            "command": command, "started": started.isoformat(), "commit": commit, "data_name": data_name,
            "note": note, "has_runs": bool(specs)}
    return Plan(exp, grid, dataset, json.loads(json.dumps(info, default=str)))


def analyse(info: dict, rows: List[dict], quiet: bool = False, report: bool = True, dataset=None) -> dict:
    """An experiment's analysis of its finished runs (``rows``, in grid order): verdicts, tables and
    figures into ``experiment.json`` and ``report.html``. ``info``: ``Plan.info``; ``dataset``: the
    plan's (None: loaded again, as in a worker process of ``reproduce all``)."""
    exp: Experiment = EXPERIMENTS.get(info["name"])()
    p, scale, seeds, out_dir = info["params"], info["scale"], info["seeds"], Path(info["out"])
    note, data_name = info["note"], info["data_name"]
    if dataset is None and (info["has_runs"] or p.get("dataset")):
        dataset, data_name, note = load_experiment_data(data_config(p), quiet=True, fallback=scale != "real")
    ctx = Context(exp, scale, p, list(range(seeds)), out_dir, info["device"], dataset, note, quiet)
    ctx.results = rows
    findings: Findings = exp.analyse(ctx)
    if not info["has_runs"]:
        findings.notes.append(f"No training runs: seeds ({seeds}) do not apply here; each verdict counts the "
                              "samples it draws itself (its detail names them).")
    if seeds == 1 and info["has_runs"]:
        findings.notes.append("One seed: each verdict compares single runs, so a gap of a point or two can be "
                              "seed noise; `--seeds 3` gives mean +- sd and calls a verdict inconclusive where the "
                              "seeds disagree.")
    started = datetime.fromisoformat(info["started"])
    doc = {"name": exp.name, "title": exp.title, "source": exp.source, "claim": exp.claim,
           "expected": exp.expected, "scale": scale, "seeds": seeds, "params": p,
           "data": {"name": data_name, "note": note, "source": getattr(dataset, "source", None)},
           "provenance": provenance(info["command"], info["device"], started, info["commit"]),
           "runs": ctx.results, "verdicts": findings.verdicts, "tables": findings.tables,
           "figures": findings.figures, "notes": findings.notes}
    atomic_write_text(out_dir / "experiment.json", json.dumps(doc, indent=1, default=_jsonable))
    if report:
        from depthlab.report import write_report

        doc["report"] = str(write_report(out_dir))
    return doc


def _train_grid(grid: list, dataset, fresh: bool, quiet: bool, command: str, experiment: str, jobs: int,
                executor: str = "local") -> list:
    """Every run of the grid: in grid order one after another in this process, or ``jobs`` at a time in
    worker processes with ``cores / jobs`` torch threads each, the longest runs first (``cost``, as
    ``reproduce all`` orders its queue: the slowest nets no longer start last and run alone). The rows
    come back in grid order either way."""
    rows: list = [None] * len(grid)
    done = [0]

    def report(i: int, row: dict) -> None:
        rows[i] = row
        done[0] += 1
        if not quiet:
            print(run_line(done[0], len(grid), row["run_id"], row), file=sys.stderr, flush=True)

    if executor == "local" and (jobs <= 1 or len(grid) <= 1):
        for i, (spec, seed, cfg) in enumerate(grid):
            report(i, _train_one(spec, seed, cfg, dataset, fresh, quiet, command, experiment))
        return rows
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks = [run_task_dict(spec, seed, cfg, fresh, command, experiment, threads) for spec, seed, cfg in grid]

    order = longest_first(grid, dataset)

    def on_result(j: int, rec: dict) -> None:
        progress.poll()  # the run's last epochs before its line
        report(order[j], run_row(tasks[order[j]], rec))

    # the sweep's executors: fresh worker processes (spawn: no inherited torch thread pools), a worker
    # that dies retried once by resuming its run, Ctrl-C answered with checkpoints; or Ray
    progress = GridProgress([(cfg.resolved_run_id, cfg.run_dir, run_epochs(cfg)) for _, _, cfg in grid],
                            quiet=quiet or executor != "local", fresh=fresh)
    with progress:
        execute([tasks[i] for i in order], executor, min(jobs, len(tasks)), threads, on_result, fn=train_task,
                quiet=quiet)
    return rows


def longest_first(grid: list, dataset) -> List[int]:
    """The grid's positions, the longest run first by ``depthlab.experiments.cost`` (grid order among
    equal estimates, and throughout when no dataset is loaded to estimate with)."""
    if dataset is None:
        return list(range(len(grid)))
    est = [estimate_seconds(cfg, dataset) for _, _, cfg in grid]
    return sorted(range(len(grid)), key=lambda i: -est[i])


def run_task_dict(spec: RunSpec, seed: int, cfg: RunConfig, fresh: bool, command: str, experiment: str,
                  threads: int) -> dict:
    """One run of an experiment's grid as an executor task (picklable; ``train_task`` runs it)."""
    return {"id": spec.id, "labels": spec.labels, "seed": seed, "config": cfg.to_dict(), "fresh": fresh,
            "command": command, "experiment": experiment, "run_id": cfg.resolved_run_id, "resume": False,
            "threads": threads}


def run_row(task: dict, rec: dict) -> dict:
    """The result row of a grid task from the executor's record: ``train_task``'s row without the
    executor's bookkeeping (``action``; ``retries`` when 0), or, for a worker that died or raised (the
    executor's failed record), an error row with the run's labels."""
    if "id" not in rec:
        rec = {"id": task["id"], "seed": task["seed"], "run_id": task["run_id"], "run_dir": f"runs/{task['run_id']}",
               **task["labels"], "status": f"error: {rec.get('error')}", "seconds": None,
               **{k: rec[k] for k in ("started", "ended") if k in rec}}
    return {k: v for k, v in rec.items() if k != "action" and (k != "retries" or v)}


def run_line(done: int, total: int, name: str, row: dict) -> str:
    """The line printed when a run of a grid has finished (or was reused)."""
    acc = row.get("train_acc")
    return (f"  [{done}/{total}] {name:<28} {row['status']:<9} train acc {'-' if acc is None else f'{acc:.3f}'}  "
            f"{row.get('seconds') or 0:.0f}s{' (reused)' if row.get('reused') else ''}")


def train_task(task: dict) -> dict:
    """A worker process's run of the grid (see ``_train_grid``)."""

    torch.set_num_threads(task["threads"])
    cfg = RunConfig.from_dict(task["config"])
    if cfg.train.threads is None:  # the pool's share of the cores (auto would measure the sibling workers)
        cfg.train.threads = task["threads"]
    return _train_one(RunSpec(task["id"], [], task["labels"]), task["seed"], cfg, None, task["fresh"], True,
                      task["command"], task["experiment"])


def _param_text(v) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    return str(v)


def _train_one(spec: RunSpec, seed: int, cfg: RunConfig, dataset, fresh: bool, quiet: bool, command: str,
               experiment: str) -> dict:
    run_id, run_dir = cfg.resolved_run_id, cfg.run_dir
    row = {"id": spec.id, "seed": seed, "run_id": run_id, "run_dir": f"runs/{run_id}", **spec.labels}
    t0 = time.perf_counter()
    reused = False
    try:
        done = None if fresh else finished_run(run_dir, cfg)
        if done is not None:
            s, reused = done, True
        elif (run_dir / "config.json").exists() and not fresh:  # the same run, interrupted: resume it
            s = train(cfg, resume=True, quiet=quiet, dataset=dataset)  # a bar, or a line per epoch in a log
        else:
            s = train(cfg, overwrite=True, quiet=quiet, dataset=dataset)
    except (ValueError, RuntimeError) as e:
        row.update(status=f"error: {e}", seconds=time.perf_counter() - t0)
        return row
    if not reused:
        record_maker(run_dir, command, experiment)
    keep = ("status", "params", "depth", "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "elapsed")
    row.update({k: s.get(k) for k in keep})
    row["seconds"] = s.get("elapsed", time.perf_counter() - t0)
    row["seconds_per_epoch"] = _seconds_per_epoch(run_dir)
    row["reused"] = reused
    if reused:
        row["made_by"] = maker_of(run_dir) or "not recorded"
    if row["status"] == "diverged":
        row["train_acc"] = row["test_acc"] = None
        row["diagnosis"] = (s.get("diagnosis") or {}).get("message")
    return row


def finished_run(run_dir: Path, wanted: RunConfig) -> Optional[dict]:
    """The summary of a run that finished (or diverged), from its files; None if it needs (more)
    training. ``check_plan`` has made sure the directory holds this very run."""
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        return None
    cfg = json.loads(cfg_path.read_text())
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    if not rows or epoch_gap(rows):  # a lost row: not finished (resuming names the damage and stops)
        return None
    last = rows[-1]
    if last.get("status") == "diverged":
        return {**last, "status": "diverged", "depth": cfg["model"].get("depth"), "params": None}
    if last["epoch"] < cfg["train"]["epochs"]:
        return None
    return {**last, "status": "finished", "depth": cfg["model"].get("depth"), "params": params_of(cfg)}


def _seconds_per_epoch(run_dir: Path) -> Optional[float]:
    secs = [r["seconds"] for r in read_jsonl(run_dir / "metrics.jsonl")
            if r.get("kind") == "epoch" and r.get("seconds") is not None]
    if not secs:
        return None
    rest = secs[1:] or secs  # the first epoch carries one-off costs (allocation, warm-up)
    return sum(rest) / len(rest)
