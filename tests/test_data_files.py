"""Tests for the file-format datasets: IDX (MNIST, Fashion-MNIST) and CIFAR pickles, checksums, downloads.

Nothing here touches the network: ``files.urlopen`` is refused for every test (conftest.py).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from depthlab.data import DataFileError, files, load_dataset

IDX = files.IDX_FILES

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
