"""Where a sweep's runs execute: ``local`` (a pool of spawned worker processes on this machine) or
``ray`` (tasks on a local Ray instance or an existing cluster). Both take the same task dicts, call
the same per-run function (``depthlab.sweep.task.run_task``) and report each record through
``on_result(index, record)`` as it finishes, in completion order. At most ``workers`` runs are in
flight at a time; each uses ``threads`` torch CPU threads."""
from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, List, Optional

from depthlab.config import ConfigError
from depthlab.sweep.task import error_line, failed_record, init_worker, run_task

OnResult = Callable[[int, dict], None]
STOP_TIMEOUT = 60.0
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


# ----------------------------------------------------------------------------- local

def run_local(tasks: List[dict], workers: int, threads: int, on_result: OnResult,
              fn: Callable[[dict], dict] = run_task) -> None:
    """A ``spawn`` process pool (fresh interpreters: no inherited torch thread pools or CUDA state).

    A worker that dies (SIGKILL, out of memory) breaks the whole pool, failing every run in flight;
    those runs are retried one at a time in a fresh pool, so only the run that really kills its
    worker is recorded failed. Ctrl-C terminates the workers (checkpoints are written atomically,
    so an interrupted run resumes from its last finished epoch) and re-raises."""
    ctx = multiprocessing.get_context("spawn")
    queue, suspects = deque(range(len(tasks))), deque()
    in_flight, alone = {}, {}
    pool = None
    try:
        while queue or suspects or in_flight:
            if pool is None:
                pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                           initializer=init_worker, initargs=(threads,))
            limit = 1 if suspects else workers
            while len(in_flight) < limit and (suspects or queue):
                i = suspects.popleft() if suspects else queue.popleft()
                fut = pool.submit(fn, tasks[i])
                in_flight[fut], alone[fut] = i, limit == 1 and not in_flight
            done, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                i = in_flight.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):
                    broken = True
                    if alone.pop(fut):
                        on_result(i, failed_record(tasks[i], DIED))
                    else:
                        suspects.append(i)
                elif exc is not None:
                    on_result(i, failed_record(tasks[i], error_line(exc)))
                else:
                    on_result(i, fut.result())
            if broken:  # the other runs in flight fail with it: retry those one at a time
                for fut in wait(list(in_flight)).done:
                    i, _ = in_flight.pop(fut), alone.pop(fut, None)
                    if fut.exception() is None:
                        on_result(i, fut.result())
                    else:
                        suspects.append(i)
                pool.shutdown(wait=True)
                pool = None
    except KeyboardInterrupt:
        if pool is not None:
            _stop(pool, in_flight, on_result)
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _stop(pool: ProcessPoolExecutor, in_flight: dict, on_result: OnResult, timeout: float = STOP_TIMEOUT) -> None:
    """After Ctrl-C: the terminal's SIGINT reached the workers too, and a run in ``train`` stops at
    its next step with a checkpoint of that position; wait (up to ``timeout`` s) for those records,
    then kill what is left. A second Ctrl-C kills at once (checkpoints are atomic either way)."""
    try:
        done, _ = wait(list(in_flight), timeout=timeout)
        for fut in done:
            if not fut.cancelled() and fut.exception() is None:
                on_result(in_flight[fut], fut.result())
    except KeyboardInterrupt:
        pass
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.kill()


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
            fn: Callable[[dict], dict] = run_task, quiet: bool = True) -> None:
    """``ray.init(address)`` (None: start a local instance with ``workers * threads`` CPUs, no
    dashboard), one task per run with ``num_cpus=threads``, at most ``workers`` in flight, records
    gathered with ``ray.wait`` as they finish. An already initialised Ray connection is reused and
    left open; one this function opened is shut down (for a cluster: disconnected, not stopped)."""
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
    remote = ray.remote(num_cpus=threads, max_retries=0)(fn)
    queue, in_flight = deque(range(len(tasks))), {}
    try:
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                i = queue.popleft()
                in_flight[remote.remote(tasks[i])] = i
            done, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in done:
                i = in_flight.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a lost worker or node: record it, go on
                    rec = failed_record(tasks[i], f"ray task failed: {error_line(e)}")
                on_result(i, rec)
    except KeyboardInterrupt:  # Ray workers are not in the terminal's process group: interrupt them
        for ref in in_flight:
            ray.cancel(ref)
        try:
            done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=STOP_TIMEOUT)
            for ref in done:
                try:
                    on_result(in_flight[ref], ray.get(ref))
                except Exception:  # noqa: BLE001 - cancelled: the run stays interrupted
                    pass
        except KeyboardInterrupt:
            pass
        raise
    finally:
        if own:
            ray.shutdown()
