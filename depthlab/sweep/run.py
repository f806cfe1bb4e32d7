"""``run_sweep``: check the whole sweep, skip what finished, resume what was interrupted, train the
rest on an executor, and write the aggregated results (also after Ctrl-C, then re-raised)."""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import List, Optional

import torch

from depthlab.fileio import atomic_write_text, read_jsonl
from depthlab.sweep.executors import execute, import_ray
from depthlab.sweep.results import METRICS, aggregate, cell, counts, summary_line, write_results
from depthlab.sweep.spec import PlannedRun, SweepSpec, expand, load_spec
from depthlab.sweep.task import METRIC_KEYS, RESUME, SKIP, TRAIN, existing_state, make_task
from depthlab.training.progress import GridProgress
from depthlab.training.provenance import commit_at_end, git_commit, params_of, run_epochs
from depthlab.version import __version__


@dataclass
class Plan:
    spec: SweepSpec
    runs: List[PlannedRun]
    states: List[dict]          # existing_state of each run: action skip | resume | train

    def count(self, action: str) -> int:
        return sum(s["action"] == action for s in self.states)

    def header(self) -> str:
        s = self.spec
        where = (f"{s.workers} worker{'s' if s.workers > 1 else ''} x {s.threads_per_worker} thread"
                 f"{'s' if s.threads_per_worker > 1 else ''}")
        if s.executor == "ray":
            where = f"{'a local instance' if s.ray_address is None else s.ray_address}, {where}"
        return (f"sweep {s.name}: {len(self.runs)} runs ({self.count(TRAIN)} to train, {self.count(RESUME)} to "
                f"resume, {self.count(SKIP)} done earlier: skipped) -> {s.sweep_dir} [{s.executor}: {where}]")

    def lines(self) -> List[str]:
        """One line per run: what a sweep would do with it (``--dry-run``)."""
        out = []
        for r, st in zip(self.runs, self.states):
            if st["action"] == SKIP:
                what = f"skip    ({st['status']} earlier at epoch {st['epoch']}{_metrics_text(st)})"
            elif st["action"] == RESUME:
                what = f"resume  (from epoch {st['epoch']} of {st['epochs']})"
            else:
                what = "train"
            grid = ", ".join(f"{k}={cell(v)}" for k, v in r.point.items())
            out.append(f"{r.run_id:<40} {what}   [{grid + ', ' if grid else ''}seed={r.seed}]")
        return out


def plan_sweep(src, executor: Optional[str] = None, workers: Optional[int] = None) -> Plan:
    """Parse and check the sweep (every run's config, its model on the meta device, what its run
    directory holds) without writing anything. Raises ConfigError naming the problem."""
    spec = load_spec(src, executor=executor, workers=workers)
    runs = expand(spec)
    states = [existing_state(r.config) for r in runs]
    if spec.executor == "ray":
        import_ray()
    return Plan(spec, runs, states)


def run_sweep(path_or_dict, executor: Optional[str] = None, workers: Optional[int] = None, quiet: bool = False,
              command: Optional[str] = None) -> dict:
    """Run the sweep a YAML file (or dict) describes; returns what ``results.json`` holds, plus
    ``paths`` of results.json / results.md / report.html. Failed and diverged runs are recorded and
    the sweep goes on (``doc["failed"]`` lists the failed run ids; the CLI exits 1 for them);
    finished runs are skipped, interrupted ones resumed."""
    started, t0, commit = datetime.now(timezone.utc), time.perf_counter(), git_commit()
    plan = plan_sweep(path_or_dict, executor=executor, workers=workers)
    spec = plan.spec
    records, tasks, index = [], [], []
    params_cache: dict = {}
    for i, (run, st) in enumerate(zip(plan.runs, plan.states)):
        rec = {"run_id": run.run_id, "run_dir": f"runs/{run.run_id}", "point_id": run.point_id, "point": run.point,
               "seed": run.seed, "status": "interrupted", "action": "not run", "epoch": st["epoch"],
               "error": None, "retries": 0}
        if st["action"] == SKIP:
            rec.update({k: st.get(k) for k in METRIC_KEYS}, status=st["status"], action="skipped",
                       params=_params(run, params_cache), seconds=0.0)
        else:
            tasks.append(make_task(run.config, st["action"], spec.threads_per_worker))
            index.append(i)
        records.append(rec)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(plan.header())
    done = [0]

    def on_result(k: int, result: dict) -> None:
        rec = records[index[k]]
        rec.update(result)
        done[0] += 1
        log(f"[{done[0]}/{len(tasks)}] {progress_text(rec)}")

    def finish(interrupted: bool = False) -> dict:
        atomic_write_text(spec.sweep_dir / "sweep.yaml", spec.source_text)
        for rec, run in zip(records, plan.runs):
            if rec["status"] in ("interrupted", "failed"):  # how far it got (checkpointed epochs)
                rec["epoch"] = _epochs_done(run)
        doc = _document(spec, plan, records, command, started, t0, commit)
        write_results(spec.sweep_dir, doc)
        if interrupted:
            log(f"interrupted: {summary_line(doc)}; run the same command again to resume")
        return doc

    progress = GridProgress([(plan.runs[i].run_id, plan.runs[i].config.run_dir, run_epochs(plan.runs[i].config))
                             for i in index], quiet=quiet or spec.executor != "local")
    try:
        with progress:
            execute(tasks, spec.executor, spec.workers, spec.threads_per_worker, on_result,
                    ray_address=spec.ray_address, quiet=quiet)
    except KeyboardInterrupt:
        finish(interrupted=True)
        raise
    except BaseException:
        if done[0]:  # some runs reported: keep their records (an executor that never started writes nothing)
            finish()
        raise
    return finish()


