"""Fault injection in CI: real subprocesses SIGKILLed at random moments and the instant a
checkpoint write starts, resumed until they finish. No corrupt checkpoint, no failed resume, and
the finished run equals an uninterrupted one bit for bit (deterministic mode, CPU).
``python scripts/fault_injection.py --trials 40`` runs the same with more trials (docs/recovery.md)."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"


def test_sigkill_at_random_moments_and_during_checkpoint_writes_loses_nothing(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
    faults = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(faults)
    totals = faults.run_trials(2, mode="mixed", seed=1, out=tmp_path)  # one random, one write-triggered
    assert totals["failed"] == 0, totals.get("errors")
    assert totals["corrupt"] == 0 and totals["not_identical"] == 0
    assert totals["kills"] >= 2 and totals["resumes"] >= 1  # (a kill before config.json restarts afresh)
    assert totals["write_triggered"] >= 1  # the write-mode trials kill as a checkpoint write starts
