"""Fit the run-time model of ``depthlab.experiments.cost`` to finished runs and print its constants and
how well it predicts them. Usage: ``python bench/cost_model.py DIR [DIR ...]`` (experiment or run
directories: every ``runs/*/config.json`` below them with two or more timed epochs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from depthlab.config import RunConfig
from depthlab.data import load_dataset_from
from depthlab.experiments import cost
from depthlab.fileio import read_jsonl


def samples(dirs):
    """``(the four terms of cost.epoch_terms, measured seconds per epoch)`` of every timed run below ``dirs``."""
    data = {}
    for root in dirs:
        for cfg_path in sorted(Path(root).rglob("config.json")):
            rows = [r for r in read_jsonl(cfg_path.parent / "metrics.jsonl") if r.get("kind") == "epoch"
                    and r.get("seconds") is not None]
            if len(rows) < 2:
                continue
            cfg = RunConfig.from_dict(json.loads(cfg_path.read_text()))
            key = json.dumps(cfg.data.__dict__, sort_keys=True, default=str)
            if key not in data:
                data[key] = load_dataset_from(cfg.data, quiet=True)
            measured = sum(r["seconds"] for r in rows[1:]) / len(rows[1:])  # epoch 1 carries warm-up
            yield cost.epoch_terms(cfg, data[key]), measured


def main(dirs) -> None:
    pairs = list(samples(dirs))
    X, y = np.array([x for x, _ in pairs]), np.array([t for _, t in pairs])
    w = 1.0 / y  # relative error: a 2 s run counts as much as a 200 s one
    coef = np.linalg.lstsq(X * w[:, None], y * w, rcond=None)[0]
    ratio = (X @ coef) / y
    print(f"{len(y)} runs; A, B, C, D = {', '.join(f'{c:.2g}' for c in coef)}")
    print("fitted / measured seconds per epoch: 10%, 50%, 90% quantiles "
          + ", ".join(f"{q:.2f}" for q in np.percentile(ratio, [10, 50, 90])))
    now = X @ np.array([cost.A, cost.B, cost.C, cost.D]) / y
    print("with the constants in depthlab/experiments/cost.py: "
          + ", ".join(f"{q:.2f}" for q in np.percentile(now, [10, 50, 90])))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
