"""Data-parallel training across processes (``torchrun --nproc_per_node=N -m depthlab train ...``).

``Dist``: joins the process group, wraps the model in ``DistributedDataParallel``, gives each rank its shard of
every global batch (the loss scaled so the gradient equals the global batch's) and lets rank 0 alone decide what
every rank must agree on; elastic-restart helpers (``made_by_this_job``).
Details: docs/recovery.md, section "Multi-GPU (and multi-process CPU) with torchrun".
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

import depthlab.fileio as fileio
from depthlab.config import ConfigError

JOB_FILE = ".torchelastic_run_id"  # in the run directory: the torchrun job that last started the run


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
            backend = "nccl" if device.type == "cuda" else "gloo"
            store = _attempt_store()
            if store is None:
                dist.init_process_group(backend)
            else:
                dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world)
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

    def on_main(self, fn: Callable[[], object]) -> object:
        """``fn()`` on rank 0 only; every rank returns its (picklable) result. If it raises, every rank
        raises the same message (``ConfigError`` for a ``ValueError``, else ``RuntimeError``) rather
        than waiting in the next collective for a rank 0 that has gone."""
        if not self.active:
            return fn()
        outcome = None
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except BaseException as e:  # KeyboardInterrupt too: the others must not wait for us
                try:
                    self.broadcast_object(("error", isinstance(e, ValueError), str(e) or type(e).__name__))
                except Exception:  # a peer already gone: our own error is the one to report
                    pass
                raise
        kind, *rest = self.broadcast_object(outcome)
        if kind == "ok":
            return rest[0]
        config_error, message = rest
        raise (ConfigError if config_error else RuntimeError)(message)

    def close(self) -> None:
        if self._started:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._started = False


def _attempt_store():
    """The store for a torchrun attempt, or ``None`` for torch's own. torchrun's agent keeps one store
    for all attempts of a job (``TORCHELASTIC_USE_AGENT_STORE``), so a restarted group reads the dead
    group's gloo addresses and hangs in ``connectFullMesh`` for the 30-minute timeout (seen with torch
    2.13; cf. pytorch/pytorch#135712). Each attempt gets its own key space here, only when every rank
    is on this node: ``TORCHELASTIC_RESTART_COUNT`` is counted per node, so nodes may disagree (there,
    run torchrun with ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``: a new store per attempt)."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or env.get("LOCAL_WORLD_SIZE") != env.get("WORLD_SIZE"):
        return None
    import torch.distributed as dist
    from torch.distributed.constants import default_pg_timeout

    store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), int(env["WORLD_SIZE"]), is_master=False,
                          timeout=default_pg_timeout)
    return dist.PrefixStore(f"depthlab/attempt_{elastic_restart()}", store)


def elastic_job() -> Optional[str]:
    """The torchrun job's id (``TORCHELASTIC_RUN_ID``) when torchrun may restart this process's
    group (``--max-restarts`` > 0); ``None`` otherwise."""
    if int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0) > 0:
        return os.environ.get("TORCHELASTIC_RUN_ID") or None
    return None


def elastic_restart() -> int:
    """How many times torchrun has restarted this job's group (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def mark_run(run_dir: Path) -> None:
    """Record the torchrun job that (re)starts the run in ``run_dir`` (rank 0, nothing without restarts)."""
    job = elastic_job()
    if job is not None:
        fileio.atomic_write_text(Path(run_dir) / JOB_FILE, job)


def made_by_this_job(run_dir: Path) -> bool:
    """Whether this is a restarted attempt of the torchrun job that started the run in ``run_dir``:
    such a run is this job's own work to resume, not someone's earlier run to refuse or replace."""
    job = elastic_job()
    if job is None or elastic_restart() == 0:
        return False
    try:
        return (Path(run_dir) / JOB_FILE).read_text().strip() == job
    except OSError:
        return False
