"""The epoch loop (``depthlab.training.engine.Training``) and checkpoint files
(``depthlab.training.checkpoint``), checked against numbers computed independently here.

The loop runs with scripted stand-ins: a step whose loss, predictions and duration (one second of a
fake clock per step) are known in advance, a loader of fixed batches (a short last one), and a
data-parallel stand-in. That gives exact expectations for every metrics row (sample-weighted means,
the global step, the learning rate the epoch began with, seconds and elapsed time), for when
evaluation runs and ``best.pt`` is written, for a stop on a signal (mid-epoch: the exact position
and partial sums, which a resume turns into the rows of an uninterrupted run; at an epoch's end;
agreed at the next check in a multi-process run), for a divergence (noticed at the next check,
diagnosed at the first bad step, replayed from the latest checkpoint, an overflowing epoch sum
included), and for what rank 0 alone writes. Checkpoint files: their names, position order, pruning
to the last K, and refusal of unreadable files."""
import os
import signal
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import depthlab.fileio as fileio
import depthlab.training.engine as engine
from depthlab.training.checkpoint import (
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from depthlab.training.engine import Training
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
    """As ``loop.train`` starts a new run: the checkpoint of epoch 0, then the loop."""
    h.training.save(0)
    return h.training.run(0, 0)


def resumed_run(h) -> dict:
    """As ``loop.train`` resumes: restore the latest checkpoint, go on from its position."""
    start = h.training.restore(load_checkpoint(latest_checkpoint(h.ckpts)))
    return h.training.run(*start)


def rows(h) -> list:
    return fileio.read_jsonl(h.training.cfg.run_dir / "metrics.jsonl")


def names(h) -> list:
    return [p.name for p in list_checkpoints(h.ckpts)]


# ----------------------------------------------------------------------------------- metrics rows
def test_epoch_rows_are_sample_weighted_means_with_global_step_starting_lr_and_time(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2)
    summary = fresh_run(h)
    assert summary["status"] == "finished"
    got = rows(h)
    want = [expected_row(0), expected_row(1)]
    for row, exp in zip(got, want):
        assert {k: row[k] for k in exp} == exp
    assert len(got) == 2
    assert [r["epoch"] for r in h.progress.rows] == [1, 2] and h.progress.rows == h.tb.rows
    assert {k: summary[k] for k in want[1]} == want[1]  # the summary carries the last row


def test_each_step_runs_once_in_order_with_its_global_index_and_batch_size(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2)
    fresh_run(h)
    assert h.steps == [(g, n, n) for g, n in enumerate(SIZES * 2)]
    assert h.loader.calls == [(0, 0), (1, 0)]
    assert h.progress.advanced == 6
    assert h.diags.steps == list(range(6))  # the step's observer is the diagnostics' gradient tracker
    assert h.methods.epochs == [0, 1]
    assert h.diags.ended == [1, 2] and h.diags.ran == [1, 2]


def test_end_of_epoch_checkpoints_hold_position_elapsed_time_and_no_partial_state(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, methods_state={"survival": torch.tensor(0.5)})
    fresh_run(h)
    assert names(h) == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0002.pt"]
    for e in (1, 2):
        state = load_checkpoint(h.ckpts / checkpoint_name(e))
        assert (state["epoch"], state["step"], state["elapsed"]) == (e, 0, 3.0 * e)
        assert "partial" not in state and "diagnostics" not in state
        assert torch.equal(state["methods"]["survival"], torch.tensor(0.5))
    assert h.dist.barriers == 3  # every rank waits for each checkpoint


def test_the_model_is_evaluated_every_eval_every_epochs_and_after_the_last_under_the_runs_autocast(
        tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=7, eval_every=3, val_accs=[0.1, 0.2, 0.3])
    fresh_run(h)
    assert [r["epoch"] for r in rows(h) if "test_acc" in r] == [3, 6, 7]
    assert [r["epoch"] for r in rows(h) if "val_acc" in r] == [3, 6, 7]
    assert [(r["test_loss"], r["test_acc"], r["val_loss"], r["val_acc"]) for r in rows(h) if "val_acc" in r] == [
        (0.5, 0.25, 0.75, 0.1), (0.5, 0.25, 0.75, 0.2), (0.5, 0.25, 0.75, 0.3)]
    # each split's inputs with its own labels, the run's model, the run's autocast
    assert h.evals == [(split, True, h.autocast) for _ in range(3) for split in ("test", "val")]


def test_without_a_validation_split_rows_have_test_metrics_only_and_no_best_checkpoint(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, keep_best=True)
    fresh_run(h)
    assert [sorted(k for k in r if k.startswith(("test", "val"))) for r in rows(h)] == [["test_acc", "test_loss"]] * 2
    assert not (h.ckpts / "best.pt").exists()


def test_a_one_sample_epoch_reports_that_samples_loss_and_accuracy(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=1, sizes=(1,))
    fresh_run(h)
    (row,) = rows(h)
    assert (row["train_loss"], row["train_acc"], row["step"]) == (loss_at(0), 1.0, 1)


def test_sample_counts_beyond_float32_precision_stay_exact(tmp_path, monkeypatch):
    # a resumed epoch of 2**24 + 5 samples in all: float32 would round the count (odd above 2**24) to even
    seen = 2**24 + 2
    source = harness(tmp_path / "run", monkeypatch, epochs=1)
    partial = {"loss_sum": torch.tensor(0.0), "correct": torch.tensor(seen), "seen": seen, "seconds": 2.0,
               "lr": LR}
    save_checkpoint(source.ckpts, 0, source.training.state(0, 2, partial), keep_last=5, step=2)
    h = harness(tmp_path / "run", monkeypatch, epochs=1)
    resumed_run(h)
    (row,) = rows(h)
    loss, correct, n = batch_numbers(0, 2, SIZES[2], 2)
    assert row["train_acc"] == (seen + correct) / (seen + n) and row["train_loss"] == loss / (seen + n)
    assert (row["seconds"], row["step"]) == (3.0, 3)


# ----------------------------------------------------------------------------------- best.pt
def test_best_checkpoint_is_written_only_when_val_acc_improves(tmp_path, monkeypatch):
    # the first evaluation counts as an improvement even at accuracy 0; a tie is not one
    h = harness(tmp_path / "run", monkeypatch, epochs=4, keep_best=True, val_accs=[0.0, 0.7, 0.7, 0.6])
    fresh_run(h)
    best = load_checkpoint(h.ckpts / "best.pt")
    assert (best["epoch"], best["step"], best["best_val"]) == (2, 0, 0.7)
    assert [load_checkpoint(h.ckpts / checkpoint_name(e))["best_val"] for e in range(5)] == [-1.0, 0.0, 0.7, 0.7, 0.7]


def test_best_checkpoint_skips_epochs_without_evaluation_and_runs_without_keep_best(tmp_path, monkeypatch):
    h = harness(tmp_path / "a", monkeypatch, epochs=3, eval_every=2, keep_best=True, val_accs=[0.4, 0.3])
    fresh_run(h)
    assert load_checkpoint(h.ckpts / "best.pt")["epoch"] == 2
    h = harness(tmp_path / "b", monkeypatch, epochs=2, keep_best=False, val_accs=[0.4, 0.5])
    fresh_run(h)
    assert not (h.ckpts / "best.pt").exists()
    assert load_checkpoint(h.ckpts / "epoch_0002.pt")["best_val"] == -1.0


# ----------------------------------------------------------------------------------- stops
def test_stop_mid_epoch_saves_the_exact_position_and_partial_sums(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=3, stop_at=5)  # epoch 2, its second step
    summary = h.training.run(0, 0)
    assert {k: summary[k] for k in ("status", "signal", "epoch", "step")} == {
        "status": "interrupted", "signal": "SIGTERM", "epoch": 1, "step": 5}
    assert h.progress.logs == ["SIGTERM: stopped at epoch 2, step 2 of 3; checkpoint saved, continue with "
                               "resume=True (CLI: --resume)"]
    assert names(h) == ["epoch_0001.pt", "epoch_0001_step_000002.pt"]
    assert [r["epoch"] for r in rows(h)] == [1]  # the partial epoch wrote no row
    state = load_checkpoint(h.ckpts / "epoch_0001_step_000002.pt")
    assert (state["epoch"], state["step"], state["elapsed"]) == (1, 2, 5.0)
    parts = [batch_numbers(1, i, SIZES[i], 3 + i) for i in range(2)]
    p = state["partial"]
    assert float(p["loss_sum"]) == pytest.approx(sum(q[0] for q in parts))
    assert int(p["correct"]) == sum(q[1] for q in parts) and p["seen"] == sum(q[2] for q in parts)
    assert (p["seconds"], p["lr"]) == (2.0, pytest.approx(lr_at(3)))
    assert int(state["diagnostics"]["steps_seen"]) == 5


def test_resume_from_a_mid_epoch_stop_gives_the_rows_of_an_uninterrupted_run(tmp_path, monkeypatch):
    stopped = harness(tmp_path / "run", monkeypatch, epochs=3, stop_at=5,
                      methods_state={"survival": torch.tensor(0.25)})
    fresh_run(stopped)
    again = harness(tmp_path / "run", monkeypatch, epochs=3)
    summary = resumed_run(again)
    assert summary["status"] == "finished"
    assert again.loader.calls == [(1, 2), (2, 0)]
    assert [s[0] for s in again.steps] == [5, 6, 7, 8]
    got = rows(again)
    assert [r["epoch"] for r in got] == [1, 2, 3]
    for row, exp in zip(got, [expected_row(e) for e in range(3)]):
        assert {k: row[k] for k in exp} == exp
    assert [int(s["steps_seen"]) for s in again.diags.loaded] == [5]  # the diagnostics' state comes back
    assert torch.equal(again.methods.loaded[0]["survival"], torch.tensor(0.25))


def test_stop_during_an_epochs_last_step_saves_that_epoch_and_names_its_end(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=3, stop_at=6)
    summary = fresh_run(h)
    assert {k: summary[k] for k in ("status", "signal", "epoch", "step")} == {
        "status": "interrupted", "signal": "SIGTERM", "epoch": 2, "step": 6}
    assert h.progress.logs == ["SIGTERM: stopped at the end of epoch 2; checkpoint saved, continue with "
                               "resume=True (CLI: --resume)"]
    assert names(h)[-1] == "epoch_0002.pt" and [r["epoch"] for r in rows(h)] == [1, 2]
    again = harness(tmp_path / "run", monkeypatch, epochs=3)
    assert resumed_run(again)["status"] == "finished"
    assert again.loader.calls == [(2, 0)]
    exp = expected_row(2)
    assert {k: rows(again)[-1][k] for k in exp} == exp


def test_stop_during_the_last_epochs_last_step_finishes_the_run(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, stop_at=6)
    assert fresh_run(h)["status"] == "finished"
    assert names(h)[-1] == "epoch_0002.pt" and h.progress.logs == []


@pytest.mark.parametrize("world, stopped_at", [(1, 1), (2, 2)])
def test_one_process_stops_at_once_many_agree_at_the_next_check(tmp_path, monkeypatch, world, stopped_at):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, check_every=2, world=world, stop_at=1)
    summary = h.training.run(0, 0)
    assert (summary["status"], summary["step"]) == ("interrupted", stopped_at)
    assert names(h) == [checkpoint_name(0, stopped_at)]
    assert len(h.steps) == stopped_at


