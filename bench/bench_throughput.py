"""Training throughput: depthlab's step vs the loop people write by hand, side by side in one run.

    python bench/bench_throughput.py                        # cpu: resnet20/56/110 and plain56
    python bench/bench_throughput.py --device cuda          # a GPU; adds timm's resnet18 if installed
    python bench/bench_throughput.py --ablate               # each fast-path option alone (resnet56)
    python bench/bench_throughput.py --ablate --compile     # ... and torch.compile (slow warm-up)

Main table, per model, on CIFAR-shaped data (random uint8 32x32x3 images, batch 128, crop+flip):
  reference   bench/reference.py: DataLoader over per-sample transforms, fp32, NCHW, default
              SGD, loss.item() every step; with 0 and with 2 worker processes, the faster counts
  depthlab    the trainer's step (depthlab.training.fastpath.FastStep) with the default (auto) fast
              path of the device, on the device-resident loader (crop and flip batched on the device)
and images/s, the ratio depthlab / reference, seconds per 50,000-image epoch (training steps
plus a 10,000-image evaluation at the measured evaluation speed) and the projected time of the
he2015 schedule (164 epochs). Warm-up steps (and compilation) are never timed; each repeat
runs every side once, in turn; the table shows medians over repeats.
"""
from __future__ import annotations

import argparse
import time

import torch
from common import DepthlabRun, cifar_like, header, interleaved, normalized, sync
from reference import ReferenceRun

from depthlab.models import build_model

EPOCH_IMAGES, TEST_IMAGES, HE2015_EPOCHS = 50_000, 10_000, 164

ABLATION = [  # (label, fast-path fields); the first row is the plain path every ratio divides
    ("plain path: fp32, NCHW, for-loop SGD", dict(bf16=False, channels_last=False, optimizer_impl="for-loop")),
    ("+ foreach SGD", dict(bf16=False, channels_last=False, optimizer_impl="foreach")),
    ("+ fused SGD", dict(bf16=False, channels_last=False, optimizer_impl="fused")),
    ("fused + channels_last", dict(bf16=False, channels_last=True, optimizer_impl="fused")),
    ("fused + bf16", dict(bf16=True, channels_last=False, optimizer_impl="fused")),
    ("fused + channels_last + bf16", dict(bf16=True, channels_last=True, optimizer_impl="fused")),
]


def eval_images_per_second(run: DepthlabRun, batch: int = 512, batches: int = 3) -> float:
    """Evaluation speed of the run's model (inference mode, its autocast and layout)."""
    model, device = run.model, run.device
    x = torch.randn(batch, 3, 32, 32, device=device)
    if run.t.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode(), run.step.autocast():
        model(x)
        sync(device)
        start = time.perf_counter()
        for _ in range(batches):
            model(x)
        sync(device)
    model.train()
    return batch * batches / (time.perf_counter() - start)


def fmt_duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main_table(args, device, images, labels) -> None:
    x, y = normalized(images), torch.from_numpy(labels)
    print(f"{'model':<10} {'reference img/s':>16} {'depthlab img/s':>15} {'ratio':>6} {'s/epoch':>8} "
          f"{'164 epochs':>11}   depthlab fast path")
    for name in args.models:
        runs = {}
        for w in args.workers:
            torch.manual_seed(0)
            runs[f"ref{w}"] = ReferenceRun(build_model(name, num_classes=10, in_channels=3), images, labels,
                                           device, args.batch, w)
        dl = DepthlabRun(name, x, y, device, args.batch, compile=args.compile_mode)
        runs["depthlab"] = dl
        for run in runs.values():
            run(args.warmup)
        med = interleaved({k: (lambda r=r: r(args.steps)) for k, r in runs.items()}, args.repeats)
        ips = {k: args.steps * args.batch / s for k, s in med.items()}
        ref_key = max((k for k in ips if k.startswith("ref")), key=ips.get)
        ref, fast = ips[ref_key], ips["depthlab"]
        epoch = EPOCH_IMAGES / fast + TEST_IMAGES / eval_images_per_second(dl)
        print(f"{name:<10} {ref:>11.0f} (w={ref_key[3:]}) {fast:>15.0f} {fast / ref:>6.2f} {epoch:>8.1f} "
              f"{fmt_duration(epoch * HE2015_EPOCHS):>11}   {dl.label}", flush=True)
        del runs, dl
    if args.timm:
        timm_row(args, device, images, labels)


