"""Datasets read from their standard files: MNIST / Fashion-MNIST (IDX gz), CIFAR-10/100 (pickles;
their class-folder form: ``depthlab.data.folders``).

Files live in ``data_dir/<name>/``. Checksums: MD5s of the canonical files as listed by torchvision
(``torchvision/datasets/mnist.py``, ``cifar.py``) live in ``CHECKSUMS``; with ``verify=True`` (the
default) every file present is checked before it is parsed: the four gz files for the IDX sets; for
CIFAR the archive when it is extracted, and the extracted batch files when the folder is read
directly. A file with no entry in ``CHECKSUMS`` is not checked (tests monkeypatch it for tiny
files).
Downloads go to a temporary file, are checked, then renamed into place, so a partial download
never looks like data.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.request import urlopen  # module-level so tests can monkeypatch it away

import numpy as np
import torch

from depthlab.data.bundled import RawData


class DataFileError(ValueError):
    """A data file is missing, truncated, corrupt or has the wrong checksum; says what to do."""


CHECKSUMS: Dict[str, Dict[str, str]] = {  # dataset -> path under data_dir/<dataset>/ -> md5
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {
        "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
        "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
        "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
        "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    },
    "cifar100": {
        "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
        "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
        "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    },
}

MIRRORS: Dict[str, Tuple[str, ...]] = {  # tried in order; a file's URL is mirror + file name
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/",),
}

DOWNLOAD_TIMEOUT_S = 60


# ---- checksums and downloads ------------------------------------------------------------------

def md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)  # integrity against published MD5s, not security
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(name: str, root: Path, rel: str) -> None:
    """Raise DataFileError if ``root/rel`` does not match its expected MD5 (no entry: no check)."""
    expected = CHECKSUMS.get(name, {}).get(rel)
    if expected is None:
        return
    path = root / rel
    got = md5_file(path)
    if got != expected:
        raise DataFileError(
            f"{path}: checksum mismatch (md5 {got}, expected {expected}). The file is corrupt, "
            f"truncated or not the canonical {name} file; delete it and download it again "
            f"(from {_urls(name, rel)[0]}), or pass verify=False to skip the check.")


def _urls(name: str, rel: str) -> List[str]:
    return [mirror + PurePosixPath(rel).name for mirror in MIRRORS[name]]


def download_file(url: str, dest: Path, md5: Optional[str] = None) -> None:
    """Download ``url`` to ``dest`` atomically, checking ``md5`` before the file is renamed in."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
        if md5 is not None and md5_file(Path(tmp)) != md5:
            raise DataFileError(f"{url}: downloaded file fails its md5 check (expected {md5})")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fetch(name: str, root: Path, rel: str) -> Optional[str]:
    """Try every mirror for ``rel``; None on success, else a line describing each failure."""
    failures = []
    for url in _urls(name, rel):
        try:
            download_file(url, root / rel, CHECKSUMS.get(name, {}).get(rel))
            return None
        except (OSError, HTTPException, DataFileError) as err:  # URLError is an OSError
            failures.append(f"{url}: {err}")
    return "; ".join(failures)


def ensure_files(name: str, root: Path, files: Sequence[str], download: bool,
                 alternative: str = "") -> None:
    """Make sure ``root/f`` exists for every ``f``, downloading if allowed; else say how to fix."""
    missing = [f for f in files if not (root / f).is_file()]
    failure = None
    if missing and download:
        for rel in missing:
            failure = _fetch(name, root, rel)
            if failure:  # the mirrors are unreachable; don't wait out a timeout per file
                break
        missing = [f for f in files if not (root / f).is_file()]
    if not missing:
        return
    how = f"Download failed: {failure}." if failure else "Download is off (download=False)."
    places = "\n".join(f"  {f}   <- {' or '.join(_urls(name, f))}" for f in missing)
    raise DataFileError(
        f"{name} data not found: missing {', '.join(missing)} in {root}. {how}\n"
        f"To fix, place these files in {root}:\n{places}\n{alternative}"
        f"or load with download=True where those URLs are reachable. The data directory is set by "
        f"data_dir= or $DEPTHLAB_DATA_DIR.")


