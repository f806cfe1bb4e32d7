"""``depthlab reproduce all``: every experiment in turn into one directory, the index of their reports,
and where the time went (per experiment: wall time, runs trained and reused, verdict counts)."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional

from depthlab.config import ConfigError
from depthlab.experiments.base import EXPERIMENTS
from depthlab.experiments.runner import commit_at_end, git_commit, reproduce, resolve_params
from depthlab.fileio import atomic_write_text

STATUSES = ("observed", "not observed", "inconclusive")


def split_params(names: List[str], scale: str, params: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Each experiment's share of ``params``: the names it has (``dataset``, ``epochs``, ``depths``...).
    A name no experiment has is an error, before anything runs."""
    params = params or {}
    valid = {n: set(resolve_params(EXPERIMENTS.get(n)(), scale)) for n in names}
    unknown = sorted(k for k in params if not any(k in v for v in valid.values()))
    if unknown:
        raise ConfigError(f"unknown parameter {unknown[0]!r} for every experiment; valid parameters: "
                          + ", ".join(sorted(set().union(*valid.values()))))
    return {n: {k: v for k, v in params.items() if k in valid[n]} for n in names}


def reproduce_all(scale: str = "quick", seeds: Optional[int] = None, out: Optional[str] = None, *,
                  params: Optional[Dict[str, Any]] = None, device: str = "auto", fresh: bool = False,
                  quiet: bool = False, jobs: int = 1, command: Optional[str] = None,
                  names: Optional[List[str]] = None, executor: str = "local") -> dict:
    """Every registered experiment (``reproduce``) into ``out/NAME`` (default ``runs/reproduce``), then
    the index of the reports (``names``: a subset, in the registry's order by default). Returns
    ``{"experiments": [per-experiment summary], "seconds", "index"}``."""
    base = Path(out) if out else Path("runs") / "reproduce"
    # by default every experiment that has this scale (the real-image scale is calibrated one by one)
    names = ([EXPERIMENTS.get(n).name for n in names] if names
             else [n for n in EXPERIMENTS if scale in EXPERIMENTS.get(n).scales])
    shares = split_params(names, scale, params)
    for n in names:  # every experiment's parameters are checked before the first one trains
        resolve_params(EXPERIMENTS.get(n)(), scale, shares[n])
    t0, rows, commit = time.perf_counter(), [], git_commit()
    for i, n in enumerate(names, 1):
        if not quiet:
            print(f"[{i}/{len(names)}] {n}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        doc = reproduce(n, scale=scale, seeds=seeds, out=str(base / (n if scale == "quick" else f"{n}-{scale}")),
                        params=shares[n], device=device, fresh=fresh, quiet=quiet, jobs=jobs, executor=executor,
                        command=f"{command} (experiment {n})" if command else None)
        status = [v["status"].split(" (")[0] for v in doc["verdicts"]]
        rows.append({"name": n, "seconds": time.perf_counter() - t, "runs": len(doc["runs"]),
                     "reused": sum(1 for r in doc["runs"] if r.get("reused")),
                     "train_seconds": sum(r.get("seconds") or 0 for r in doc["runs"] if not r.get("reused")),
                     **{s: status.count(s) for s in STATUSES}})
    from depthlab.report import write_report

    index = write_report(base)
    result = {"experiments": rows, "seconds": time.perf_counter() - t0, "index": str(index),
              "command": command, "scale": scale, "seeds": seeds, "jobs": jobs, "commit": commit,
              **commit_at_end(commit),
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    # suite.json: the wall time and machine of the whole suite, the first line of `depthlab report --markdown`
    atomic_write_text(base / "suite.json", json.dumps(result, indent=2) + "\n")
    return result


def machine() -> str:
    """The CPU model (``/proc/cpuinfo`` where there is one), its core count and the torch build."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}; {platform.system()}"


def breakdown(result: dict) -> str:
    """The per-experiment table and the total, as printed by ``depthlab reproduce all``."""
    lines = [f"{'experiment':<18} {'wall s':>7} {'runs':>5} {'reused':>6} {'observed':>9} {'not obs.':>9} "
             f"{'inconcl.':>9}"]
    for r in result["experiments"]:
        lines.append(f"{r['name']:<18} {r['seconds']:>7.0f} {r['runs']:>5} {r['reused']:>6} {r['observed']:>9} "
                     f"{r['not observed']:>9} {r['inconclusive']:>9}")
    total = {s: sum(r[s] for r in result["experiments"]) for s in STATUSES}
    lines.append(f"{'all':<18} {result['seconds']:>7.0f} {sum(r['runs'] for r in result['experiments']):>5} "
                 f"{sum(r['reused'] for r in result['experiments']):>6} {total['observed']:>9} "
                 f"{total['not observed']:>9} {total['inconclusive']:>9}")
    lines.append(f"wall time: {result['seconds'] / 60:.1f} min; index: {result['index']}")
    return "\n".join(lines)
