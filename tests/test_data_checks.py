"""Data a user hands in is checked once, where it comes in: non-finite x and out-of-range labels are
named with the first bad index (never trained on and reported as a divergence), and nothing is written."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch

import depthlab
import depthlab.data.checks as checks
from depthlab.config import RunConfig
from depthlab.data import DataFileError, check_dataset, check_xy, load_dataset
from depthlab.tracking import as_dataset
from depthlab.training import train


def xy(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("chunk", [1 << 22, 1], ids=["one-chunk", "a-sample-per-chunk"])
def test_the_first_non_finite_sample_and_the_count_are_named(chunk, monkeypatch):
    monkeypatch.setattr(checks, "CHUNK_VALUES", chunk)
    x, y = xy(40)
    x[33, 1, 2, 3] = float("nan")
    x[35, 0, 0, 0] = float("inf")
    x[39] = float("-inf")
    with pytest.raises(DataFileError) as info:
        check_xy(x, y, "mine.pt")
    assert str(info.value) == "mine.pt: x holds NaN at sample 33 (first of 3 non-finite samples)"
    x[33] = 0.0
    with pytest.raises(DataFileError, match=r"^mine.pt: x holds inf at sample 35 \(first of 2 non-finite samples\)$"):
        check_xy(x, y, "mine.pt")


def test_labels_out_of_range_name_the_first_index_the_value_and_the_valid_range():
    x, y = xy()
    y[6], y[9] = 3, -1
    with pytest.raises(DataFileError) as info:
        check_xy(x, y, "d.pt", 3, "a model with 3 outputs")
    assert str(info.value) == ("d.pt: label 3 at index 6 is out of range for a model with 3 outputs "
                               "(valid 0..2; 2 labels are out of range)")
    y[6] = 0
    with pytest.raises(DataFileError, match=r"d.pt: label -1 at index 9 is negative"):
        check_xy(x, y, "d.pt")
    y[9] = 2
    check_xy(x, y, "d.pt", 3)  # every label in 0..2: fine


def test_check_dataset_names_the_split_and_skips_shared_tensors():
    ds = load_dataset("synthetic")
    check_dataset(ds)
    bad = ds.test_y.clone()
    bad[4] = ds.num_classes
    with pytest.raises(DataFileError, match=r"dataset 'synthetic': test_y label 10 at index 4 is out of range for "
                                            r"10 classes \(valid 0\.\.9\)"):
        check_dataset(dataclasses.replace(ds, test_y=bad))
    x, y = xy()
    x[5] = float("nan")
    with pytest.raises(DataFileError, match=r"^data: x holds NaN at sample 5"):  # one pair, plain names
        check_dataset(SimpleNamespace(name="user data", train_x=x, train_y=y, test_x=x, test_y=y), where="data")
    with pytest.raises(DataFileError, match=r"^probe: x holds NaN at sample 5"):
        as_dataset((x, y), where="probe")


@pytest.fixture
def tiny_cfg(tmp_path):
    return RunConfig().with_overrides(["model.name=plain", "model.depth=8", "train.epochs=1", "train.threads=1",
                                       "data.name=synthetic", "train.device=cpu", f"out_dir={tmp_path / 'runs'}",
                                       "run_id=r"])


def test_training_on_nan_data_is_refused_as_bad_data_not_diagnosed_as_divergence(tiny_cfg, tmp_path):
    ds = load_dataset("synthetic")
    x = ds.train_x.clone()
    x[7, 0, 0, 0] = float("nan")
    with pytest.raises(DataFileError) as info:
        train(tiny_cfg, dataset=dataclasses.replace(ds, train_x=x), quiet=True)
    assert str(info.value) == "dataset 'synthetic': train_x holds NaN at sample 7 (first of 1 non-finite sample)"
    assert "lr" not in str(info.value)
    assert not tiny_cfg.run_dir.exists() and not any(p.is_file() for p in tmp_path.rglob("*"))


def test_training_labels_beyond_num_classes_are_refused_before_anything_is_written(tiny_cfg, tmp_path):
    ds = load_dataset("synthetic")
    with pytest.raises(DataFileError, match=r"train_y label \d+ at index \d+ is out of range for 4 classes "
                                            r"\(valid 0\.\.3;"):
        train(tiny_cfg.with_overrides(["model.num_classes=4"]), dataset=ds, quiet=True)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_tracking_refuses_non_finite_data_before_writing(tmp_path):
    x, y = xy()
    x[2] = float("nan")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 3))
    with pytest.raises(DataFileError, match=r"^data: x holds NaN at sample 2"):
        depthlab.track(model, tmp_path / "t", data=(x, y))
    assert not (tmp_path / "t").exists()
