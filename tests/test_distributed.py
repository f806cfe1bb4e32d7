"""Data-parallel training with torchrun and the real gloo backend on CPU (2 processes, no mocks):
the same run as one process with the same global batch, up to floating-point reduction order."""
import json
import subprocess
import sys

import pytest
import torch

from depthlab.training.checkpoint import latest_checkpoint, load_checkpoint

COMMON = ["data.name=digits", "train.epochs=2", "train.device=cpu", "train.threads=1"]


def _train(tmp_path, run_id, overrides, nproc=1):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    cmd = launcher + ["-m", "depthlab", "train", "--quiet", "--set", *COMMON, *overrides,
                      f"out_dir={tmp_path}", f"run_id={run_id}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path):
    """Fixup has no batch norm, so per-rank shards see exactly what one process sees. 1,437 images
    in batches of 64: the last batch (29) splits 15 / 14, and the loss scaling keeps it exact."""
    model = ["model.name=fixup-resnet20"]
    single, ddp = _train(tmp_path, "single", model), _train(tmp_path, "ddp", model, nproc=2)
    assert single.returncode == 0, single.stderr[-2000:]
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert len([line for line in ddp.stdout.splitlines() if line.startswith("{")]) == 1  # rank 0 speaks
    a, b = _rows(tmp_path / "single"), _rows(tmp_path / "ddp")
    assert [r["epoch"] for r in b] == [1, 2]  # one writer: no duplicated rows
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5)
        assert rb["train_acc"] == ra["train_acc"] and rb["test_acc"] == ra["test_acc"]
    wa = load_checkpoint(latest_checkpoint(tmp_path / "single" / "checkpoints"))["model"]
    wb = load_checkpoint(latest_checkpoint(tmp_path / "ddp" / "checkpoints"))["model"]
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_batch_norm_and_stochastic_depth_train_across_processes(tmp_path):
    """BN nets normalise per shard (no SyncBatchNorm on CPU); dropped blocks leave parameters
    unused in a step, which DDP handles (find_unused_parameters) because every rank drops the same."""
    r = _train(tmp_path, "sd", ["model.name=resnet", "model.depth=14", "methods.stochastic_depth=0.5",
                                "train.epochs=1"], nproc=2)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _rows(tmp_path / "sd")
    assert len(rows) == 1 and rows[0]["train_acc"] > 0.3


def test_sync_bn_on_cpu_is_refused_with_the_field_named(tmp_path):
    r = _train(tmp_path, "sync", ["model.name=resnet", "model.depth=8", "train.sync_bn=true"], nproc=2)
    assert r.returncode != 0
    assert "train.sync_bn needs CUDA" in r.stderr