# ---- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dim
IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes, checking the magic number and the byte count."""
    try:
        with gzip.open(path, "rb") as f:
            raw = bytearray(f.read())  # bytearray: a writable buffer torch can share without a copy
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
        raise DataFileError(f"{path}: cannot decompress ({err}); the file is truncated or not "
                            f"gzip. Delete it and download it again.") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFileError(f"{path}: only {len(raw)} bytes, shorter than an IDX header; the file "
                            f"is truncated. Delete it and download it again.")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataFileError(f"{path}: bad IDX magic number 0x{got:08x}, expected 0x{magic:08x}; "
                            f"this is not the expected IDX file (images vs labels swapped?).")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataFileError(f"{path}: IDX header says shape {dims} ({expected} bytes) but the file "
                            f"holds {len(raw)} bytes; it is truncated or corrupt. Delete it and "
                            f"download it again.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _check_labels(path: Path, y: np.ndarray, n: int, num_classes: int, images: Path) -> None:
    if len(y) != n:
        raise DataFileError(f"{path}: {len(y)} labels but {images} holds {n} images")
    if len(y) and int(y.max()) >= num_classes:
        raise DataFileError(f"{path}: label {int(y.max())} out of range for {num_classes} classes")


def load_idx(name: str, data_dir: Path, download: bool, verify: bool) -> RawData:
    """MNIST-format data from ``data_dir/name/`` as uint8 (N, 1, 28, 28) images."""
    root = Path(data_dir) / name
    ensure_files(name, root, IDX_FILES, download)
    if verify:
        for rel in IDX_FILES:
            verify_checksum(name, root, rel)
    out = []
    for images, labels in (IDX_FILES[:2], IDX_FILES[2:]):
        x = read_idx(root / images, IDX_IMAGES_MAGIC)  # (N, H, W)
        y = read_idx(root / labels, IDX_LABELS_MAGIC)  # (N,)
        _check_labels(root / labels, y, len(x), 10, root / images)
        out += [torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
    return RawData(*out, num_classes=10)


# ---- CIFAR python pickles ---------------------------------------------------------------------

@dataclass(frozen=True)
class CifarLayout:
    archive: str
    folder: str
    train: Tuple[str, ...]
    test: Tuple[str, ...]
    label_key: str
    num_classes: int

    @property
    def members(self) -> List[str]:
        return [f"{self.folder}/{f}" for f in self.train + self.test]


CIFAR = {
    "cifar10": CifarLayout("cifar-10-python.tar.gz", "cifar-10-batches-py",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
                           "labels", 10),
    "cifar100": CifarLayout("cifar-100-python.tar.gz", "cifar-100-python", ("train",), ("test",),
                            "fine_labels", 100),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle cannot run arbitrary code here."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),  # numpy 1 pickles (the real files)
               ("numpy._core.multiarray", "_reconstruct"),  # numpy 2 pickles
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR batch -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    fix = f"Delete {path.parent} (and re-extract the archive) or download the data again."
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, ImportError, struct.error) as err:
        raise DataFileError(f"{path}: cannot unpickle ({type(err).__name__}: {err}); the file is "
                            f"truncated or corrupt. {fix}") from err
    if not isinstance(batch, dict):
        raise DataFileError(f"{path}: expected a pickled dict, got {type(batch).__name__}. {fix}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or label_key not in batch:
        raise DataFileError(f"{path}: keys {sorted(batch)} lack 'data' and/or {label_key!r}. {fix}")
    data, labels = batch["data"], np.asarray(batch[label_key], dtype=np.int64)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        got = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}"
        raise DataFileError(f"{path}: 'data' must be a uint8 (N, 3072) array, got {got}. {fix}")
    _check_labels(path, labels, len(data), num_classes, path)
    return data.reshape(-1, 3, 32, 32), labels  # rows are R, G, B planes of 32x32, row-major


def extract_cifar(archive: Path, root: Path, layout: CifarLayout) -> None:
    """Extract the layout's regular files from ``archive`` into ``root``, refusing unsafe members.

    Files are copied out by hand (no links, devices or permissions from the archive) into a
    temporary folder that is renamed into place only once complete.
    """
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise DataFileError(f"{archive}: refusing unsafe member path {member.name!r}")
                if not member.isfile() or not parts or parts[0] != layout.folder:
                    continue  # only the batch files matter; links and other entries are skipped
                dest = tmp.joinpath(*parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise DataFileError(f"{archive}: cannot read the archive ({err}); it is truncated or "
                            f"corrupt. Delete it and download it again.") from err
    try:
        lacking = [m for m in layout.members if not (tmp / m).is_file()]
        if lacking:
            raise DataFileError(f"{archive}: the archive lacks {', '.join(lacking)}; it is not the "
                                f"canonical {layout.archive}. Delete it and download it again.")
        try:
            os.replace(tmp / layout.folder, root / layout.folder)
        except OSError:  # another process extracted it first; fine if its copy is complete
            if any(not (root / m).is_file() for m in layout.members):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cifar_pickles_present(name: str, data_dir: Path) -> bool:
    """Whether ``data_dir/name/`` holds the pickled form (its folder or its archive), which is read
    in preference to the class-folder form."""
    layout, root = CIFAR[name], Path(data_dir) / name
    return (root / layout.folder).exists() or (root / layout.archive).is_file()


def load_cifar(name: str, data_dir: Path, download: bool, verify: bool) -> RawData:
    """CIFAR-10/100 from ``data_dir/name/``: the extracted folder if complete, else the archive."""
    layout = CIFAR[name]
    root = Path(data_dir) / name
    folder = root / layout.folder
    extracted_now = False
    missing = [m for m in layout.members if not (root / m).is_file()]
    if missing:
        if folder.exists():  # never overwrite a folder the user made; say what is wrong with it
            raise DataFileError(f"{folder} is incomplete (missing {', '.join(missing)}); add "
                                f"the missing files, or delete the folder so it is extracted "
                                f"again from {root / layout.archive} (downloaded if needed).")
        ensure_files(name, root, [layout.archive], download,
                     alternative=f"(or instead the extracted folder {layout.folder}/ holding "
                                 f"{', '.join(layout.train + layout.test)}; or the class-folder form: "
                                 f"train/<class>/ and test/<class>/ of PNG or JPEG images, as a folder or "
                                 f"archive in {root} or named by data.path)\n")
        if verify:
            verify_checksum(name, root, layout.archive)
        extract_cifar(root / layout.archive, root, layout)
        extracted_now = True
    if verify and not extracted_now:  # freshly extracted files come from a verified archive
        for rel in layout.members:
            verify_checksum(name, root, rel)

    def read(files):
        parts = [read_cifar_batch(folder / f, layout.label_key, layout.num_classes) for f in files]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(x), torch.from_numpy(y)

    return RawData(*read(layout.train), *read(layout.test), num_classes=layout.num_classes)
