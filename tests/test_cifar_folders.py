"""CIFAR-10/100's class-folder form (PNG or JPEG, the form many users download): from ``data.path``
or found under the data dir, its structure checked in place of the pickles' MD5s (CIFAR's classes in
label order, the image counts, 32x32 RGB), the pickled form still first when present. The counts are
lowered for the tiny fakes (``folders.CIFAR_COUNTS``)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from imagekit import expected, pack, write_folder, write_image
from test_data_files import write_tiny_cifar

from depthlab.cli import main
from depthlab.data import DataFileError, folders, load_dataset

C10 = folders.CIFAR_CLASSES["cifar10"]


@pytest.fixture
def tiny_counts(monkeypatch):
    """The fakes: 2 train and 1 test image per class."""
    monkeypatch.setitem(folders.CIFAR_COUNTS, "cifar10", (20, 10))
    monkeypatch.setitem(folders.CIFAR_COUNTS, "cifar100", (200, 100))


def fake_cifar(root, name="cifar10", fmt="PNG", seed=0):
    return write_folder(root, classes=folders.CIFAR_CLASSES[name], n_train=2, n_test=1, size=(32, 32), fmt=fmt,
                        seed=seed)


def test_the_class_names_are_cifars_in_label_order():
    assert C10 == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    c100 = folders.CIFAR_CLASSES["cifar100"]
    assert len(set(c100)) == 100 and list(c100) == sorted(c100)  # the fine labels are alphabetical
    assert c100[:3] == ("apple", "aquarium_fish", "baby") and c100[-1] == "worm"


def test_cifar10_from_data_path_reads_exact_pixels_checks_structure_and_says_so(tmp_path, tiny_counts, caplog):
    written = fake_cifar(tmp_path / "cifar10-png")
    d = load_dataset("cifar10", data_dir=tmp_path / "data", path=str(tmp_path / "cifar10-png"))
    raw = folders.load_cifar_folders("cifar10", tmp_path / "cifar10-png", tmp_path / "data")
    for split, x, y in (("train", raw.train_x, raw.train_y), ("test", raw.test_x, raw.test_y)):
        want_x, want_y = expected(written, split, C10)
        assert np.array_equal(x.numpy(), want_x) and np.array_equal(y.numpy(), want_y)
    assert d.class_names == C10 and d.num_classes == 10 and d.train_x.shape == (20, 3, 32, 32)
    assert (d.default_augment, d.default_crop_padding) == ("crop-flip", 4)
    lines = [r.getMessage() for r in caplog.records if r.name == "depthlab"]
    assert lines == [f"cifar10: read the class-folder form at {tmp_path / 'cifar10-png'} (20 train / 10 test PNG "
                     f"images, 32x32 RGB); the archive's MD5 checksums do not apply, checked its structure instead"]


@pytest.mark.parametrize("where", ["folder", "wrapped", "archive"])
def test_found_under_the_data_dir_as_a_folder_or_an_archive(tmp_path, tiny_counts, where):
    fake_cifar(tmp_path / "src", fmt="JPEG")
    root = tmp_path / "data" / "cifar10"
    if where == "folder":
        shutil.copytree(tmp_path / "src", root)
    elif where == "wrapped":
        shutil.copytree(tmp_path / "src", root / "cifar10-jpeg")
    else:
        root.mkdir(parents=True)
        pack(tmp_path / "src", root / "cifar10.tgz", wrapper="cifar10")
    d = load_dataset("cifar10", data_dir=tmp_path / "data", download=False)
    ref = load_dataset("cifar10", data_dir=tmp_path / "other", path=str(tmp_path / "src"))
    assert torch.equal(d.train_x, ref.train_x) and torch.equal(d.test_y, ref.test_y)
    assert d.source == ("CIFAR-10 from its class-folder form (JPEG images; JPEG is a lossy re-encoding of CIFAR's "
                        "pixels, so compare its errors with the papers' only roughly)")


def test_the_pickled_form_stays_the_first_choice(tmp_path, tiny_counts):
    ref = write_tiny_cifar(tmp_path / "cifar10", "cifar10")
    fake_cifar(tmp_path / "cifar10")  # train/ and test/ beside cifar-10-batches-py/
    d = load_dataset("cifar10", data_dir=tmp_path, download=False, verify=False)
    assert len(d.train_y) == len(ref[1]) and torch.equal(d.test_y, torch.from_numpy(ref[3]).to(torch.int64))


def test_two_candidates_under_the_data_dir_are_named(tmp_path, tiny_counts):
    root = tmp_path / "cifar10"
    fake_cifar(root / "a")
    fake_cifar(root / "b")
    with pytest.raises(DataFileError, match=r"2 candidates for cifar10's class-folder form \(a, b\)"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def _count(root):
    (root / "train" / "cat" / "1.png").unlink()
    return "train/ holds 19 images and test/ 10, but CIFAR-10 has 20 and 10"


def _names(root):
    shutil.move(root / "train" / "airplane", root / "train" / "plane")
    shutil.move(root / "test" / "airplane", root / "test" / "plane")
    return "not CIFAR-10's 10 classes (missing: airplane; not CIFAR-10 classes: plane)"


def _size(root):
    write_image(root / "train" / "dog" / "1.png", np.zeros((32, 31, 3), np.uint8))
    return "train/dog/1.png is 31x32 pixels (width x height); CIFAR-10's class-folder form holds 32x32 images"


def _grey(root):
    write_image(root / "test" / "ship" / "0.png", np.zeros((32, 32), np.uint8))
    return "test/ship/0.png is a grayscale image (mode L); CIFAR-10's class-folder form holds RGB images"


@pytest.mark.parametrize("mistake", [_count, _names, _size, _grey])
def test_each_structural_mistake_is_refused_naming_the_structure(tmp_path, tiny_counts, mistake):
    fake_cifar(tmp_path / "c")
    words = mistake(tmp_path / "c")
    with pytest.raises(DataFileError) as err:
        load_dataset("cifar10", data_dir=tmp_path / "data", path=str(tmp_path / "c"))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_cached_archive_is_still_checked_against_the_counts(tmp_path, tiny_counts, monkeypatch):
    fake_cifar(tmp_path / "c")
    archive = pack(tmp_path / "c", tmp_path / "c.zip")
    load_dataset("cifar10", data_dir=tmp_path / "data", path=str(archive))
    monkeypatch.setitem(folders.CIFAR_COUNTS, "cifar10", (50_000, 10_000))
    with pytest.raises(DataFileError, match="train/ holds 20 images and test/ 10, but CIFAR-10 has 50,000"):
        load_dataset("cifar10", data_dir=tmp_path / "data", path=str(archive))


def test_cifar100_class_folders_with_its_100_fine_labels(tmp_path, tiny_counts):
    written = write_folder(tmp_path / "c", classes=folders.CIFAR_CLASSES["cifar100"], n_train=2, n_test=1,
                           size=(32, 32))
    d = load_dataset("cifar100", data_dir=tmp_path / "data", path=str(tmp_path / "c"), train_subset=100)
    assert d.num_classes == 100 and d.class_names == folders.CIFAR_CLASSES["cifar100"]
    assert torch.equal(torch.bincount(d.train_y, minlength=100), torch.ones(100, dtype=torch.int64))
    assert torch.equal(d.test_y, torch.from_numpy(expected(written, "test", folders.CIFAR_CLASSES["cifar100"])[1]))


def test_cli_train_on_the_class_folder_form_and_its_error(tmp_path, tiny_counts, capsys):
    fake_cifar(tmp_path / "c")
    base = ["train", "--quiet", "--out-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
            "--set", "data.name=cifar10", "model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=1",
            "train.batch_size=8", "train.threads=1", "train.device=cpu"]
    assert main(base + [f"data.path={tmp_path / 'c'}"]) == 0
    err = capsys.readouterr().err
    assert "depthlab: cifar10: read the class-folder form at" in err
    _names(tmp_path / "c")
    assert main(base + [f"data.path={tmp_path / 'c'}", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not CIFAR-10's 10 classes" in err[0]


def test_the_real_scale_runs_on_cifar_images_and_never_on_a_stand_in(tmp_path, tiny_counts, monkeypatch, capsys):
    """``--scale real`` trains on CIFAR-10's images (here a tiny class-folder copy in the data dir), and
    without them stops with one line instead of falling back to synthetic data as the paper scale does;
    ``reproduce all --scale real`` runs the experiments calibrated for it."""
    from depthlab.experiments import EXPERIMENTS, reproduce
    from depthlab.experiments.suite import reproduce_all

    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "empty"))
    rc = main(["reproduce", "degradation", "--scale", "real", "--out", str(tmp_path / "x"), "--quiet",
               "--param", "depths=8,14", "epochs=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[0].startswith("depthlab: error: cifar10 data not found") and "Traceback" not in err
    assert not (tmp_path / "x" / "runs").exists()

    fake_cifar(tmp_path / "data" / "cifar10")
    monkeypatch.setenv("DEPTHLAB_DATA_DIR", str(tmp_path / "data"))
    params = {"depths": [8, 14], "epochs": 1, "set": ["data.train_subset=10", "train.batch_size=5"]}
    doc = reproduce("degradation", scale="real", seeds=1, params=params, out=str(tmp_path / "e"), device="cpu",
                    quiet=True, report=False)
    assert doc["data"] == {"name": "cifar10", "note": "", "source": "CIFAR-10 from its class-folder form (PNG images)"}
    assert doc["params"]["recipe"] == "quick"
    saved = json.loads((tmp_path / "e" / "runs" / "plain8-s0" / "data.json").read_text())
    assert (saved["train"], saved["test"], saved["class_names"]) == (10, 10, list(C10))
    real = [n for n in EXPERIMENTS if "real" in EXPERIMENTS.get(n).scales]
    tiny = {**params, "depth": 8, "plain_depth": 8, "max_k": 2, "samples": 2, "n_test": 10, "path_batch": 4,
            "path_samples": 2, "width": 4, "crelu_width": 3, "probe_steps": 2, "placement_blocks": 2}
    suite = reproduce_all(scale="real", seeds=1, out=str(tmp_path / "all"), params=tiny, device="cpu", quiet=True)
    assert [e["name"] for e in suite["experiments"]] == real
    assert {"degradation", "lesion", "looks-linear", "highway", "orthonormal", "stochastic-depth",
            "discriminability", "toolkit"} <= set(real)
    assert all(json.loads((tmp_path / "all" / f"{n}-real" / "experiment.json").read_text())["data"]["name"]
               == "cifar10" for n in real)
