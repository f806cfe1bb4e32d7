"""A progress bar for long data work (decoding an image folder): rich on stderr when it is a terminal,
nothing otherwise or inside ``quiet()`` (``load_dataset(..., quiet=True)``)."""
from __future__ import annotations

import contextlib
import sys

_quiet = [False]


@contextlib.contextmanager
def quiet(flag: bool = True):
    """No progress bars while inside (when ``flag``)."""
    before = _quiet[0]
    _quiet[0] = before or bool(flag)
    try:
        yield
    finally:
        _quiet[0] = before


@contextlib.contextmanager
def bar(total: int, description: str):
    """Yields ``advance(n=1)``; a rich bar on a terminal, a no-op elsewhere."""
    stream = sys.stderr
    if _quiet[0] or total <= 0 or not getattr(stream, "isatty", lambda: False)():
        yield lambda n=1: None
        return
    from rich import progress as rp
    from rich.console import Console

    with rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
                     rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), console=Console(file=stream),
                     transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
