"""File helpers every layer shares: atomic writes (temp file, fsync, rename, fsync of the directory)
and JSON-lines files (``metrics.jsonl``, ``diagnostics.jsonl``) written as strict JSON."""
from __future__ import annotations

import errno
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

# what a user can do about a failed write, by errno (anything else: the system's own words)
CAUSES = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
          errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
          errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a directory"}
_FULL = (errno.ENOSPC, errno.EDQUOT)


class WriteError(OSError):
    """A file could not be written; the message names the file, the cause and what to do
    (``errno`` and ``filename`` are set as on the OSError it stands for)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else super().__str__()


def os_cause(err: OSError) -> str:
    """``err``'s cause in words: ``"no space left on device"``, ``"read-only file system"``, ..."""
    return CAUSES.get(err.errno) or (err.strerror or str(err) or type(err).__name__).lower()


def os_advice(err: OSError) -> str:
    """What to do about ``err``, or empty."""
    if err.errno in _FULL:
        return ("free space, then run again (a training run continues from its last checkpoint, which is intact, "
                "with resume=True (CLI: --resume))")
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "write somewhere you can (another directory), or fix the permissions"
    return ""


def write_error(path: Path, err: OSError) -> WriteError:
    """One clear ``WriteError`` for a failed write of ``path``: the file, the cause, what to do."""
    advice = os_advice(err)
    blocker = next((p for p in reversed(Path(path).parents) if p.exists() and not p.is_dir()), None)
    cause = (f"{str(blocker)!r} is a file, not a directory" if err.errno in (errno.EEXIST, errno.ENOTDIR) and blocker
             else os_cause(err))  # a file where a parent directory should be
    e = WriteError(f"cannot write {str(path)!r}: {cause}; nothing was replaced"
                   + (f"; {advice}" if advice else ""))
    e.errno, e.filename = err.errno, str(path)
    return e


class _Recording:
    """The temp file as ``write`` sees it, remembering the first OSError of a write: torch.save
    writes through C++, which reports a failed write as a RuntimeError ("unexpected pos ...")."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def __getattr__(self, name):
        return getattr(self._f, name)


def _open_temp(fd: int, tmp: str):
    """The temp file object (module-level, so tests can simulate a full disk)."""
    return os.fdopen(fd, "wb")


def _failed_write(exc: BaseException, rec: _Recording, directory: Path):
    """The OSError behind ``exc``, a failed write, or None (then ``exc`` is not about the disk)."""
    if isinstance(exc, OSError):
        return exc
    if rec.error is not None:
        return rec.error
    seen, e = set(), exc
    while e is not None and id(e) not in seen:  # torch may chain the OSError it hit
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    if isinstance(exc, RuntimeError):
        try:
            if os.statvfs(directory).f_bavail == 0:
                return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
            pass
    return None


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path`` and rename it into place. A failed
    write (disk full, read-only, no permission) raises ``WriteError`` with the temp file removed
    and ``path`` as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(path, e) from e
    rec = None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        with _open_temp(fd, tmp) as f:
            rec = _Recording(f)
            write(rec)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power loss
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        cause = (_failed_write(exc, rec if rec is not None else _Recording(None), path.parent)
                 if isinstance(exc, Exception) else None)
        if cause is not None and not isinstance(exc, WriteError):
            raise write_error(path, cause) from exc
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
    """Append one strict-JSON line per row (non-finite floats become ``null``); a failed write
    raises ``WriteError`` (a line cut short is skipped by ``read_jsonl``)."""
    try:
        with open(path, "a") as f:
            f.write("".join(json_line(r) for r in rows))
            f.flush()
            os.fsync(f.fileno())  # on disk before the epoch's checkpoint is: a checkpoint never outlives its row
    except OSError as e:
        raise write_error(path, e) from e


def write_jsonl(path: Path, rows) -> None:
    """Replace ``path`` atomically with one strict-JSON line per row."""
    atomic_write_text(path, "".join(json_line(r) for r in rows))


log = logging.getLogger("depthlab")
_JSON_KIND = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class LineDamage(NamedTuple):
    """A line of a JSON-lines file that holds no row. ``torn``: it is the file's last line and has
    no newline at its end, i.e. an append cut short (a crash, a full disk); anything else is damage
    to data that was once complete."""
    path: str
    line: int       # 1-based
    reason: str
    torn: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


def read_jsonl_checked(path: Path) -> tuple:
    """``(rows, damage)``: the rows (JSON objects) of a JSON-lines file, and a ``LineDamage`` for
    every line that is not one (blank lines are neither). Older files may hold bare
    ``NaN``/``Infinity``, which Python's parser still reads."""
    path = Path(path)
    if not path.exists():
        return [], []
    pieces = path.read_bytes().split(b"\n")
    rows, damage = [], []
    for i, raw in enumerate(pieces, 1):
        if not raw.strip():
            continue
        torn = i == len(pieces)  # text after the last newline: an append that never finished
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            reason = "not UTF-8 text"
        except json.JSONDecodeError:
            reason = "not valid JSON"
        else:
            if isinstance(row, dict):
                rows.append(row)
                continue
            reason = f"not a JSON object (a JSON {_JSON_KIND.get(type(row), type(row).__name__)})"
        if torn:
            reason = f"an incomplete last line ({reason}; a write cut short)"
        damage.append(LineDamage(str(path), i, reason, torn))
    return rows, damage


def read_jsonl(path: Path) -> list:
    """Every row of a JSON-lines file. A line that holds no row (cut short by a crash, or damaged)
    is skipped with a warning naming file:line; ``read_jsonl_checked`` returns them instead."""
    rows, damage = read_jsonl_checked(path)
    for d in damage:
        log.warning("%s; skipped that line", d)
    return rows


def epoch_gap(rows) -> Optional[str]:
    """Where the per-epoch rows (``"kind": "epoch"``) of a metrics file stop being epochs 1, 2, 3,
    ... in order, e.g. ``"no row for epoch 4 (epoch 3 is followed by epoch 5)"``; None if they don't."""
    want = 1
    for r in rows:
        if r.get("kind") != "epoch":
            continue
        e = r.get("epoch")
        if e == want and type(e) is int:
            want += 1
        elif type(e) is not int:
            return f"an epoch row has epoch {e!r}, not a whole number"
        elif e > want:
            after = f"epoch {want - 1} is followed by epoch {e}" if want > 1 else f"the rows start at epoch {e}"
            missing = f"no rows for epochs {want}-{e - 1}" if e - 1 > want else f"no row for epoch {want}"
            return f"{missing} ({after})"
        else:
            return f"a second row for epoch {e} (after epoch {want - 1})"
    return None
