"""Fault injection: train a small run in a subprocess, SIGKILL it at random moments (or the
instant a checkpoint write starts), resume, repeat until it finishes; check every checkpoint left
behind loads and the finished run equals an uninterrupted one bit for bit.

    python scripts/fault_injection.py --trials 40            # the figures in docs/recovery.md
    python scripts/fault_injection.py --trials 5 --mode write

Modes: ``random`` kills at a uniform time within the run's expected duration; ``write`` kills as
soon as a checkpoint temp file appears (during ``torch.save``/fsync/rename); ``mixed`` alternates.
``write_triggered`` counts the kills sent on seeing a temp file, ``kills_in_write`` those whose
temp file was still there when the kill was sent (the write had not finished).
Each kill is followed by ``--resume`` (a plain start if no config.json was written yet); a
resumed attempt is itself killed with probability 1/2, at most ``--max-kills`` times per trial.
The run: resnet-8 on digits, 3 epochs of 23 steps, crop + flip, deterministic mode, 1 thread.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from depthlab.training.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints, load_checkpoint  # noqa: E402

RUN = ["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=3", "train.batch_size=64",
       "train.device=cpu", "train.threads=1", "train.deterministic=true", "data.augment=crop-flip",
       "data.crop_padding=1", "train.keep_last=2"]


def _cmd(out: Path, run_id: str, resume: bool):
    return ([sys.executable, "-m", "depthlab", "train", "--quiet"] + (["--resume"] if resume else [])
            + ["--set", *RUN, f"out_dir={out}", f"run_id={run_id}"])


def reference(out: Path) -> tuple:
    start = time.perf_counter()
    subprocess.run(_cmd(out, "reference", False), check=True, capture_output=True, env=_env())
    return _final(out / "reference"), time.perf_counter() - start


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _final(run_dir: Path) -> tuple:
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return state["model"], [(r["epoch"], r["train_loss"], r.get("test_acc")) for r in rows if r.get("kind") == "epoch"]


def _wait_for_write(proc, ckpt_dir: Path, deadline: float) -> bool:
    """Poll for a checkpoint temp file; True if one appeared before the process ended."""
    while proc.poll() is None and time.perf_counter() < deadline:
        if ckpt_dir.is_dir() and any(p.name.endswith(".tmp") for p in os.scandir(ckpt_dir)):
            return True
    return False


def trial(out: Path, run_id: str, mode: str, duration: float, rng: random.Random, max_kills: int) -> dict:
    run_dir = out / run_id
    stats = {"kills": 0, "kills_in_write": 0, "write_triggered": 0, "resumes": 0, "corrupt": 0, "attempts": 0}
    while True:
        resume = (run_dir / "config.json").exists()
        stats["resumes"] += int(resume)
        stats["attempts"] += 1
        proc = subprocess.Popen(_cmd(out, run_id, resume), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_env())
        kill = stats["kills"] < max_kills and (stats["kills"] == 0 or rng.random() < 0.5)
        if kill:
            if mode == "write":
                seen = _wait_for_write(proc, run_dir / "checkpoints", time.perf_counter() + 3 * duration)
                stats["write_triggered"] += int(seen)
            else:
                time.sleep(rng.uniform(0.0, duration))
            if proc.poll() is None:
                in_write = any(p.name.endswith(".tmp") for p in (run_dir / "checkpoints").glob(".*"))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                stats["kills"] += 1
                stats["kills_in_write"] += int(in_write)
                for path in list_checkpoints(run_dir / "checkpoints"):
                    try:
                        load_checkpoint(path)
                    except CheckpointError:
                        stats["corrupt"] += 1
                continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            stats["error"] = err.decode()[-500:]
            return stats
        return stats


def run_trials(n: int, mode: str = "mixed", seed: int = 0, max_kills: int = 4, out=None) -> dict:
    tmp = Path(out or tempfile.mkdtemp(prefix="depthlab-faults-"))
    (ref_weights, ref_rows), duration = reference(tmp)
    rng = random.Random(seed)
    totals = {"trials": n, "kills": 0, "kills_in_write": 0, "write_triggered": 0, "resumes": 0, "corrupt": 0,
              "failed": 0,
              "not_identical": 0, "seconds_per_clean_run": round(duration, 2)}
    for i in range(n):
        m = mode if mode != "mixed" else ("write" if i % 2 else "random")
        s = trial(tmp, f"t{i}", m, duration, rng, max_kills)
        for k in ("kills", "kills_in_write", "write_triggered", "resumes", "corrupt"):
            totals[k] += s[k]
        if "error" in s:
            totals["failed"] += 1
            totals.setdefault("errors", []).append(s["error"])
            continue
        weights, rows = _final(tmp / f"t{i}")
        same = rows == ref_rows and all(torch.equal(weights[k], ref_weights[k]) for k in ref_weights)
        totals["not_identical"] += int(not same)
        shutil.rmtree(tmp / f"t{i}")
    if out is None:
        shutil.rmtree(tmp)
    return totals


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--mode", choices=("random", "write", "mixed"), default="mixed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-kills", type=int, default=4)
    args = p.parse_args(argv)
    import datetime
    print("command:", " ".join(["python"] + sys.argv), "| date:", datetime.date.today().isoformat(),
          "| torch", torch.__version__)
    start = time.perf_counter()
    totals = run_trials(args.trials, args.mode, args.seed, args.max_kills)
    totals["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(totals, indent=2))


if __name__ == "__main__":
    main()