def test_a_multi_process_run_without_a_stop_finishes_with_global_means(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, check_every=2, world=2)
    assert fresh_run(h)["status"] == "finished"
    assert [n for _, _, n in h.steps] == [2 * n for n in SIZES * 2]
    for row, exp in zip(rows(h), [expected_row(0), expected_row(1)]):
        assert {k: row[k] for k in exp} == exp


def test_ranks_other_than_0_write_nothing_but_wait_at_every_checkpoint(tmp_path, monkeypatch):
    h = harness(tmp_path / "run", monkeypatch, epochs=2, world=2, rank=1, keep_best=True, val_accs=[0.5, 0.6])
    assert fresh_run(h)["status"] == "finished"
    assert not (tmp_path / "run").exists() and h.tb.rows == [] and h.evals == []
    assert h.dist.barriers == 3
    assert [r["epoch"] for r in h.progress.rows] == [1, 2]


# ----------------------------------------------------------------------------------- divergence
@pytest.mark.parametrize("check_every, bad, noticed, first_bad", [(1, 4, 5, 5), (2, 3, 5, 4), (5, 4, 6, 5)])
def test_divergence_is_noticed_at_the_next_check_and_diagnosed_at_the_first_bad_step(
        tmp_path, monkeypatch, check_every, bad, noticed, first_bad):
    h = harness(tmp_path / "run", monkeypatch, epochs=3, check_every=check_every, bad_steps={bad})
    summary = fresh_run(h)
    assert summary["status"] == "diverged"
    d = summary["diagnosis"]
    assert (d["step"], d["epoch"], d["replayed_from"]) == (first_bad, 2, 3)  # from the checkpoint of epoch 1
    assert h.progress.logs == [d["message"]] and d["message"].startswith(f"diverged at step {first_bad} (epoch 2)")
    last = rows(h)[-1]
    assert (last["status"], last["epoch"], last["step"], last["train_loss"]) == ("diverged", 2, noticed, None)
    assert last["lr"] == pytest.approx(lr_at(3))  # the rate the epoch began with
    assert last["diagnosis"]["step"] == first_bad
    assert (summary["epoch"], summary["step"]) == (2, noticed)
    done = noticed - 3
    assert last["train_acc"] == expected_row(1, done)["train_acc"] and last["seconds"] == float(done)
    assert [r["epoch"] for r in h.progress.rows] == [1]  # the diverged row is written, not shown as an epoch
    assert names(h) == ["epoch_0000.pt", "epoch_0001.pt"]  # the last good checkpoint is kept


