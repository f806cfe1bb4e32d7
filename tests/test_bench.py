"""The benchmark scripts run end to end (tiny sizes) and print the tables docs/performance.md quotes;
their timings are benchmarks, not tests (nothing here asserts a speed)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=BENCH, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "command:" in proc.stdout and "date:" in proc.stdout and "torch" in proc.stdout
    return proc.stdout


TINY = ["--batch", "16", "--steps", "1", "--repeats", "1", "--warmup", "1", "--threads", "1"]


def test_throughput_table_compares_with_the_reference_loop():
    out = _run("bench_throughput.py", "--models", "resnet20", "--images", "64", "--workers", "0", *TINY)
    row = next(line for line in out.splitlines() if line.startswith("resnet20"))
    ref, fast, ratio = re.search(r"resnet20\s+(\d+) \(w=0\)\s+(\d+)\s+([\d.]+)", row).groups()
    r, f = int(ref), int(fast)  # printed rounded to integers, the ratio to 2 decimals from the unrounded values:
    decimals = len(ratio.split(".")[1]) if "." in ratio else 0  # the ratio is consistent with them if it lies
    slack = 0.5 * 10.0 ** -decimals                              # in the range the rounding allows, no more
    assert (f - 0.5) / (r + 0.5) - slack <= float(ratio) <= (f + 0.5) / max(r - 0.5, 1e-9) + slack
    assert "min" in row or " h" in row  # the projected he2015 schedule


def test_ablation_lists_every_option_against_the_plain_path():
    out = _run("bench_throughput.py", "--ablate", "--ablate-model", "resnet20", "--images", "64", *TINY)
    assert "plain path: fp32, NCHW, for-loop SGD" in out and "1.00x" in out
    assert "channels_last" in out and "bf16" in out and "fused" in out


def test_flops_are_counted_and_compared_with_a_measured_peak():
    out = _run("bench_flops.py", "--models", "resnet20", "--matmul", "256", "--batch", "8", "--steps", "1",
               "--repeats", "1", "--threads", "1")
    assert "measured peak fp32: matmul 128" in out and "conv3x3" in out
    row = next(line for line in out.splitlines() if line.startswith("resnet20"))
    gflop = float(row.split()[1])
    # resnet20 on 32x32: 40.8 MMAC forward per image; a training step is ~3x the forward FLOPs
    assert gflop == pytest.approx(3 * 2 * 40.8e6 * 8 / 1e9, rel=0.1)


def test_memory_bench_finds_the_deepest_net_and_takes_a_very_deep_step():
    out = _run("bench_memory.py", "--budget-gib", "2", "--batch", "2", "--families", "resnet", "--max-depth", "20",
               "--deep-depth", "110", "--deep-batch", "2", "--threads", "1")
    assert re.search(r"resnet\s+off\s+20 .*stopped at --max-depth 20", out)
    assert re.search(r"resnet\s+sqrt\(blocks\)\s+20 ", out)
    assert "110-layer resnet" in out and "loss" in out


def test_methods_bench_runs():
    out = _run("bench_methods.py", "--batch", "4", "--steps", "1", "--repeats", "1", "--threads", "1", timeout=600)
    assert "gradient-norm tracking" in out and "stochastic depth" in out


def test_numerics_bench_compares_loss_curves_with_the_plain_path():
    out = _run("bench_numerics.py", "--epochs", "1", "--seeds", "2", "--threads", "1")
    rows = [line for line in out.splitlines() if "+-" in line]
    assert len(rows) == 4 and rows[0].startswith("plain path")
    assert re.search(r"\s0\.00 \(ep\s+1\)", rows[0])  # the plain path's gap to itself


def test_real_step_cost_projects_a_real_fit_run_from_the_step_time():
    out = _run("real_step_cost.py", "--nets", "resnet:8:4,vanilla:8:4", "--batch", "50", "--steps", "1")
    assert "(1,000 images, 32 epochs)" in out
    for name in ("resnet-8 (width 4)", "vanilla-8 (width 4)"):
        step, epoch, run = re.search(re.escape(name) + r"\s+([\d.]+)\s+(\d+)\s+(\d+) min", out).groups()
        s = float(step)  # 1,000 images in batches of 50: 20 steps an epoch, 32 epochs a run (both printed rounded)
        assert abs(int(epoch) - 20 * s) <= 0.5 + 20 * 0.005 and abs(int(run) - 32 * 20 * s / 60) <= 0.5 + 0.06


def test_denormals_bench_prints_both_paths_of_the_toolkit_cells():
    out = _run("denormals.py", "--cells", "bare,full", "--depth", "8", "--width", "4", "--batch", "4",
               "--steps", "1", "--repeats", "1")
    for cell in ("bare", "full"):
        slow, fast, ratio = re.search(re.escape(f"{cell} (8 layers, width 4)") + r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x",
                                      out).groups()
        assert float(slow) > 0 and float(fast) > 0 and float(ratio) > 0
