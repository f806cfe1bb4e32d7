"""Highway layers' two convs as one: the trainer's step (its CPU/CUDA fast path, crop + flip on the
device) on highway nets with the transform and gate convs fused (the default when nothing hooks them)
and run one after the other, side by side in one process.

    python bench/highway_fused.py                        # highway-20 and -110 at widths 8 and 16, CPU
    python bench/highway_fused.py --nets 110:8 --device cuda

Prints seconds per step of each and the ratio; both paths compute the same numbers up to rounding
(tests/test_families_extra.py). Used for the cost of highway's real scale (docs/notes/calibration-real.md).
"""
from __future__ import annotations

import argparse
from unittest import mock

import torch
from common import DepthlabRun, cifar_like, header, interleaved, normalized

from depthlab.models import highway


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default="20:8,110:8,20:16,110:16", help="DEPTH:WIDTH,... of highway nets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    header(device, f"{args.threads} thread(s), batch {args.batch}, median of {args.repeats} x {args.steps} steps")
    images, labels = cifar_like(1024)
    x, y = normalized(images), torch.from_numpy(labels)
    print(f"{'net':<22} {'separate s/step':>16} {'fused s/step':>13} {'speed-up':>9}")
    for spec in args.nets.split(","):
        depth, width = (int(v) for v in spec.split(":"))
        opts = {"depth": depth, "width": width}
        fused = DepthlabRun("highway", x, y, device, args.batch, opts)
        separate = DepthlabRun("highway", x, y, device, args.batch, opts)

        def unfused(steps=args.steps, run=separate):
            with mock.patch.object(highway, "_fusable", lambda *a: False):
                return run(steps)

        fused(1)
        unfused(1)  # warm-up
        t = interleaved({"separate": unfused, "fused": lambda run=fused: run(args.steps)}, args.repeats)
        a, b = t["separate"] / args.steps, t["fused"] / args.steps
        print(f"{f'highway-{depth} (width {width})':<22} {a:>16.3f} {b:>13.3f} {a / b:>8.2f}x", flush=True)


if __name__ == "__main__":
    main()
