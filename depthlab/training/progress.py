"""Progress: a rich bar on a terminal, one plain line per epoch otherwise, nothing when quiet."""
from __future__ import annotations

import sys


def _fmt(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"loss {row['train_loss']:.4f}", f"train acc {row['train_acc']:.3f}"]
    if "test_acc" in row:
        parts.append(f"test acc {row['test_acc']:.3f}")
    if "val_acc" in row:
        parts.append(f"val acc {row['val_acc']:.3f}")
    parts.append(f"{row['seconds']:.1f}s")
    return "  ".join(parts)


class Progress:
    def __init__(self, total: int, done: int = 0, quiet: bool = False, title: str = "", stream=None):
        self.total, self.done, self.quiet, self.title = total, done, quiet, title
        self.stream = stream or sys.stderr
        self.rich = None
        if not quiet and self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self.rich = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                     console=Console(file=self.stream), transient=False)

    def __enter__(self):
        if self.rich is not None:
            self.rich.__enter__()
            self.task = self.rich.add_task(self.title, total=self.total, completed=self.done, info="")
        elif not self.quiet:
            print(self.title, file=self.stream, flush=True)
        return self

    def __exit__(self, *exc):
        if self.rich is not None:
            self.rich.__exit__(*exc)

    def advance(self, n: int = 1) -> None:
        if self.rich is not None:
            self.rich.advance(self.task, n)

    def epoch_done(self, row: dict) -> None:
        if self.rich is not None:
            self.rich.update(self.task, info=_fmt(row))
        elif not self.quiet:
            print("  " + _fmt(row), file=self.stream, flush=True)

    def log(self, msg: str) -> None:
        if self.rich is not None:
            self.rich.console.print(msg)
        elif not self.quiet:
            print(msg, file=self.stream, flush=True)
