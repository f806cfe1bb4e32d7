"""The training loop: one run directory per run, metrics accumulated on the device and read once
per epoch, atomic checkpoints every epoch, exact resume."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import shutil
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import depthlab.fileio as fileio
import depthlab.training.checkpoint as ckpt
from depthlab.config import ConfigError, RunConfig
from depthlab.data import DeviceLoader, load_dataset
from depthlab.models import build_model, count_params
from depthlab.models.spec import model_options
from depthlab.recipes import RECIPES, resolve_train
from depthlab.training.diag_schedule import TrainingDiagnostics, validate_run
from depthlab.training.distributed import Dist
from depthlab.training.engine import NoDiagnostics, Training
from depthlab.training.fastpath import FastStep, autocast_factory, prepare_model, resolve_fast_path
from depthlab.training.methods import TrainingMethods, make_optimizer
from depthlab.training.progress import Progress
from depthlab.training.safety import RunLock, StopSignals
from depthlab.training.tensorboard import TensorBoardLog

# Fields that may change when a run is resumed (everything else must match the saved config).
# The fast-path fields change how a step runs, not the run (bf16 only within rounding).
FAST_PATH_FIELDS = {"train.bf16", "train.channels_last", "train.optimizer_impl", "train.compile",
                    "train.checkpoint_segments", "train.deterministic", "train.check_every"}
_RESUMABLE_CHANGES = {"train.epochs", "train.threads", "train.device", "data.data_dir", "data.download",
                      "out_dir"} | FAST_PATH_FIELDS


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_from_config(cfg: RunConfig, dataset):
    """Build the model a (partly unresolved) config describes, for ``dataset``, with what the
    training methods change in the model itself applied (stochastic depth's survival
    probabilities): wherever a run's model is built (training, eval, diagnose) it is this one."""
    m = cfg.model
    keys = ("depth", "width", "shortcut", "init", *model_options())
    overrides = {k: getattr(m, k) for k in keys if getattr(m, k) is not None}
    if m.zero_init_residual:
        overrides["zero_init_residual"] = True
    model = build_model(m.name, num_classes=m.num_classes or dataset.num_classes,
                        in_channels=m.in_channels or dataset.in_channels, **overrides)
    TrainingMethods(cfg.methods).configure(model)
    return model


def check_model(cfg: RunConfig) -> None:
    """Build the model on the meta device (no memory, no data): a bad depth or option, or a method
    the model cannot take, fails before anything is written."""
    shape = SimpleNamespace(num_classes=cfg.model.num_classes or 10, in_channels=cfg.model.in_channels or 3)
    with torch.device("meta"):
        build_from_config(cfg, shape)


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
        cfg.data,
        augment=cfg.data.augment if cfg.data.augment is not None else dataset.default_augment,
        crop_padding=cfg.data.crop_padding if cfg.data.crop_padding is not None else dataset.default_crop_padding)
    return dataclasses.replace(cfg, model=model_cfg, data=data_cfg, train=resolve_train(cfg.train, depth))


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def run_differences(saved: dict, wanted: RunConfig, epochs: bool = False) -> str:
    """How a run directory's saved config (``config.json``) differs from the run ``wanted``
    describes, as ``"field: saved X, now Y; ..."``; empty when it is that run. Fields ``wanted``
    leaves ``None`` and the resumable ones (device, threads, fast path; epochs unless ``epochs``)
    do not count; recipe defaults are resolved first. For callers that reuse runs (experiments,
    sweeps: they pass ``epochs=True``, since a run of another length is another run)."""
    want = wanted.to_dict()
    want["train"] = dataclasses.asdict(resolve_train(wanted.train, saved["model"].get("depth") or 0))
    old, new = _flat(saved), _flat(want)
    ignored = _RESUMABLE_CHANGES - ({"train.epochs"} if epochs else set())
    diff = sorted(k for k, v in new.items() if v is not None and k not in ignored and old.get(k) != v)
    return "; ".join(f"{k}: saved {old.get(k)!r}, now {new[k]!r}" for k in diff)


