"""``data.train_subset``: a stratified subset of the training split, drawn with the data seed after
the val split is taken out (which stays the same and disjoint), normalised with the subset's own
statistics, saved in config.json so eval, diagnose and resume rebuild the very same subset.
``data.test_subset``: the same for the test split, which changes nothing else."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from imagekit import write_folder
from test_data_files import write_tiny_cifar

from depthlab.cli import main
from depthlab.config import ConfigError, RunConfig
from depthlab.data import load_dataset, stratified_subset
from depthlab.training import load_run


def pixels(d, x):
    """Un-normalised images (the builder's values) of a split of ``d``."""
    mean = torch.tensor(d.norm_mean).view(1, -1, 1, 1)
    std = torch.tensor(d.norm_std).view(1, -1, 1, 1)
    return (x * std + mean).round().to(torch.int64)


def rows(x):
    return {tuple(r.flatten().tolist()) for r in x}


@pytest.fixture
def folder(tmp_path):
    write_folder(tmp_path / "f", n_train=6, n_test=1)  # 3 classes x 6 distinct random images
    return str(tmp_path / "f")


def test_equal_share_per_class_where_possible_against_a_count_by_hand():
    y = np.array([0] * 10 + [1] * 3 + [2] * 20)
    for n, want in ((9, [3, 3, 3]), (12, [4, 3, 5]), (20, [8, 3, 9]), (33, [10, 3, 20]), (0, [0, 0, 0])):
        got = np.bincount(y[stratified_subset(y, n, seed=0)], minlength=3)
        assert got.sum() == n and got[1] == want[1] and sorted(got) == sorted(want), (n, got)
    with pytest.raises(ValueError):
        stratified_subset(y, 34, seed=0)


def test_a_larger_subset_holds_every_smaller_one_for_the_same_seed():
    y = np.random.default_rng(0).integers(0, 7, 300)
    subsets = [set(stratified_subset(y, n, seed=4).tolist()) for n in range(0, 301, 13)]
    assert all(a <= b for a, b in zip(subsets, subsets[1:]))


def test_the_subset_is_balanced_identical_across_loads_and_drawn_with_the_data_seed(tmp_path, folder):
    full = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder)
    a = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, train_subset=6)
    b = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, train_subset=6)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.train_y, b.train_y)  # bit for bit
    assert torch.equal(torch.bincount(a.train_y), torch.tensor([2, 2, 2]))
    assert rows(pixels(a, a.train_x)) <= rows(pixels(full, full.train_x))  # images of the full split
    assert torch.equal(a.test_x, (pixels(full, full.test_x) - torch.tensor(a.norm_mean).view(1, -1, 1, 1))
                       .float().div(torch.tensor(a.norm_std).view(1, -1, 1, 1)))  # the test split is whole
    drawn = {frozenset(rows(pixels(d, d.train_x))) for d in
             (load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, train_subset=6, seed=s)
              for s in range(4))}
    assert len(drawn) > 1


def test_normalised_with_the_statistics_of_the_subset_trained_on(tmp_path, folder):
    d = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, train_subset=5)
    mean, std = d.train_x.mean(dim=(0, 2, 3)), d.train_x.std(dim=(0, 2, 3), correction=0)
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-5, rtol=0)


def test_the_val_split_is_taken_out_first_and_stays_the_same_and_disjoint(tmp_path, folder):
    no_subset = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, val_fraction=0.34)
    d = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, val_fraction=0.34, train_subset=3)
    assert torch.equal(pixels(d, d.val_x), pixels(no_subset, no_subset.val_x))
    assert torch.equal(d.val_y, no_subset.val_y) and len(d.train_y) == 3
    assert not rows(pixels(d, d.train_x)) & rows(pixels(d, d.val_x))
    with pytest.raises(ValueError, match=r"train_subset=13 .* is larger than the training split of imagefolder: "
                                         r"12 images after val_fraction=0\.34 .* held out 6; use at most 12"):
        load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, val_fraction=0.34, train_subset=13)


