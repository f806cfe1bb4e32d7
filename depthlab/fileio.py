"""File helpers every layer shares: atomic writes (temp file, fsync, rename, fsync of the directory)
and JSON-lines files (``metrics.jsonl``, ``diagnostics.jsonl``) written as strict JSON."""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def strict_json(value):
    """``value`` with every non-finite float replaced by ``None``: JSON has no NaN or Infinity, and
    strict parsers (browsers, jq, other languages) reject the bare ``NaN`` Python would write."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def json_line(row: dict) -> str:
    return json.dumps(strict_json(row), allow_nan=False) + "\n"


def append_jsonl(path: Path, rows) -> None:
    """Append one strict-JSON line per row (non-finite floats become ``null``)."""
    with open(path, "a") as f:
        f.write("".join(json_line(r) for r in rows))
        f.flush()


def write_jsonl(path: Path, rows) -> None:
    """Replace ``path`` atomically with one strict-JSON line per row."""
    atomic_write_text(path, "".join(json_line(r) for r in rows))


def read_jsonl(path: Path) -> list:
    """Every row of a JSON-lines file; a line cut by a crash mid-write is skipped. Older files may
    hold bare ``NaN``/``Infinity``, which Python's parser still reads."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
