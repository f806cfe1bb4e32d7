"""``depthlab reproduce all``: every experiment into one directory on one global queue (longest runs
first), the index of their reports, and where the time went (per experiment and for the schedule)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from depthlab.config import ConfigError
from depthlab.experiments.base import EXPERIMENTS
from depthlab.experiments.cost import estimate_seconds
from depthlab.experiments.runner import (
    Plan,
    analyse,
    check_jobs,
    finished_run,
    plan_experiment,
    resolve_params,
    run_line,
    run_row,
    run_task_dict,
    train_task,
)
from depthlab.fileio import atomic_write_text
from depthlab.sweep.executors import execute, take_ready
from depthlab.training.progress import GridProgress
from depthlab.training.provenance import commit_at_end, git_commit, run_epochs

STATUSES = ("observed", "not observed", "inconclusive")


def split_params(names: List[str], scale: str, params: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Each experiment's share of ``params``: the names it has (``dataset``, ``epochs``, ``depths``...).
    A name no experiment has is an error, before anything runs."""
    params = params or {}
    valid = {n: set(resolve_params(EXPERIMENTS.get(n)(), scale)) for n in names}
    unknown = sorted(k for k in params if not any(k in v for v in valid.values()))
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r} for every experiment; valid parameters: "
                          + ", ".join(sorted(set().union(*valid.values()))))
    return {n: {k: v for k, v in params.items() if k in valid[n]} for n in names}


