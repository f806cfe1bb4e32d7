"""What a real-scale run of a net costs: seconds per SGD step on CIFAR-shaped batches, and the
projected time of one run at the real scale's budget (``REAL_FIT``: 1,000 images, 32 epochs).

    python bench/real_step_cost.py                                   # beyond's nets at 110 and 1202 layers
    python bench/real_step_cost.py --nets resnet:56:16,plain:56:16   # NAME:DEPTH:WIDTH, comma-separated

One plain SGD step (forward, backward, update) in fp32, batch 64 of random 32x32x3 images, on one
thread by default (a real-scale run's share of a 2-core machine at ``--jobs 2``); the first step is
a warm-up, the table shows the fastest of the timed steps. Used to decide which depths of an
experiment fit its 30-minute budget (docs/notes/calibration-real.md).
"""
from __future__ import annotations

import argparse
import math
import time

import torch
from common import header
from torch.nn import functional as F

from depthlab.experiments.base import REAL_FIT
from depthlab.models import build_model

BEYOND = "fixup-resnet:110:8,fixup-resnet:1202:8,resnet:1202:8,vanilla:1202:16"


def step_seconds(name: str, depth: int, width: int, batch: int, steps: int) -> float:
    model = build_model(name, num_classes=10, in_channels=3, depth=depth, width=width)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=BEYOND, help="NAME:DEPTH:WIDTH,... (default: beyond's nets)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header(torch.device("cpu"), f"{args.threads} thread(s), batch {args.batch}, fp32")
    images = int(next(s for s in REAL_FIT["set"] if s.startswith("data.train_subset=")).split("=")[1])
    steps_per_epoch = math.ceil(images / args.batch)
    print(f"{'net':<24} {'s / step':>9} {'s / epoch':>10} {'one run':>9}   "
          f"({images:,} images, {REAL_FIT['epochs']} epochs)")
    for spec in args.nets.split(","):
        name, depth, width = spec.split(":")
        s = step_seconds(name, int(depth), int(width), args.batch, args.steps)
        epoch = s * steps_per_epoch
        print(f"{f'{name}-{depth} (width {width})':<24} {s:>9.2f} {epoch:>10.0f} "
              f"{epoch * REAL_FIT['epochs'] / 60:>7.0f} min", flush=True)


if __name__ == "__main__":
    main()