def _prepare_run_dir(cfg: RunConfig, resume: bool, overwrite: bool) -> Optional[dict]:
    """Refuse to mix runs. Returns the saved config dict when resuming."""
    run_dir = cfg.run_dir
    saved_path = run_dir / "config.json"
    if resume and overwrite:
        raise ConfigError("choose one of resume=True (CLI: --resume) and overwrite=True (CLI: --overwrite), not both")
    if saved_path.exists():
        if overwrite:
            shutil.rmtree(run_dir)
            return None
        if not resume:
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run; pass resume=True (CLI: "
                              f"--resume) to continue it, overwrite=True (CLI: --overwrite) to replace it, or "
                              f"choose another run_id")
        saved = json.loads(saved_path.read_text())
        new, old = _flat(cfg.to_dict()), _flat(saved)
        diff = sorted(k for k in new if k not in _RESUMABLE_CHANGES and new[k] != old.get(k))
        if diff:
            details = "; ".join(f"{k}: saved {old.get(k)!r}, now {new[k]!r}" for k in diff)
            raise ConfigError(f"cannot resume {str(run_dir)!r}: it holds a different run ({details})")
        return saved
    if resume:
        raise ConfigError(f"nothing to resume: {str(run_dir)!r} holds no run (no config.json)")
    if run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise ConfigError(f"run directory {str(run_dir)!r} exists and is not empty; pass overwrite=True (CLI: "
                          f"--overwrite) or choose another run_id")
    return None


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


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, quiet: bool = False,
          dataset=None) -> dict:
    """Train the run ``cfg`` describes; returns a summary dict (also the last line of metrics) with
    ``status`` finished, diverged or interrupted (SIGINT/SIGTERM: a checkpoint of the exact
    position was saved; ``resume=True`` continues from it)."""
    validate_run(cfg)
    check_model(cfg)
    dist = Dist()
    device = dist.start(resolve_device(cfg.train.device))
    lock = RunLock(cfg.run_dir) if dist.is_main else None
    try:
        dist.check(cfg.train.sync_bn, device)
        if lock is not None:
            lock.acquire()
        with StopSignals() as stop:
            return _train(cfg, resume, overwrite, quiet or not dist.is_main, dataset, dist, device, stop)
    finally:
        if lock is not None:
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
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
    if dataset is None:
        dataset = load_dataset(cfg.data.name, data_dir=cfg.data.data_dir, seed=cfg.data.seed,
                               val_fraction=cfg.data.val_fraction, download=cfg.data.download)
    dataset = dataset.to(device)

    seed_everything(cfg.train.seed)
    model = build_from_config(cfg, dataset).to(device)
    cfg = resolve_config(cfg, model, dataset)
    cfg = dataclasses.replace(cfg, train=resolve_fast_path(cfg.train, device))
    t = cfg.train
    run_dir = cfg.run_dir
    saved = None
    if dist.is_main:
        saved = _prepare_run_dir(cfg, resume, overwrite)
        if saved is not None:
            check_epochs_change(saved, cfg, len(dataset.train_x))
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        for stale in (run_dir / "checkpoints").glob(".*.tmp"):  # a write cut short by a crash
            stale.unlink()
        fileio.atomic_write_text(run_dir / "config.json", cfg.to_json())  # before step 0
    saved = dist.broadcast_object(saved is not None)

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
    last = ckpt.latest_checkpoint(run_dir / "checkpoints") if saved else None
    if last is not None:
        start_epoch, start_step = run.restore(ckpt.load_checkpoint(last, map_location=device))
        # the next step's lr from this run's schedule (the saved lr came from the saved run's schedule, which
        # differs when a resume changed the epochs; LambdaLR's own formula, so unchanged runs are untouched)
        for group, base in zip(opt.param_groups, sched.base_lrs):
            group["lr"] = base * factor(sched.last_epoch)
    if saved and dist.is_main:
        _truncate_metrics(run_dir / "metrics.jsonl", start_epoch)
        # diagnostics at epoch 0 are re-run when no step was taken, so their old rows go too
        fresh = start_epoch == 0 and start_step == 0
        _truncate_metrics(run_dir / "diagnostics.jsonl", -1 if fresh else start_epoch)
    dist.barrier()
    summary["epoch"] = start_epoch
    if start_epoch >= t.epochs:
        summary.update(_last_metrics(run_dir / "metrics.jsonl"), status="finished")
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


def check_epochs_change(saved: dict, cfg: RunConfig, n_train: int) -> None:
    """A resume with another ``train.epochs`` continues only a run whose trained steps had exactly the
    learning rates of a run of the new length (e.g. a step schedule before its first drop); otherwise
    (a one-cycle schedule, or a run already past the new end) it is refused: the result would be
    neither the old run nor a run of the new length."""
    t, old = cfg.train, saved["train"]["epochs"]
    if old == t.epochs:
        return
    last = ckpt.latest_checkpoint(cfg.run_dir / "checkpoints")
    epoch, step = ckpt.checkpoint_position(last) if last is not None else (0, 0)
    spe = -(-n_train // t.batch_size)
    done = epoch * spe + step
    where = f"cannot resume {str(cfg.run_dir)!r} with train.epochs={t.epochs} (it was made with {old})"
    if done > t.epochs * spe:
        raise ConfigError(f"{where}: it has already trained {epoch} epoch(s); train a new run (another run_id, "
                          f"or overwrite=True / CLI --overwrite)")
    recipe = RECIPES.get(t.recipe)
    was = recipe.lr_factor(old * spe, t.warmup_iters, t.warmup_lr, t.lr)
    now = recipe.lr_factor(t.epochs * spe, t.warmup_iters, t.warmup_lr, t.lr)
    bad = next((i for i in range(done) if not math.isclose(was(i), now(i), rel_tol=1e-12)), None)
    if bad is not None:
        raise ConfigError(f"{where}: its {t.recipe} schedule depends on the run's length, so the {done} steps "
                          f"already trained had other learning rates than a {t.epochs}-epoch run (at step {bad}: "
                          f"x{was(bad):.4g} trained, x{now(bad):.4g} for {t.epochs} epochs); train a new run "
                          f"(another run_id, or overwrite=True / CLI --overwrite)")


def _truncate_metrics(path: Path, epoch: int) -> None:
    """Drop epoch lines (metrics, or diagnostics written during training) past the checkpoint we
    resume from, so the logs match the weights."""
    rows = [r for r in fileio.read_jsonl(path) if not (r.get("kind", "epoch") == "epoch" and r.get("epoch", 0) > epoch)]
    fileio.write_jsonl(path, rows)


def _last_metrics(path: Path) -> dict:
    rows = [r for r in fileio.read_jsonl(path) if r.get("kind") == "epoch"]
    return rows[-1] if rows else {}
