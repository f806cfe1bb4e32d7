"""The scripted epoch loop shared by tests/test_training_epochs.py and test_training_checkpoint.py: a step whose
loss, predictions and duration are known in advance, a loader of fixed batches (the last one short), a
data-parallel stand-in, and the expected metrics rows."""
import signal
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import depthlab.fileio as fileio
import depthlab.training.epochs as engine
from depthlab.training.checkpoint import (
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from depthlab.training.epochs import Training
from depthlab.training.safety import StopSignals

CLASSES = 3
SIZES = (4, 4, 3)  # samples per batch: three steps per epoch, the last one short
LR = 0.1


def loss_at(g: int) -> float:
    """The scripted loss of global step ``g`` (different at every step, exact in float32)."""
    return 1.0 + 0.25 * g


def lr_at(g: int) -> float:
    """The learning rate before global step ``g`` (the scheduler divides it by 1 + steps taken)."""
    return LR / (1 + g)


def make_batch(epoch: int, i: int, n: int):
    """Labels cycle through the classes; column 0 of x is the class the step predicts: right at even
    positions, wrong at odd ones."""
    y = (torch.arange(n) + epoch + i) % CLASSES
    right = torch.arange(n) % 2 == 0
    pred = torch.where(right, y, (y + 1) % CLASSES)
    return torch.stack([pred.float(), torch.ones(n)], 1), y


def batch_numbers(epoch: int, i: int, n: int, g: int, loss=loss_at):
    """(loss sum, correct, samples) of one batch, from the data alone."""
    x, y = make_batch(epoch, i, n)
    return loss(g) * n, int((x[:, 0].long() == y).sum()), n


def expected_row(epoch: int, done: int = len(SIZES), seconds_before: float = 0.0, loss=loss_at) -> dict:
    """The row of the first ``done`` steps of ``epoch`` of an uninterrupted run (steps 1 s each)."""
    spe = len(SIZES)
    parts = [batch_numbers(epoch, i, n, epoch * spe + i, loss) for i, n in enumerate(SIZES[:done])]
    total = sum(p[0] for p in parts)
    correct = sum(p[1] for p in parts)
    seen = sum(p[2] for p in parts)
    return {"kind": "epoch", "epoch": epoch + 1, "step": epoch * spe + done, "lr": pytest.approx(lr_at(epoch * spe)),
            "train_loss": pytest.approx(total / seen), "train_acc": pytest.approx(correct / seen),
            "seconds": float(done), "elapsed": float(epoch * spe + done)}


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


class Loader:
    def __init__(self, sizes=SIZES):
        self.sizes, self.calls = sizes, []

    def __len__(self):
        return len(self.sizes)

    def batches(self, epoch, start=0):
        self.calls.append((epoch, start))
        for i, n in enumerate(self.sizes):
            if i >= start:
                yield make_batch(epoch, i, n)


class Dist:
    """``world`` identical ranks: sums scale by the world size, a max is the value itself."""

    def __init__(self, world=1, rank=0):
        self.world, self.rank, self.barriers = world, rank, 0

    @property
    def active(self):
        return self.world > 1

    @property
    def is_main(self):
        return self.rank == 0

    def shard(self, x, y):
        return x, y, len(y) * self.world

    def all_reduce(self, t, op="sum"):
        return t * self.world if op == "sum" else t

    def barrier(self):
        self.barriers += 1


class Methods:
    def __init__(self, state=None):
        self.state, self.epochs, self.loaded = state or {}, [], []

    def state_dict(self):
        return dict(self.state)

    def load_state_dict(self, state):
        self.loaded.append(state)

    def start_epoch(self, epoch):
        self.epochs.append(epoch)


class Diags:
    def __init__(self):
        self.steps, self.ended, self.ran, self.loaded = [], [], [], []

    def after_step(self, step):
        self.steps.append(step)

    def end_epoch(self, epoch):
        self.ended.append(epoch)

    def run(self, epoch):
        self.ran.append(epoch)

    def state(self):
        return {"steps_seen": torch.tensor(len(self.steps))}

    def load_state(self, state):
        self.loaded.append(state)


class Progress:
    def __init__(self):
        self.advanced, self.rows, self.logs = 0, [], []

    def advance(self):
        self.advanced += 1

    def epoch_done(self, row):
        self.rows.append(dict(row))

    def log(self, msg):
        self.logs.append(msg)


class Board:
    def __init__(self):
        self.rows = []

    def epoch(self, row):
        self.rows.append(dict(row))


def harness(run_dir, monkeypatch, *, epochs=2, check_every=1, eval_every=1, keep_best=False, keep_last=100,
            world=1, rank=0, val_accs=None, stop_at=None, bad_steps=(), loss=loss_at, methods_state=None,
            sizes=SIZES):
    """A ``Training`` on the scripted parts; ``stop_at``: SIGTERM arrives during that (1-based) global
    step; ``bad_steps``: global steps (0-based) whose loss is NaN; ``val_accs``: the validation
    accuracy of each evaluation (no validation split when None)."""
    h = SimpleNamespace(clock=Clock(), loader=Loader(sizes), dist=Dist(world, rank), methods=Methods(methods_state),
                        diags=Diags(), progress=Progress(), tb=Board(), steps=[], evals=[], autocast=nullcontext())
    monkeypatch.setattr(engine, "time", h.clock)
    model = torch.nn.Linear(2, CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    stop = StopSignals()
    val_iter = iter(val_accs or ())
    has_val = val_accs is not None
    dataset = SimpleNamespace(train_x=torch.zeros(1, 2), test_x=torch.zeros(5, 2), test_y=torch.zeros(5),
                              val_x=torch.zeros(3, 2) if has_val else None, val_y=torch.zeros(3) if has_val else None)

    def make_step(observer):
        def step(x, y, n_global, step):
            h.steps.append((step, len(y), n_global))
            opt.zero_grad()
            value = float("nan") if step in bad_steps else loss(step)
            total = model(x).sum() * 0 + value
            total.backward()
            observer(step)
            opt.step()
            sched.step()
            h.clock.now += 1.0
            if stop_at is not None and step + 1 == stop_at:
                stop.requested = signal.SIGTERM
            return total.detach(), F.one_hot(x[:, 0].long(), CLASSES).float()
        return step

    def evaluate(model_, x, y, autocast=None):
        split = "test" if x is dataset.test_x and y is dataset.test_y else "val" if x is dataset.val_x else "?"
        h.evals.append((split, model_ is model and (y is dataset.val_y if split == "val" else True), autocast))
        return (0.5, 0.25) if split == "test" else (0.75, next(val_iter))

    cfg = SimpleNamespace(run_dir=run_dir, train=SimpleNamespace(
        epochs=epochs, check_every=check_every, eval_every=eval_every, keep_best=keep_best, keep_last=keep_last))
    h.training = Training(cfg=cfg, model=model, make_step=make_step, opt=opt, sched=sched, loader=h.loader,
                          dataset=dataset, methods=h.methods, diags=h.diags, progress=h.progress, tb=h.tb,
                          autocast=lambda: h.autocast, dist=h.dist, stop=stop,
                          summary={"run_dir": str(run_dir), "status": "running", "epoch": 0}, evaluate=evaluate)
    h.ckpts = run_dir / "checkpoints"
    if rank == 0:
        h.ckpts.mkdir(parents=True, exist_ok=True)  # loop.train makes it on rank 0
    h.model, h.opt, h.stop = model, opt, stop
    return h


def fresh_run(h) -> dict:
    """As ``trainer.train`` starts a new run: the checkpoint of epoch 0, then the loop."""
    h.training.save(0)
    return h.training.run(0, 0)


def resumed_run(h) -> dict:
    """As ``trainer.train`` resumes: restore the latest checkpoint, go on from its position."""
    start = h.training.restore(load_checkpoint(latest_checkpoint(h.ckpts)))
    return h.training.run(*start)


def rows(h) -> list:
    return fileio.read_jsonl(h.training.cfg.run_dir / "metrics.jsonl")


def names(h) -> list:
    return [p.name for p in list_checkpoints(h.ckpts)]
