"""What flushing float32 denormals buys on the CPU: the trainer's step (``train.flush_denormal``, on by
default there) on nets whose signal or gradient vanishes, with the CPU's denormal path and without it,
side by side in one process.

    python bench/denormals.py                       # the toolkit experiment's real-scale cells, one thread

The nets are the toolkit experiment's cells at its real scale (32 layers, width 8): ``bare`` (sigmoid, no BN,
no shortcuts, N(0, 0.01^2) init), ``bare+dropout`` and ``full`` (ReLU, BN, shortcuts, He init) for reference.
A bare net's backward error falls below 1.2e-38 (float32's smallest normal number) within a few layers;
without the flag every later multiply-add on it takes the slow path. Prints seconds per step and the ratio.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from common import header, interleaved

from depthlab.config import RunConfig
from depthlab.experiments.toolkit import Toolkit, cells
from depthlab.training.fastpath import denormals_flushed
from depthlab.training.trainer import build_from_config


def stepper(overrides: list, batch: int, steps: int, flush: bool):
    torch.manual_seed(0)
    model = build_from_config(RunConfig().with_overrides(overrides), 10, 3).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)

    def run() -> float:
        with denormals_flushed(flush):
            start = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
                opt.step()
            return time.perf_counter() - start
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", default="bare,bare+dropout,full", help="toolkit cells, comma-separated")
    p.add_argument("--depth", type=int, default=Toolkit.scales["real"]["depth"])
    p.add_argument("--width", type=int, default=Toolkit.scales["real"]["width"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    header(torch.device("cpu"), f"{args.threads} thread(s), batch {args.batch}, median of {args.repeats} x "
                                f"{args.steps} steps, fp32")
    params = {**Toolkit.scales["real"], "depth": args.depth, "width": args.width}
    overrides = {c[0]: c[3] for c in cells(params)}
    print(f"{'cell (toolkit, real scale)':<34} {'denormals s/step':>17} {'flushed s/step':>15} {'speed-up':>9}")
    for cell in args.cells.split(","):
        slow = stepper(overrides[cell], args.batch, args.steps, False)
        fast = stepper(overrides[cell], args.batch, args.steps, True)
        slow(), fast()  # warm-up
        t = interleaved({"slow": slow, "fast": fast}, args.repeats)
        a, b = t["slow"] / args.steps, t["fast"] / args.steps
        print(f"{f'{cell} ({args.depth} layers, width {args.width})':<34} {a:>17.3f} {b:>15.3f} {a / b:>8.1f}x",
              flush=True)


if __name__ == "__main__":
    main()
