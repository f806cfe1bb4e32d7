"""Does the fast path train like the plain path? Loss curves of real training runs, side by side.

    python bench/bench_numerics.py                       # resnet20 on digits, quick recipe, 5 seeds
    python bench/bench_numerics.py --model resnet56 --seeds 5 --device cuda --data synthetic

Each configuration trains the same model from the same seeds (``depthlab.train``: same init, same
data order, same augmentation); the tables give the mean training-loss curves (sd over seeds), and
per configuration the final training loss and test accuracy (mean +- sd) and the largest
|z| over epochs, z = (gap between its mean curve and the plain path's) / (standard error of that
gap from the seeds). Rounding differences (layouts, fused kernels, bf16) grow through training
like a change of seed, so "matches within noise" means |z| of about 2 or less (it is the largest
of ``epochs`` such values).
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from common import header

from depthlab.config import RunConfig
from depthlab.training import train

CONFIGS = [
    ("plain path: fp32, NCHW, for-loop", ["train.bf16=false", "train.channels_last=false",
                                          "train.optimizer_impl=for-loop"]),
    ("default (auto) fast path", []),
    ("fast path + bf16", ["train.bf16=true"]),
    ("fast path + checkpointing", ["train.checkpoint_segments=-1"]),
]


def curves(args, overrides, seed, out):
    cfg = RunConfig().with_overrides([f"model.name={args.model}", f"data.name={args.data}", f"train.seed={seed}",
                                      f"train.device={args.device}", f"train.epochs={args.epochs}",
                                      f"out_dir={out}", f"run_id=s{seed}", *overrides])
    train(cfg, quiet=True)
    rows = [json.loads(s) for s in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind", "epoch") == "epoch"]
    return [r["train_loss"] for r in rows], rows[-1].get("test_acc", float("nan"))


def ms(values, fmt="{:.4f}"):
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} +- {fmt.format(sd)}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", default="digits")
    p.add_argument("--device", default="cpu")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    header(torch.device(args.device), f"{args.model} on {args.data}, quick recipe, {args.epochs} epochs, "
                                      f"seeds 0..{args.seeds - 1}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, overrides) in enumerate(CONFIGS):
            runs = [curves(args, overrides, s, Path(tmp) / str(i)) for s in range(args.seeds)]
            results[label] = runs
    n = args.seeds
    labels = list(results)

    def curve_stats(runs):
        mean = [statistics.mean(c[e] for c, _ in runs) for e in range(args.epochs)]
        sd = [statistics.stdev(c[e] for c, _ in runs) if n > 1 else 0.0 for e in range(args.epochs)]
        return mean, sd

    stats = {label: curve_stats(runs) for label, runs in results.items()}
    print("mean training loss per epoch (sd over seeds)")
    print(f"{'epoch':>5} " + " ".join(f"{'(' + str(i + 1) + ')':>18}" for i in range(len(labels))))
    for e in range(args.epochs):
        print(f"{e + 1:>5} " + " ".join(f"{stats[lab][0][e]:>9.4f} ({stats[lab][1][e]:.4f})" for lab in labels))
    print("\n" + "; ".join(f"({i + 1}) {lab}" for i, lab in enumerate(labels)) + "\n")
    base_mean, base_sd = stats[labels[0]]
    print(f"{'configuration':<34} {'final train loss':>18} {'test acc %':>15} {'largest |z| over epochs':>24}")
    for label, runs in results.items():
        mean, sd = stats[label]
        # z: gap between the two mean curves over its standard error (both from n seeds)
        z = [abs(m - b) / max(((s1 ** 2 + s2 ** 2) / n) ** 0.5, 1e-12)
             for m, b, s1, s2 in zip(mean, base_mean, sd, base_sd)]
        e = max(range(args.epochs), key=z.__getitem__)
        print(f"{label:<34} {ms([c[-1] for c, _ in runs]):>18} {ms([100 * a for _, a in runs], '{:.1f}'):>15} "
              f"{z[e]:>15.2f} (ep {e + 1:>2})")

if __name__ == "__main__":
    main()