def test_an_epoch_whose_summed_loss_overflows_ends_the_run_as_diverged(tmp_path, monkeypatch):
    # every loss is finite, but 3e38 times a batch of 4 overflows float32: the epoch's mean is inf
    h = harness(tmp_path / "run", monkeypatch, epochs=2, loss=lambda g: 3e38)
    summary = fresh_run(h)
    assert summary["status"] == "diverged" and summary["step"] == 3 and summary["train_loss"] == float("inf")
    assert summary["diagnosis"]["step"] is None and summary["diagnosis"]["replayed_from"] == 0
    assert "replaying steps 1..3 from the last checkpoint" in h.progress.logs[0]
    assert names(h) == ["epoch_0000.pt"] and [r["status"] for r in rows(h)] == ["diverged"]


# ----------------------------------------------------------------------------------- restore
def test_restoring_an_old_checkpoint_without_optional_fields_gives_a_fresh_runs_values(tmp_path, monkeypatch):
    source = harness(tmp_path / "a", monkeypatch)
    state = source.training.state(2)
    minimal = {k: state[k] for k in ("model", "optimizer", "scheduler", "rng", "epoch")}
    h = harness(tmp_path / "b", monkeypatch)
    h.training.best_val, h.training.elapsed, h.training.partial = 0.9, 7.0, {"seen": 1}
    assert h.training.restore(minimal) == (2, 0)
    fresh = harness(tmp_path / "c", monkeypatch).training
    assert (h.training.best_val, h.training.elapsed, h.training.partial) == (fresh.best_val, fresh.elapsed, None)
    assert h.methods.loaded == [{}] and h.diags.loaded == []


