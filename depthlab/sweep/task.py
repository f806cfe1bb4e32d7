"""One run of a sweep: what its directory already holds (skip, resume or train), and the function
a worker process (or Ray task) calls to train it. Records are plain dicts, so they cross process
boundaries; a run that raises becomes a ``failed`` record and its traceback goes to
``<run_dir>/error.txt``."""
from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path

from depthlab.config import ConfigError, RunConfig
from depthlab.fileio import epoch_gap, read_jsonl_checked
from depthlab.recipes import resolve_train
from depthlab.training.resume import run_differences

SKIP, RESUME, TRAIN = "skip", "resume", "train"
METRIC_KEYS = ("epoch", "train_acc", "test_acc", "train_loss", "test_loss", "elapsed")


def existing_state(cfg: RunConfig) -> dict:
    """``{"action": skip|resume|train, "epoch": epochs done, "epochs": epochs wanted, ...}`` for the
    run ``cfg`` describes. Finished runs (last epoch row == the configured epochs) and diverged runs
    are skipped; a run directory with a config.json and anything less is resumed. A directory that
    holds a *different* run (the sweep's base changed) is a ConfigError, raised before anything runs;
    so is a damaged metrics.jsonl (a bad line before its last, an epoch without a row): the sweep
    cannot tell how far that run got, and a resume would refuse it anyway. A torn last line (a
    crash mid-write) is resumed: the resume drops it, with a warning, and retrains what it lost."""
    run_dir = cfg.run_dir
    saved_path = run_dir / "config.json"
    if not saved_path.exists():
        return {"action": TRAIN, "epoch": 0, "epochs": None}
    saved = json.loads(saved_path.read_text())
    details = run_differences(saved, cfg, epochs=True)  # a run of another length is another run
    if details:
        raise ConfigError(f"run directory {str(run_dir)!r} holds a different run ({details}): the sweep's settings "
                          f"changed since it ran. Delete that directory to retrain it, or give the sweep a new name")
    epochs = resolve_train(cfg.train, saved["model"].get("depth") or 0).epochs
    path = run_dir / "metrics.jsonl"
    rows, damage = read_jsonl_checked(path)
    bad = next((str(d) for d in damage if not d.torn), None) or (epoch_gap(rows) and f"{path}: {epoch_gap(rows)}")
    if bad:
        raise ConfigError(f"{bad}: the sweep cannot tell how far run {cfg.resolved_run_id!r} got. Restore the file "
                          f"from a backup, or delete {str(run_dir)!r} to retrain the run")
    rows = [r for r in rows if r.get("kind") == "epoch"]
    last = rows[-1] if rows else {}
    state = {"epoch": last.get("epoch", 0), "epochs": epochs, **{k: last.get(k) for k in METRIC_KEYS if k in last}}
    if damage:  # a torn last line only: the resume drops it (with a warning) and goes on from there
        return {**state, "action": RESUME}
    if last.get("status") == "diverged":
        return {**state, "action": SKIP, "status": "diverged"}
    if rows and last.get("epoch", 0) >= epochs:
        return {**state, "action": SKIP, "status": "finished"}
    return {**state, "action": RESUME}


def make_task(cfg: RunConfig, action: str, threads: int) -> dict:
    """What a worker needs (picklable, JSON-able): the config and whether to resume."""
    return {"config": cfg.to_dict(), "run_id": cfg.resolved_run_id, "run_dir": str(cfg.run_dir),
            "resume": action == RESUME, "threads": threads}


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def init_worker(threads: int) -> None:
    """Worker process start-up: thread limits (the local executor also spawns the process with them,
    so they hold before torch loads). An idle worker ignores SIGINT;
    one in ``train`` handles it (stops after the current step, saves a checkpoint of that exact
    position and returns status ``interrupted``), so Ctrl-C at the terminal stops a sweep cleanly."""
    import signal

    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_task(task: dict) -> dict:
    """Train one run, resuming it when its directory holds it already; never raises for a failed run,
    returns its record."""
    t0 = time.perf_counter()
    run_dir = Path(task["run_dir"])
    err_path = run_dir / "error.txt"
    # the sweep's plan checked that a config.json there is this run's; one that appeared since the plan
    # (a retry after the worker died mid-run) is this run's too: continue it, never start it afresh
    resume = (run_dir / "config.json").exists()
    rec = {"run_id": task["run_id"], "action": "resumed" if resume else "trained"}
    try:
        if err_path.exists():
            err_path.unlink()  # a retried run's old traceback
            if run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        import torch

        from depthlab.training import train

        torch.set_num_threads(task["threads"])
        cfg = RunConfig.from_dict(task["config"])
        if cfg.train.threads is None:  # the sweep's threads_per_worker
            cfg.train.threads = task["threads"]
        summary = train(cfg, resume=resume, quiet=True)
        rec.update({k: summary.get(k) for k in METRIC_KEYS + ("params",)}, status=summary["status"])
        if rec["status"] not in ("finished", "diverged", "interrupted"):
            rec["status"] = "failed"
            rec["error"] = f"training stopped with status {summary['status']!r}"
    except Exception as e:  # noqa: BLE001 - any failure is recorded; the sweep goes on
        rec.update(status="failed", error=error_line(e))
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            err_path.write_text(traceback.format_exc())
        except OSError:
            pass
    rec["seconds"] = time.perf_counter() - t0
    return rec


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a traceback's last line, without multi-line details)."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def failed_record(task: dict, error: str) -> dict:
    """For a run whose worker died (killed, out of memory), whose Ray task was lost, or whose task
    function raised; ``action``: what the sweep planned (``task["resume"]``)."""
    return {"run_id": task["run_id"], "action": "resumed" if task.get("resume") else "trained", "status": "failed",
            "error": error, "seconds": None}
