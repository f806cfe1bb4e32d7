"""The training loop: one run directory per run, metrics accumulated on the device and read once
per epoch, atomic checkpoints every epoch, exact resume."""
from __future__ import annotations

import dataclasses
import json
import logging
import random
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

import depthlab.fileio as fileio
import depthlab.training.checkpoint as ckpt
from depthlab.config import ConfigError, RunConfig
from depthlab.data import DeviceLoader, check_dataset, load_dataset_from, resolve_path
from depthlab.models import build_model, count_params
from depthlab.models.spec import model_options
from depthlab.recipes import RECIPES, resolve_train
from depthlab.training.diag_schedule import TrainingDiagnostics, validate_run
from depthlab.training.distributed import Dist, mark_run
from depthlab.training.epochs import NoDiagnostics, Training
from depthlab.training.fastpath import (
    FastStep,
    autocast_factory,
    denormals_flushed,
    prepare_model,
    resolve_fast_path,
)
from depthlab.training.method_hooks import TrainingMethods, make_optimizer
from depthlab.training.progress import Progress
from depthlab.training.resume import check_epochs_change, last_epoch_row, prepare_run_dir, resume_point, truncate_logs
from depthlab.training.safety import RunLock, StopSignals
from depthlab.training.tensorboard import TensorBoardLog
from depthlab.training.threads import apply_threads


def resolve_device(name: str) -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device {name!r} requested but CUDA is not available; use auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("train.device 'mps' requested but MPS is not available; use auto or cpu")
    return torch.device(name)


DATA_FILE = "data.json"  # what the run trained on, for reports: sizes, image shape, class names


def data_summary(dataset) -> dict:
    """The dataset a run trains on, as the run directory records it (``data.json``)."""
    names = getattr(dataset, "class_names", None)
    return {"name": dataset.name, "train": len(dataset.train_x), "test": len(dataset.test_x),
            "val": 0 if getattr(dataset, "val_x", None) is None else len(dataset.val_x),
            "shape": list(dataset.train_x.shape[1:]), "num_classes": dataset.num_classes,
            "class_names": None if names is None else list(names), "source": getattr(dataset, "source", None)}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_from_config(cfg: RunConfig, num_classes: int, in_channels: int):
    """Build the model a (partly unresolved) config describes, with ``num_classes`` outputs and
    ``in_channels`` input channels where the config leaves them open (a dataset's), and with what
    the training methods change in the model itself applied (stochastic depth's survival
    probabilities): wherever a run's model is built (training, eval, diagnose) it is this one."""
    m = cfg.model
    keys = ("depth", "width", "shortcut", "init", *model_options())
    overrides = {k: getattr(m, k) for k in keys if getattr(m, k) is not None}
    if m.zero_init_residual:
        overrides["zero_init_residual"] = True
    model = build_model(m.name, num_classes=m.num_classes or num_classes,
                        in_channels=m.in_channels or in_channels, **overrides)
    TrainingMethods(cfg.methods).configure(model)
    return model


def check_model(cfg: RunConfig) -> None:
    """Build the model on the meta device (no memory, no data): a bad depth or option, or a method
    the model cannot take, fails before anything is written."""
    with torch.device("meta"):
        build_from_config(cfg, 10, 3)


def resolve_config(cfg: RunConfig, model, dataset) -> RunConfig:
    """Fill every ``None`` the model, the dataset and the recipe determine."""
    spec = getattr(model, "spec", None)
    depth = getattr(model, "depth", None) or getattr(spec, "depth", 0)
    options = dict(getattr(spec, "options", {}) or {})
    model_cfg = dataclasses.replace(
        cfg.model, depth=depth, **{k: options[k] for k in model_options() if k in options},
        width=cfg.model.width if cfg.model.width is not None else getattr(spec, "width", None),
        shortcut=cfg.model.shortcut if cfg.model.shortcut is not None else getattr(spec, "shortcut", None),
        init=cfg.model.init if cfg.model.init is not None else getattr(spec, "init", None),
        num_classes=cfg.model.num_classes or dataset.num_classes,
        in_channels=cfg.model.in_channels or dataset.in_channels)
    data_cfg = dataclasses.replace(
        cfg.data, path=resolve_path(cfg.data.path),  # absolute: eval and diagnose run from anywhere
        augment=cfg.data.augment if cfg.data.augment is not None else dataset.default_augment,
        crop_padding=cfg.data.crop_padding if cfg.data.crop_padding is not None else dataset.default_crop_padding)
    return dataclasses.replace(cfg, model=model_cfg, data=data_cfg, train=resolve_train(cfg.train, depth))


