"""Datasets read from image folders (``depthlab.data.images``), decoded once into a cache:
``imagefolder`` (your own classes) and the class-folder form of CIFAR-10/100 (PNG or JPEG).

The cache: ``<data_dir>/imagefolder-cache/<key>.pt`` (uint8 images, labels, class names), where
``key`` is the SHA-256 of the cache format version, the requirement (CIFAR: 32x32 RGB), ``resize``
and the source's content: the SHA-256 of an archive's bytes, or of a folder's every image file
(relative path and bytes, in sorted order). A changed, added or removed image is a new key; a
second load with the same content reads the cache and decodes nothing. Written atomically; a damaged
cache file is decoded again, with a warning.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

import depthlab.data.images as images
import depthlab.data.progress as progress
from depthlab.data.bundled import RawData, check_positive_int
from depthlab.data.checks import load_tensor_file
from depthlab.data.files import CIFAR, DataFileError
from depthlab.fileio import atomic_write_bytes

log = logging.getLogger("depthlab")

CACHE_DIR = "imagefolder-cache"
CACHE_VERSION = 1
CHUNK = 1 << 20


@dataclass
class FolderData:
    train_x: torch.Tensor          # uint8 (N, C, H, W)
    train_y: torch.Tensor          # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: Tuple[str, ...]
    formats: Dict[str, int]        # file format (PNG, JPEG, ...) -> images
    test_split: str                # "test" or "val"
    cache: Path
    decoded: bool                  # False: read from the cache


def _archive_digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
    except OSError as err:
        raise DataFileError(f"{path}: cannot read the archive: {err.strerror or err}") from None
    return h.hexdigest()


def _folder_digest(src: images.Source) -> str:
    h = hashlib.sha256()
    rels = sorted(src.files)
    with progress.bar(len(rels), f"hashing {len(rels):,} images in {src.path.name}") as advance:
        for rel in rels:
            data = src.files[rel]()
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + len(data).to_bytes(8, "little"))
            h.update(data)
            advance()
    return h.hexdigest()


def cache_path(data_dir: Path, kind: str, digest: str, resize: Optional[int],
               require: Optional[images.Require]) -> Path:
    key = f"v{CACHE_VERSION}|{kind}|{digest}|resize={resize}|require={require.key() if require else '-'}"
    return Path(data_dir) / CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()}.pt"


def _read_cache(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        obj = load_tensor_file(path, "data")
        x, y, tx, ty = (obj[k] for k in ("train_x", "train_y", "test_x", "test_y"))
        ok = (all(t.dtype == torch.uint8 and t.dim() == 4 for t in (x, tx))
              and all(t.dtype == torch.int64 and t.dim() == 1 for t in (y, ty))
              and len(x) == len(y) and len(tx) == len(ty) and x.shape[1:] == tx.shape[1:]
              and isinstance(obj["classes"], list) and all(isinstance(c, str) for c in obj["classes"])
              and isinstance(obj["formats"], dict) and obj["test_split"] in ("test", "val"))
        if ok:
            return obj
        reason = "unexpected contents"
    except (DataFileError, KeyError, TypeError, AttributeError) as err:
        reason = str(err)
    log.warning("%s: damaged image cache (%s); decoding the images again", path, reason)
    return None


def _from_cache(obj: dict, path: Path) -> FolderData:
    return FolderData(obj["train_x"], obj["train_y"], obj["test_x"], obj["test_y"], tuple(obj["classes"]),
                      dict(obj["formats"]), obj["test_split"], path, decoded=False)


Check = Callable[[Tuple[str, ...], int, int, str, str], None]  # (classes, n_train, n_test, test split, where)


def read_image_folder(path: Path, data_dir: Path, resize: Optional[int] = None,
                      require: Optional[images.Require] = None, check: Optional[Check] = None) -> FolderData:
    """The image folder or archive at ``path`` as uint8 tensors, from the cache when its content was
    decoded before (see the module docstring); ``check`` may refuse the classes and counts before
    anything is decoded."""
    path = Path(path)
    if path.is_dir():
        src = images.open_source(path)
        layout = images.class_layout(src)  # layout mistakes first: they need no hashing
        if check is not None:
            check(layout.classes, len(layout.train), len(layout.test), layout.test_split, str(path))
        cache = cache_path(data_dir, "folder", _folder_digest(src), resize, require)
        cached = _read_cache(cache)
        if cached is not None:
            return _from_cache(cached, cache)
    else:
        if not path.exists():
            raise DataFileError(f"{path}: no such folder or archive")
        if not images.is_archive(path):
            images.open_source(path)  # a file that is no archive: raises, saying what path must be
        cache = cache_path(data_dir, "archive", _archive_digest(path), resize, require)
        cached = _read_cache(cache)
        if cached is not None:
            data = _from_cache(cached, cache)
            if check is not None:
                check(data.classes, len(data.train_y), len(data.test_y), data.test_split, str(path))
            return data
        src = images.open_source(path)
        layout = images.class_layout(src)
        if check is not None:
            check(layout.classes, len(layout.train), len(layout.test), layout.test_split, str(path))
    if layout.ignored_val:
        log.warning("%s: both test/ and val/ are present; test/ is the test split and val/ is not read", path)
    rels = [r for r, _ in layout.train] + [r for r, _ in layout.test]
    x, formats = images.decode(src, rels, resize, require)
    n = len(layout.train)
    obj = {"train_x": torch.from_numpy(x[:n]).clone(), "train_y": torch.tensor([y for _, y in layout.train]),
           "test_x": torch.from_numpy(x[n:]).clone(), "test_y": torch.tensor([y for _, y in layout.test]),
           "classes": list(layout.classes), "formats": dict(formats), "test_split": layout.test_split,
           "source": str(path), "version": CACHE_VERSION}
    obj["train_y"], obj["test_y"] = obj["train_y"].to(torch.int64), obj["test_y"].to(torch.int64)
    try:
        atomic_write_bytes(cache, lambda f: torch.save(obj, f))
    except OSError as err:  # a read-only data dir: carry on without the cache
        log.warning("could not cache the decoded images at %s (%s); they are decoded again next time", cache, err)
    data = _from_cache(obj, cache)
    data.decoded = True
    return data


def _padding(h: int, w: int) -> int:
    """Pad-and-crop padding scaled with the image: 4 pixels at 32 (CIFAR's), at least 1."""
    return max(1, round(4 * min(h, w) / 32))


def imagefolder(data_dir: Path, seed: int, download: bool, *, path: Optional[str] = None,
                resize: Optional[int] = None) -> RawData:
    """Your own images in class folders (``depthlab.data.images``): grayscale when every image is,
    else RGB; default augmentation crop-flip for colour (padding 4 per 32 pixels), none for grayscale."""
    if path is None:
        raise DataFileError("dataset 'imagefolder' needs path=DIR (CLI: data.path=DIR): a folder or a .tar, "
                            f".tar.gz, .tgz or .zip archive; {images.LAYOUT}")
    if resize is not None:
        check_positive_int("resize", resize)
    d = read_image_folder(Path(path).expanduser(), data_dir, resize)
    h, w = d.train_x.shape[2], d.train_x.shape[3]
    colour = d.train_x.shape[1] == 3
    return RawData(d.train_x, d.train_y, d.test_x, d.test_y, len(d.classes), class_names=d.classes,
                   augment="crop-flip" if colour else "none", crop_padding=_padding(h, w))


# ---- CIFAR's class-folder form -----------------------------------------------------------------

CIFAR_CLASSES = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": (  # the fine label names; label i is the i-th (they are in alphabetical order)
        "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle", "bowl", "boy",
        "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle", "chair", "chimpanzee",
        "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant",
        "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower",
        "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
        "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate",
        "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal", "shark",
        "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar", "sunflower",
        "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
        "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm"),
}
CIFAR_COUNTS = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}  # (train, test); tests lower them
CIFAR_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def _few(names, n: int = 8) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _cifar_check(name: str, verify: bool) -> Check:
    title, want = CIFAR_TITLES[name], CIFAR_CLASSES[name]

    def check(classes, n_train, n_test, test_split, where):
        if tuple(classes) != want:
            missing = [c for c in want if c not in classes]
            extra = [c for c in classes if c not in want]
            what = "; ".join(([f"missing: {_few(missing)}"] if missing else [])
                             + ([f"not {title} classes: {_few(extra)}"] if extra else []))
            raise DataFileError(f"{where}: the class folders are not {title}'s {len(want)} classes ({what}); "
                                f"{title}'s classes are {_few(want, 10)}")
        counts = CIFAR_COUNTS[name]
        if verify and (n_train, n_test) != counts:
            raise DataFileError(f"{where}: train/ holds {n_train:,} images and {test_split}/ {n_test:,}, but {title} "
                                f"has {counts[0]:,} and {counts[1]:,}; the copy is incomplete or not {title} "
                                f"(from Python, load_dataset(..., verify=False) skips this count)")
    return check


