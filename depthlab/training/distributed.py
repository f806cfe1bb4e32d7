"""Data-parallel training across processes (``torchrun --nproc_per_node=N -m depthlab train ...``).

torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE > 1`` the trainer
joins the process group (``nccl`` on CUDA, ``gloo`` on CPU), wraps the model in
``DistributedDataParallel`` and gives each rank its slice of every global batch: all ranks draw
the same order and augmentation (the device-resident loader is seeded identically), take the
global batch of ``train.batch_size`` images and keep rows ``rank::`` of ``tensor_split``. Each
rank's loss is its shard's summed cross-entropy times ``world / global batch``, so DDP's gradient
average equals the single-process gradient of the global batch exactly in arithmetic (up to the
order of the floating-point reduction), also for a short last batch. Batch norm normalises over
each rank's shard unless ``train.sync_bn`` (SyncBatchNorm, CUDA only) makes it global; without
batch norm (e.g. Fixup) the runs match a single process. Rank 0 alone writes the run directory
(config, metrics, checkpoints, diagnostics, TensorBoard) and shows progress.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from depthlab.config import ConfigError


class Dist:
    """This process's place in the job; a world of one when not launched by torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self._started = False

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group; returns this rank's device (``cuda:LOCAL_RANK`` on CUDA)."""
        if not self.active:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        elif device.type != "cpu":
            raise ConfigError(f"train.device {device.type!r} does not support multi-process training; "
                              f"use cuda or cpu")
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self._started = True
        return device

    def check(self, sync_bn: bool, device: torch.device) -> None:
        """Refuse what this job cannot do, before anything is written."""
        if sync_bn and self.active and device.type != "cuda":
            raise ConfigError("train.sync_bn needs CUDA (torch's SyncBatchNorm runs on GPUs only); "
                              "set train.sync_bn=false on CPU")

    def wrap(self, model, sync_bn: bool, find_unused: bool, device: torch.device):
        """The DDP-wrapped model that the training step runs (``model`` itself when alone)."""
        if not self.active:  # one process: batch statistics are already global
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        if sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                   find_unused_parameters=find_unused)

    def shard(self, x: torch.Tensor, y: torch.Tensor):
        """This rank's rows of a global batch, and the global batch size."""
        if not self.active:
            return x, y, len(y)
        return x.tensor_split(self.world)[self.rank], y.tensor_split(self.world)[self.rank], len(y)

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def broadcast_object(self, obj: Optional[object]) -> object:
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self._started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._started = False