@torch.inference_mode()
def evaluate(model, x, y, batch_size: int = 512, autocast=None):
    """Mean cross-entropy and accuracy of ``model`` (in eval mode) on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with autocast or nullcontext():
            out = model(xb)
        loss += F.cross_entropy(out.float(), yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    model.train(was_training)
    n = max(1, len(x))
    return loss.item() / n, correct.item() / n


def train(cfg: RunConfig, *, resume=False, overwrite: bool = False, quiet: bool = False,
          dataset=None) -> dict:
    """Train the run ``cfg`` describes; returns a summary dict (also the last line of metrics) with
    ``status`` finished, diverged or interrupted (SIGINT/SIGTERM: a checkpoint of the exact
    position was saved; ``resume=True`` continues from it). ``resume="auto"``: continue the run if
    the run directory holds this run, else start it (the command for torchrun's restarts)."""
    if not (resume is True or resume is False or resume == "auto"):
        raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    validate_run(cfg)
    check_model(cfg)
    dist = Dist()
    device = dist.start(resolve_device(cfg.train.device))
    lock = RunLock(cfg.run_dir)  # rank 0 takes it: the one writer
    try:
        dist.check(cfg.train.sync_bn, device)
        dist.on_main(lock.acquire)  # a refusal ends every rank, not rank 0 alone
        flush = resolve_fast_path(cfg.train, device).flush_denormal
        with StopSignals() as stop, denormals_flushed(flush):
            return _train(cfg, resume, overwrite, quiet or not dist.is_main, dataset, dist, device, stop)
    finally:
        lock.release()  # a no-op unless acquired
        dist.close()


def train_or_stop(cfg: RunConfig, **kwargs) -> dict:
    """``train``, for callers that run many runs (demo, experiments): a run stopped by SIGINT or
    SIGTERM (its position saved) stops the caller too, by KeyboardInterrupt."""
    summary = train(cfg, **kwargs)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt(f"{summary.get('signal')}: {summary['run_dir']} saved; resume to continue")
    return summary


def _train(cfg, resume, overwrite, quiet, dataset, dist, device, stop) -> dict:
    threads = apply_threads(cfg.train.threads) if device.type == "cpu" else None
    if threads is None and cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    if dataset is None:
        dataset = load_dataset_from(cfg.data, quiet=quiet)
    check_dataset(dataset, cfg.model.num_classes or dataset.num_classes)  # NaN data is not a divergence
    dataset = dataset.to(device)

    seed_everything(cfg.train.seed)
    model = build_from_config(cfg, dataset.num_classes, dataset.in_channels).to(device)
    cfg = resolve_config(cfg, model, dataset)
    cfg = dataclasses.replace(cfg, train=resolve_fast_path(cfg.train, device))
    t = cfg.train
    run_dir = cfg.run_dir

    def start_run_dir() -> bool:  # rank 0; whether we resume (an error reaches every rank)
        saved = prepare_run_dir(cfg, resume, overwrite)
        if saved is not None:
            check_epochs_change(saved, cfg, len(dataset.train_x))
        # config.json first: a crash between the two leaves a run to resume, not an unexplained folder
        fileio.atomic_write_text(run_dir / "config.json", cfg.to_json())  # before step 0
        fileio.atomic_write_text(run_dir / DATA_FILE, json.dumps(data_summary(dataset), indent=1))
        mark_run(run_dir)
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by a crash
            stale.unlink()
        return saved is not None

    saved = dist.on_main(start_run_dir)

    forward = prepare_model(model, t, device)
    autocast = autocast_factory(device, t.bf16)
    loader = DeviceLoader(dataset.train_x, dataset.train_y, batch_size=t.batch_size, shuffle=True,
                          augment=cfg.data.augment, crop_padding=cfg.data.crop_padding, seed=t.seed)
    spe = len(loader)
    total_steps = t.epochs * spe
    methods = TrainingMethods(cfg.methods)
    methods.setup(model)
    forward = dist.wrap(forward, t.sync_bn, find_unused=methods.skips_parameters, device=device)
    opt = make_optimizer(model, t, methods)
    factor = RECIPES.get(t.recipe).lr_factor(total_steps, t.warmup_iters, t.warmup_lr, t.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    n_params = count_params(model)
    summary = {"run_dir": str(run_dir), "model": cfg.model.name, "depth": cfg.model.depth,
               "params": n_params, "status": "running", "epoch": 0}
    tb = TensorBoardLog(run_dir / "tensorboard", purge_step=0)
    diags = TrainingDiagnostics(cfg, model, dataset, run_dir, spe, tensorboard=tb) if dist.is_main else NoDiagnostics()
    progress = Progress(total=total_steps, done=0, quiet=quiet,
                        title=f"{cfg.resolved_run_id} ({n_params:,} params, {device}"
                              + (f", {threads.note}" if threads is not None else "")
                              + (f", {dist.world} processes)" if dist.active else ")"))

    def make_step(observer):
        """The training step, with ``observer(step)`` (gradient tracking, a divergence replay's
        recorder) reading the gradients after backward, before the methods change them."""
        fs = FastStep(forward, opt, t, device, sched=sched, penalty=lambda: methods.penalty(model),
                      after_backward=[observer, lambda step: methods.after_backward(model, step)])
        return lambda x, y, n_global, step: fs(x, y, n_global=n_global, world=dist.world, step=step)

    run = Training(cfg=cfg, model=model, make_step=make_step, opt=opt, sched=sched, loader=loader, dataset=dataset,
                   methods=methods, diags=diags, progress=progress, tb=tb, autocast=autocast, dist=dist, stop=stop,
                   summary=summary, evaluate=evaluate)
    start_epoch = start_step = 0
    picked = {}

    def pick_checkpoint():  # rank 0: logs checked, damaged checkpoints set aside; every rank loads the pick
        picked["pick"] = resume_point(run_dir, device, set_aside=True)
        return picked["pick"].path.name if picked["pick"].path is not None else None

    name = dist.on_main(pick_checkpoint) if saved else None
    if name is not None:
        state = picked["pick"].state if picked else ckpt.load_checkpoint(run_dir / "checkpoints" / name,
                                                                        map_location=device)
        start_epoch, start_step = run.restore(state)
        # the next step's lr from this run's schedule (the saved lr came from the saved run's schedule, which
        # differs when a resume changed the epochs; LambdaLR's own formula, so unchanged runs are untouched)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * factor(sched.last_epoch)
    if saved and dist.is_main:
        dropped = truncate_logs(run_dir / "metrics.jsonl", start_epoch)
        # diagnostics at epoch 0 are re-run when no step was taken, so their old rows go too
        fresh = start_epoch == 0 and start_step == 0
        truncate_logs(run_dir / "diagnostics.jsonl", -1 if fresh else start_epoch)
        if picked["pick"].passed:  # one line: which files, set aside where, resumed from which, what is lost
            lost = f"{ckpt.steps_between(picked['pick'], spe)} of training are redone"
            if dropped:
                lost += f" and {dropped} metrics row(s) past it are dropped"
            logging.getLogger("depthlab").warning(ckpt.fallback_message(picked["pick"], "resuming from", lost))
    dist.barrier()
    summary["epoch"] = start_epoch
    if start_epoch >= t.epochs:
        summary.update(last_epoch_row(run_dir / "metrics.jsonl"), status="finished")
        return summary
    done = start_epoch * spe + start_step
    progress.done = done
    tb.purge_step = done + 1 if done else 0  # hide what an interrupted process logged past the checkpoint
    tb.enabled = tb.enabled and dist.is_main
    model.train()
    try:
        with progress:
            if done == 0:
                diags.run(0)
                run.save(0)  # the last good checkpoint if the first epoch diverges
            return run.run(start_epoch, start_step)
    finally:
        methods.close()
        diags.close()
        tb.close()