def test_restore_round_trips_position_best_and_time_and_fills_momentum_buffers(tmp_path, monkeypatch):
    # a checkpoint taken before the first step has no momentum buffers; fused SGD needs all or none
    source = harness(tmp_path / "a", monkeypatch)
    source.training.best_val, source.training.elapsed = 0.625, 12.5
    state = source.training.state(3, 7)
    assert all("momentum_buffer" not in source.opt.state[p] for p in source.model.parameters())
    h = harness(tmp_path / "b", monkeypatch)
    assert h.training.restore(state) == (3, 7)
    assert (h.training.best_val, h.training.elapsed) == (0.625, 12.5)
    for p in h.model.parameters():
        assert torch.equal(h.opt.state[p]["momentum_buffer"], torch.zeros_like(p))


# ----------------------------------------------------------------------------------- checkpoint files
def test_checkpoint_names_follow_the_documented_pattern():
    assert checkpoint_name(3) == "epoch_0003.pt"
    assert checkpoint_name(3, 12) == "epoch_0003_step_000012.pt"
    assert checkpoint_name(12345, 1) == "epoch_12345_step_000001.pt"


def test_checkpoints_are_listed_in_position_order_and_other_files_ignored(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == [] and latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    positions = [(9999, 0), (3, 12), (3, 0), (10000, 0), (2, 1000000), (3, 2)]
    for e, s in positions:
        (tmp_path / checkpoint_name(e, s)).write_bytes(b"")
    for other in ("best.pt", "epoch_001.pt", ".epoch_0005.pt.x1y2.tmp", "epoch_0007.pt.tmp", "notes.txt"):
        (tmp_path / other).write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(e, s) for e, s in sorted(positions)]
    assert latest_checkpoint(tmp_path).name == "epoch_10000.pt"


