"""Checks of data a user hands in (a ``.pt`` file, ``(x, y)`` tensors, a dataset object): ``.pt``
files load without running code, x is float (N, C, ...) and finite, y integer (N,) with labels in
range, the lengths agree. Each failure is one ``DataFileError`` line naming the file (or dataset),
the first bad index and what is valid. Cheap: one pass over x, in chunks."""
from __future__ import annotations

import os
import pickle
import re
import warnings
from typing import Optional

import torch

from depthlab.data.files import DataFileError

_SAVE_HINT = {"weights": "torch.save(model.state_dict(), path)",
              "data": "torch.save((x, y), path) with x and y tensors"}


def pickled_global(e: BaseException) -> Optional[str]:
    """The object a ``torch.load(weights_only=True)`` refusal names (``"posix.system"``), or None when
    ``e`` is not such a refusal (the file is damaged or not a torch file)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
    return found.group(1) if found else None


def load_tensor_file(path, what: str = "data"):
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only), every failure
    one ``DataFileError`` naming the file; ``what`` ("data" or "weights") words the advice."""
    path = str(path)
    hint = _SAVE_HINT.get(what, "torch.save")
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such {what} file")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataFileError(f"{path}: the {what} file is empty (0 bytes); write it with {hint}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before it refuses the file
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # a directory, no permission
        raise DataFileError(f"{path}: the {what} file cannot be read: {(e.strerror or str(e)).lower()}") from None
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes torch raise, the file is at fault
        found = pickled_global(e)
        if found:  # never pass torch's advice on: weights_only=False would run the file's code
            raise DataFileError(f"{path}: refusing to load the {what} file: it holds a pickled object "
                                f"({found}) beyond tensors and plain containers, and loading it could run "
                                f"code; write it with {hint}") from None
        raise DataFileError(f"{path}: not a {what} file written by torch.save, or truncated or corrupt "
                            f"({type(e).__name__}); write it with {hint}") from None


CHUNK_VALUES = 1 << 22  # values checked at a time


def _first_nonfinite(x: torch.Tensor):
    """(first bad sample, count of bad samples, "NaN" or "inf") over the samples of ``x``, or None."""
    flat = x.detach().reshape(len(x), -1)
    step = max(1, CHUNK_VALUES // max(1, flat.shape[1]))  # no bool copy of a whole large x
    ok = torch.cat([torch.isfinite(flat[i:i + step]).all(1) for i in range(0, len(flat), step)])
    if bool(ok.all()):
        return None
    bad = (~ok).nonzero().flatten()
    first = int(bad[0])
    return first, len(bad), "NaN" if bool(flat[first].isnan().any()) else "inf"


def check_xy(x, y, where: str, num_classes: Optional[int] = None, of: Optional[str] = None,
             names=("x", "y")) -> None:
    """Raise ``DataFileError`` (``"{where}: ..."``) unless ``x`` is a finite float tensor (N, C, ...)
    and ``y`` an integer tensor (N,) with labels in ``0..num_classes-1`` (``of`` words the limit,
    e.g. "a model with 10 outputs"; without ``num_classes`` labels must be >= 0)."""
    xn, yn = names
    for name, t in ((xn, x), (yn, y)):
        if not isinstance(t, torch.Tensor):
            raise DataFileError(f"{where}: {name} must be a tensor, got {type(t).__name__}")
    if not x.is_floating_point():
        fix = f" (convert with {xn}.float() / 255)" if x.dtype == torch.uint8 else ""
        raise DataFileError(f"{where}: {xn} must be a float tensor of shape (N, C, ...), got {x.dtype}{fix}")
    if x.dim() < 2:
        raise DataFileError(f"{where}: {xn} must have shape (N, C, ...), got shape {tuple(x.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise DataFileError(f"{where}: {yn} must hold integer class labels (int64, shape (N,)), got {y.dtype}")
    if y.dim() != 1:
        raise DataFileError(f"{where}: {yn} must have shape (N,), got shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise DataFileError(f"{where}: {xn} holds {len(x)} samples but {yn} {len(y)} labels; they must be "
                            f"the same length")
    if len(x) == 0:
        raise DataFileError(f"{where}: no samples ({xn} has shape {tuple(x.shape)})")
    bad = _first_nonfinite(x)
    if bad is not None:
        first, count, kind = bad
        raise DataFileError(f"{where}: {xn} holds {kind} at sample {first} (first of {count} non-finite "
                            f"sample{'s' if count > 1 else ''})")
    label = "label" if yn == "y" else f"{yn} label"
    out = (y < 0) if num_classes is None else ((y < 0) | (y >= num_classes))
    if bool(out.any()):
        where_bad = out.nonzero().flatten()
        i, n = int(where_bad[0]), len(where_bad)
        more = f"; {n} labels are out of range" if n > 1 else ""
        if num_classes is None:
            raise DataFileError(f"{where}: {label} {int(y[i])} at index {i} is negative (valid 0, 1, ...{more})")
        raise DataFileError(f"{where}: {label} {int(y[i])} at index {i} is out of range for "
                            f"{of or f'{num_classes} classes'} (valid 0..{num_classes - 1}{more})")


SPLITS = ("train", "val", "test")


def check_dataset(dataset, num_classes: Optional[int] = None, of: Optional[str] = None,
                  where: Optional[str] = None) -> None:
    """``check_xy`` on every split a dataset holds (``train_x``/``train_y``, ``val_*``, ``test_*``),
    labels against ``num_classes`` (default: the dataset's); a split that shares its tensors with
    one already checked is not checked again."""
    num_classes = num_classes if num_classes is not None else getattr(dataset, "num_classes", None)
    where = where or f"dataset {getattr(dataset, 'name', type(dataset).__name__)!r}"
    pairs = {}  # (id x, id y) -> the splits that hold that pair
    for split in SPLITS:
        x, y = getattr(dataset, f"{split}_x", None), getattr(dataset, f"{split}_y", None)
        if x is not None or y is not None:
            pairs.setdefault((id(x), id(y)), (x, y, []))[2].append(split)
    for x, y, splits in pairs.values():  # one (x, y) given as every split (``as_dataset``): plain x and y
        names = ("x", "y") if len(pairs) == 1 and len(splits) > 1 else (f"{splits[0]}_x", f"{splits[0]}_y")
        check_xy(x, y, where, num_classes, of, names=names)
