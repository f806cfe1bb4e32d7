"""Achieved FLOP/s of depthlab's training step vs the machine's measured matmul peak (the floor).

    python bench/bench_flops.py                  # cpu
    python bench/bench_flops.py --device cuda

FLOPs of one training step (forward + backward) are counted by ``torch.utils.flop_counter``
(convolutions and matmuls; BN, ReLU and the optimizer are memory-bound and not counted), the step
is timed with the device's default fast path, and the peak is the best rate of large square
matmuls and a wide 3x3 convolution (float32, and bfloat16 when the fast path uses it) measured
in the same run. The gap between achieved and peak is what a perfect implementation could still
win; small feature maps and narrow layers (16 to 64 channels) keep real nets well below it.
"""
from __future__ import annotations

import argparse
import time

import torch
from common import DepthlabRun, cifar_like, header, interleaved, normalized, sync
from torch.utils.flop_counter import FlopCounterMode


def _best_rate(fn, flops: float, device: torch.device, repeats: int = 3) -> float:
    fn()
    best = 0.0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        for _ in range(3):
            fn()
        sync(device)
        best = max(best, 3 * flops / (time.perf_counter() - start))
    return best


def measured_peaks(device: torch.device, dtype: torch.dtype, n: int) -> dict:
    """FLOP/s of the densest kernels this torch build has for ``dtype``: square matmuls of size n/2,
    n and 2n (BLAS), and a wide 3x3 convolution (the conv library that runs the nets' layers,
    oneDNN or cuDNN), forward only. Their maximum is the floor the nets' steps are compared with."""
    peaks = {}
    with torch.no_grad():
        for size in (n // 2, n, 2 * n):
            a = torch.randn(size, size, device=device, dtype=dtype)
            b = torch.randn(size, size, device=device, dtype=dtype)
            peaks[f"matmul {size}"] = _best_rate(lambda a=a, b=b: a @ b, 2 * size ** 3, device)
        batch, c, hw = (16, 256, 32) if device.type == "cpu" else (256, 256, 32)
        x = torch.randn(batch, c, hw, hw, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device, dtype).to(memory_format=torch.channels_last)
        peaks[f"conv3x3 {c}ch"] = _best_rate(lambda: conv(x), 2 * batch * hw * hw * c * c * 9, device)
    return peaks


def step_flops(run: DepthlabRun, batch: int) -> int:
    """FLOPs of one training step of ``run``'s model (forward + backward), counted at float32."""
    model = run.model
    x = torch.randn(batch, 3, 32, 32, device=run.device)
    y = torch.randint(0, 10, (batch,), device=run.device)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="resnet20,resnet56,resnet110,plain56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: cpu 3, cuda 50)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--matmul", type=int, default=None, help="matmul size n (also n/2 and 2n; default: cpu 2048, "
                                                              "cuda 8192)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 3)
    n = args.matmul or (8192 if cuda else 2048)
    header(device, f"batch {args.batch}; {args.repeats} repeats of {steps} timed steps; matmul {n}x{n}")

    images, labels = cifar_like(max(args.batch * 4, 512))
    x, y = normalized(images), torch.from_numpy(labels)
    peaks = {"fp32": measured_peaks(device, torch.float32, n)}
    runs = {}
    for name in args.models.split(","):
        runs[name] = DepthlabRun(name, x, y, device, args.batch)
        runs[name](2 if not cuda else 20)
    if any(r.t.bf16 for r in runs.values()):
        peaks["bf16"] = measured_peaks(device, torch.bfloat16, n)
    for prec, kernels in peaks.items():
        print(f"measured peak {prec}: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in kernels.items()) + " GFLOP/s")
    peaks = {prec: max(kernels.values()) for prec, kernels in peaks.items()}
    print()
    med = interleaved({k: (lambda r=r: r(steps)) for k, r in runs.items()}, args.repeats)
    print(f"{'model':<10} {'GFLOP/step':>11} {'ms/step':>8} {'GFLOP/s':>8} {'peak':>6} {'of peak':>8}   fast path")
    for name, run in runs.items():
        flops = step_flops(run, args.batch)
        s = med[name] / steps
        prec = "bf16" if run.t.bf16 else "fp32"
        achieved = flops / s
        print(f"{name:<10} {flops / 1e9:>11.2f} {1e3 * s:>8.1f} {achieved / 1e9:>8.1f} {prec:>6} "
              f"{100 * achieved / peaks[prec]:>7.1f}%   {run.label}", flush=True)


if __name__ == "__main__":
    main()