@pytest.mark.parametrize("name", ["digits", "cifar10", "mnist1d"])
def test_every_dataset_takes_a_subset(tmp_path, name):
    kwargs = {}
    if name == "cifar10":
        write_tiny_cifar(tmp_path / "cifar10", "cifar10")
        kwargs = dict(data_dir=tmp_path, download=False, verify=False)
    full = load_dataset(name, **kwargs)
    n = min(20, len(full.train_y))
    d = load_dataset(name, train_subset=n, **kwargs)
    counts = torch.bincount(d.train_y, minlength=full.num_classes)
    have = torch.bincount(full.train_y, minlength=full.num_classes)
    assert len(d.train_y) == n and bool((counts <= have).all())
    assert all(c >= counts.max() - 1 for c, h in zip(counts, have) if c < h)  # an equal share where possible


def test_config_validation_and_the_cli_error_name_both_numbers(tmp_path, capsys):
    for bad in ("0", "-3"):
        with pytest.raises(ConfigError, match="data.train_subset must be a positive integer"):
            RunConfig().with_overrides([f"data.train_subset={bad}"]).validate()
    rc = main(["train", "--quiet", "--out-dir", str(tmp_path), "--set", "data.train_subset=5000", "model.name=plain",
               "model.depth=8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0] == ("depthlab: error: data.train_subset=5000 is larger than the training split of digits: 1,438 "
                      "images; use at most 1438")


def test_saved_in_config_json_and_rebuilt_by_load_run(tmp_path, capsys):
    assert main(["train", "--quiet", "--out-dir", str(tmp_path), "--run-id", "s", "--set", "data.train_subset=50",
                 "data.seed=3", "model.name=plain", "model.depth=8", "model.width=4", "train.epochs=1",
                 "train.threads=1", "train.device=cpu"]) == 0
    capsys.readouterr()
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert saved["data"]["train_subset"] == 50 and saved["data"]["seed"] == 3
    _, data, *_ = load_run(tmp_path / "s", device="cpu")
    want = load_dataset("digits", seed=3, train_subset=50)
    assert torch.equal(data.train_x, want.train_x) and torch.equal(data.train_y, want.train_y)
    assert main(["eval", str(tmp_path / "s"), "--split", "train", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["train_acc"] is not None


def test_a_test_subset_is_balanced_drawn_from_the_test_split_and_changes_nothing_else(tmp_path):
    write_folder(tmp_path / "f", n_train=4, n_test=5)  # 3 classes x 5 test images
    folder = str(tmp_path / "f")
    full = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder)
    a = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, test_subset=6)
    b = load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, test_subset=6)
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.test_y, b.test_y)
    assert torch.equal(torch.bincount(a.test_y), torch.tensor([2, 2, 2]))
    full_rows = {tuple(r.flatten().tolist()): int(y) for r, y in zip(pixels(full, full.test_x), full.test_y)}
    assert all(full_rows[tuple(r.flatten().tolist())] == int(y) for r, y in zip(pixels(a, a.test_x), a.test_y))
    assert torch.equal(a.train_x, full.train_x) and a.norm_mean == full.norm_mean  # train split, statistics
    with pytest.raises(ValueError, match=r"test_subset=16 .* is larger than the test split of imagefolder: "
                                         r"15 images; use at most 15"):
        load_dataset("imagefolder", data_dir=tmp_path / "d", path=folder, test_subset=16)
    with pytest.raises(ConfigError, match="data.test_subset must be a positive integer"):
        RunConfig().with_overrides(["data.test_subset=0"]).validate()


def test_a_test_subset_is_saved_and_rebuilt_by_load_run(tmp_path, capsys):
    assert main(["train", "--quiet", "--out-dir", str(tmp_path), "--run-id", "s", "--set", "data.test_subset=40",
                 "model.name=plain", "model.depth=8", "model.width=4", "train.epochs=1", "train.threads=1",
                 "train.device=cpu"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "s" / "config.json").read_text())["data"]["test_subset"] == 40
    _, data, *_ = load_run(tmp_path / "s", device="cpu")
    want = load_dataset("digits", test_subset=40)
    assert torch.equal(data.test_x, want.test_x) and len(data.test_y) == 40
