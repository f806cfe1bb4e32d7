"""Tests for depthlab.data: bundled datasets, file formats, checksums, splits and the DeviceLoader.

Nothing here touches the network: ``files.urlopen`` is replaced for every test.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthlab.data import (DATASETS, DataFileError, DeviceLoader, crop_at, default_data_dir,
                           draw_crop_offsets, draw_flip_mask, list_datasets, load_dataset,
                           random_crop, random_hflip, stratified_split)
from depthlab.data import bundled, files
from depthlab.registry import UnknownNameError

IDX = files.IDX_FILES


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, and the default data dir is a scratch folder; records attempted URLs."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise URLError("network disabled in tests")

    monkeypatch.setattr(files, "urlopen", refuse)
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "default-data"))
    return calls


def denormalise(d, x):
    mean = torch.tensor(d.norm_mean).view(1, -1, 1, 1)
    std = torch.tensor(d.norm_std).view(1, -1, 1, 1)
    return x * std + mean


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def assert_train_normalised(d):
    mean = d.train_x.mean(dim=(0, 2, 3))
    std = d.train_x.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)


# ---- registry, arguments ----------------------------------------------------------------------

def test_all_datasets_registered():
    assert set(list_datasets()) == {"digits", "mnist1d", "synthetic", "mnist", "fashion-mnist",
                                    "cifar10", "cifar100"}
    assert list_datasets() == DATASETS.names()


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as err:
        load_dataset("cifar11")
    for name in list_datasets():
        assert name in str(err.value)


@pytest.mark.parametrize("kwargs, field", [
    (dict(val_fraction=1.0), "val_fraction"), (dict(val_fraction=-0.1), "val_fraction"),
    (dict(seed=-1), "seed"), (dict(colour=True), "colour"),
])
def test_bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        load_dataset("synthetic", n_train=16, n_test=8, **kwargs)


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError) as err:
        load_dataset("synthetic", size=3)
    for option in ("shape", "num_classes", "n_train", "n_test", "noise"):
        assert option in str(err.value)


@pytest.mark.parametrize("options, field", [
    (dict(shape=(3, 32)), "shape"), (dict(num_classes=1), "num_classes"),
    (dict(n_train=0), "n_train"),
])
def test_bad_synthetic_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        load_dataset("synthetic", **options)


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "a"))
    assert default_data_dir() == tmp_path / "a"
    monkeypatch.delenv("DEPTHLAB_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "depthlab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".cache" / "depthlab"


# ---- stratified split -------------------------------------------------------------------------

def test_stratified_split_partitions_and_keeps_class_proportions():
    y = np.repeat(np.arange(5), [10, 20, 33, 7, 50])
    kept, held = stratified_split(y, 0.3, seed=3, stream=1)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    assert len(held) == round(0.3 * len(y))
    for c, n_c in enumerate([10, 20, 33, 7, 50]):
        assert abs((y[held] == c).sum() - 0.3 * n_c) <= 1
    again = stratified_split(y, 0.3, seed=3, stream=1)
    assert np.array_equal(held, again[1])
    assert not np.array_equal(held, stratified_split(y, 0.3, seed=4, stream=1)[1])
    assert not np.array_equal(held, stratified_split(y, 0.3, seed=3, stream=2)[1])


# ---- bundled datasets -------------------------------------------------------------------------

def test_digits_shapes_split_and_normalisation():
    from sklearn.datasets import load_digits

    d = load_dataset("digits")
    assert d.train_x.shape[1:] == (1, 8, 8) and d.test_x.shape[1:] == (1, 8, 8)
    assert len(d.train_x) + len(d.test_x) == 1797 and len(d.test_x) == round(0.2 * 1797)
    assert d.train_x.dtype == torch.float32 and d.train_y.dtype == torch.int64
    assert d.num_classes == 10 and d.in_channels == 1 and d.image_size == (8, 8)
    assert d.default_augment == "none"
    assert_train_normalised(d)
    # Stratified: each class has its 20% share in test, to within one sample.
    counts = torch.bincount(torch.cat([d.train_y, d.test_y]), minlength=10)
    assert (torch.bincount(d.test_y, minlength=10) - 0.2 * counts).abs().max() <= 1
    # Train and test together are exactly the 1,797 original images, each once.
    raw = load_digits()
    pixels = torch.cat([denormalise(d, d.train_x), denormalise(d, d.test_x)]).round().view(-1, 64)
    labels = torch.cat([d.train_y, d.test_y]).view(-1, 1).float()
    ours = np.unique(torch.cat([pixels, labels], 1).numpy(), axis=0, return_counts=True)
    theirs = np.unique(np.c_[raw.data, raw.target], axis=0, return_counts=True)
    assert np.array_equal(ours[0], theirs[0]) and np.array_equal(ours[1], theirs[1])
    # Fixed: the same split every time for the same seed, a different one for another seed.
    again = load_dataset("digits")
    assert torch.equal(d.test_x, again.test_x) and torch.equal(d.test_y, again.test_y)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(d.test_y, other.test_y) or not torch.equal(d.test_x, other.test_x)


def test_mnist1d_shapes_cache_and_global_rng(tmp_path):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    d = load_dataset("mnist1d", data_dir=tmp_path)
    # The generator reseeds numpy's and python's global RNGs; we must hand them back untouched.
    assert np.random.rand() == expected_np and random.random() == expected_py
    assert d.train_x.shape == (4000, 1, 1, 40) and d.test_x.shape == (1000, 1, 1, 40)
    assert set(d.train_y.tolist()) == set(range(10)) and d.num_classes == 10
    assert_train_normalised(d)
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1
    again = load_dataset("mnist1d", data_dir=tmp_path)  # from the cache
    assert torch.equal(d.train_x, again.train_x) and torch.equal(d.test_y, again.test_y)
    cached[0].write_bytes(b"not an npz")  # a damaged cache reads as absent: it gets regenerated
    assert bundled._read_mnist1d_cache(cached[0]) is None


def nearest_mean_accuracy(d):
    means = torch.stack([d.train_x[d.train_y == c].mean(0) for c in range(d.num_classes)])
    dist = torch.cdist(d.test_x.flatten(1), means.flatten(1))
    return (dist.argmin(1) == d.test_y).float().mean().item()


def test_synthetic_is_seeded_and_learnable():
    d = load_dataset("synthetic")
    assert d.train_x.shape == (512, 3, 32, 32) and d.test_x.shape == (256, 3, 32, 32)
    balanced = [512 // 10 + (c < 512 % 10) for c in range(10)]
    assert torch.bincount(d.train_y, minlength=10).tolist() == balanced
    assert_train_normalised(d)
    assert nearest_mean_accuracy(d) > 0.9  # chance is 0.1
    same, other = load_dataset("synthetic"), load_dataset("synthetic", seed=1)
    assert torch.equal(d.train_x, same.train_x) and torch.equal(d.test_y, same.test_y)
    assert not torch.equal(d.train_x, other.train_x)
    small = load_dataset("synthetic", shape=(1, 1, 40), num_classes=4, n_train=40, n_test=12)
    assert small.train_x.shape == (40, 1, 1, 40) and small.num_classes == 4


def test_synthetic_learnable_by_a_small_convnet(one_thread):
    torch.manual_seed(0)
    d = load_dataset("synthetic", shape=(3, 16, 16), n_train=256, n_test=256)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = DeviceLoader(d.train_x, d.train_y, batch_size=64, seed=0)
    for _ in range(5):
        for xb, yb in loader:
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (net(d.test_x).argmax(1) == d.test_y).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


def test_val_split_is_disjoint_stratified_and_leaves_test_alone():
    full = load_dataset("synthetic", n_train=200, n_test=50)
    split = load_dataset("synthetic", n_train=200, n_test=50, val_fraction=0.25)
    assert len(split.val_x) == 50 and len(split.train_x) == 150
    assert torch.bincount(split.val_y, minlength=10).tolist() == [5] * 10  # 25% of 20 per class
    assert_train_normalised(split)  # statistics of the remaining train part only
    # Train + val (un-normalised) are exactly the original train images, each used once.
    parts = torch.cat([denormalise(split, split.train_x), denormalise(split, split.val_x)])
    dist = torch.cdist(parts.flatten(1), denormalise(full, full.train_x).flatten(1),
                       compute_mode="donot_use_mm_for_euclid_dist")  # exact, not the fast form
    nearest = dist.argmin(1)
    assert dist.min(1).values.max() < 1e-3
    assert torch.equal(nearest.sort().values, torch.arange(200))
    assert torch.equal(torch.cat([split.train_y, split.val_y]), full.train_y[nearest])
    torch.testing.assert_close(denormalise(split, split.test_x), denormalise(full, full.test_x),
                               atol=1e-4, rtol=0)
    assert torch.equal(split.test_y, full.test_y)
    assert full.val_x is None and full.val_y is None


def test_dataset_to_and_summary():
    d = load_dataset("synthetic", n_train=20, n_test=10, val_fraction=0.5)
    moved = d.to("cpu")
    assert moved is not d and torch.equal(moved.val_x, d.val_x)
    assert "synthetic" in d.summary() and "10 val" in d.summary()


# ---- IDX files (MNIST, Fashion-MNIST) ---------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_tiny_idx_set(root: Path, n_train=6, n_test=4, hw=(28, 28), seed=0):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x, files.IDX_IMAGES_MAGIC)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y, files.IDX_LABELS_MAGIC)
        arrays[prefix] = (x, y)
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_round_trip(name, tmp_path, monkeypatch, offline):
    arrays = write_tiny_idx_set(tmp_path / name, hw=(5, 7))
    # Checksums on: the expected MD5s are those of our tiny files.
    monkeypatch.setitem(files.CHECKSUMS, name, {f: md5(tmp_path / name / f) for f in IDX})
    d = load_dataset(name, data_dir=tmp_path, download=False)
    for x, y, (ref_x, ref_y) in ((d.train_x, d.train_y, arrays["train"]),
                                 (d.test_x, d.test_y, arrays["t10k"])):
        assert x.shape == (len(ref_x), 1, 5, 7)
        pixels = denormalise(d, x).round().squeeze(1).to(torch.int64)
        assert torch.equal(pixels, torch.from_numpy(ref_x).to(torch.int64))
        assert torch.equal(y, torch.from_numpy(ref_y).to(torch.int64))
    assert np.array_equal(files.read_idx(tmp_path / name / IDX[0], files.IDX_IMAGES_MAGIC),
                          arrays["train"][0])
    assert offline == []  # everything was there: no download attempted


def test_idx_wrong_checksum_names_the_file(tmp_path):
    write_tiny_idx_set(tmp_path / "mnist")  # real MD5s stay in CHECKSUMS: these cannot match
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz.*checksum"):
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert len(load_dataset("mnist", data_dir=tmp_path, download=False, verify=False).train_x) == 6


def test_idx_truncated_gzip_stream(tmp_path):
    write_tiny_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / IDX[2]
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte.gz.*truncated"):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


@pytest.mark.parametrize("cut", [1, 100, 28 * 28 * 6 + 10])
def test_idx_truncated_payload(tmp_path, cut):
    write_tiny_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / IDX[0]
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-cut]))
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


def test_idx_trailing_bytes_and_bad_magic(tmp_path):
    write_tiny_idx_set(tmp_path / "mnist")
    path = tmp_path / "mnist" / IDX[1]
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b"\0"))
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte.gz"):
        files.read_idx(path, files.IDX_LABELS_MAGIC)
    with pytest.raises(DataFileError, match="magic"):
        files.read_idx(tmp_path / "mnist" / IDX[0], files.IDX_LABELS_MAGIC)


def test_idx_label_count_mismatch(tmp_path):
    write_tiny_idx_set(tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / IDX[3], np.zeros(3), files.IDX_LABELS_MAGIC)  # 4 images
    with pytest.raises(DataFileError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", data_dir=tmp_path, download=False, verify=False)


def test_missing_files_offline_says_what_to_place_where(tmp_path, offline):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / IDX[1], np.zeros(6), files.IDX_LABELS_MAGIC)  # one of four
    with pytest.raises(DataFileError) as err:
        load_dataset("mnist", data_dir=tmp_path)  # download=True, but the network is down
    message = str(err.value)
    assert str(tmp_path / "mnist") in message and "network disabled" in message
    for f in (IDX[0], IDX[2], IDX[3]):
        assert f in message and files.MIRRORS["mnist"][0] + f in message
    assert IDX[1] + " " not in message.split("To fix")[1]  # the present file is not asked for
    assert offline and offline[0].endswith(IDX[0])
    assert not [p for p in (tmp_path / "mnist").iterdir() if p.name.startswith(".")]  # no .part


def test_missing_files_without_download_never_touch_the_network(offline):
    with pytest.raises(DataFileError, match="download=False") as err:
        load_dataset("fashion-mnist", download=False)  # default dir: $DEPTHLAB_DATA_DIR
    assert os.environ["DEPTHLAB_DATA_DIR"] in str(err.value)
    assert offline == []


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_is_checked_then_renamed_into_place(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_tiny_idx_set(source)
    served = {files.MIRRORS["mnist"][0] + f: (source / f).read_bytes() for f in IDX}
    monkeypatch.setattr(files, "urlopen", lambda url, timeout=None: FakeResponse(served[url]))
    monkeypatch.setitem(files.CHECKSUMS, "mnist", {f: md5(source / f) for f in IDX})
    d = load_dataset("mnist", data_dir=tmp_path / "data")
    assert len(d.train_x) == 6
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(IDX)
    # A download that fails its checksum is discarded and reported, never left as data.
    monkeypatch.setitem(files.CHECKSUMS, "fashion-mnist", {f: "0" * 32 for f in IDX})
    monkeypatch.setattr(files, "urlopen", lambda url, timeout=None: FakeResponse(b"junk"))
    with pytest.raises(DataFileError, match="md5"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "data")
    assert list((tmp_path / "data" / "fashion-mnist").iterdir()) == []


# ---- CIFAR pickles ----------------------------------------------------------------------------

def write_batch(path: Path, x: np.ndarray, labels, label_key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"tiny", b"data": x, label_key: list(map(int, labels)),
             b"filenames": [b"img%d.png" % i for i in range(len(x))]}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def write_tiny_cifar(root: Path, name: str, seed=0):
    """The extracted folder under ``root``; returns (train_x, train_y, test_x, test_y) as numpy."""
    layout = files.CIFAR[name]
    rng = np.random.default_rng(seed)
    key = layout.label_key.encode()
    xs, ys = {}, {}
    for part, names in (("train", layout.train), ("test", layout.test)):
        chunks = []
        for i, f in enumerate(names):
            n = 2 + i % 2
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = rng.integers(0, layout.num_classes, n)
            write_batch(root / layout.folder / f, x, y, key)
            chunks.append((x, y))
        xs[part] = np.concatenate([c[0] for c in chunks]).reshape(-1, 3, 32, 32)
        ys[part] = np.concatenate([c[1] for c in chunks])
    return xs["train"], ys["train"], xs["test"], ys["test"]


def make_archive(root: Path, name: str, extra=()) -> Path:
    layout = files.CIFAR[name]
    archive = root / layout.archive
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / layout.folder, arcname=layout.folder)
        for arcname, payload in extra:
            info = tarfile.TarInfo(arcname)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return archive


def assert_cifar_matches(d, ref):
    train_x, train_y, test_x, test_y = ref
    for x, y, rx, ry in ((d.train_x, d.train_y, train_x, train_y),
                         (d.test_x, d.test_y, test_x, test_y)):
        assert x.shape == (len(rx), 3, 32, 32)
        pixels = denormalise(d, x).round().to(torch.int64)
        assert torch.equal(pixels, torch.from_numpy(rx).to(torch.int64))
        assert torch.equal(y, torch.from_numpy(ry).to(torch.int64))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_extracted_folder_round_trip(name, tmp_path, monkeypatch):
    ref = write_tiny_cifar(tmp_path / name, name)
    layout = files.CIFAR[name]
    monkeypatch.setitem(files.CHECKSUMS, name,
                        {m: md5(tmp_path / name / m) for m in layout.members})
    d = load_dataset(name, data_dir=tmp_path, download=False)
    assert_cifar_matches(d, ref)
    assert d.num_classes == layout.num_classes
    assert (d.default_augment, d.default_crop_padding) == ("crop-flip", 4)
    assert_train_normalised(d)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_is_verified_and_extracted(name, tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    ref = write_tiny_cifar(staging, name)
    archive = make_archive(staging, name)
    (tmp_path / name).mkdir()
    archive = archive.rename(tmp_path / name / archive.name)  # only the archive is in place
    with pytest.raises(DataFileError, match=archive.name + ".*checksum"):  # real MD5 cannot match
        load_dataset(name, data_dir=tmp_path, download=False)
    monkeypatch.setitem(files.CHECKSUMS, name, {archive.name: md5(archive)})
    d = load_dataset(name, data_dir=tmp_path, download=False)
    assert_cifar_matches(d, ref)
    assert (tmp_path / name / files.CIFAR[name].folder).is_dir()
    assert not [p for p in (tmp_path / name).iterdir() if p.name.startswith(".")]


def test_cifar_wrong_checksum_of_extracted_file_names_it(tmp_path):
    write_tiny_cifar(tmp_path / "cifar10", "cifar10")
    with pytest.raises(DataFileError, match="data_batch_1.*checksum"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_cifar_truncated_pickle_names_the_file(tmp_path):
    write_tiny_cifar(tmp_path / "cifar10", "cifar10")
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataFileError, match="data_batch_3.*truncated"):
        load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_tiny_cifar(tmp_path / "cifar100", "cifar100")
    path = tmp_path / "cifar100" / "cifar-100-python" / "test"
    path.write_bytes(pickle.dumps({b"data": os.getcwd}, protocol=2))  # references posix.getcwd
    with pytest.raises(DataFileError, match="not allowed"):
        load_dataset("cifar100", data_dir=tmp_path, download=False, verify=False)


def test_cifar_bad_contents(tmp_path):
    write_tiny_cifar(tmp_path / "cifar10", "cifar10")
    path = tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch"
    write_batch(path, np.zeros((2, 100), np.uint8), [0, 1], b"labels")
    with pytest.raises(DataFileError, match="test_batch.*3072"):
        load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)
    write_batch(path, np.zeros((2, 3072), np.uint8), [0, 10], b"labels")
    with pytest.raises(DataFileError, match="test_batch.*out of range"):
        load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)


def test_cifar_truncated_archive(tmp_path, monkeypatch):
    staging = tmp_path / "staging"
    write_tiny_cifar(staging, "cifar10")
    blob = make_archive(staging, "cifar10").read_bytes()
    (tmp_path / "cifar10").mkdir()
    archive = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFileError, match="cifar-10-python.tar.gz.*truncated"):
        load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)
    assert not (tmp_path / "cifar10" / "cifar-10-batches-py").exists()


def test_cifar_archive_with_unsafe_member_is_refused(tmp_path):
    staging = tmp_path / "staging"
    write_tiny_cifar(staging, "cifar10")
    archive = make_archive(staging, "cifar10", extra=[("../escaped", b"x")])
    (tmp_path / "cifar10").mkdir()
    archive.rename(tmp_path / "cifar10" / archive.name)
    with pytest.raises(DataFileError, match="unsafe"):
        load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)
    assert not (tmp_path / "escaped").exists()


def test_cifar_missing_offline_and_incomplete_folder(tmp_path, offline):
    with pytest.raises(DataFileError) as err:
        load_dataset("cifar100", data_dir=tmp_path)
    message = str(err.value)
    assert "cifar-100-python.tar.gz" in message and str(tmp_path / "cifar100") in message
    assert "cifar-100-python/" in message and offline
    write_tiny_cifar(tmp_path / "cifar10", "cifar10")
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DataFileError, match="incomplete.*data_batch_5"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


# ---- DeviceLoader and augmentation ------------------------------------------------------------

def indexed_data(n, shape=(1, 2, 2)):
    """Sample i is filled with the value i and labelled i, so a batch shows which samples it has."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return x, torch.arange(n)


