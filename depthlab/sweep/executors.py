"""Where a sweep's runs execute: ``local`` (spawned worker processes on this machine) or ``ray``
(tasks on a local Ray instance or an existing cluster). Both take the same task dicts, call the same
per-run function (``depthlab.sweep.task.run_task``) and report each record through
``on_result(index, record)`` as it finishes, in completion order. At most ``workers`` runs are in
flight at a time; each uses ``threads`` torch CPU threads.

A worker that dies under a run (SIGKILL, the OOM killer, a lost Ray node) affects that run only: it
is retried at once, up to ``RETRIES`` times, and the retry resumes from the run's last checkpoint
(``run_task`` resumes whatever directory already holds the run). A run whose worker dies on every
try is recorded ``failed`` with ``DIED``. Every record carries ``retries``, the retries it took."""
from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait
from typing import Callable, List, Optional

from depthlab.config import ConfigError
from depthlab.sweep.task import THREAD_VARS, error_line, failed_record, init_worker, run_task

OnResult = Callable[[int, dict], None]
STOP_TIMEOUT = 60.0
RETRIES = 1  # retries of a run whose worker died (each one resumes it)
DIED = "worker process died while training this run (killed, or out of memory?)"


def execute(tasks: List[dict], executor: str, workers: int, threads: int, on_result: OnResult,
            ray_address: Optional[str] = None, fn: Callable[[dict], dict] = run_task, quiet: bool = True) -> None:
    if not tasks:
        return
    if executor == "local":
        run_local(tasks, workers, threads, on_result, fn=fn)
    elif executor == "ray":
        run_ray(tasks, workers, threads, on_result, address=ray_address, fn=fn, quiet=quiet)
    else:
        raise ConfigError(f"executor {executor!r} is not valid; use local or ray")


def died_error(retries: int, detail: str = "") -> str:
    """The error of a run whose worker died on its last try, after ``retries`` retries."""
    tries = f"after {retries} retr{'y' if retries == 1 else 'ies'} by resuming" if retries else "not retried"
    return f"{DIED} ({tries}{'; ' + detail if detail else ''})"


class _Retries:
    """Worker deaths per task: retry (True) or give up (False); stamps ``retries`` on records."""

    def __init__(self, tasks: List[dict], on_result: OnResult, limit: int):
        self.tasks, self.on_result, self.limit = tasks, on_result, limit
        self.count = [0] * len(tasks)
        self.reported: set = set()

    def report(self, i: int, rec: dict) -> None:
        rec = dict(rec, retries=self.count[i])
        if self.count[i]:  # the action this invocation planned; the retries resumed it
            rec["action"] = "resumed" if self.tasks[i].get("resume") else "trained"
        self.reported.add(i)
        self.on_result(i, rec)

    def take(self, queue: deque, running: bool) -> Optional[int]:
        return take_ready(queue, self.tasks, self.reported, running)

    def died(self, i: int, detail: str = "") -> bool:
        if self.count[i] < self.limit:
            self.count[i] += 1
            return True
        self.report(i, failed_record(self.tasks[i], died_error(self.count[i], detail)))
        return False


def take_ready(queue: deque, tasks: List[dict], reported: set, running: bool) -> Optional[int]:
    """The first queued task whose ``after`` tasks have all reported (removed from ``queue``); None
    when none is ready. Nothing ready and nothing running: the ``after`` lists cannot be met."""
    for i in queue:
        if all(j in reported for j in tasks[i].get("after", ())):
            queue.remove(i)
            return i
    if queue and not running:
        raise ConfigError(f"tasks {sorted(queue)} wait for tasks that never run (check their 'after' lists)")
    return None


# ----------------------------------------------------------------------------- local

def _serve(conn, threads: int, fn: Callable[[dict], dict]) -> None:
    """A worker process: run ``(index, task)`` messages one at a time until ``None`` or EOF."""
    init_worker(threads)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the sweep process is gone
            return
        if msg is None:
            return
        i, task = msg
        try:
            out = ("done", i, fn(task))
        except BaseException as e:  # noqa: BLE001 - run_task never raises; another fn, or a second Ctrl-C
            out = ("error", i, error_line(e))
        conn.send(out)


