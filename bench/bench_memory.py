"""Memory: the deepest plain / resnet net whose training step fits a memory budget, with and
without activation checkpointing; and a 10,000-layer net taking a training step.

    python bench/bench_memory.py                         # cpu, 1 GiB budget, batch 32
    python bench/bench_memory.py --device cuda --budget-gib 8 --batch 128

Each measurement runs in a fresh subprocess: build the net (width 16, CIFAR-shaped input), take
one training step with the device's fast path, report the step's peak memory above what was in
use before it (cpu: the process's peak resident set, reset just before the step through
/proc/self/clear_refs; cuda: torch.cuda.max_memory_allocated). Depths 6n+2 for n = 3, 9, 18,
36, ... are tried in order until one exceeds the budget (or --max-depth); checkpointing uses
train.checkpoint_segments = -1 (sqrt of the block count).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

BLOCKS_PER_STAGE = (3, 9, 18, 36, 72, 144, 288, 576, 1152, 1666)


def _rss_peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args) -> None:
    """One training step; prints a JSON line."""
    import torch
    from common import DepthlabRun, cifar_like, normalized, sync

    device = torch.device(args.device)
    images, labels = cifar_like(args.batch)
    stage_blocks = args.stage_blocks or f"{args.n},{args.n},{args.n}"
    run = DepthlabRun(args.family, normalized(images), torch.from_numpy(labels), device, args.batch,
                      model_options=dict(width=16, stage_blocks=stage_blocks), checkpoint_segments=args.segments)
    xb, yb = next(iter(run.loader))
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset = _rss_peak_reset()
        before = _proc_status_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss, _ = run.step(xb, yb)
    sync(device)
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = (_proc_status_kib("VmHWM") if reset else _proc_status_kib("VmRSS")) * 1024 - before
    stem_grad = run.model.stem.conv.weight.grad
    print(json.dumps({"depth": run.model.depth, "params": sum(p.numel() for p in run.model.parameters()),
                      "peak_bytes": peak, "seconds": seconds, "loss": float(loss),
                      "stem_grad_norm": float(stem_grad.norm()) if stem_grad is not None else None}))


def measure(args, family: str, n: int = 0, segments: int = 0, stage_blocks=None, batch=None) -> dict:
    cmd = [sys.executable, __file__, "--child", "--device", args.device, "--family", family, "--n", str(n),
           "--segments", str(segments), "--batch", str(batch or args.batch)]
    if stage_blocks:
        cmd += ["--stage-blocks", stage_blocks]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["killed"])[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(b: float) -> str:
    return f"{b / 2 ** 30:.2f} GiB"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget-gib", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-depth", type=int, default=10_000)
    p.add_argument("--families", default="plain,resnet")
    p.add_argument("--deep-depth", type=int, default=10_000, help="the single very deep step (0: skip)")
    p.add_argument("--deep-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--family", default="resnet", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--segments", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stage-blocks", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)

    import torch
    from common import header
    header(torch.device(args.device), f"budget {args.budget_gib:g} GiB for one training step's peak memory, "
                                      f"batch {args.batch}, width 16, 32x32 inputs")
    budget = args.budget_gib * 2 ** 30
    print(f"{'family':<8} {'checkpointing':<14} {'depth':>6} {'peak':>10} {'s/step':>7}   next depth tried")
    for family in args.families.split(","):
        for segments, label in ((0, "off"), (-1, "sqrt(blocks)")):
            best, note = None, "none fit"
            for n in BLOCKS_PER_STAGE:
                if 6 * n + 2 > args.max_depth:
                    note = f"stopped at --max-depth {args.max_depth}"
                    break
                r = measure(args, family, n, segments)
                if "error" in r or r["peak_bytes"] > budget:
                    note = (f"{6 * n + 2}: " + (r.get("error") or f"{gib(r['peak_bytes'])} > budget"))
                    break
                best = r
            if best is None:
                print(f"{family:<8} {label:<14} {'-':>6}   {note}")
            else:
                print(f"{family:<8} {label:<14} {best['depth']:>6} {gib(best['peak_bytes']):>10} "
                      f"{best['seconds']:>7.1f}   {note}", flush=True)
    if args.deep_depth:
        blocks = (args.deep_depth - 2) / 2
        if blocks != int(blocks) or blocks < 3:
            raise SystemExit(f"--deep-depth must be even and >= 8 (depth = 2 * blocks + 2), got {args.deep_depth}")
        b = int(blocks)
        stage_blocks = f"{b // 3},{b // 3},{b - 2 * (b // 3)}"
        r = measure(args, "resnet", segments=-1, stage_blocks=stage_blocks, batch=args.deep_batch)
        if "error" in r:
            print(f"\n{args.deep_depth}-layer resnet: failed: {r['error']}")
        else:
            print(f"\n{r['depth']}-layer resnet (stage_blocks {stage_blocks}, {r['params']:,} parameters), batch "
                  f"{args.deep_batch}, checkpointing sqrt(blocks) = {round(math.sqrt(b))} segments: one training "
                  f"step in {r['seconds']:.1f} s, peak {gib(r['peak_bytes'])}, loss {r['loss']:.3f}, "
                  f"stem gradient norm {r['stem_grad_norm']:.3g}")


if __name__ == "__main__":
    main()
