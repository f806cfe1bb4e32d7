"""Time per training step with and without each method, side by side in one run.

    python bench/bench_methods.py                      # cpu, batch 64, CIFAR-shaped synthetic data
    python bench/bench_methods.py --device cuda --steps 20 --repeats 5

Every step is the trainer's (``depthlab.training.fastpath.FastStep`` with the device's default fast
path). Pairs (baseline vs method, same model, same data, same optimizer):
  resnet56 / plain56: plain training step  vs  + orthonormality penalty (Xie et al. 2017)
  plain56:            plain training step  vs  + backward error modulation (Xie et al. 2017)
  resnet56:           plain training step  vs  + gradient clipping by global norm (Pascanu et al. 2013)
  resnet56:           plain training step  vs  + per-layer gradient-norm tracking every step
  resnet110:          no stochastic depth  vs  stochastic depth p_L = 0.5 (Huang et al. 2016
                      report ~25% less training time; expected active blocks 40.25 / 54)

Each repeat times ``--steps`` steps of the baseline, then of the method (interleaved, so drift on
a shared machine hits both); the table shows the median over repeats of the mean ms per step and
the ratio method / baseline. Warm-up steps are not timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import header as print_header  # common puts the checkout on sys.path
from common import sync, train_config

from depthlab.config import MethodConfig
from depthlab.diagnostics.gradient_flow import GradientFlowTracker
from depthlab.methods import ErrorModulation, apply_stochastic_depth
from depthlab.models import build_model
from depthlab.training.fastpath import FastStep, prepare_model, resolve_fast_path
from depthlab.training.method_hooks import TrainingMethods, make_optimizer


def make_step(model, x, y, device, lam=0.0, tracker=None, clip=None):
    """The trainer's step (FastStep, the device's default fast path) with the method switched on,
    its hooks called as the trainer calls them (``TrainingMethods``)."""
    t = resolve_fast_path(train_config(lr=0.01, weight_decay=0.0 if lam else 1e-4), device)
    forward = prepare_model(model, t, device)
    methods = TrainingMethods(MethodConfig(orthonormal=lam, clip_grad_norm=clip))
    methods.setup(model)
    opt = make_optimizer(model, t, methods)
    history = []
    # as the trainer does: per-layer norms stay on the device; observers first, then the methods
    observer = (lambda step: history.append(tracker.read())) if tracker is not None else None
    step = FastStep(forward, opt, t, device, penalty=lambda: methods.penalty(model),
                    after_backward=[observer, lambda step: methods.after_backward(model, step)])
    return lambda: step(x, y)


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
                      make_step(model(name), x, y, device), make_step(model(name), x, y, device, lam=args.lam)))
    mod_model = model("plain56")
    ErrorModulation(mod_model, reference="top").attach()
    pairs.append(("plain56", "plain step", "+ error modulation (top)",
                  make_step(model("plain56"), x, y, device), make_step(mod_model, x, y, device)))
    pairs.append(("resnet56", "plain step", "+ gradient clipping (max norm 1)",
                  make_step(model("resnet56"), x, y, device), make_step(model("resnet56"), x, y, device, clip=1.0)))
    tracked = model("resnet56")
    tracker = GradientFlowTracker(tracked).attach()
    pairs.append(("resnet56", "plain step", "+ gradient-norm tracking",
                  make_step(model("resnet56"), x, y, device), make_step(tracked, x, y, device, tracker=tracker)))
    sd_model = model("resnet110")
    apply_stochastic_depth(sd_model, 0.5)
    pairs.append(("resnet110", "no stochastic depth", "stochastic depth p_L=0.5",
                  make_step(model("resnet110"), x, y, device), make_step(sd_model, x, y, device)))
    return pairs


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

    print_header(device, f"batch {args.batch} x 3x32x32 synthetic, SGD momentum 0.9; median over {args.repeats} "
                   f"repeats of {args.steps} steps after {args.warmup} warm-up step(s)")
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
