"""Progress: a rich bar on a terminal, one plain line per epoch otherwise, nothing when quiet."""
from __future__ import annotations

import sys
from pathlib import Path


def _num(v, spec: str) -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def _fmt(row: dict) -> str:
    parts = [f"epoch {row['epoch']:>3}", f"loss {_num(row.get('train_loss'), '.4f')}",
             f"train acc {_num(row.get('train_acc'), '.3f')}"]
    if "test_acc" in row:
        parts.append(f"test acc {_num(row['test_acc'], '.3f')}")
    if "val_acc" in row:
        parts.append(f"val acc {_num(row['val_acc'], '.3f')}")
    parts.append(f"{_num(row.get('seconds'), '.1f')}s")
    if row.get("status") == "diverged":
        parts.append("diverged")
    return "  ".join(parts)


def rich_bar(stream, info: bool = False):
    """A rich progress bar on ``stream``: title, bar, done/total, elapsed, ETA (and an ``info`` field)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()] + ([TextColumn("{task.fields[info]}")] if info else [])
    return RichProgress(*columns, console=Console(file=stream), transient=False)


class Progress:
    def __init__(self, total: int, done: int = 0, quiet: bool = False, title: str = "", stream=None):
        self.total, self.done, self.quiet, self.title = total, done, quiet, title
        self.stream = stream or sys.stderr
        self.rich = None
        if not quiet and self.stream.isatty():
            self.rich = rich_bar(self.stream, info=True)

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


class GridProgress:
    """Epochs of many runs trained elsewhere (worker processes, Ray), read from their metrics.jsonl
    every ``interval`` seconds: a bar over all epochs with an ETA on a terminal; one line per
    finished epoch in a log (``[run] epoch 3/10 ...``); nothing when quiet. Used as a context."""

    def __init__(self, runs, quiet: bool = False, stream=None, interval: float = 1.0, title: str = "epochs",
                 fresh: bool = False):
        import threading

        self.runs = [(str(name), Path(run_dir), int(epochs)) for name, run_dir, epochs in runs]
        self.quiet, self.interval, self.title = quiet, interval, title
        self.stream = stream or sys.stderr
        # epochs already there (a resumed or reused run) are not reported again; fresh: every run restarts
        self.seen = {name: 0 if fresh else self._count(run_dir) for name, run_dir, _ in self.runs}
        self._stop, self._lock = threading.Event(), threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="depthlab-grid-progress")
        self.rich = None

    @staticmethod
    def _rows(run_dir: Path) -> list:
        import json

        path = run_dir / "metrics.jsonl"
        rows = []
        try:
            lines = path.read_text().splitlines() if path.is_file() else []
        except OSError:
            return rows
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:  # a line being written
                continue
            if isinstance(r, dict) and r.get("kind") == "epoch" and isinstance(r.get("epoch"), int):
                rows.append(r)
        return rows

    def _count(self, run_dir: Path) -> int:
        return len({r["epoch"] for r in self._rows(run_dir)})

    def poll(self) -> int:
        """Read every run once; report new epochs; returns the epochs done in all (thread-safe)."""
        with self._lock:
            return self._poll()

    def _poll(self) -> int:
        done = 0
        for name, run_dir, epochs in self.runs:
            rows = {r["epoch"]: r for r in self._rows(run_dir)}
            n = len(rows)
            if n < self.seen[name]:  # the run started over (its old metrics replaced)
                self.seen[name] = 0
            if n > self.seen[name] and self.rich is None and not self.quiet:
                for e in sorted(rows)[self.seen[name]:]:
                    row = rows[e]
                    if {"train_loss", "train_acc", "seconds"} <= set(row):
                        print(f"  [{name}] {_fmt(row).replace(f'epoch {e:>3}', f'epoch {e}/{epochs}', 1)}",
                              file=self.stream, flush=True)
            self.seen[name] = max(self.seen[name], n)
            done += min(n, epochs)
        if self.rich is not None:
            self.rich.update(self.task, completed=done)
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def __enter__(self):
        if self.quiet:
            return self
        if self.stream.isatty():
            self.rich = rich_bar(self.stream)
            self.rich.__enter__()
            self.task = self.rich.add_task(self.title, total=sum(e for _, _, e in self.runs),
                                           completed=sum(min(self.seen[n], e) for n, _, e in self.runs))
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.quiet:
            return
        self._stop.set()
        self._thread.join()
        self.poll()  # the last epochs
        if self.rich is not None:
            self.rich.__exit__(*exc)
