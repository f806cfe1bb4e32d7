"""TensorBoard mirror of a run's logs: the per-epoch metrics of ``metrics.jsonl`` and the scalar
records of ``diagnostics.jsonl`` also go to event files in ``<run_dir>/tensorboard``, when the
``tensorboard`` package is installed (the ``tensorboard`` extra); otherwise this is a no-op.

The jsonl files stay the record of the run; the event files are for watching it live
(``tensorboard --logdir runs``). Tags: ``metrics/<key>`` and ``<quantity>/<name>[/<layer>]``; the
x-axis is the optimiser step (the ``step`` field of both files).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Iterable, Optional

# metrics.jsonl keys mirrored, in this order (val_* only exist when the run holds out a split)
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc", "lr", "seconds")


def available() -> bool:
    """Is the ``tensorboard`` package importable (``torch.utils.tensorboard`` needs it)?"""
    return importlib.util.find_spec("tensorboard") is not None


def diagnostic_tag(record: dict) -> str:
    """``quantity/name/layer`` (``quantity/name`` for model-wide records)."""
    parts = (record["quantity"], record["name"], record.get("layer"))
    return "/".join(str(p) for p in parts if p is not None)


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class TensorBoardLog:
    """Writes to ``log_dir``; the writer opens on the first value, so a run that writes nothing (or
    a machine without tensorboard) leaves no file.

    ``purge_step``: the first step this process logs afresh (on resume, the first one the checkpoint
    does not cover). TensorBoard hides the events an earlier process wrote at or after it, as
    ``metrics.jsonl`` is truncated there; each process appends its own event file."""

    def __init__(self, log_dir, purge_step: Optional[int] = None):
        self.log_dir, self.purge_step = Path(log_dir), purge_step
        self.enabled = available()
        self._writer = None

    def _get(self):
        """The writer, opened on first use; None (and the log off) when it cannot be imported."""
        if self._writer is None and self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # e.g. a tensorboard too old or too new for this torch
                self.enabled = False
                print(f"note: no TensorBoard logging ({e})", file=sys.stderr)
                return None
            self._writer = SummaryWriter(str(self.log_dir), purge_step=self.purge_step)
        return self._writer

    def epoch(self, row: dict) -> None:
        """One ``metrics.jsonl`` epoch row; flushed, so a live TensorBoard sees it at once."""
        w = self._get()
        if w is None:
            return
        for key in METRICS:
            if _is_scalar(row.get(key)):
                w.add_scalar(f"metrics/{key}", row[key], global_step=row["step"])
        w.flush()

    def diagnostics(self, rows: Iterable[dict]) -> None:
        """Records with a single number as value (per-layer lists and matrices stay in the jsonl)."""
        scalars = [r for r in rows if _is_scalar(r.get("value"))]
        w = self._get() if scalars else None
        if w is None:
            return
        for r in scalars:
            w.add_scalar(diagnostic_tag(r), r["value"], global_step=r["step"])

    def series(self, tag: str, values: Iterable[float], first_step: int) -> None:
        """One scalar per step: ``values[i]`` at step ``first_step + i`` (per-step gradient norms)."""
        w = self._get()
        if w is None:
            return
        for i, v in enumerate(values):
            w.add_scalar(tag, v, global_step=first_step + i)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
