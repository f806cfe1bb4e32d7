"""Grid points and their run ids.

Run ids are deterministic, readable and filesystem-safe, and depend only on the run's own grid
values and seed, so adding values to a grid list never renames existing runs: ``model.name`` (any
``*.name``) contributes its value, other keys ``leaf=value`` (the full dotted key when two grid
keys share a leaf), joined by ``_``, then ``_s<seed>``: ``resnet56_stochastic_depth=0.5_s0``.
Values that are not filesystem-safe (``5,1,1``) are sanitised and get a 6-hex hash of the value.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from typing import Any, Dict, List

from depthlab.config import ConfigError

_SAFE = re.compile(r"[A-Za-z0-9.+-]+")
MAX_ID = 100


def grid_points(grids: List[Dict[str, list]]) -> List[Dict[str, Any]]:
    """Every grid point (key -> value), in file order: the product of each mapping, concatenated."""
    points = []
    for g in grids:
        keys = list(g)
        points += [dict(zip(keys, combo)) for combo in itertools.product(*(g[k] for k in keys))]
    return points


def _hash(value) -> str:
    return hashlib.sha1(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def _value_text(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    text = str(v)
    if _SAFE.fullmatch(text) and len(text) <= 40:
        return text
    return (re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-")[:24] + "-" + _hash(v)).lstrip("-")


def point_id(point: Dict[str, Any], keys: List[str]) -> str:
    """The readable id of a grid point; ``keys`` (all grid keys) decide where a leaf is ambiguous."""
    if not point:
        return "base"
    leaves = [k.rpartition(".")[2] for k in keys]
    parts = []
    for k, v in point.items():
        leaf = k.rpartition(".")[2]
        if leaf == "name":
            parts.append(_value_text(v))
        else:
            parts.append(f"{leaf if leaves.count(leaf) == 1 else k}={_value_text(v)}")
    pid = "_".join(parts)
    if len(pid) > MAX_ID:
        pid = pid[:MAX_ID - 8] + "-" + _hash(point)
    return pid if pid[0].isalnum() and pid[0].isascii() else "v" + pid


def point_ids(points: List[Dict[str, Any]], keys: List[str]) -> List[str]:
    """``point_id`` of each point, unique: points whose readable ids collide (contrived: ``true``
    and ``"true"`` in one list) get the point's hash appended. A repeated point is an error."""
    seen = set()
    for p in points:
        c = json.dumps(p, sort_keys=True)
        if c in seen:
            raise ConfigError(f"grid point {show(p)} appears twice (the grid mappings overlap)")
        seen.add(c)
    pids = [point_id(p, keys) for p in points]
    n = Counter(pids)
    return [f"{pid}-{_hash(p)}" if n[pid] > 1 else pid for pid, p in zip(pids, points)]


def run_id(point: Dict[str, Any], seed: int, keys: List[str]) -> str:
    return f"{point_id(point, keys)}_s{seed}"


def show(point) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "base config"
