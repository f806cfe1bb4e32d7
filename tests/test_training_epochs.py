"""The epoch loop (``depthlab.training.epochs.Training``) checked against numbers computed independently here.

The loop runs with scripted stand-ins (tests/trainkit.py). That gives exact expectations for every metrics row
(sample-weighted means, the global step, the learning rate the epoch began with, seconds and elapsed time), for
when evaluation runs and ``best.pt`` is written, for a stop on a signal (mid-epoch: the exact position and
partial sums, which a resume turns into the rows of an uninterrupted run; at an epoch's end; agreed at the next
check in a multi-process run), for a divergence (noticed at the next check, diagnosed at the first bad step,
replayed from the latest checkpoint, an overflowing epoch sum included), and for what rank 0 alone writes."""

import pytest
import torch
from trainkit import (
    LR,
    SIZES,
    batch_numbers,
    expected_row,
    fresh_run,
    harness,
    loss_at,
    lr_at,
    names,
    resumed_run,
    rows,
)

from depthlab.training.checkpoint import (
    checkpoint_name,
    load_checkpoint,
    save_checkpoint,
)


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
    assert h.progress.logs == ["SIGTERM: stopped in epoch 2 at step 2 of 3 (1 epoch completed: the summary's "
                               "epoch); checkpoint saved, continue with resume=True (CLI: --resume)"]
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
    assert h.progress.logs == ["SIGTERM: stopped at the end of epoch 2 (2 epochs completed: the summary's "
                               "epoch); checkpoint saved, continue with resume=True (CLI: --resume)"]
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
