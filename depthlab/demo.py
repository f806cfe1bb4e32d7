"""``depthlab demo``: the degradation problem on a laptop CPU in a couple of minutes.

Plain and residual CIFAR-layout networks at three depths train on the bundled ``digits`` data with
the ``quick`` recipe. Expected (He et al. 2015, Fig. 1 and 6): the deepest plain network reaches a
clearly lower *training* accuracy than the residual network of the same depth.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

from depthlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from depthlab.data import load_dataset
from depthlab.fileio import atomic_write_text
from depthlab.report import write_demo_report
from depthlab.training.trainer import train_or_stop as train

EXPECTATION = ("the deepest plain net reaches a clearly lower training accuracy than the resnet of the "
               "same depth (gap >= {gap:.0%})")


def check_expectation(results: list, gap: float = 0.05) -> dict:
    """Compare the deepest plain run with the resnet run of the same depth."""
    deepest = max(r["depth"] for r in results)
    by = {(r["family"], r["depth"]): r for r in results}
    plain, res = by.get(("plain", deepest)), by.get(("resnet", deepest))
    if plain is None or res is None:
        return {"expected": EXPECTATION.format(gap=gap), "observed": None, "depth": deepest}
    diff = res["train_acc"] - plain["train_acc"]
    return {"expected": EXPECTATION.format(gap=gap), "depth": deepest, "plain_train_acc": plain["train_acc"],
            "resnet_train_acc": res["train_acc"], "gap": diff, "observed": bool(diff >= gap)}


def run_demo(out: str = "runs/demo", depths: Sequence[int] = (8, 20, 56), families=("plain", "resnet"),
             epochs=None, seed: int = 0, device: str = "cpu", threads=None, quiet: bool = False,
             dataset: str = "digits") -> dict:
    """Train every (family, depth), write results.json, curves.png and report.html under ``out``."""
    out = Path(out)
    data = load_dataset(dataset, seed=0)
    results = []
    t_start = time.perf_counter()
    for depth in depths:
        for family in families:
            cfg = RunConfig(model=ModelConfig(name=family, depth=depth), data=DataConfig(name=dataset),
                            train=TrainConfig(recipe="quick", epochs=epochs, seed=seed, device=device,
                                              threads=threads),
                            out_dir=str(out / "runs"), run_id=f"{family}{depth}")
            # a live bar per run on a terminal; one line per epoch in a log
            s = train(cfg, overwrite=True, quiet=quiet, dataset=data)
            row = {"model": f"{family}{depth}", "family": family, "depth": s["depth"], "params": s["params"],
                   "train_acc": s["train_acc"], "test_acc": s.get("test_acc"), "train_loss": s["train_loss"],
                   "seconds": s["elapsed"], "status": s["status"], "run_dir": str(Path(s["run_dir"]))}
            results.append(row)
            if not quiet:
                print(f"  {row['model']:<10} train acc {row['train_acc']:.3f}  test acc {row['test_acc']:.3f}  "
                      f"{row['seconds']:.1f}s", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    check = check_expectation(results)
    summary = {"dataset": dataset, "recipe": "quick", "seed": seed, "device": device, "check": check,
               "seconds": time.perf_counter() - t_start}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    report = write_demo_report(out)
    return {"results": results, "check": check, "report": str(report), "out": str(out), **summary}
