"""Per-step cost of ``depthlab.track`` in a user's own loop, side by side with the same loop bare.

    python bench/bench_track.py                  # cpu, a resnet56-sized net on CIFAR-shaped batches
    python bench/bench_track.py --device cuda

The loop is the one a user writes (forward, cross-entropy, zero_grad, backward, SGD step); the
tracked loop adds ``tracker.step()`` (every Conv2d / Linear weight-gradient norm, kept on the
device) and flushes every ``--every`` steps; no heavier quantity runs (``data`` unset), so this is
the cost of the per-step tracking alone. Both loops time the same number of steps, interleaved
(``common.interleaved``), median of ``--repeats``. Target: ratio <= 1.05.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from common import header, interleaved, sync
from torch.nn import functional as F

import depthlab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    header(device, f"model {args.model}, batch {args.batch}, {args.steps} steps per timing, every {args.every}")
    torch.manual_seed(0)
    model = depthlab.build_model(args.model).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    def steps(tracker=None) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            if tracker is not None:
                tracker.step()
            opt.step()
        sync(device)
        return time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as out:
        with depthlab.track(model, out, every=args.every, tensorboard=False) as tracker:
            steps(), steps(tracker)  # warm-up both
            t = interleaved({"bare loop": steps, "tracked loop": lambda: steps(tracker)}, args.repeats)
    for k, v in t.items():
        print(f"{k:<14} {1000 * v / args.steps:8.1f} ms / step")
    print(f"ratio tracked / bare: {t['tracked loop'] / t['bare loop']:.3f} (target <= 1.05)")


if __name__ == "__main__":
    main()
