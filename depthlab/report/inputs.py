"""What a report reads from a directory someone else may have written, made safe to show: JSON files
checked to be objects, metrics and diagnostics records checked field by field (a malformed record is
skipped with one logged line, never drawn as if it were data), names turned into safe file names and
links, paths kept inside the report folder, and pages and images written without following a
symbolic link out of it. Escaping itself happens where the HTML is written (``html.escape`` on every
value); the pages also carry a Content-Security-Policy that forbids scripts, so a value that slipped
through could not run."""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import List, Optional
from urllib.parse import quote

from depthlab.fileio import atomic_write_bytes

log = logging.getLogger("depthlab")

MAX_TEXT = 2000  # a value shown on a page is cut here: a 10 MB string is not a result
METRIC_NUMBERS = ("step", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "val_loss", "val_acc",
                  "seconds", "elapsed")
METRIC_TEXTS = ("kind", "status", "split", "checkpoint")
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class ReportInputError(ValueError):
    """A file a report needs is not what depthlab writes; the message names it."""


def load_object(path: Path) -> dict:
    """A JSON file that must hold an object (``config.json``, ``experiment.json``, ...)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ReportInputError(f"{str(path)!r} is not valid JSON ({e}); it was not written by depthlab or is "
                               f"damaged") from None
    if not isinstance(doc, dict):
        raise ReportInputError(f"{str(path)!r} holds a JSON {type(doc).__name__}, not the object depthlab writes")
    return doc


def number(v) -> Optional[float]:
    """``v`` if it is a real number (bools and strings are not), else None."""
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def integer(v) -> Optional[int]:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def text(v, default: str = "-") -> str:
    """Any value as plain text for a page (the caller escapes it), at most ``MAX_TEXT`` characters."""
    if v is None:
        return default
    s = v if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)
    return s if len(s) <= MAX_TEXT else s[:MAX_TEXT] + f"... ({len(s):,} characters)"


def fmt(v, spec: str, default: str = "-") -> str:
    """``format(v, spec)`` for a number, ``default`` for anything else."""
    n = number(v)
    return default if n is None else format(n, spec)


def pct(v) -> str:
    n = number(v)
    return "-" if n is None else f"{100 * n:.1f}%"


def _skipped(source, n: int, first: str) -> None:
    if n:
        log.warning("%s: %d malformed record(s) skipped in the report (first: %s)", source, n, first)


def clean_metrics(rows: List, source) -> List[dict]:
    """Epoch rows whose fields have the types depthlab writes: ``epoch`` an int, the numeric
    fields numbers or None (a string there becomes None), the text fields strings."""
    out, bad, first = [], 0, ""
    for i, r in enumerate(rows, 1):
        if not isinstance(r, dict) or integer(r.get("epoch")) is None:
            bad += 1
            first = first or f"row {i}: no integer epoch"
            continue
        r = dict(r)
        for k in METRIC_NUMBERS:
            if k in r and r[k] is not None and number(r[k]) is None:
                bad += 1
                first = first or f"row {i}: {k} is not a number"
                r[k] = None
        for k in METRIC_TEXTS:
            if k in r and not isinstance(r[k], str):
                r[k] = text(r[k])
        out.append(r)
    _skipped(source, bad, first)
    return out


def clean_diagnostics(records: List, source) -> List[dict]:
    """Diagnostics records with a string ``quantity`` and ``name``, a string or absent ``layer``,
    an integer ``step``, and an ``x`` of numbers or of strings (the plots draw only the values that
    are numbers, or lists of them, and skip the rest)."""
    out, bad, first = [], 0, ""
    for i, r in enumerate(records, 1):
        why = _record_problem(r)
        if why:
            bad += 1
            first = first or f"record {i}: {why}"
            continue
        r = dict(r)
        for k in ("step", "first_step", "x_axis"):
            if k in r and integer(r[k]) is None:
                r[k] = 0
        for k in ("x_label", "checkpoint"):
            if k in r and not isinstance(r[k], str):
                r[k] = text(r[k])
        x = r.get("x")
        if x is not None and not (isinstance(x, list) and (all(number(v) is not None for v in x)
                                                           or all(isinstance(v, str) for v in x))):
            del r["x"]
        out.append(r)
    _skipped(source, bad, first)
    return out


def _record_problem(r) -> str:
    if not isinstance(r, dict):
        return "not an object"
    for k in ("quantity", "name"):
        if not isinstance(r.get(k), str) or not r[k]:
            return f"{k} is not a string"
    if r.get("layer") is not None and not isinstance(r["layer"], str):
        return "layer is not a string"
    return ""


def file_stem(name: str) -> str:
    """A file-name component for ``name``: itself when it is plain (letters, digits, ``_.-``, not
    starting with a dot), else a sanitised form with a hash of the original (distinct names stay
    distinct, and no name becomes a path)."""
    safe = _SAFE.sub("_", name)[:80].lstrip(".")
    if safe == name and safe:
        return safe
    return f"{safe or 'x'}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def href(rel: str) -> str:
    """A link to a relative path on this disk: percent-encoded and starting with ``./``, so no
    directory name can make it another scheme (``javascript:``)."""
    return "./" + quote(rel, safe="/")


def inside(base: Path, rel) -> Optional[Path]:
    """``base / rel`` if it resolves to a place inside ``base`` (symbolic links followed), else None."""
    if not isinstance(rel, str):
        return None
    base = Path(base).resolve()
    path = (base / rel).resolve()
    return path if path == base or base in path.parents else None


def is_real_dir(path: Path) -> bool:
    """A directory that is not a symbolic link (a report never follows one out of the folder)."""
    return path.is_dir() and not path.is_symlink()


def output_dir(path: Path) -> Path:
    """``path`` as a real directory to write into: a symbolic link there (which would send the files
    elsewhere) is replaced by a directory, with one logged line."""
    path = Path(path)
    if path.is_symlink():
        log.warning("%s was a symbolic link; replaced by a folder so the report writes nothing outside it",
                    path)
        path.unlink()
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; a symbolic link at ``path`` is replaced, never followed."""
    atomic_write_bytes(Path(path), lambda f: f.write(data))
    return Path(path)
