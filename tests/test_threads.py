"""depthlab.training.threads: train.threads=auto takes the cores free now; an explicit count above
them is kept, with a warning (oversubscribed OpenMP threads can make a step many times slower)."""
import subprocess
import sys
import time

import pytest
import torch

from depthlab.config import RunConfig
from depthlab.training import threads, train


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(threads, "_last", {})
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_takes_the_free_cores_and_an_explicit_count_above_them_warns():
    auto = threads.choose_threads(None, cores=8, busy=2.6)
    assert auto.threads == 5 and auto.warning is None and "auto, 5.4 of 8 cores free" in auto.note
    assert threads.choose_threads(None, cores=2, busy=2.0).threads == 1  # never 0
    explicit = threads.choose_threads(2, cores=2, busy=1.2)
    assert explicit.threads == 2 and "train.threads=2 but 0.8 of 2 cores free" in explicit.warning
    assert "train.threads=auto (the default) picks 1" in explicit.warning
    assert threads.choose_threads(2, cores=2, busy=0.1).warning is None
    assert RunConfig().with_overrides(["train.threads=auto"]).train.threads is None


def _run(tmp_path, run_id, *extra):
    cfg = RunConfig().with_overrides(["model.name=plain", "model.depth=8", "model.width=4", "data.name=digits",
                                      "train.epochs=1", "train.device=cpu", f"out_dir={tmp_path}",
                                      f"run_id={run_id}", *extra])
    return train(cfg, quiet=False)


def test_training_with_more_threads_than_free_cores_warns_and_auto_picks_the_free_ones(
        tmp_path, monkeypatch, caplog, capsys, fresh):
    monkeypatch.setattr(threads, "usable_cores", lambda: (2, "CPU affinity"))
    monkeypatch.setattr(threads, "busy_cores", lambda seconds=0.25: (1.4, "test"))  # one core busy elsewhere
    with caplog.at_level("WARNING", logger="depthlab"):
        _run(tmp_path, "explicit", "train.threads=2")
    assert "train.threads=2 but 0.6 of 2 cores free" in caplog.text
    assert torch.get_num_threads() == 2 and "2 threads)" in capsys.readouterr().err  # kept, as asked
    caplog.clear()
    _run(tmp_path, "auto")
    assert "cores free" not in caplog.text  # auto never warns
    assert torch.get_num_threads() == 1 and "1 thread: auto, 0.6 of 2 cores free" in capsys.readouterr().err


def test_busy_cores_sees_a_spinning_process():
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy, how = threads.busy_cores(0.5)
    finally:
        spin.kill()
        spin.wait()
    cores, _ = threads.usable_cores()
    assert 0.7 <= busy <= cores + 0.05 and how