def progress_text(rec: dict) -> str:
    """``plain20_s1 finished train 61.3% test 68.5% (12.3 s)``."""
    secs = rec.get("seconds")
    extra = ", resumed" if rec.get("action") == "resumed" else ""
    if rec.get("retries"):  # seconds: the last try's
        extra = f", resumed after its worker died{_times(rec['retries'])}"
    tail = "" if secs is None else f" ({secs:.1f} s{extra})"
    if rec["status"] == "failed":
        return f"{rec['run_id']} failed: {rec.get('error')}{tail}"
    if rec["status"] == "diverged":
        return f"{rec['run_id']} diverged at epoch {rec.get('epoch')}{tail}"
    if rec["status"] == "interrupted":
        n = rec.get("epoch") or 0
        return f"{rec['run_id']} interrupted with {n} epoch{'s' if n != 1 else ''} completed, checkpointed{tail}"
    return f"{rec['run_id']} {rec['status']}{_metrics_text(rec)}{tail}"


def _times(n: int) -> str:
    return "" if n == 1 else f" ({n} times)"


def _metrics_text(r: dict) -> str:
    out = ""
    for key, label, scale, digits, unit in METRICS[:2]:
        if r.get(key) is not None:
            out += f" {label.split()[0]} {scale * r[key]:.{digits}f}{unit}"
    return out


def _epochs_done(run: PlannedRun) -> int:
    rows = [r for r in read_jsonl(run.config.run_dir / "metrics.jsonl") if r.get("kind") == "epoch"]
    return rows[-1]["epoch"] if rows else 0


def _params(run: PlannedRun, cache: dict) -> Optional[int]:
    """Parameter count of a skipped run (its saved config's model, built on the meta device)."""
    saved = json.loads((run.config.run_dir / "config.json").read_text())
    key = json.dumps([saved["model"], saved.get("methods")], sort_keys=True)
    if key not in cache:
        cache[key] = params_of(saved)
    return cache[key]


def _document(spec: SweepSpec, plan: Plan, records: List[dict], command, started, t0, commit) -> dict:

    if command is None:
        command = (f"depthlab sweep {spec.source_path}" if spec.source_path else "depthlab.sweep.run_sweep(<dict>)")
    doc = {"name": spec.name, "description": spec.description, "sweep_dir": str(spec.sweep_dir),
           "source": spec.source_path, "source_text": spec.source_text, "base": spec.base, "executor": spec.executor,
           "workers": spec.workers, "threads_per_worker": spec.threads_per_worker, "ray_address": spec.ray_address,
           "grid_keys": spec.grid_keys, "seeds": spec.seeds, "counts": counts(records)}
    doc["complete"] = doc["counts"]["interrupted"] == 0
    doc["failed"] = [r["run_id"] for r in records if r["status"] == "failed"]
    doc.update(aggregate(spec.grid_keys, records))
    doc["runs"] = records
    doc["provenance"] = {"command": command, "commit": commit, **commit_at_end(commit), "depthlab": __version__,
                         "torch": torch.__version__, "python": platform.python_version(),
                         "platform": platform.platform(), "started": started.isoformat(timespec="seconds"),
                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                         "seconds": time.perf_counter() - t0}
    return doc
