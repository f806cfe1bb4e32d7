"""torchrun's elastic restarts with real gloo processes on CPU (no mocks): a group restarted after one
of its ranks is SIGKILLed finishes with the weights of an uninterrupted run, and a start that rank 0
refuses ends every rank at once with the same one-line error instead of leaving one waiting."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from depthlab.config import RunConfig
from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint
from depthlab.training.safety import RunLock

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")

RUN = ["model.name=fixup-resnet", "model.depth=8", "model.width=8", "data.name=digits", "train.epochs=3",
       "train.threads=1", "train.device=cpu"]


def _torchrun(out_dir, flags, restarts=1, run_id="r"):
    """The group's agent, its output in files (a pipe nobody reads while we poll could fill up)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           f"--max-restarts={restarts}", "-m", "depthlab", "train", "--quiet", *flags, "--set", *RUN,
           f"out_dir={out_dir}", f"run_id={run_id}"]
    out, err = open(out_dir / "stdout.txt", "w"), open(out_dir / "stderr.txt", "w")
    with out, err:
        return subprocess.Popen(cmd, stdout=out, stderr=err, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _finish(proc, out_dir, timeout):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:  # a hang: end the agent and its ranks, then fail
            for pid in [*_ranks(proc.pid).values(), proc.pid]:
                os.kill(pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, (out_dir / "stdout.txt").read_text(), (out_dir / "stderr.txt").read_text()


def _ranks(agent: int) -> dict:
    """{rank: pid} of the agent's worker processes (its children with RANK in their environment)."""
    ranks = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != agent:
                continue
            env = dict(kv.split("=", 1) for kv in (stat.parent / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if "RANK" in env:
            ranks[int(env["RANK"])] = int(stat.parent.name)
    return ranks


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _weights(run_dir):
    return load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("uninterrupted")
    rc, stdout, stderr = _finish(_torchrun(out_dir, ["--resume", "auto"]), out_dir, timeout=240)
    assert rc == 0, stderr[-3000:]
    return out_dir / "r"


@pytest.mark.parametrize("killed, flags", [(1, ["--resume", "auto"]), (0, [])],
                         ids=["rank1-resume-auto", "rank0-no-resume-flag"])
def test_a_group_restarted_after_a_rank_is_killed_finishes_like_an_uninterrupted_run(
        tmp_path, uninterrupted, killed, flags):
    """torchrun --max-restarts=1: SIGKILL one rank once epoch 1's checkpoint exists; the agent stops the
    survivor and starts the group again, which continues from the checkpoint (with --resume auto, or
    without it: a restart continues the run its own job started) and ends with the same weights."""
    proc = _torchrun(tmp_path, flags)
    run_dir = tmp_path / "r"
    # a checkpoint after epoch 0 (epoch_0001.pt itself may be pruned by keep_last before a busy machine looks)
    first = lambda: [p for p in (run_dir / "checkpoints").glob("epoch_*.pt") if p.name != "epoch_0000.pt"]  # noqa: E731
    deadline = time.time() + 180
    ranks = {}
    while len(ranks) < 2 and proc.poll() is None and time.time() < deadline:
        ranks = _ranks(proc.pid)
        time.sleep(0.05)
    while not first() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None and first(), "the group ended or stalled before epoch 1's checkpoint"
    os.kill(ranks[killed], signal.SIGKILL)
    rows_at_kill = _rows(run_dir)
    assert len(rows_at_kill) < 3  # killed mid-run
    rc, stdout, stderr = _finish(proc, tmp_path, timeout=240)
    assert rc == 0, stderr[-3000:]
    assert json.loads(stdout.strip().splitlines()[-1])["status"] == "finished"  # the restarted rank 0
    rows = _rows(run_dir)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # each epoch once
    assert rows[0] == rows_at_kill[0]  # continued from the checkpoint: epoch 1 was not trained again
    a, b = _weights(uninterrupted), _weights(run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if not flags:
        assert f"depthlab: torchrun restart 1: resuming '{run_dir}', which this torchrun job started" in stderr


@pytest.mark.parametrize("case", ["existing run, restarted", "run locked"])
def test_a_start_rank_0_refuses_ends_every_rank_promptly_with_one_line(tmp_path, case):
    """Rank 0 alone checks the lock and the run directory; its refusal reaches rank 1, so both print the
    same line and exit, on every attempt (a restart does not resume a run its job did not start)."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(RunConfig().with_overrides(RUN).to_json())  # someone's earlier run
    lock = RunLock(run_dir)
    if case == "run locked":
        lock.acquire()
        expected = f"depthlab: error: run directory '{run_dir}' is in use by another process (pid {os.getpid()})"
    else:
        expected = f"depthlab: error: run directory '{run_dir}' already holds a run; pass --resume to continue it"
    attempts = 2 if case == "existing run, restarted" else 1
    t0 = time.time()
    try:
        rc, stdout, stderr = _finish(_torchrun(tmp_path, [], restarts=attempts - 1), tmp_path, timeout=150)
    finally:
        lock.release()
    assert rc != 0 and time.time() - t0 < 150  # gloo's own timeout is 30 minutes
    errors = [line for line in stderr.splitlines() if line.startswith("depthlab: error")]
    assert len(errors) >= attempts and all(line.startswith(expected) for line in errors), stderr[-3000:]
    assert "Connection closed by peer" not in stderr  # no rank failed for want of the other
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]  # nothing written
