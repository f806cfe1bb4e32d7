"""Keeping a run safe: one writer per run directory, and a clean stop on SIGINT / SIGTERM.

``RunLock`` holds an exclusive ``flock`` on ``<out_dir>/.<run_id>.lock`` while a process trains
the run; a second process is refused with the holder's pid. The kernel drops the lock when the
holder dies, however it dies (SIGKILL included), so a crashed run is never locked out.

``StopSignals`` turns the first SIGINT or SIGTERM into a request the training loop honours after
the current step (it saves a checkpoint of that exact position and returns); a second SIGINT
interrupts at once (KeyboardInterrupt).
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Optional

from depthlab.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, the run is unguarded
    fcntl = None


class RunLock:
    def __init__(self, run_dir: Path):
        run_dir = Path(run_dir)
        self.path = run_dir.parent / f".{run_dir.name}.lock"
        self.run_dir = run_dir
        self._fd: Optional[int] = None
        self.holder: Optional[str] = None  # the pid of the process holding it, after a failed try

    def try_acquire(self) -> bool:
        """Take the lock if no other process holds it; False (and ``holder`` set to its pid) if one does."""
        self.holder = None
        if fcntl is None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def acquire(self) -> "RunLock":
        if not self.try_acquire():
            raise ConfigError(f"run directory {str(self.run_dir)!r} is in use by another process (pid "
                              f"{self.holder}); wait for it to finish or stop it, or choose another run_id")
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                self.path.unlink(missing_ok=True)
            finally:
                os.close(self._fd)  # closing drops the flock
                self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class StopSignals:
    """``with StopSignals() as stop: ... if stop.requested: save and return``."""

    SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s)

    def __init__(self):
        self.requested: Optional[int] = None  # the signal number once one arrived
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.requested = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.requested).name if self.requested else ""

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():  # handlers only work there
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