def test_saving_keeps_only_the_newest_keep_last_positions(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    written = [save_checkpoint(ckpt_dir, e, {"epoch": torch.tensor(e)}, keep_last=2, **({"step": s} if s else {}))
               for e, s in [(0, 0), (1, 0), (1, 5), (2, 0)]]
    assert [p.name for p in written] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0001_step_000005.pt",
                                         "epoch_0002.pt"]
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_0001_step_000005.pt", "epoch_0002.pt"]
    assert int(load_checkpoint(written[-1])["epoch"]) == 2
    save_checkpoint(ckpt_dir, 3, {}, keep_last=1)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_0003.pt"]


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unreadable_checkpoints_are_refused_naming_the_file_and_the_first_reason(tmp_path):
    missing = tmp_path / "epoch_0001.pt"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(missing)
    empty = tmp_path / "epoch_0002.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(empty)
    assert str(err.value) == (f"checkpoint {str(empty)!r} is unreadable (truncated or not a torch file): EOFError")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert load_checkpoint(good)["w"].device == torch.device("cpu")
    cut = tmp_path / "epoch_0003.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RuntimeError) as torch_err:
        torch.load(cut, weights_only=True)
    assert ". " in str(torch_err.value)  # torch's reason runs to several sentences
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cut)
    assert str(err.value) == (f"checkpoint {str(cut)!r} is unreadable (truncated or not a torch file): "
                              f"{str(torch_err.value).split('. ')[0]}")  # its first sentence only
    garbage = tmp_path / "epoch_0005.pt"
    garbage.write_bytes(b"not a checkpoint. at all\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(garbage)
    assert str(err.value).startswith(f"checkpoint {str(garbage)!r} is unreadable (truncated or not a torch file): ")
    evil = tmp_path / "epoch_0004.pt"
    torch.save({"w": _Payload()}, evil)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    assert str(err.value) == (f"refusing checkpoint {str(evil)!r}: it carries a pickled object "
                              f"({os.getcwd.__module__}.getcwd) beyond tensors and plain containers; depthlab never "
                              f"writes one, and loading it could run code")
