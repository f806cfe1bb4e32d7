"""Image folders in torchvision's ImageFolder layout, read with Pillow: a folder, or a ``.tar``,
``.tar.gz``/``.tgz`` or ``.zip`` archive of one, holding ``train/<class>/<image>`` and
``test/<class>/<image>`` (``val/`` stands in for a missing ``test/``), optionally inside one top-level
folder. Classes are the sorted folder names (labels 0..K-1, torchvision's order); images in nested
folders count for their class; hidden files, ``__MACOSX/`` and files that are not images are skipped.

Every mistake is one ``DataFileError`` line naming the file or folder. Archives are read in memory,
never extracted; a member path with ``..`` or an absolute one is refused.
"""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, List, Optional, Set, Tuple

import numpy as np

import depthlab.data.progress as progress
from depthlab.data.files import DataFileError
from depthlab.fileio import os_cause

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ARCHIVE_SUFFIXES = TAR_SUFFIXES + (".zip",)
LAYOUT = ("an image folder holds train/<class>/<image> and test/<class>/<image> (or val/ for test/), "
          "optionally inside one top-level folder")
PICKLED_CIFAR = ("cifar-10-batches-py", "cifar-100-python", "cifar-10-python.tar.gz", "cifar-100-python.tar.gz")


def is_archive(path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _skipped(parts) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Source:
    """A folder or an archive as posix paths relative to it: image files (with a reader) and folders."""

    path: Path
    archive: bool
    files: Dict[str, Callable[[], bytes]] = field(default_factory=dict)
    dirs: Set[str] = field(default_factory=set)
    others: Set[str] = field(default_factory=set)  # files that are not images

    def show(self, rel: str) -> str:
        """How a message names the file or folder ``rel``."""
        return f"{self.path} (member {rel})" if self.archive else str(self.path / rel)

    def add_file(self, rel: str, reader: Callable[[], bytes]) -> None:
        parts = PurePosixPath(rel).parts
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if _is_image(rel):
            self.files[rel] = reader
        else:
            self.others.add(rel)


def open_source(path: Path) -> Source:
    """The folder or archive at ``path`` (archives are read into memory, images only)."""
    if path.is_dir():
        return _folder(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such folder or archive")
    if not is_archive(path):
        raise DataFileError(f"{path} is a file but not a .tar, .tar.gz, .tgz or .zip archive; give a folder or "
                            f"an archive of one ({LAYOUT})")
    try:
        return _zip(path) if str(path).lower().endswith(".zip") else _tar(path)
    except DataFileError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, ValueError) as err:
        raise DataFileError(f"{path}: cannot read the archive ({type(err).__name__}: {' '.join(str(err).split())}); "
                            f"it is truncated or corrupt: download or pack it again") from None


def _folder(root: Path) -> Source:
    src = Source(root, archive=False)
    seen = set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        rel_dir = Path(folder).relative_to(root).as_posix()
        dirs[:] = sorted(d for d in dirs if not _skipped([d]))
        prefix = "" if rel_dir == "." else rel_dir + "/"
        src.dirs.update(prefix + d for d in dirs)
        for name in names:
            if not _skipped([name]):
                src.add_file(prefix + name, _reader(Path(folder, name)))
    return src


def _reader(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        try:
            return path.read_bytes()
        except OSError as err:
            raise DataFileError(f"{path}: cannot read the file: {os_cause(err)}") from None
    return read


def _member_parts(archive: Path, name: str) -> Tuple[str, ...]:
    """The path parts of an archive member; an absolute or ``..`` path is refused."""
    name = name.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or (parts and parts[0].endswith(":")):
        raise DataFileError(f"{archive}: refusing unsafe member path {name!r} (absolute or with '..'); the archive "
                            f"was not read")
    return parts


def _from_members(path: Path, members) -> Source:
    """An archive's ``(name, is_dir, read)`` members as a ``Source`` (``read`` is None for what is
    not a regular file: links, devices and the like are skipped)."""
    src = Source(path, archive=True)
    for name, is_dir, read in members:
        parts = _member_parts(path, name)
        if not parts or _skipped(parts):
            continue
        rel = "/".join(parts)
        if is_dir:
            src.dirs.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        elif read is not None:
            data = read() if _is_image(rel) else b""
            src.add_file(rel, lambda data=data: data)
    return src


def _tar(path: Path) -> Source:
    with tarfile.open(path, "r:*") as tar:
        return _from_members(path, ((m.name, m.isdir(), (lambda m=m: tar.extractfile(m).read()) if m.isfile()
                                     else None) for m in tar))


def _zip(path: Path) -> Source:
    with zipfile.ZipFile(path) as zf:  # zf.read checks each member's CRC
        return _from_members(path, ((i.filename, i.is_dir(), lambda i=i: zf.read(i)) for i in zf.infolist()))


# ---- the layout --------------------------------------------------------------------------------

@dataclass
class Layout:
    classes: Tuple[str, ...]
    train: List[Tuple[str, int]]   # (path relative to the source, label), sorted by class then path
    test: List[Tuple[str, int]]
    test_split: str                # "test" or "val"
    ignored_val: bool = False      # both test/ and val/ exist: val/ is not read


def _found(src: Source, prefix: str) -> str:
    """The entries directly inside ``prefix`` (folders with a trailing /), for messages."""
    names = set()
    for p in [*src.dirs, *src.files, *src.others]:
        if p.startswith(prefix) and p != prefix.rstrip("/"):
            rest = p[len(prefix):]
            first = rest.split("/")[0]
            names.add(first + "/" if "/" in rest or p in src.dirs else first)
    names = sorted(names)
    return (", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")) or "nothing"


def _top(src: Source) -> str:
    """The folder the splits sit in: the root, or its one top-level folder."""
    if "train" in src.dirs:
        return ""
    tops = {p.split("/")[0] for p in [*src.dirs, *src.files, *src.others]}
    if len(tops) == 1 and next(iter(tops)) in src.dirs and f"{next(iter(tops))}/train" in src.dirs:
        return next(iter(tops)) + "/"
    wrapper = next(iter(tops)) + "/" if len(tops) == 1 and next(iter(tops)) in src.dirs else ""
    found = _found(src, wrapper)
    hint = ("; that is CIFAR's pickled form: put it in <data dir>/cifar10/ (or cifar100/) and leave data.path "
            "unset" if any(n in found for n in PICKLED_CIFAR) else "")
    where = src.show(wrapper.rstrip("/")) if wrapper else str(src.path)
    raise DataFileError(f"{where} holds no train/ folder (found: {found}); {LAYOUT}{hint}")


def _split_classes(src: Source, split_dir: str) -> Dict[str, List[str]]:
    """``{class: [image paths]}`` of one split folder; an image outside a class folder or an empty
    class folder is refused."""
    classes = {d[len(split_dir) + 1:]: [] for d in src.dirs
               if d.startswith(split_dir + "/") and "/" not in d[len(split_dir) + 1:]}
    for rel in src.files:
        if rel.startswith(split_dir + "/"):
            rest = rel[len(split_dir) + 1:]
            if "/" not in rest:
                raise DataFileError(f"{src.show(rel)} is not inside a class folder; {split_dir.split('/')[-1]}/ holds "
                                    f"one folder per class ({split_dir.split('/')[-1]}/<class>/<image>)")
            classes[rest.split("/")[0]].append(rel)
    for name in sorted(classes):
        if not classes[name]:
            raise DataFileError(f"{src.show(f'{split_dir}/{name}')} is an empty class folder: it holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    if not classes:
        raise DataFileError(f"{src.show(split_dir)} holds no class folders; {LAYOUT}")
    return {k: sorted(v) for k, v in classes.items()}


def class_layout(src: Source) -> Layout:
    """The splits and classes of a source, every layout mistake refused with the folder named."""
    top = _top(src)
    test_split = "test" if top + "test" in src.dirs else "val" if top + "val" in src.dirs else None
    if test_split is None:
        raise DataFileError(f"{src.show(top.rstrip('/')) if top else src.path} has train/ but no test/ or val/ "
                            f"folder (found: {_found(src, top)}); {LAYOUT}")
    train, test = _split_classes(src, top + "train"), _split_classes(src, top + test_split)
    if set(train) != set(test):
        only_train, only_test = sorted(set(train) - set(test)), sorted(set(test) - set(train))
        parts = ([f"only in train/: {', '.join(only_train)}"] if only_train else []) + \
                ([f"only in {test_split}/: {', '.join(only_test)}"] if only_test else [])
        raise DataFileError(f"{src.show(top.rstrip('/')) if top else src.path}: the class folders of train/ and "
                            f"{test_split}/ differ ({'; '.join(parts)}); every class needs a folder in both")
    classes = tuple(sorted(train))
    label = {c: i for i, c in enumerate(classes)}
    return Layout(classes, [(r, label[c]) for c in classes for r in train[c]],
                  [(r, label[c]) for c in classes for r in test[c]], test_split,
                  ignored_val=test_split == "test" and top + "val" in src.dirs)


# ---- decoding ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Require:
    """What every image must be (the CIFAR class-folder form): ``size`` (width, height), colour."""

    size: Tuple[int, int]
    colour: bool
    what: str  # e.g. "CIFAR-10's class-folder form"

    def key(self) -> str:
        return f"{self.size[0]}x{self.size[1]}-{'rgb' if self.colour else 'any'}"


def _grey_or_rgb(im):
    """``(image in mode L or RGB, is grayscale)``: palette images by their colours, 16-bit grey
    scaled to 8 bits, alpha dropped (as torchvision's loader does)."""
    from PIL import Image

    mode = im.mode
    if mode in ("P", "PA"):
        rgb = im.convert("RGBA" if mode == "PA" or "transparency" in im.info else "RGB").convert("RGB")
        a = np.asarray(rgb)
        if (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all():
            return Image.fromarray(np.ascontiguousarray(a[..., 0]), "L"), True
        return rgb, False
    if mode.startswith("I;16"):
        return Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L"), True
    if mode in ("I", "F"):
        return Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8), "L"), True
    if mode in ("1", "L", "LA", "La"):
        return im.convert("L"), True
    return im.convert("RGB"), False  # RGB, RGBA, CMYK, YCbCr, LAB, HSV


def _wxh(size) -> str:
    return f"{size[0]}x{size[1]}"


def decode(src: Source, rels: List[str], resize: Optional[int] = None,
           require: Optional[Require] = None) -> Tuple[np.ndarray, Counter]:
    """``(uint8 images (N, C, H, W), Counter of file formats)``: C is 1 when every image is
    grayscale, else 3 (grayscale images repeated over R, G, B). Images must share one size unless
    ``resize`` (every image resized to resize x resize, bilinear with Pillow's antialiasing)."""
    from PIL import Image, UnidentifiedImageError

    out = grey = first = None
    formats: Counter = Counter()
    with progress.bar(len(rels), f"decoding {len(rels):,} images from {src.path.name}") as advance:
        for i, rel in enumerate(rels):
            try:
                with Image.open(io.BytesIO(src.files[rel]())) as im:
                    if require is not None and im.size != require.size:
                        raise DataFileError(f"{src.show(rel)} is {_wxh(im.size)} pixels (width x height); "
                                            f"{require.what} holds {_wxh(require.size)} images")
                    if resize is None and first is not None and im.size != first[1]:
                        side = min(first[1])
                        raise DataFileError(
                            f"images differ in size: {src.show(first[0])} is {_wxh(first[1])} but {src.show(rel)} "
                            f"is {_wxh(im.size)} (width x height); resize them all with resize={side} (CLI: "
                            f"data.resize={side}), which makes every image {side}x{side}")
                    formats[im.format or "unknown"] += 1
                    size = im.size
                    im.load()
                    img, is_grey = _grey_or_rgb(im)
                    if require is not None and require.colour and is_grey:
                        raise DataFileError(f"{src.show(rel)} is a grayscale image (mode {im.mode}); {require.what} "
                                            f"holds RGB images")
                    if resize is not None:
                        img = img.resize((resize, resize), Image.Resampling.BILINEAR)
                    pixels = np.asarray(img)
            except DataFileError:
                raise
            except Exception as err:  # noqa: BLE001 - whatever a damaged file makes Pillow raise, the file is at fault
                why = ("not an image format Pillow reads, or damaged" if isinstance(err, UnidentifiedImageError)
                       else f"{type(err).__name__}: {' '.join(str(err).split())}")
                raise DataFileError(f"{src.show(rel)}: cannot read the image ({why}); replace or delete the file") \
                    from None
            if out is None:
                first = (rel, size)
                out = np.empty((len(rels), pixels.shape[0], pixels.shape[1], 3), dtype=np.uint8)
                grey = np.zeros(len(rels), dtype=bool)
            out[i] = pixels[:, :, None] if is_grey else pixels
            grey[i] = is_grey
            advance()
    if out is None:
        return np.zeros((0, 3, 0, 0), np.uint8), formats
    if grey.all():
        return np.ascontiguousarray(out[:, None, :, :, 0]), formats
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2)), formats
