"""A sweep worker that dies under a run (SIGKILL, the OOM killer) costs that run one retry and nothing
else, on both executors alike: the run is resumed from its checkpoint and ends bit for bit where an
uninterrupted run ends, the runs beside it are never restarted, and a run whose worker dies every time
is recorded failed after one retry and makes the CLI exit 1. Also: Ctrl-C of a local sweep.

Runs are tiny (resnet-8 of width 4 on digits, batches of 128, one thread); one Ray instance serves the module."""
import functools
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import depthlab.sweep.run as sweep_run
from depthlab.cli import main
from depthlab.config import RunConfig
from depthlab.sweep import plan_sweep
from depthlab.sweep.executors import DIED, execute
from depthlab.sweep.task import run_task
from depthlab.training import train
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint
from depthlab.training.safety import RunLock

BASE = {"model": {"name": "resnet", "depth": 8, "width": 4}, "data": {"name": "digits"},
        "train": {"epochs": 4, "batch_size": 128, "device": "cpu"}}
HAS_RAY = importlib.util.find_spec("ray") is not None
EXECUTORS = ["local", pytest.param("ray", marks=pytest.mark.skipif(not HAS_RAY, reason="ray is not installed"))]


@pytest.fixture(scope="module")
def ray_instance():
    """One small local Ray instance for the module (``run_ray`` reuses a connection it finds open).
    The task functions below travel by value: Ray's workers cannot import this test module."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", params=EXECUTORS)
def executor(request):
    """Each test once per executor; module scope groups the tests by executor, so Ray is up only for its own."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


def write_sweep(tmp_path, executor, epochs=4, seeds=3):
    d = {"name": "w", "out_dir": str(tmp_path / "sweeps"), "base": json.loads(json.dumps(BASE)), "seeds": seeds,
         "workers": 2, "threads_per_worker": 1, "executor": executor}
    d["base"]["train"]["epochs"] = epochs
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, tmp_path / "sweeps" / "w"


def use_task_fn(monkeypatch, fn):
    """The sweep calls ``fn`` instead of ``run_task`` (on whichever executor the sweep names)."""
    monkeypatch.setattr(sweep_run, "execute", functools.partial(execute, fn=fn))


def _count_try(task):
    Path(task["run_dir"]).parent.mkdir(parents=True, exist_ok=True)
    with open(task["run_dir"] + ".tries", "a") as f:  # next to the run directory, one line per call
        f.write(f"{os.getpid()}\n")


def counting_task(task):
    """``run_task``, leaving one line (the process id) per call in ``<run_dir>.tries``."""
    _count_try(task)
    return run_task(task)


def doomed_task(task):
    """``counting_task``, except that seed 1's process SIGKILLs itself once the run has a first epoch
    checkpoint: on its first try after epoch 1, on the retry (which resumes from there) at once."""
    _count_try(task)
    if task["config"]["train"]["seed"] == 1:
        ckpt_dir = Path(task["run_dir"]) / "checkpoints"

        def kill_when_checkpointed():
            while not past_epoch_0(ckpt_dir):
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_checkpointed, daemon=True).start()
    return run_task(task)


def past_epoch_0(ckpt_dir):
    """A checkpoint after epoch 0 in ``ckpt_dir`` (epoch_0001.pt itself may already be pruned by
    keep_last when a busy machine lets the caller look)."""
    return [p for p in sorted(Path(ckpt_dir).glob("epoch_*.pt")) if not p.name.startswith("epoch_0000")]


def tries(sweep_dir, run_id):
    return (sweep_dir / "runs" / f"{run_id}.tries").read_text().split()


def epoch_rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["train_loss"], r["test_acc"]) for r in rows if r.get("kind") == "epoch"]


def kill_the_first_run_past_epoch_1(runs_dir, killed, done):
    """SIGKILL the process training whichever run first has ``checkpoints/epoch_0001.pt`` (its pid is
    in the run lock), then stop; records ``{"run_id", "pid"}`` in ``killed``."""
    while not done.is_set():
        for ck in sorted(d for d in runs_dir.glob("*/checkpoints") if past_epoch_0(d)):
            run_id = ck.parent.name
            try:
                pid = int((runs_dir / f".{run_id}.lock").read_text())
            except (OSError, ValueError):  # not locked (yet, or any more)
                continue
            assert pid not in (os.getpid(), os.getppid())  # never this test process
            os.kill(pid, signal.SIGKILL)
            killed.update(run_id=run_id, pid=pid)
            return
        time.sleep(0.02)  # an epoch takes ~0.4 s: the kill lands well before the run's 4th epoch ends


