"""Tiny image folders and archives for the image-folder tests (PNG is lossless: the arrays written
are the pixels a reader must return)."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("zebra", "Moth", "ant")  # written in this order; read back sorted: Moth, ant, zebra


def write_image(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    """``pixels`` (H, W) grayscale or (H, W, 3) RGB uint8, written with Pillow."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L" if pixels.ndim == 2 else "RGB").save(path, fmt, **({"quality": 90} if fmt == "JPEG"
                                                                                      else {}))


def write_folder(root: Path, classes=CLASSES, n_train: int = 4, n_test: int = 2, size=(8, 8), grey: bool = False,
                 fmt: str = "PNG", test_split: str = "test", seed: int = 0) -> dict:
    """``root/train/<class>/i.png`` and ``root/<test_split>/<class>/i.png`` of random pixels; returns
    ``{(split, class, i): pixels}``."""
    rng = np.random.default_rng(seed)
    ext = {"PNG": "png", "JPEG": "jpg"}[fmt]
    h, w = size
    written = {}
    for split, n in (("train", n_train), (test_split, n_test)):
        for c in classes:
            for i in range(n):
                shape = (h, w) if grey else (h, w, 3)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                write_image(root / split / c / f"{i}.{ext}", pixels, fmt)
                written[(split, c, i)] = pixels
    return written


def expected(written: dict, split: str, classes=CLASSES):
    """The (N, C, H, W) uint8 array and labels a reader must give for ``split``: classes sorted,
    files sorted within each class."""
    order = sorted(classes)
    keys = sorted((k for k in written if k[0] == split), key=lambda k: (order.index(k[1]), f"{k[2]}"))
    xs = [written[k] for k in keys]
    x = np.stack([a[None] if a.ndim == 2 else a.transpose(2, 0, 1) for a in xs])
    return x, np.array([order.index(k[1]) for k in keys])


def pack(folder: Path, out: Path, wrapper: str = "") -> Path:
    """``folder``'s files in an archive ``out`` (.tar, .tar.gz, .tgz or .zip), under ``wrapper/``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    prefix = f"{wrapper}/" if wrapper else ""
    if out.name.endswith(".zip"):
        with zipfile.ZipFile(out, "w") as zf:
            for p in files:
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    else:
        mode = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else "w"
        with tarfile.open(out, mode) as tar:
            for p in files:
                tar.add(p, prefix + p.relative_to(folder).as_posix())
    return out


def add_member(archive: Path, name: str, payload: bytes = b"x") -> None:
    """Append a member with an arbitrary (possibly unsafe) name to an uncompressed tar or a zip."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "a") as zf:
            zf.writestr(name, payload)
    else:
        with tarfile.open(archive, "a") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
