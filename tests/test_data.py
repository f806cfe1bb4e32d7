"""Tests for depthlab.data: the registry, arguments, stratified splits and the bundled datasets.

Nothing here touches the network: ``files.urlopen`` is refused for every test (conftest.py).
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthlab.data import (
    DATASETS,
    DeviceLoader,
    bundled,
    default_data_dir,
    files,
    list_datasets,
    load_dataset,
    stratified_split,
)
from depthlab.registry import UnknownNameError

IDX = files.IDX_FILES

def denormalise(d, x):
    mean = torch.tensor(d.norm_mean).view(1, -1, 1, 1)
    std = torch.tensor(d.norm_std).view(1, -1, 1, 1)
    return x * std + mean


def assert_train_normalised(d):
    mean = d.train_x.mean(dim=(0, 2, 3))
    std = d.train_x.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(std, torch.ones_like(std), atol=1e-4, rtol=0)



# ---- registry, arguments ----------------------------------------------------------------------

def test_all_datasets_registered():
    assert set(list_datasets()) == {"digits", "mnist1d", "synthetic", "mnist", "fashion-mnist",
                                    "cifar10", "cifar100", "mnist-sample", "imagefolder"}
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