def _terminal_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_ctrl_c_checkpoints_the_runs_in_flight_exits_130_and_leaves_no_worker_behind(tmp_path):
    """The terminal's SIGINT reaches the sweep and its workers (one process group): each run stops at
    its next step with a checkpoint, the results say interrupted, the next invocation resumes."""
    path, sweep_dir = write_sweep(tmp_path, "local", epochs=200, seeds=2)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # as at a terminal: SIGINT at its default and unblocked in the sweep, whatever the test runner's process has
    proc = subprocess.Popen([sys.executable, "-m", "depthlab", "sweep", str(path)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_terminal_sigint)
    try:
        # an epoch checkpoint in each run (epoch_0001.pt itself may be pruned by keep_last before a busy
        # machine lets this loop look)
        ckpts = [sweep_dir / "runs" / rid / "checkpoints" for rid in ("base_s0", "base_s1")]
        trained = lambda: all(past_epoch_0(d) for d in ckpts)  # noqa: E731
        deadline = time.monotonic() + 120
        while not trained() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        assert trained(), "the runs did not reach epoch 1 in 120 s"
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert "sweep interrupted" in err
    runs = json.loads((sweep_dir / "results.json").read_text())["runs"]
    assert [r["status"] for r in runs] == ["interrupted", "interrupted"]
    for r in runs:
        run_dir = sweep_dir / "runs" / r["run_id"]
        assert r["epoch"] >= 1 and latest_checkpoint(run_dir / "checkpoints") is not None
        lock = RunLock(run_dir)
        assert lock.try_acquire(), f"pid {lock.holder} still holds {r['run_id']}"  # no worker left training it
        lock.release()
    plan = plan_sweep(path)
    assert [s["action"] for s in plan.states] == ["resume", "resume"]


def test_a_killed_worker_costs_only_its_run_which_resumes_bit_for_bit(tmp_path, executor, monkeypatch, capsys):
    path, sweep_dir = write_sweep(tmp_path, executor)
    use_task_fn(monkeypatch, counting_task)
    killed, done = {}, threading.Event()
    killer = threading.Thread(target=kill_the_first_run_past_epoch_1, args=(sweep_dir / "runs", killed, done))
    killer.start()
    try:
        code = main(["sweep", str(path)])
    finally:
        done.set()
        killer.join()
    out, err = capsys.readouterr()
    assert killed, err
    assert code == 0, err
    runs = {r["run_id"]: r for r in json.loads((sweep_dir / "results.json").read_text())["runs"]}
    victim = killed["run_id"]
    assert {r["status"] for r in runs.values()} == {"finished"} and len(runs) == 3
    # the killed run: one retry, which resumed it in another process; planned as "trained"
    assert (runs[victim]["retries"], runs[victim]["action"]) == (1, "trained")
    first, second = tries(sweep_dir, victim)
    assert int(first) == killed["pid"] and int(second) != killed["pid"]
    assert f"{victim} finished" in err and "resumed after its worker died" in err
    assert "(this invocation: 3 trained; 1 resumed after a worker died)" in out
    # the others: one call each, never retried
    for rid in set(runs) - {victim}:
        assert len(tries(sweep_dir, rid)) == 1 and runs[rid]["retries"] == 0 and runs[rid]["action"] == "trained"
    # the resumed run ends exactly where an uninterrupted run of its config ends
    cfg = next(r.config for r in plan_sweep(path).runs if r.run_id == victim)
    ref = RunConfig.from_dict({**cfg.to_dict(), "out_dir": str(tmp_path / "reference")})
    assert train(ref, quiet=True)["status"] == "finished"
    got = load_checkpoint(latest_checkpoint(cfg.run_dir / "checkpoints"))["model"]
    want = load_checkpoint(latest_checkpoint(ref.run_dir / "checkpoints"))["model"]
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert epoch_rows(cfg.run_dir) == epoch_rows(ref.run_dir) and len(epoch_rows(ref.run_dir)) == 4


def test_a_run_whose_worker_always_dies_fails_after_one_retry_and_the_cli_exits_1(tmp_path, executor, monkeypatch,
                                                                                    capsys):
    path, sweep_dir = write_sweep(tmp_path, executor, epochs=2)
    use_task_fn(monkeypatch, doomed_task)
    assert main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    runs = {r["run_id"]: r for r in json.loads((sweep_dir / "results.json").read_text())["runs"]}
    doomed = runs["base_s1"]
    assert doomed["status"] == "failed" and doomed["retries"] == 1
    assert doomed["error"].startswith(DIED) and "after 1 retry by resuming" in doomed["error"]
    if executor == "local":
        assert doomed["error"].endswith("; exit code -9)")
    assert len(tries(sweep_dir, "base_s1")) == 2
    for rid in ("base_s0", "base_s2"):
        assert runs[rid]["status"] == "finished" and runs[rid]["retries"] == 0 and len(tries(sweep_dir, rid)) == 1
    assert "1 run failed: base_s1" in err and "run the same command again" in err
    # what its first try checkpointed is kept: the next invocation resumes from there
    monkeypatch.undo()
    assert main(["sweep", str(path), "--dry-run"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "resume  (from epoch 1 of 2)" in lines["base_s1"] and "skip" in lines["base_s0"]