def reproduce_all(scale: str = "quick", seeds: Optional[int] = None, out: Optional[str] = None, *,
                  params: Optional[Dict[str, Any]] = None, device: str = "auto", fresh: bool = False,
                  quiet: bool = False, jobs: int = 1, command: Optional[str] = None,
                  names: Optional[List[str]] = None, executor: str = "local") -> dict:
    """Every registered experiment (``reproduce``) into ``out/NAME`` (default ``runs/reproduce``), then
    the index of the reports (``names``: a subset, in the registry's order by default).

    One queue for the whole suite: every experiment is planned first (parameters, data, run
    directories checked), then all runs of all experiments go to one executor (``jobs`` workers,
    ``local`` or ``ray``), the longest first by ``depthlab.experiments.cost``; an experiment's analysis
    runs as soon as its last run has finished, on a worker too. Returns ``{"experiments": [per-experiment
    summary], "seconds", "schedule", "index"}``."""
    jobs = check_jobs(jobs, executor)
    base = Path(out) if out else Path("runs") / "reproduce"
    # by default every experiment that has this scale (the real-image scale is calibrated one by one)
    names = ([EXPERIMENTS.get(n).name for n in names] if names
             else [n for n in EXPERIMENTS if scale in EXPERIMENTS.get(n).scales])
    shares = split_params(names, scale, params)
    for n in names:  # every experiment's parameters are checked before the first one is planned
        resolve_params(EXPERIMENTS.get(n)(), scale, shares[n])
    t0, wall0, commit = time.perf_counter(), time.time(), git_commit()
    plans = [plan_experiment(n, scale, seeds, str(base / (n if scale == "quick" else f"{n}-{scale}")),
                             params=shares[n], device=device, fresh=fresh, quiet=quiet,
                             command=f"{command} (experiment {n})" if command else None) for n in names]
    planning = time.perf_counter() - t0
    tasks, order = queue_tasks(plans, fresh, jobs)
    rows = {p.exp.name: [None] * len(p.grid) for p in plans}
    docs: Dict[str, dict] = {}
    done = [0]
    n_runs = sum(len(p.grid) for p in plans)

    def on_result(i: int, rec: dict) -> None:
        task = tasks[i]
        if task["kind"] == "analyse":
            if "verdicts" not in rec:  # the analysis raised: its worker's error, said and kept
                rec = {**rec, "verdicts": [], "report": None}
                print(f"  {task['info']['name']}: analysis failed: {rec.get('error')}", file=sys.stderr, flush=True)
            docs[task["info"]["name"]] = rec
            if not quiet and rec.get("report"):
                counts = ", ".join(f"{rec['verdicts'].count(s)} {s}" for s in STATUSES)
                print(f"  {task['info']['name']}: {counts} -> {rec['report']}", file=sys.stderr, flush=True)
            return
        progress.poll()
        name, pos = task["experiment"], task["position"]
        rows[name][pos] = rec = run_row(task, rec)
        done[0] += 1
        if not quiet:
            print(run_line(done[0], n_runs, f"{name}/{rec['run_id']}", rec), file=sys.stderr, flush=True)
        analysis = tasks[task["analysis"]]
        if all(r is not None for r in rows[name]):  # the experiment's analysis may start now
            analysis["rows"] = [{k: v for k, v in r.items() if k not in ("started", "ended")} for r in rows[name]]

    progress = GridProgress([(f"{t['experiment']}/{t['run_id']}", t["run_dir"], t["epochs"])
                             for t in tasks if t["kind"] == "run"], quiet=quiet or executor != "local", fresh=fresh)
    ordered = [tasks[i] for i in order]
    with progress:
        if executor == "local" and jobs == 1:
            run_inline(ordered, lambda i, rec: on_result(order[i], rec), {p.exp.name: p.dataset for p in plans})
        else:
            execute(ordered, executor, min(jobs, len(ordered)), ordered[0]["threads"],
                    lambda i, rec: on_result(order[i], rec), fn=suite_task, quiet=quiet)
    from depthlab.report import write_report

    index = write_report(base)
    schedule = schedule_summary(plans, tasks, rows, docs, jobs, wall0, planning, time.perf_counter() - t0)
    result = {"experiments": [experiment_summary(p, rows[p.exp.name], docs.get(p.exp.name, {}), wall0)
                              for p in plans],
              "seconds": time.perf_counter() - t0, "schedule": schedule, "index": str(index),
              "command": command, "scale": scale, "seeds": seeds, "jobs": jobs, "executor": executor,
              "commit": commit, **commit_at_end(commit),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    # suite.json: the wall time and machine of the whole suite, the first line of `depthlab report --markdown`
    atomic_write_text(base / "suite.json", json.dumps(result, indent=2) + "\n")
    return result


def queue_tasks(plans: List[Plan], fresh: bool, jobs: int) -> Tuple[List[dict], List[int]]:
    """Every run of every plan as a task, with its estimated seconds (``cost``; 0 for a run that is
    finished already), and one analysis task per experiment after its runs. ``order``: the task indices
    in queue order: analyses first (each starts once its runs are in), then the runs, longest first."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    tasks: List[dict] = []
    for plan in plans:
        first = len(tasks)
        for pos, (spec, seed, cfg) in enumerate(plan.grid):
            finished = not fresh and finished_run(cfg.run_dir, cfg) is not None
            tasks.append({**run_task_dict(spec, seed, cfg, fresh, plan.command, plan.exp.name, threads),
                          "kind": "run", "position": pos, "run_dir": str(cfg.run_dir), "epochs": run_epochs(cfg),
                          "analysis": first + len(plan.grid),
                          "estimate": 0.0 if finished else estimate_seconds(cfg, plan.dataset)})
        tasks.append({"kind": "analyse", "info": plan.info, "rows": [] if not plan.grid else None,
                      "after": list(range(first, len(tasks))), "threads": threads,
                      "run_id": f"{plan.exp.name} analysis", "experiment": plan.exp.name})
    analyses = [i for i, t in enumerate(tasks) if t["kind"] == "analyse"]
    runs = sorted((i for i, t in enumerate(tasks) if t["kind"] == "run"), key=lambda i: -tasks[i]["estimate"])
    order = analyses + runs
    position = {i: k for k, i in enumerate(order)}  # "after" in queue positions: what the executor sees
    for t in tasks:
        if "after" in t:
            t["after"] = [position[j] for j in t["after"]]
    return tasks, order


def suite_task(task: dict) -> dict:
    """A worker's task of the suite's queue: train one run, or analyse one experiment; with its wall
    clock start and end (``time.time()``) for the schedule's report."""
    started = time.time()
    if task["kind"] == "run":
        rec = train_task(task)
    else:
        import torch

        torch.set_num_threads(task["threads"])
        doc = analyse(task["info"], task["rows"], quiet=True, report=True, dataset=task.get("dataset"))
        rec = {"run_id": task["run_id"], "verdicts": [v["status"].split(" (")[0] for v in doc["verdicts"]],
               "report": doc.get("report"), "status": "finished"}
    return {**rec, "started": started, "ended": time.time()}


def run_inline(tasks: List[dict], on_result: Callable[[int, dict], None], datasets: Dict[str, Any]) -> None:
    """``jobs=1`` on this machine: the queue in this process, one task at a time (analyses reuse the
    plan's loaded data)."""
    pending, reported = deque(range(len(tasks))), set()
    while pending:
        i = take_ready(pending, tasks, reported, running=False)
        task = tasks[i] if tasks[i]["kind"] == "run" else {**tasks[i], "dataset": datasets[tasks[i]["experiment"]]}
        rec = suite_task(task)
        reported.add(i)
        on_result(i, rec)


def experiment_summary(plan: Plan, rows: List[dict], doc: dict, wall0: float) -> dict:
    """One experiment's line of the breakdown: its tasks' busy seconds, when its report was ready
    (seconds after the suite started), runs trained and reused, verdict counts."""
    status = doc.get("verdicts", [])
    busy = sum(_duration(r) for r in rows) + _duration(doc)
    return {"name": plan.exp.name, "seconds": busy, "ready": (doc["ended"] - wall0) if doc.get("ended") else None,
            "runs": len(rows), "reused": sum(1 for r in rows if r.get("reused")),
            "train_seconds": sum(r.get("seconds") or 0 for r in rows if not r.get("reused")),
            **{s: status.count(s) for s in STATUSES}}


def _duration(rec: dict) -> float:
    return max(0.0, rec["ended"] - rec["started"]) if rec.get("ended") and rec.get("started") else 0.0


def schedule_summary(plans: List[Plan], tasks: List[dict], rows: Dict[str, list], docs: Dict[str, dict], jobs: int,
                     wall0: float, planning: float, wall: float) -> dict:
    """Where the time went: the workers' busy and idle core-minutes, the lower bound on the wall time
    (the busy time spread over every worker, or the longest task), and the wall time of the previous
    schedule (each experiment's runs in grid order on ``jobs`` workers, then its analysis, experiment
    after experiment) replayed with the same measured task times. Also each run's estimate beside its
    measured seconds, which ``bench/cost_model.py`` refits from."""
    busy = [_duration(r) for p in plans for r in rows[p.exp.name]] + [_duration(d) for d in docs.values()]
    replay = planning
    for p in plans:
        free = [0.0] * jobs
        for r in rows[p.exp.name]:  # list scheduling in grid order: the next run to the first free worker
            k = free.index(min(free))
            free[k] += _duration(r)
        replay += max(free) + _duration(docs.get(p.exp.name, {}))
    est = [(t["estimate"], _duration(rows[t["experiment"]][t["position"]])) for t in tasks
           if t["kind"] == "run" and t["estimate"] > 0]
    return {"jobs": jobs, "planning_seconds": planning, "busy_seconds": sum(busy),
            "idle_core_minutes": max(0.0, jobs * (wall - planning) - sum(busy)) / 60,
            "lower_bound_seconds": planning + max(sum(busy) / jobs, max(busy, default=0.0)),
            "per_experiment_seconds": replay,
            "estimates": [{"estimate": e, "measured": m} for e, m in est]}


def machine() -> str:
    """The CPU model (``/proc/cpuinfo`` where there is one), its core count and the torch build."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}; {platform.system()}"


def breakdown(result: dict) -> str:
    """The per-experiment table, the total and the schedule's account, as printed by ``depthlab
    reproduce all``: each experiment's busy core-minutes and when its report was ready."""
    lines = [f"{'experiment':<18} {'core min':>8} {'ready at':>8} {'runs':>5} {'reused':>6} {'observed':>9} "
             f"{'not obs.':>9} {'inconcl.':>9}"]
    for r in result["experiments"]:
        ready = "-" if r.get("ready") is None else f"{r['ready'] / 60:.1f}"
        lines.append(f"{r['name']:<18} {r['seconds'] / 60:>8.1f} {ready:>8} {r['runs']:>5} {r['reused']:>6} "
                     f"{r['observed']:>9} {r['not observed']:>9} {r['inconclusive']:>9}")
    total = {s: sum(r[s] for r in result["experiments"]) for s in STATUSES}
    lines.append(f"{'all':<18} {sum(r['seconds'] for r in result['experiments']) / 60:>8.1f} "
                 f"{result['seconds'] / 60:>8.1f} {sum(r['runs'] for r in result['experiments']):>5} "
                 f"{sum(r['reused'] for r in result['experiments']):>6} {total['observed']:>9} "
                 f"{total['not observed']:>9} {total['inconclusive']:>9}")
    s = result.get("schedule")
    if s:
        lines.append(f"schedule: {s['jobs']} worker{'s' if s['jobs'] > 1 else ''}, longest runs first; "
                     f"{s['idle_core_minutes']:.1f} idle core-min; lower bound {s['lower_bound_seconds'] / 60:.1f} "
                     f"min; experiment after experiment (replayed with these task times) "
                     f"{s['per_experiment_seconds'] / 60:.1f} min")
    lines.append(f"wall time: {result['seconds'] / 60:.1f} min; index: {result['index']}")
    return "\n".join(lines)