@contextmanager
def _thread_env(threads: int):
    """The thread limits in the environment a spawned worker starts with: torch reads them on import,
    which happens while the worker unpickles its function, before any code of ours runs there."""
    old = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, value in old.items():
            if value is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = value


class _Worker:
    """One spawned process, its pipe, and the index of the task it runs (None: idle)."""

    def __init__(self, ctx, threads: int, fn: Callable[[dict], dict]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, threads, fn), name="depthlab-sweep-worker")
        with _thread_env(threads):
            self.proc.start()
        child.close()
        self.index: Optional[int] = None

    def start(self, i: int, task: dict) -> bool:
        """Send it task ``i``; False when the process is gone (the pipe is closed)."""
        try:
            self.conn.send((i, task))
        except OSError:
            return False
        self.index = i
        return True

    def collect(self, ready) -> Optional[tuple]:
        """``("done"|"error", index, payload)``, ``("died", index, exit code)``, or None: still running."""
        if self.conn in ready or self.proc.sentinel in ready:
            i = self.index
            if self.conn.poll():  # a result sent just before the process ended still counts
                try:
                    msg = self.conn.recv()
                    self.index = None
                    return msg
                except (EOFError, OSError):
                    pass
            self.proc.join()
            self.index = None
            return ("died", i, self.proc.exitcode)
        return None

    def close(self, kill: bool) -> None:
        if kill and self.proc.is_alive():
            self.proc.kill()
        elif self.proc.is_alive():
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _watched(pool: List[_Worker]) -> list:
    return [x for w in pool if w.index is not None for x in (w.conn, w.proc.sentinel)]


def run_local(tasks: List[dict], workers: int, threads: int, on_result: OnResult,
              fn: Callable[[dict], dict] = run_task, retries: int = RETRIES) -> None:
    """Up to ``workers`` ``spawn`` processes (fresh interpreters: no inherited torch thread pools or
    CUDA state), each with its own pipe, running one task at a time. The sweep waits on the pipes and
    the process sentinels together, so a process that ends without answering is known to have died
    under exactly the task it was sent; the other workers go on untouched.

    Ctrl-C: the terminal's SIGINT reaches the workers too (idle ones ignore it); see ``_stop``. Then
    KeyboardInterrupt is re-raised."""
    ctx = multiprocessing.get_context("spawn")
    queue, pool = deque(range(len(tasks))), []
    tries = _Retries(tasks, on_result, retries)
    try:
        while queue or any(w.index is not None for w in pool):
            for w in [w for w in pool if w.index is None]:
                i = tries.take(queue, any(w.index is not None for w in pool))
                if i is None:
                    break
                if not w.start(i, tasks[i]):
                    pool.remove(w)  # it died while idle, under no run: the next worker takes the task
                    w.close(kill=True)
                    queue.appendleft(i)
            while queue and len(pool) < workers:
                i = tries.take(queue, any(w.index is not None for w in pool))
                if i is None:
                    break
                pool.append(_Worker(ctx, threads, fn))
                if not pool[-1].start(i, tasks[i]):  # died on start-up: as if under the run
                    pool.pop().close(kill=True)
                    if tries.died(i, "at start-up"):
                        queue.appendleft(i)
            if not _watched(pool):  # the last tasks failed at start-up: nothing runs, nothing is left
                continue
            ready = wait(_watched(pool))
            for w in list(pool):
                msg = w.collect(ready)
                if msg is None:
                    continue
                kind, i, payload = msg
                if kind == "done":
                    tries.report(i, payload)
                elif kind == "error":
                    tries.report(i, failed_record(tasks[i], payload))
                else:
                    pool.remove(w)
                    w.close(kill=True)
                    if tries.died(i, f"exit code {payload}"):
                        queue.appendleft(i)  # next, on the first free worker: it resumes
    except KeyboardInterrupt:
        _stop(pool, tries)
        raise
    finally:
        for w in pool:
            w.close(kill=w.index is not None)


