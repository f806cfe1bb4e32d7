"""Time per training step with and without each method, side by side in one run.

    python bench/bench_methods.py                      # cpu, batch 64, CIFAR-shaped synthetic data
    python bench/bench_methods.py --device cuda --steps 20 --repeats 5

Pairs (baseline vs method, same model, same data, same optimizer):
  resnet56 / plain56: plain training step  vs  + orthonormality penalty (Xie et al. 2017)
  plain56:            plain training step  vs  + backward error modulation (Xie et al. 2017)
  resnet110:          no stochastic depth  vs  stochastic depth p_L = 0.5 (Huang et al. 2016
                      report ~25% less training time; expected active blocks 40.25 / 54)

Each repeat times ``--steps`` steps of the baseline, then of the method (interleaved, so drift on
a shared machine hits both); the table shows the median over repeats of the mean ms per step and
the ratio method / baseline. Warm-up steps are not timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from depthlab.methods import ErrorModulation, apply_stochastic_depth, orthonormality_penalty  # noqa: E402
from depthlab.models import build_model  # noqa: E402
from depthlab.diagnostics.gradient_flow import GradientFlowTracker  # noqa: E402


def make_step(model, x, y, lam=0.0, tracker=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0 if lam else 1e-4)
    history = []

    def step():
        loss = F.cross_entropy(model(x), y)
        if lam:
            loss = loss + orthonormality_penalty(model, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if tracker is not None:  # as the trainer does: per-layer norms stay on the device
            history.append(tracker.read())
        opt.step()
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, n: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - start) / n


def build_pairs(args, device):
    """[(case, baseline label, method label, baseline step, method step)]; fresh models per side."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)

    def model(name):
        torch.manual_seed(0)
        return build_model(name).to(device).train()

    pairs = []
    for name in ("resnet56", "plain56"):
        pairs.append((name, "plain step", f"+ orthonormality (lam={args.lam:g})",
                      make_step(model(name), x, y), make_step(model(name), x, y, lam=args.lam)))
    mod_model = model("plain56")
    ErrorModulation(mod_model, reference="top").attach()
    pairs.append(("plain56", "plain step", "+ error modulation (top)",
                  make_step(model("plain56"), x, y), make_step(mod_model, x, y)))
    tracked = model("resnet56")
    tracker = GradientFlowTracker(tracked).attach()
    pairs.append(("resnet56", "plain step", "+ gradient-norm tracking",
                  make_step(model("resnet56"), x, y), make_step(tracked, x, y, tracker=tracker)))
    sd_model = model("resnet110")
    apply_stochastic_depth(sd_model, 0.5)
    pairs.append(("resnet110", "no stochastic depth", "stochastic depth p_L=0.5",
                  make_step(model("resnet110"), x, y), make_step(sd_model, x, y)))
    return pairs


def machine_info(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    return (f"torch {torch.__version__} | device {device} ({dev}) | threads {torch.get_num_threads()} "
            f"| cpus visible {os.cpu_count()} | python {platform.python_version()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat and side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--lam", type=float, default=1e-4, help="orthonormality strength")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print(machine_info(device))
    print(f"batch {args.batch} x 3x32x32 synthetic, SGD momentum 0.9; median over {args.repeats} repeats "
          f"of {args.steps} steps after {args.warmup} warm-up step(s)\n")
    header = f"{'model':<10} {'baseline':<20} {'ms/step':>9} {'method':<30} {'ms/step':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for case, base_label, method_label, base, method in build_pairs(args, device):
        for step in (base, method):
            for _ in range(args.warmup):
                step()
        torch.manual_seed(1)  # the same stochastic-depth draws in every run of this script
        t_base, t_method = [], []
        for _ in range(args.repeats):
            t_base.append(time_steps(base, args.steps, device))
            t_method.append(time_steps(method, args.steps, device))
        mb, mm = statistics.median(t_base) * 1e3, statistics.median(t_method) * 1e3
        print(f"{case:<10} {base_label:<20} {mb:9.1f} {method_label:<30} {mm:9.1f} {mm / mb:6.3f}", flush=True)


if __name__ == "__main__":
    main()