def find_cifar_folders(name: str, data_dir: Path) -> Optional[Path]:
    """The class-folder form of CIFAR under ``<data_dir>/<name>/``: that folder itself when it holds
    ``train/``, else its one subfolder holding ``train/``, or its one archive (other than the pickled
    one); None when there is none; several are an error naming them."""
    root = Path(data_dir) / name
    if not root.is_dir():
        return None
    if (root / "train").is_dir():
        return root
    pickled = CIFAR[name]
    found = [p for p in sorted(root.iterdir()) if not p.name.startswith(".")
             and p.name not in (pickled.archive, pickled.folder)
             and ((p.is_dir() and (p / "train").is_dir()) or (p.is_file() and images.is_archive(p)))]
    if len(found) > 1:
        raise DataFileError(f"{root} holds {len(found)} candidates for {name}'s class-folder form "
                            f"({_few(p.name for p in found)}); keep one, or choose one with path= (CLI: data.path=...)")
    return found[0] if found else None


_ANNOUNCED: set = set()  # (dataset, path) whose form this process has already named


def load_cifar_folders(name: str, path: Path, data_dir: Path, verify: bool = True) -> RawData:
    """CIFAR-10/100 from its class-folder form (a folder or archive in the ``imagefolder`` layout):
    its structure checked (CIFAR's classes in label order, 50,000 / 10,000 images, every image 32x32
    RGB) in place of the pickled archive's MD5s."""
    title = CIFAR_TITLES[name]
    require = images.Require((32, 32), True, f"{title}'s class-folder form")
    d = read_image_folder(Path(path), data_dir, require=require, check=_cifar_check(name, verify))
    kinds = " and ".join(sorted(d.formats))
    if (name, str(path)) not in _ANNOUNCED:  # once per process: a grid's runs each load it again
        _ANNOUNCED.add((name, str(path)))
        log.warning("%s: read the class-folder form at %s (%s train / %s test %s images, 32x32 RGB); the archive's "
                    "MD5 checksums do not apply, checked its structure instead", name, path, f"{len(d.train_y):,}",
                    f"{len(d.test_y):,}", kinds)
    lossy = ("; JPEG is a lossy re-encoding of CIFAR's pixels, so compare its errors with the papers' only "
             "roughly") if "JPEG" in d.formats else ""
    source = f"{title} from its class-folder form ({kinds} images{lossy})"
    return RawData(d.train_x, d.train_y, d.test_x, d.test_y, len(d.classes), class_names=d.classes, source=source)
