"""The epoch loop of ``depthlab.training``: steps without host syncs, a check for a non-finite loss
every ``train.check_every`` steps, per-epoch metrics, evaluation and atomic checkpoints, a clean
stop on SIGINT/SIGTERM (a checkpoint of the exact position), divergence diagnosis, and rank-0-only
writing in data-parallel runs. ``trainer.train`` sets up a ``Training`` and calls ``run``."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

import depthlab.fileio as fileio
import depthlab.training.checkpoint as ckpt
from depthlab.training.divergence import find_divergence
from depthlab.training.method_hooks import fill_momentum_buffers

log = logging.getLogger("depthlab")


class NoDiagnostics:
    """Ranks other than 0 run no diagnostics (rank 0 writes them)."""

    def run(self, epoch): pass
    def after_step(self, step): pass
    def end_epoch(self, epoch): pass
    def state(self): return None
    def load_state(self, state): pass
    def close(self): pass


@dataclass
class Training:
    cfg: Any
    model: Any            # the module (unwrapped): state dicts, diagnostics, evaluation
    make_step: Any        # observer -> step(x, y, n_global, step)
    opt: Any
    sched: Any
    loader: Any
    dataset: Any
    methods: Any
    diags: Any
    progress: Any
    tb: Any
    autocast: Any
    dist: Any
    stop: Any             # StopSignals
    summary: dict
    best_val: float = -1.0
    elapsed: float = 0.0
    evaluate: Any = None  # loop.evaluate
    partial: Optional[dict] = field(default=None)

    # --------------------------------------------------------------------------- state
    def state(self, epoch: int, step: int = 0, partial: Optional[dict] = None) -> dict:
        s = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
             "scheduler": self.sched.state_dict(), "rng": ckpt.rng_state(), "epoch": epoch, "step": step,
             "best_val": self.best_val, "elapsed": self.elapsed}
        methods = self.methods.state_dict()
        if methods:
            s["methods"] = methods
        if partial is not None:
            s["partial"] = partial
            s["diagnostics"] = self.diags.state()
        return s

    def restore(self, state: dict) -> tuple:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        fill_momentum_buffers(self.opt)  # a checkpoint taken before a parameter's first gradient
        self.sched.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.best_val, self.elapsed = state.get("best_val", -1.0), state.get("elapsed", 0.0)
        self.partial = state.get("partial")
        self.methods.load_state_dict(state.get("methods", {}))
        if state.get("diagnostics") is not None:
            self.diags.load_state(state["diagnostics"])
        return int(state["epoch"]), int(state.get("step", 0))

    def save(self, epoch: int, step: int = 0, partial: Optional[dict] = None) -> None:
        if self.dist.is_main:
            ckpt.save_checkpoint(self.cfg.run_dir / "checkpoints", epoch, self.state(epoch, step, partial),
                                 keep_last=self.cfg.train.keep_last, **({"step": step} if step else {}))
        self.dist.barrier()

    def write_row(self, row: dict, show: bool = True) -> None:
        if self.dist.is_main:
            fileio.append_jsonl(self.cfg.run_dir / "metrics.jsonl", [row])
            self.tb.epoch(row)
        if show:
            self.progress.epoch_done(row)

    # --------------------------------------------------------------------------- loop
    def run(self, start_epoch: int, start_step: int) -> dict:
        t, device, dist = self.cfg.train, self.dataset.train_x.device, self.dist
        spe = len(self.loader)
        step = self.make_step(self.diags.after_step)
        for epoch in range(start_epoch, t.epochs):
            first = start_step if epoch == start_epoch else 0
            p = self.partial if (epoch == start_epoch and self.partial is not None and first) else None
            loss_sum = p["loss_sum"].to(device) if p else torch.zeros((), device=device)
            correct = p["correct"].to(device) if p else torch.zeros((), device=device, dtype=torch.long)
            seen, before = (int(p["seen"]), float(p["seconds"])) if p else (0, 0.0)
            lr_now = float(p["lr"]) if p else self.opt.param_groups[0]["lr"]
            bad = torch.zeros((), device=device, dtype=torch.bool)
            t0 = time.perf_counter()
            self.methods.start_epoch(epoch)
            done = first
            for xb, yb in self.loader.batches(epoch, start=first):
                xb, yb, n = dist.shard(xb, yb)
                loss, out = step(xb, yb, n_global=n, step=epoch * spe + done)
                loss_sum += loss * len(yb)
                correct += (out.argmax(1) == yb).sum()
                seen += len(yb)
                bad |= ~torch.isfinite(loss)
                done += 1
                self.progress.advance()
                if done % t.check_every == 0 or done == spe:
                    flags = torch.stack([bad.long(), torch.tensor(int(self.stop.requested is not None),
                                                                  device=device)])
                    bad_now, stop_now = dist.all_reduce(flags, op="max").tolist()  # one sync
                    if bad_now:
                        return self._diverged(epoch, done, spe, self._epoch_row(
                            epoch, done, lr_now, loss_sum, correct, seen, before, time.perf_counter() - t0))
                elif not dist.active:
                    stop_now = self.stop.requested is not None  # one process: honour it at once
                else:
                    stop_now = False
                if stop_now and done < spe:
                    partial = {"loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu(), "seen": seen,
                               "seconds": before + time.perf_counter() - t0, "lr": lr_now}
                    self.elapsed += time.perf_counter() - t0
                    self.save(epoch, done, partial)
                    return self._interrupted(epoch, done, spe)
            row = self._epoch_row(epoch, spe, lr_now, loss_sum, correct, seen, before, time.perf_counter() - t0)
            if not math.isfinite(row["train_loss"]):
                return self._diverged(epoch, spe, spe, row)
            if dist.is_main and ((epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs):
                d = self.dataset
                row["test_loss"], row["test_acc"] = self.evaluate(self.model, d.test_x, d.test_y,
                                                                  autocast=self.autocast())
                if d.val_x is not None:
                    row["val_loss"], row["val_acc"] = self.evaluate(self.model, d.val_x, d.val_y,
                                                                    autocast=self.autocast())
            self.write_row(row)
            if dist.is_main and t.keep_best and row.get("val_acc", -1.0) > self.best_val:
                self.best_val = row["val_acc"]
                ckpt.write_checkpoint(self.cfg.run_dir / "checkpoints" / "best.pt", self.state(epoch + 1))
            self.save(epoch + 1)
            self.diags.end_epoch(epoch + 1)
            self.diags.run(epoch + 1)  # after the checkpoint: a diagnostic's cost never risks the epoch's work
            self.summary.update(row)
            if self.stop.requested is not None and epoch + 1 < t.epochs:
                return self._interrupted(epoch + 1, 0, spe)
        self.summary["status"] = "finished"
        return self.summary

    def _epoch_row(self, epoch, done, lr, loss_sum, correct, seen, before, now) -> dict:
        """The metrics row of ``done`` steps of ``epoch`` (summed over ranks; one sync). ``before``:
        seconds of this epoch spent by an interrupted process; ``now``: by this one."""
        totals = self.dist.all_reduce(torch.stack([loss_sum.double(), correct.double(),
                                                   torch.tensor(float(seen), device=loss_sum.device,
                                                                dtype=torch.double)]))
        total_loss, total_correct, total_seen = totals.tolist()
        self.elapsed += now
        n = max(total_seen, 1.0)
        return {"kind": "epoch", "epoch": epoch + 1, "step": epoch * len(self.loader) + done, "lr": lr,
                "train_loss": total_loss / n, "train_acc": total_correct / n, "seconds": before + now,
                "elapsed": self.elapsed}

    # --------------------------------------------------------------------------- endings
    def _interrupted(self, epoch: int, step: int, spe: int) -> dict:
        where = f"in epoch {epoch + 1} at step {step} of {spe}" if step else f"at the end of epoch {epoch}"
        self.progress.log(f"{self.stop.name}: stopped {where} ({epoch} epoch{'s' if epoch != 1 else ''} completed: "
                          f"the summary's epoch); checkpoint saved, continue with resume=True (CLI: --resume)")
        self.summary.update(status="interrupted", signal=self.stop.name, epoch=epoch, step=epoch * spe + step)
        return self.summary

    def _diverged(self, epoch: int, done: int, spe: int, row: dict) -> dict:
        cfg = self.cfg

        def restore():  # the newest good checkpoint (every rank picks the same one from the same files)
            pick = ckpt.newest_good_checkpoint(cfg.run_dir / "checkpoints", map_location=self.dataset.train_x.device)
            if pick.passed and self.dist.is_main:
                log.warning(ckpt.fallback_message(pick, "replaying from",
                                                  f"the replay starts {ckpt.steps_between(pick, spe)} earlier"))
            return self.restore(pick.state)

        diagnosis = find_divergence(self.model, self.make_step, restore, self.loader, spe,
                                    end_step=epoch * spe + done, shard=self.dist.shard)
        # the epoch's metrics so far (as trained, before the replay), then where it broke
        row.update(status="diverged", diagnosis=diagnosis)
        self.write_row(row, show=False)
        self.progress.log(diagnosis["message"])
        self.summary.update(row, status="diverged")
        return self.summary
