"""Checkpoints: atomic writes, the last K kept, everything needed for an exact resume and nothing else
(tensors and plain containers, loaded with ``torch.load(weights_only=True)``), a SHA-256 digest checked on
load with the zip's CRCs; damaged files are set aside as ``NAME.damaged`` and the newest good one is used.
Details (names, digest, damaged files): docs/recovery.md, section "Stop, crash, resume".
"""
from __future__ import annotations

import hashlib
import logging
import random
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from depthlab.data.checks import pickled_global
from depthlab.fileio import atomic_write_bytes

log = logging.getLogger("depthlab")

_NAME = re.compile(r"epoch_(\d{4,})(?:_step_(\d+))?\.pt$")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


class CheckpointDamaged(CheckpointError):
    """A checkpoint whose bytes are damaged (a failed CRC or digest) or that cannot be read at all
    (truncated, not a torch file). ``reason`` says which, starting with "is"."""

    def __init__(self, path, reason: str):
        super().__init__(f"checkpoint {str(path)!r} {reason}")
        self.path, self.reason = Path(path), reason


def rng_state() -> dict:
    """Every RNG stream as tensors and plain values (loadable with ``weights_only=True``)."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------- digest
def state_digest(state: dict) -> str:
    """``"sha256:<hex>"`` of a canonical walk of ``state`` without its ``"digest"`` key: container
    kinds and sizes, keys in order, plain values exactly (floats as hex), tensors' dtype, shape and
    bytes (on the CPU, contiguous). Equal for a state and the same state loaded back."""
    h = hashlib.sha256(b"depthlab checkpoint digest v1\0")
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def _token(h, tag: bytes, payload: bytes = b"") -> None:
    h.update(tag + struct.pack("<Q", len(payload)) + payload)  # length-prefixed: no two walks collide


def _feed(h, v) -> None:
    if isinstance(v, torch.Tensor):
        t = v.detach().to("cpu").resolve_conj().resolve_neg().contiguous()
        _token(h, b"T", f"{t.dtype}{tuple(t.shape)}".encode())
        data = t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    elif isinstance(v, dict):
        _token(h, b"d", str(len(v)).encode())
        for k, item in v.items():
            _feed(h, k)
            _feed(h, item)
    elif isinstance(v, (list, tuple)):
        _token(h, b"l" if isinstance(v, list) else b"t", str(len(v)).encode())
        for item in v:
            _feed(h, item)
    elif isinstance(v, (set, frozenset)):  # no order of its own (str hashes vary by process): sort the encodings
        parts = []
        for item in v:
            sub = hashlib.sha256()
            _feed(sub, item)
            parts.append(sub.digest())
        _token(h, b"s", b"".join(sorted(parts)))
    elif v is None or isinstance(v, bool):
        _token(h, b"?", repr(v).encode())
    elif isinstance(v, int):
        _token(h, b"i", str(v).encode())
    elif isinstance(v, float):
        _token(h, b"f", v.hex().encode())
    elif isinstance(v, str):
        _token(h, b"u", v.encode("utf-8", "surrogatepass"))
    elif isinstance(v, (bytes, bytearray)):
        _token(h, b"b", bytes(v))
    else:  # torch.dtype, torch.device, torch.Size, complex: what weights_only also loads; repr is exact
        _token(h, b"o", f"{type(v).__qualname__}:{v!r}".encode())


# ----------------------------------------------------------------------------------- files
def checkpoint_name(epoch: int, step: int = 0) -> str:
    return f"epoch_{epoch:04d}.pt" if step == 0 else f"epoch_{epoch:04d}_step_{step:06d}.pt"


def write_checkpoint(path: Path, state: dict) -> Path:
    """Write ``state`` with its digest to ``path`` atomically (``best.pt`` and the epoch checkpoints)."""
    path = Path(path)
    signed = {**{k: v for k, v in state.items() if k != "digest"}, "digest": state_digest(state)}
    atomic_write_bytes(path, lambda f: torch.save(signed, f))
    return path


def save_checkpoint(ckpt_dir: Path, epoch: int, state: dict, keep_last: int, step: int = 0) -> Path:
    """Write the checkpoint of position ``(epoch, step)`` atomically, then drop all but the newest
    ``keep_last`` (files set aside as damaged are not checkpoints: they neither count nor go)."""
    path = write_checkpoint(Path(ckpt_dir) / checkpoint_name(epoch, step), state)
    for old in list_checkpoints(ckpt_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list:
    """Checkpoint files in position order (temp files of interrupted writes are ignored)."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [((int(m.group(1)), int(m.group(2) or 0)), p) for p in ckpt_dir.iterdir()
             if not p.name.startswith(".") and (m := _NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_position(path: Path) -> tuple:
    """``(epoch, step)`` of a checkpoint file, from its name (``epoch_0003.pt`` -> (3, 0))."""
    m = _NAME.fullmatch(Path(path).name)
    if m is None:
        raise ValueError(f"{str(path)!r} is not named like a checkpoint (epoch_NNNN.pt or epoch_NNNN_step_NNNNNN.pt)")
    return int(m.group(1)), int(m.group(2) or 0)


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The furthest checkpoint by name, unchecked; ``newest_good_checkpoint`` is the one to load."""
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


# ----------------------------------------------------------------------------------- loading
def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True``: tensors and plain containers only. A file that needs any
    other pickled object (code could run while unpickling it) is refused (``CheckpointError``); one
    that is cut short, not a torch file, fails a record's CRC or its content digest is damaged
    (``CheckpointDamaged``). The returned state has no ``"digest"`` key."""
    path = Path(path)
    try:
        _check_records(path)
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, CheckpointError, MemoryError):
        raise
    except PermissionError as e:  # not damage: the file may be fine, so it is never set aside
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {e.strerror or e}; fix its "
                              f"permissions") from None
    except Exception as e:  # noqa: BLE001 - damaged bytes make torch fail in many ways; every one is named
        found = pickled_global(e)
        if found:  # a pickle naming an object beyond tensors; anything else is not a torch file at all
            raise CheckpointError(f"refusing checkpoint {str(path)!r}: it carries a pickled object "
                                  f"({found}) beyond tensors and plain containers; depthlab never "
                                  f"writes one, and loading it could run code") from None
        first = (str(e).strip() or type(e).__name__).splitlines()[0].split(". ")[0]
        raise CheckpointDamaged(path, f"is unreadable (truncated or not a torch file): {first}") from None
    if isinstance(state, dict):
        _check_digest(path, state)
    return state


