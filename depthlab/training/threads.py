"""How many CPU threads a run uses (``train.threads``; ``auto``, the default: the cores free now).

torch's default is one thread per core, whatever else runs. When the cores are busy, its OpenMP
threads wait on each other at every parallel region and a step can take tens of times longer
(plain-20 on a 2-core machine with one core busy: 33 s per epoch at 2 threads, 0.45 s at 1). So
the default looks first: the cores this process may use (CPU affinity, the cgroup's CPU quota),
less those busy now (measured from ``/proc/stat`` over a quarter of a second; the load average
where there is no ``/proc``). An explicit count above the free cores is kept, with a warning.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

log = logging.getLogger("depthlab")
SAMPLE_SECONDS = 0.25
REMEASURE_SECONDS = 30.0  # runs started within this of a measurement (a demo's, a grid's) reuse it
_last: Dict[str, float] = {}


def usable_cores() -> Tuple[int, str]:
    """``(cores this process may run on, what limits them)``: CPU affinity and a cgroup CPU quota."""
    try:
        cores, why = len(os.sched_getaffinity(0)), "CPU affinity"
    except AttributeError:  # macOS, Windows
        cores, why = os.cpu_count() or 1, "CPU count"
    quota = _cgroup_quota()
    if quota is not None and quota < cores:
        cores, why = max(1, math.ceil(quota)), "cgroup CPU quota"
    return cores, why


def _cgroup_quota() -> Optional[float]:
    """The cgroup's CPU limit in cores (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), None when unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _cpu_times() -> Dict[int, Tuple[int, int]]:
    """Per CPU ``(busy, total)`` jiffies from ``/proc/stat``."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *fields = line.split()
            v = [int(f) for f in fields[:8]]
            idle = v[3] + v[4]  # idle + iowait
            out[int(name[3:])] = (sum(v) - idle, sum(v))
    return out


def busy_cores(seconds: float = SAMPLE_SECONDS) -> Tuple[float, str]:
    """``(how many of this process's cores other work keeps busy now, how it was measured)``."""
    try:
        mine = os.sched_getaffinity(0)
    except AttributeError:
        mine = None
    try:
        a = _cpu_times()
        time.sleep(seconds)
        b = _cpu_times()
        busy = 0.0
        for cpu, (busy1, total1) in b.items():
            if (mine is None or cpu in mine) and cpu in a and total1 > a[cpu][1]:
                busy += (busy1 - a[cpu][0]) / (total1 - a[cpu][1])
        return busy, f"/proc/stat over {seconds:g} s"
    except (OSError, ValueError):
        pass
    try:
        return float(os.getloadavg()[0]), "1-minute load average"
    except (AttributeError, OSError):
        return 0.0, "not measurable here"


@dataclass
class ThreadChoice:
    threads: int
    note: str                 # one line: the count and why (shown in the run's title line)
    warning: Optional[str]    # set when an explicit count is above the free cores


def _busy_now() -> float:
    """``busy_cores()``, measured at most every ``REMEASURE_SECONDS``."""
    now = time.monotonic()
    if "busy" not in _last or now - _last["at"] > REMEASURE_SECONDS:
        _last["busy"], _last["at"] = busy_cores()[0], time.monotonic()
    return _last["busy"]


def choose_threads(requested: Optional[int], cores: Optional[int] = None, busy: Optional[float] = None) -> ThreadChoice:
    """``requested`` (``train.threads``; None: auto) against the cores free now (``cores`` and
    ``busy`` measured when not given). One thread is never measured: it cannot oversubscribe."""
    if requested == 1:
        return ThreadChoice(1, "1 thread", None)
    why = ""
    if cores is None:
        cores, why = usable_cores()
    if busy is None:
        busy = _busy_now()
    free = max(1, min(cores, round(cores - busy)))
    state = f"{max(0.0, cores - busy):.1f} of {cores} cores free" + (f" ({why})" if why and why != "CPU affinity"
                                                                      else "")
    if requested is None:
        return ThreadChoice(free, f"{free} thread{'s' if free > 1 else ''}: auto, {state}", None)
    warning = None
    if requested > free:
        warning = (f"train.threads={requested} but {state}: threads beyond "
                   f"the free cores wait on each other and a step can run many times slower; "
                   f"train.threads=auto (the default) picks {free}")
    return ThreadChoice(requested, f"{requested} thread{'s' if requested > 1 else ''}", warning)


def apply_threads(requested: Optional[int]) -> ThreadChoice:
    """Choose and set torch's intra-op thread count; log the warning, if any."""
    import torch

    choice = choose_threads(requested)
    if choice.warning:
        log.warning(choice.warning)
    torch.set_num_threads(choice.threads)
    return choice