def epoch_batches(loader):
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


@pytest.mark.parametrize("n, batch_size, drop_last, sizes", [
    (10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (12, 4, True, [4, 4, 4]), (3, 8, False, [3]),
])
def test_loader_covers_every_sample_once(n, batch_size, drop_last, sizes):
    x, y = indexed_data(n)
    loader = DeviceLoader(x, y, batch_size=batch_size, drop_last=drop_last, seed=1)
    assert len(loader) == len(sizes)
    for _ in range(2):  # two epochs
        batches = epoch_batches(loader)
        assert [len(yb) for _, yb in batches] == sizes
        seen = torch.cat([yb for _, yb in batches])
        assert len(set(seen.tolist())) == len(seen)  # no sample twice
        if not drop_last:
            assert torch.equal(seen.sort().values, torch.arange(n))
        for xb, yb in batches:  # images travel with their labels
            assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_loader_epoch_is_a_pure_function_of_seed_and_epoch():
    x = torch.randn(50, 3, 8, 8)
    y = torch.arange(50)

    def make():
        return DeviceLoader(x, y, batch_size=16, augment="crop-flip", crop_padding=2, seed=7)

    direct = make()
    direct.set_epoch(3)
    target = epoch_batches(direct)
    sequential = make()
    for _ in range(3):
        epoch_batches(sequential)  # epochs 0, 1, 2 advance the epoch by themselves
    jumping = make()
    jumping.set_epoch(9)
    epoch_batches(jumping)
    jumping.set_epoch(3)
    for other in (epoch_batches(sequential), epoch_batches(jumping)):
        for (xa, ya), (xb, yb) in zip(target, other):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    direct.set_epoch(4)
    assert not torch.equal(epoch_batches(direct)[0][1], target[0][1])  # a new epoch, a new order
    other_seed = DeviceLoader(x, y, batch_size=16, augment="crop-flip", crop_padding=2, seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(epoch_batches(other_seed)[0][1], target[0][1])


def test_loader_order_and_augmentation_streams_are_separate():
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40)
    plain = DeviceLoader(x, y, batch_size=8, seed=3)
    augmented = DeviceLoader(x, y, batch_size=8, augment="crop-flip", seed=3)
    for (xa, ya), (xb, yb) in zip(plain, augmented):
        assert torch.equal(ya, yb)  # augmenting draws nothing from the order stream
        assert xb.shape == xa.shape and xb.dtype == xa.dtype
    in_order = torch.cat([yb for _, yb in DeviceLoader(x, y, batch_size=8, shuffle=False)])
    assert torch.equal(in_order, torch.arange(40))


def test_epoch_seeds_differ_across_seed_epoch_and_stream():
    from depthlab.data.loader import epoch_seed

    seeds = {epoch_seed(s, e, k) for s in range(4) for e in range(50) for k in (0, 1)}
    assert len(seeds) == 4 * 50 * 2  # order and augmentation never share a stream
    assert epoch_seed(3, 7, 1) == epoch_seed(3, 7, 1) and 0 <= epoch_seed(3, 7, 1) < 2 ** 63


def test_iter_claims_its_epoch_immediately():
    x, y = indexed_data(20)
    loader = DeviceLoader(x, y, batch_size=5, seed=0)
    first = iter(loader)
    loader.set_epoch(0)
    reference = epoch_batches(loader)
    assert torch.equal(torch.cat([yb for _, yb in first]), torch.cat([yb for _, yb in reference]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-2), "batch_size"),
    (dict(batch_size=4, augment="rotate"), "augment"),
    (dict(batch_size=4, crop_padding=-1), "crop_padding"),
])
def test_loader_rejects_bad_arguments(kwargs, field):
    x, y = indexed_data(4)
    with pytest.raises(ValueError, match=field):
        DeviceLoader(x, y, **kwargs)


def test_random_crop_padding_zero_is_identity():
    x = torch.randn(5, 3, 6, 7)
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(0)), x)


def test_random_crop_matches_per_sample_reference():
    x = torch.randn(64, 2, 5, 7)  # non-square, to catch swapped axes
    padding = 3
    out = random_crop(x, padding, torch.Generator().manual_seed(11))
    rows, cols = draw_crop_offsets(64, padding, torch.Generator().manual_seed(11), x.device)
    assert int(rows.min()) >= 0 and int(rows.max()) <= 2 * padding
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets really vary
    padded = F.pad(x, (padding,) * 4)
    reference = torch.stack([padded[i, :, r:r + 5, c:c + 7]
                             for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])
    assert out.shape == x.shape and torch.equal(out, reference)
    centre = torch.full((64,), padding)
    assert torch.equal(crop_at(x, padding, centre, centre), x)


def test_random_hflip_flips_exactly_the_selected_samples():
    x = torch.randn(64, 3, 4, 5)
    out = random_hflip(x, torch.Generator().manual_seed(5))
    mask = draw_flip_mask(64, torch.Generator().manual_seed(5), x.device)
    assert 0 < int(mask.sum()) < 64
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
