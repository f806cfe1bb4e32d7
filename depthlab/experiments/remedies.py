"""Which remedies restore the trainability of a deep plain network? One short run per method on
``digits`` at one depth (default 56), side by side with the plain baseline, written as a Markdown
table (``depthlab remedies --out docs/remedies.md``). Honest numbers: whatever they are."""
from __future__ import annotations

import json
import platform
import sys
import time
from datetime import date
from pathlib import Path

import torch

from depthlab.config import RunConfig
from depthlab.data import load_dataset
from depthlab.training.trainer import train_or_stop as train

# name -> (what it is, overrides); {depth} is filled in. Each is a config option, never a copied file.
VARIANTS = {
    "plain": ("baseline: plain net, He init, BN", ["model.name=plain"]),
    "resnet": ("identity shortcuts (He et al. 2015)", ["model.name=resnet"]),
    "resnet+stochastic-depth": ("stochastic depth p_L=0.5 (Huang et al. 2016)",
                                ["model.name=resnet", "methods.stochastic_depth=0.5"]),
    "resnet+rezero": ("SkipInit/ReZero alpha=0 (De & Smith 2020; Bachlechner et al. 2020)",
                      ["model.name=resnet", "model.rezero=true"]),
    "fixup-resnet": ("Fixup, no normalisation (Zhang et al. 2019); scalars at lr/10, momentum without Nesterov, "
                     "as the authors' code", ["model.name=fixup-resnet", "train.nesterov=false"]),
    "highway": ("highway gates, b_T=-2, gate weights x0.1 (Srivastava et al. 2015)", ["model.name=highway"]),
    "plain+crelu-ll": ("CReLU + looks-linear init (Balduzzi et al. 2017)",
                       ["model.name=plain", "model.activation=crelu", "model.init=looks-linear"]),
    "plain+delta-orthogonal": ("delta-orthogonal init (Xiao et al. 2018)",
                               ["model.name=plain", "model.init=delta-orthogonal"]),
    "plain+orthonormal": ("orthonormality regulariser lambda=1e-3 (Xie et al. 2017)",
                          ["model.name=plain", "methods.orthonormal=1e-3"]),
    "plain+orthonormal+modulation": ("orthonormality + backward error modulation (Xie et al. 2017)",
                                     ["model.name=plain", "methods.orthonormal=1e-3", "methods.modulation=top-conv"]),
}


def run_remedies(depth: int = 56, epochs=None, seed: int = 0, out: str = "runs/remedies", variants=None,
                 device: str = "cpu", quiet: bool = False) -> list:
    data = load_dataset("digits")
    rows = []
    for name in variants or list(VARIANTS):
        what, overrides = VARIANTS[name]
        base = [f"model.depth={depth}", "data.name=digits", "train.recipe=quick", f"train.seed={seed}",
                f"train.device={device}", f"out_dir={out}", f"run_id={name}{depth}"]
        if epochs:
            base.append(f"train.epochs={epochs}")
        t0 = time.perf_counter()
        try:
            s = train(RunConfig().with_overrides(base + overrides), overwrite=True, quiet=True, dataset=data)
            row = {"method": name, "what": what, "depth": s["depth"], "params": s["params"],
                   "train_acc": s.get("train_acc"), "test_acc": s.get("test_acc"), "status": s["status"]}
        except ValueError as e:  # a variant this depth/family cannot build: say so, keep going
            row = {"method": name, "what": what, "depth": depth, "status": f"error: {e}"}
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if not quiet:
            acc = row.get("train_acc")
            print(f"  {name:<30} train acc {acc if acc is None else round(acc, 3)}  {row['seconds']:.0f}s  "
                  f"{row['status']}", file=sys.stderr, flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "remedies.json").write_text(json.dumps(rows, indent=2))
    return rows


def markdown_table(rows: list, depth: int, command: str) -> str:
    base = next((r for r in rows if r["method"] == "plain" and r.get("train_acc") is not None), None)
    lines = [f"# Which remedies restore a {depth}-layer plain network's trainability?", "",
             f"Command: `{command}`  ", f"Date: {date.today().isoformat()}; torch {torch.__version__}; "
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads; one seed (0), "
             f"`quick` recipe on `digits` (1,437 training images). n=1: a single seed, read as indicative.", "",
             "| method | what | params | train acc | test acc | vs plain (train) | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("train_acc") is None:
            lines.append(f"| {r['method']} | {r['what']} | - | - | - | {r['status']} | {r['seconds']:.0f} |")
            continue
        gain = "" if base is None else f"{100 * (r['train_acc'] - base['train_acc']):+.1f} pts"
        test = "-" if r.get("test_acc") is None else f"{100 * r['test_acc']:.1f}%"
        status = "" if r["status"] == "finished" else f" ({r['status']})"
        lines.append(f"| {r['method']} | {r['what']} | {r['params']:,} | {100 * r['train_acc']:.1f}%{status} | "
                     f"{test} | {gain} | {r['seconds']:.0f} |")
    return "\n".join(lines + ["", NOTES]) + "\n"


NOTES = """\
How to read it: *train acc* is the running accuracy over the last epoch; the question is whether
the optimiser can fit the training set at this depth, which the 8- and 20-layer plain nets do
(`depthlab demo`). Parameter counts differ where a method adds layers (highway gate convs) or
widens fan-in (CReLU doubles the input channels of every conv after it; `model.width=11` gives a
budget comparable to the ReLU net). *seconds* is one run's wall time on a shared machine, not a
benchmark: per-step costs are measured side by side in `python bench/bench_methods.py`. Every run
directory (config, metrics, checkpoints) is under `runs/remedies/`."""