def timm_row(args, device, images, labels) -> None:
    """timm's ImageNet-style resnet18 (10 classes) on the same reference loop, for scale."""
    try:
        import timm
    except ImportError:
        print("timm: not installed, row skipped")
        return
    torch.manual_seed(0)
    run = ReferenceRun(timm.create_model("resnet18", num_classes=10), images, labels, device, args.batch,
                       max(args.workers))
    run(args.warmup)
    med = interleaved({"timm": lambda: run(args.steps)}, args.repeats)
    print(f"{'timm-rn18':<10} {args.steps * args.batch / med['timm']:>11.0f} (w={max(args.workers)})"
          f"   (timm {timm.__version__} resnet18 on the reference loop)")


def ablation(args, device, images, labels) -> None:
    x, y = normalized(images), torch.from_numpy(labels)
    rows = list(ABLATION)
    if args.compile:
        rows.append(("fused + channels_last + compile", dict(bf16=False, channels_last=True, optimizer_impl="fused",
                                                             compile="default")))
        rows.append(("fused + channels_last + bf16 + compile",
                     dict(bf16=True, channels_last=True, optimizer_impl="fused", compile="default")))
        if device.type == "cuda":
            rows.append(("... + compile reduce-overhead (CUDA graphs)",
                         dict(bf16=True, channels_last=True, optimizer_impl="fused", compile="reduce-overhead")))
    runs = {}
    for label, fast in rows:
        runs[label] = DepthlabRun(args.ablate_model, x, y, device, args.batch, **fast)
        start = time.perf_counter()
        runs[label](args.warmup)
        if "compile" in fast:
            print(f"warm-up of '{label}' (compilation, untimed below): {time.perf_counter() - start:.1f} s", flush=True)
    med = interleaved({k: (lambda r=r: r(args.steps)) for k, r in runs.items()}, args.repeats)
    base = med[rows[0][0]]
    print(f"\n{args.ablate_model}, batch {args.batch}: ms per step (median of {args.repeats} repeats of "
          f"{args.steps} steps)")
    print(f"{'configuration':<46} {'ms/step':>9} {'img/s':>7} {'speed-up':>9}")
    for label, _ in rows:
        s = med[label] / args.steps
        print(f"{label:<46} {1e3 * s:>9.1f} {args.batch / s:>7.0f} {base / med[label]:>8.2f}x")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="resnet20,resnet56,resnet110,plain56")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--images", type=int, default=2048, help="size of the image pool (cycled)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per repeat (default: cpu 4, cuda 50)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: cpu 2, cuda 20)")
    p.add_argument("--workers", default="0,2", help="DataLoader worker counts tried for the reference")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--compile-mode", default="off", help="train.compile for the main table's depthlab side")
    p.add_argument("--ablate", action="store_true", help="time each fast-path option instead")
    p.add_argument("--ablate-model", default="resnet56")
    p.add_argument("--compile", action="store_true", help="add torch.compile rows to --ablate")
    p.add_argument("--timm", action="store_true", help="add timm's resnet18 on the reference loop "
                                                        "(default on cuda when timm is installed)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.steps = args.steps or (50 if cuda else 4)
    args.warmup = args.warmup or (20 if cuda else 2)
    args.models = [m for m in args.models.split(",") if m]
    args.workers = [int(w) for w in args.workers.split(",")]
    args.timm = args.timm or cuda
    header(device, f"batch {args.batch} of CIFAR-shaped images; {args.repeats} repeats of {args.steps} timed steps "
                   f"after {args.warmup} warm-up steps")
    images, labels = cifar_like(args.images)
    (ablation if args.ablate else main_table)(args, device, images, labels)


if __name__ == "__main__":
    main()