def _check_records(path: Path) -> None:
    """The CRC-32 of every record of the zip container torch writes: torch itself does not check
    them, so flipped bytes in tensor data or in the pickle would load without a word. A file that
    is no zip at all (cut before its directory, an old torch format) is left to ``torch.load``."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (FileNotFoundError, PermissionError, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 - zipfile's view of a damaged directory: any error
        first = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise CheckpointDamaged(path, f"is damaged: its zip structure is broken ({first})") from None
    if bad is not None:
        raise CheckpointDamaged(path, f"is damaged: its record {bad!r} fails its CRC check")


def _check_digest(path: Path, state: dict) -> None:
    written = state.pop("digest", None)
    if written is None:  # a checkpoint from before digests: nothing to compare with
        log.debug("checkpoint %s has no content digest (written before depthlab checked them); loaded with its "
                  "CRCs checked only", str(path))
        return
    if not isinstance(written, str) or not _DIGEST.fullmatch(written):
        raise CheckpointDamaged(path, f"is damaged: its content digest is garbled ({str(written)[:20]!r})")
    if state_digest(state) != written:
        raise CheckpointDamaged(path, "is damaged: its content does not match the SHA-256 digest written with it")


# ----------------------------------------------------------------------------------- the newest good one
@dataclass
class Passed:
    """A checkpoint newer than the one picked, and why it was not used."""
    path: Path
    reason: str                       # starts with "is", e.g. "is damaged: ..."
    suffix: str = "damaged"           # what it is renamed to when set aside: NAME.<suffix>
    moved_to: Optional[Path] = None   # where it went, once set aside


@dataclass
class Pick:
    """What ``newest_good_checkpoint`` found: the checkpoint to use (None: the directory holds no
    checkpoint at all), its state, and the newer ones it passed over (newest first)."""
    path: Optional[Path]
    state: Optional[dict]
    passed: list = field(default_factory=list)

    @property
    def position(self) -> tuple:
        return checkpoint_position(self.path) if self.path is not None else (0, 0)


def newest_good_checkpoint(ckpt_dir: Path, map_location="cpu", max_epoch: Optional[int] = None,
                           set_aside: bool = False) -> Pick:
    """The newest checkpoint that loads and passes its checks, newest first; damaged ones are passed
    over (and, with ``set_aside``, renamed ``NAME.damaged``, kept as evidence). ``max_epoch``: only
    positions within that many epochs are candidates (resume: the metrics must cover the weights);
    newer ones are passed over too (set aside as ``NAME.unlogged``). A refused pickle payload stops
    everything (``CheckpointError``): that is not damage but a file depthlab did not write. If
    checkpoints exist but none is good, ``CheckpointError`` names them all (and nothing is renamed)."""
    ckpt_dir = Path(ckpt_dir)
    found, passed = list_checkpoints(ckpt_dir), []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location=map_location)  # a refused pickle payload stops here too
        except CheckpointDamaged as e:
            passed.append(Passed(path, e.reason))
            continue
        epoch, _ = checkpoint_position(path)
        if max_epoch is not None and epoch > max_epoch:
            passed.append(Passed(path, f"is past the metrics, which end at epoch {max_epoch} (its epoch's row is "
                                       f"missing)", "unlogged"))
            continue
        pick = Pick(path, state, passed)
        break
    else:
        if passed:
            raise CheckpointError(f"no usable checkpoint in {str(ckpt_dir)!r}: " + "; ".join(
                f"{p.path.name} {p.reason}" for p in passed) + "; restore them from a backup, or train the run again "
                "with overwrite=True (CLI: --overwrite)")
        return Pick(None, None, [])
    if set_aside:
        for p in passed:
            p.moved_to = _set_aside(p.path, p.suffix)
    return pick


def _set_aside(path: Path, suffix: str) -> Path:
    """Rename ``path`` to ``NAME.<suffix>`` (``.2``, ``.3``, ... if that exists): out of every listing."""
    target, n = path.with_name(f"{path.name}.{suffix}"), 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{suffix}.{n}")
    path.rename(target)
    return target


def fallback_message(pick: Pick, using: str, consequence: str = "") -> str:
    """One line: which newer checkpoints were passed over and why (and where they went), which one
    is used (``using``: e.g. "resuming from"), and ``consequence`` (what is lost)."""
    passed = "; ".join(f"checkpoint {str(p.path)!r} {p.reason}"
                       + (f" (set aside as {p.moved_to.name})" if p.moved_to is not None else "")
                       for p in pick.passed)
    epoch, step = pick.position
    return (f"{passed}; {using} {pick.path.name} (epoch {epoch}, step {step}), the newest good checkpoint"
            + (f": {consequence}" if consequence else ""))


def steps_between(pick: Pick, steps_per_epoch: int) -> str:
    """How far the newest passed-over checkpoint is ahead of the picked one: ``"2 epoch(s)"`` or
    ``"31 step(s)"``."""
    (e0, s0), (e1, s1) = pick.position, checkpoint_position(pick.passed[0].path)
    if s0 == s1 == 0:
        return f"{e1 - e0} epoch(s)"
    return f"{(e1 - e0) * steps_per_epoch + s1 - s0} step(s)"