def _stop(pool: List[_Worker], tries: _Retries, timeout: float = STOP_TIMEOUT) -> None:
    """After Ctrl-C: a run in ``train`` stops at its next step with a checkpoint of that position and
    reports ``interrupted``; wait (up to ``timeout`` s) for those records. What is still running then
    is killed by the caller. A second Ctrl-C stops waiting at once (checkpoints are atomic either
    way). A worker that dies now is not retried: its run stays interrupted, resumed next time."""
    deadline = time.monotonic() + timeout
    try:
        while _watched(pool) and time.monotonic() < deadline:
            ready = wait(_watched(pool), timeout=max(0.0, deadline - time.monotonic()))
            for w in pool:
                msg = w.collect(ready)
                if msg is not None and msg[0] == "done":
                    tries.report(msg[1], msg[2])
    except KeyboardInterrupt:
        pass


# ----------------------------------------------------------------------------- ray

def import_ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("executor 'ray' needs the ray extra: pip install 'depthlab[ray]'") from None
    return ray


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast (Ray itself retries for minutes) when nothing listens at ``[ray://]host:port``."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # not host:port; let Ray interpret it
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"ray.address {address!r}: nothing answers there ({e}); start a head node with `ray "
                          f"start --head` (it prints the address) or use address: auto on a cluster node") from None


def run_ray(tasks: List[dict], workers: int, threads: int, on_result: OnResult, address: Optional[str] = None,
            fn: Callable[[dict], dict] = run_task, quiet: bool = True, retries: int = RETRIES) -> None:
    """``ray.init(address)`` (None: start a local instance with ``workers * threads`` CPUs, no
    dashboard), one task per run with ``num_cpus=threads``, at most ``workers`` in flight, records
    gathered with ``ray.wait`` as they finish; a task whose worker or node was lost is retried like a
    local one. An already initialised Ray connection is reused and left open; one this function
    opened is shut down (for a cluster: disconnected, not stopped)."""
    ray = import_ray()
    own = not ray.is_initialized()
    if own:
        kw = {"log_to_driver": False, "logging_level": logging.WARNING if quiet else logging.INFO}
        if address not in (None, "auto", "local"):
            _reachable(address)
        try:
            if address is None:
                # "local": always a fresh instance, never a cluster `ray start` left running here
                ray.init(address="local", num_cpus=workers * threads, include_dashboard=False, **kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            where = "start a local Ray instance" if address is None else f"connect to the Ray cluster at {address!r}"
            hint = ("" if address is None else "; a cluster with token authentication also needs RAY_AUTH_MODE=token "
                    "and its token here (~/.ray/auth_token or RAY_AUTH_TOKEN), see docs/sweeps.md")
            raise ConfigError(f"could not {where}: {error_line(e)}{hint}") from None
    # retries are ours (max_retries=0): the same as the local executor's, counted in the records
    remote = ray.remote(num_cpus=threads, max_retries=0)(fn)
    queue, in_flight = deque(range(len(tasks))), {}
    tries = _Retries(tasks, on_result, retries)
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                i = tries.take(queue, bool(in_flight))
                if i is None:
                    break
                in_flight[remote.remote(tasks[i])] = i
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                i = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except (ray.exceptions.RayTaskError, ray.exceptions.TaskCancelledError) as e:  # the function raised
                    rec = failed_record(tasks[i], f"ray task failed: {error_line(e)}")
                except ray.exceptions.RayError as e:  # its worker or node was lost (killed, OOM): retry it
                    if tries.died(i, f"ray: {error_line(e)}"):
                        queue.appendleft(i)
                    continue
                tries.report(i, rec)
    except KeyboardInterrupt:  # Ray workers are not in the terminal's process group: interrupt them
        for ref in in_flight:
            ray.cancel(ref)
        try:
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_TIMEOUT)
            for ref in done:
                try:
                    tries.report(in_flight[ref], ray.get(ref))
                except Exception:  # noqa: BLE001 - cancelled: the run stays interrupted
                    pass
        except KeyboardInterrupt:
            pass
        raise
    finally:
        if own:
            ray.shutdown()
