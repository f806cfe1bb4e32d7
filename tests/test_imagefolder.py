"""``imagefolder``: your own images in class folders (a folder, .tar, .tar.gz/.tgz or .zip), decoded
once with Pillow into a content-keyed cache; every layout mistake one line naming the file or folder.
Tiny PNGs are lossless, so pixels are compared exactly with the arrays written (tests/imagekit.py)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from imagekit import CLASSES, add_member, expected, pack, write_folder, write_image
from PIL import Image

from depthlab.cli import main
from depthlab.data import DataFileError, folders, list_datasets, load_dataset


def raw(path, data_dir, **kw):
    """The builder's un-normalised uint8 tensors (what load_dataset normalises)."""
    return folders.imagefolder(data_dir, 0, False, path=str(path), **kw)


def cache_files(data_dir):
    d = data_dir / folders.CACHE_DIR
    return sorted(d.glob("*.pt")) if d.is_dir() else []


def one_error(capsys, rc, *words):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("depthlab: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---- reading -----------------------------------------------------------------------------------

def test_png_pixels_labels_and_sorted_class_order_are_exact(tmp_path):
    written = write_folder(tmp_path / "f")
    r = raw(tmp_path / "f", tmp_path / "data")
    assert r.class_names == ("Moth", "ant", "zebra") == tuple(sorted(CLASSES))  # torchvision's order
    for split, x, y in (("train", r.train_x, r.train_y), ("test", r.test_x, r.test_y)):
        want_x, want_y = expected(written, split)
        assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), want_x)
        assert y.dtype == torch.int64 and np.array_equal(y.numpy(), want_y)
    assert r.num_classes == 3 and (r.augment, r.crop_padding) == ("crop-flip", 1)


def test_load_dataset_normalises_with_the_train_statistics(tmp_path):
    written = write_folder(tmp_path / "f")
    d = load_dataset("imagefolder", data_dir=tmp_path / "data", path=str(tmp_path / "f"))
    train, _ = expected(written, "train")
    test, _ = expected(written, "test")
    mean = train.astype(np.float64).mean(axis=(0, 2, 3))
    std = train.astype(np.float64).std(axis=(0, 2, 3))
    for got, want in ((d.train_x, train), (d.test_x, test)):
        ref = (want - mean[None, :, None, None]) / std[None, :, None, None]
        np.testing.assert_allclose(got.numpy(), ref, rtol=0, atol=1e-5)
    assert d.class_names == ("Moth", "ant", "zebra") and d.in_channels == 3
    assert d.default_augment == "crop-flip" and d.default_crop_padding == 1


def test_grayscale_folder_is_one_channel_without_augmentation_and_padding_scales_with_size(tmp_path):
    written = write_folder(tmp_path / "g", grey=True, size=(16, 16), n_train=2, n_test=1)
    r = raw(tmp_path / "g", tmp_path / "data")
    assert r.train_x.shape == (6, 1, 16, 16) and np.array_equal(r.train_x.numpy(), expected(written, "train")[0])
    assert (r.augment, r.crop_padding) == ("none", 2)
    write_folder(tmp_path / "c", size=(32, 32), n_train=1, n_test=1)
    assert raw(tmp_path / "c", tmp_path / "data").crop_padding == 4  # CIFAR's 4 pixels at 32


def test_one_colour_image_makes_every_image_rgb_with_grey_ones_repeated(tmp_path):
    written = write_folder(tmp_path / "f", grey=True, n_train=2, n_test=1)
    colour = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_image(tmp_path / "f" / "train" / "ant" / "9.png", colour)
    r = raw(tmp_path / "f", tmp_path / "data")
    assert r.train_x.shape[1] == 3 and r.augment == "crop-flip"
    first_ant = written[("train", "ant", 0)]
    i = 2  # sorted order: Moth 0, 1; ant 0, 1, 9
    assert all(np.array_equal(r.train_x[i, c].numpy(), first_ant) for c in range(3))
    assert np.array_equal(r.train_x[4].numpy(), colour.transpose(2, 0, 1))


def test_palette_alpha_and_16_bit_images_are_converted(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "f"
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    for split in ("train", "test"):
        (root / split / "a").mkdir(parents=True)
        Image.fromarray(grey, "L").convert("P").save(root / split / "a" / "p.png")
        Image.fromarray(rgba, "RGBA").save(root / split / "a" / "q.png")
        Image.fromarray(grey, "L").convert("LA").save(root / split / "a" / "r.png")
        Image.fromarray(grey.astype(np.uint16) * 257).save(root / split / "a" / "s.png")  # 16-bit grey
    r = raw(root, tmp_path / "data")
    x = r.train_x.numpy()
    assert x.shape == (4, 3, 8, 8)  # q is colour
    assert all(np.array_equal(x[0, c], grey) for c in range(3))  # a palette of greys is grey
    assert np.array_equal(x[1], rgba[..., :3].transpose(2, 0, 1))  # alpha dropped, as torchvision's loader
    assert all(np.array_equal(x[2, c], grey) and np.array_equal(x[3, c], grey) for c in range(3))


def test_jpeg_pixels_are_pillows_decode(tmp_path):
    write_folder(tmp_path / "f", fmt="JPEG", n_train=2, n_test=1)
    r = raw(tmp_path / "f", tmp_path / "data")
    path = tmp_path / "f" / "train" / "Moth" / "1.jpg"
    assert np.array_equal(r.train_x[1].numpy(), np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1))


@pytest.mark.parametrize("kind", ["x.tar", "x.tar.gz", "x.tgz", "x.zip"])
def test_every_archive_kind_gives_the_folders_tensors_inside_one_top_level_folder(tmp_path, kind):
    write_folder(tmp_path / "f")
    ref = raw(tmp_path / "f", tmp_path / "data")
    (tmp_path / "f" / "train" / ".DS_Store").write_bytes(b"junk")  # hidden files and non-images are skipped
    (tmp_path / "f" / "labels.txt").write_text("x")
    got = raw(pack(tmp_path / "f", tmp_path / kind, wrapper="cifar10-jpeg"), tmp_path / "data")
    for a, b in zip(got[:4], ref[:4]):
        assert torch.equal(a, b)
    assert got.class_names == ref.class_names


def test_val_stands_in_for_a_missing_test_folder(tmp_path):
    written = write_folder(tmp_path / "f", test_split="val")
    r = raw(tmp_path / "f", tmp_path / "data")
    assert np.array_equal(r.test_x.numpy(), expected(written, "val")[0])


# ---- the cache ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["folder", "x.tar.gz"])
def test_a_second_load_reads_the_cache_and_decodes_nothing(tmp_path, monkeypatch, kind):
    write_folder(tmp_path / "f")
    src = tmp_path / "f" if kind == "folder" else pack(tmp_path / "f", tmp_path / kind)
    first = load_dataset("imagefolder", data_dir=tmp_path / "data", path=str(src))
    assert len(cache_files(tmp_path / "data")) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(PIL.Image, "open", no_decoding)
    second = load_dataset("imagefolder", data_dir=tmp_path / "data", path=str(src))
    for f in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, f), getattr(second, f))
    assert second.class_names == first.class_names and second.default_augment == first.default_augment


def test_a_changed_image_is_a_new_cache_key(tmp_path):
    written = write_folder(tmp_path / "f")
    data = tmp_path / "data"
    raw(tmp_path / "f", data)
    new = 255 - written[("train", "ant", 0)]
    write_image(tmp_path / "f" / "train" / "ant" / "0.png", new)
    r = raw(tmp_path / "f", data)
    assert len(cache_files(data)) == 2
    assert np.array_equal(r.train_x[4].numpy(), new.transpose(2, 0, 1))  # Moth 0-3, then ant 0


def test_a_damaged_cache_file_is_decoded_again(tmp_path, caplog):
    write_folder(tmp_path / "f")
    ref = raw(tmp_path / "f", tmp_path / "data")
    (path,) = cache_files(tmp_path / "data")
    path.write_bytes(path.read_bytes()[:100])
    again = raw(tmp_path / "f", tmp_path / "data")
    assert torch.equal(again.train_x, ref.train_x) and "damaged image cache" in caplog.text
    assert len(path.read_bytes()) > 100  # rewritten


def test_resize_makes_mixed_sizes_one_size_with_pillows_bilinear_and_is_part_of_the_key(tmp_path):
    write_folder(tmp_path / "f", n_train=1, n_test=1)
    big = np.random.default_rng(3).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    write_image(tmp_path / "f" / "train" / "ant" / "7.png", big)
    with pytest.raises(DataFileError, match=r"images differ in size: .*0\.png is 8x8 but .*7\.png is 10x12"):
        raw(tmp_path / "f", tmp_path / "data")
    r = raw(tmp_path / "f", tmp_path / "data", resize=6)
    want = np.asarray(Image.fromarray(big).resize((6, 6), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert r.train_x.shape == (4, 3, 6, 6) and np.array_equal(r.train_x[2].numpy(), want)
    raw(tmp_path / "f", tmp_path / "data", resize=5)
    assert len(cache_files(tmp_path / "data")) == 2


# ---- mistakes: one line naming the file or folder ---------------------------------------------

def _corrupt(root):
    (root / "train" / "ant" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return "train/ant/1.png: cannot read the image"


def _empty_class(root):
    (root / "train" / "bee").mkdir()
    (root / "test" / "bee").mkdir()
    return "train/bee is an empty class folder"


def _classes_differ(root):
    shutil.rmtree(root / "test" / "ant")
    write_image(root / "test" / "wasp" / "0.png", np.zeros((8, 8, 3), np.uint8))
    return "only in train/: ant; only in test/: wasp"


def _no_train(root):
    shutil.move(root / "train", root / "training")
    return "holds no train/ folder (found: test/, training/)"


def _no_test(root):
    shutil.rmtree(root / "test")
    return "has train/ but no test/ or val/ folder (found: train/)"


def _loose_image(root):
    write_image(root / "train" / "x.png", np.zeros((8, 8, 3), np.uint8))
    return "train/x.png is not inside a class folder"


@pytest.mark.parametrize("mistake", [_corrupt, _empty_class, _classes_differ, _no_train, _no_test, _loose_image])
def test_each_layout_mistake_is_one_line_naming_the_file_or_folder(tmp_path, mistake):
    write_folder(tmp_path / "f")
    words = mistake(tmp_path / "f")
    with pytest.raises(DataFileError) as err:
        raw(tmp_path / "f", tmp_path / "data")
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not cache_files(tmp_path / "data")


def test_a_damaged_archive_and_a_file_that_is_no_archive_are_refused(tmp_path):
    write_folder(tmp_path / "f")
    archive = pack(tmp_path / "f", tmp_path / "x.tar.gz")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DataFileError, match=r"x\.tar\.gz: cannot read the archive .*truncated or corrupt"):
        raw(archive, tmp_path / "data")
    zipped = pack(tmp_path / "f", tmp_path / "x.zip")
    zipped.write_bytes(zipped.read_bytes()[:-30])
    with pytest.raises(DataFileError, match=r"x\.zip: cannot read the archive"):
        raw(zipped, tmp_path / "data")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataFileError, match=r"notes\.txt is a file but not a \.tar, \.tar\.gz, \.tgz or \.zip"):
        raw(tmp_path / "notes.txt", tmp_path / "data")


@pytest.mark.parametrize("kind, member", [("x.tar", "../escape.png"), ("x.tar", "/abs/train/a/0.png"),
                                          ("x.zip", "train/../../escape.png"), ("x.zip", "..\\escape.png")])
def test_an_archive_with_an_unsafe_member_path_is_refused(tmp_path, kind, member):
    write_folder(tmp_path / "f")
    archive = pack(tmp_path / "f", tmp_path / kind)
    add_member(archive, member)
    with pytest.raises(DataFileError, match="refusing unsafe member path"):
        raw(archive, tmp_path / "data")
    assert not (tmp_path / "escape.png").exists()


def test_cli_mistakes_exit_2_with_one_line(tmp_path, capsys):
    base = ["train", "--quiet", "--out-dir", str(tmp_path / "runs"), "--set", "model.name=resnet", "model.depth=8"]
    one_error(capsys, main(base + ["data.name=imagefolder"]), "data.name=imagefolder needs data.path")
    one_error(capsys, main(base + ["data.name=imagefolder", f"data.path={tmp_path / 'nope'}"]),
              "data.path", "does not exist")
    one_error(capsys, main(base + [f"data.path={tmp_path}"]), "data.path is read only by data.name=")
    one_error(capsys, main(base + ["data.resize=8"]), "data.resize is read only by data.name=imagefolder")
    write_folder(tmp_path / "f")
    shutil.rmtree(tmp_path / "f" / "test")
    one_error(capsys, main(base + ["data.name=imagefolder", f"data.path={tmp_path / 'f'}"]),
              f"{tmp_path / 'f'} has train/ but no test/ or val/ folder")
    write_folder(tmp_path / "f", n_train=1, n_test=1)
    write_image(tmp_path / "f" / "train" / "ant" / "5.png", np.zeros((9, 9, 3), np.uint8))
    line = one_error(capsys, main(base + ["data.name=imagefolder", f"data.path={tmp_path / 'f'}"]),
                     "images differ in size", "data.resize=8")
    assert "resize=8 (CLI" not in line  # the CLI's spelling only
    assert not any((tmp_path / "runs").rglob("*"))  # no run directory was made


def test_datasets_lists_imagefolder_with_one_line(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(s for s in out if s.startswith("imagefolder "))
    assert "data.path" in line and "train/<class>/" in line
    assert len(out) == len(list_datasets())


# ---- end to end --------------------------------------------------------------------------------

def test_train_eval_and_diagnose_rebuild_the_same_folder_dataset_from_config_json(tmp_path, capsys, monkeypatch):
    write_folder(tmp_path / "f")
    archive = pack(tmp_path / "f", tmp_path / "pets.zip")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--quiet", "--out-dir", "runs", "--run-id", "r", "--set", "data.name=imagefolder",
                 "data.path=pets.zip", "model.name=resnet", "model.depth=8", "model.width=4", "train.epochs=1",
                 "train.batch_size=4", "train.threads=1", "train.device=cpu"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "runs" / "r" / "config.json").read_text())
    assert saved["data"]["path"] == str(archive)  # absolute: the run can be read from anywhere
    assert saved["data"]["augment"] == "crop-flip" and saved["data"]["crop_padding"] == 1
    assert saved["model"]["num_classes"] == 3 and saved["model"]["in_channels"] == 3
    monkeypatch.chdir(os.path.dirname(tmp_path))  # elsewhere
    run = str(tmp_path / "runs" / "r")
    assert main(["eval", run, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["test_acc"] == summary["test_acc"]
    assert main(["diagnose", run, "--quantities", "gradient_flow", "--device", "cpu"]) == 0
    capsys.readouterr()
    assert (tmp_path / "runs" / "r" / "diagnostics.jsonl").is_file()


def test_the_run_records_what_it_trained_on_and_its_page_names_the_classes(tmp_path, capsys):
    write_folder(tmp_path / "f")
    assert main(["train", "--quiet", "--out-dir", str(tmp_path / "runs"), "--run-id", "r", "--set",
                 "data.name=imagefolder", f"data.path={tmp_path / 'f'}", "model.name=plain", "model.depth=8",
                 "model.width=4", "train.epochs=1", "train.batch_size=4", "train.threads=1", "train.device=cpu"]) == 0
    run = tmp_path / "runs" / "r"
    d = json.loads((run / "data.json").read_text())
    assert d["class_names"] == sorted(p.name for p in (tmp_path / "f" / "train").iterdir())
    assert (d["train"], d["test"], d["num_classes"]) == (sum(1 for _ in (tmp_path / "f" / "train").rglob("*.*")),
                                                         sum(1 for _ in (tmp_path / "f" / "test").rglob("*.*")), 3)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert f"3 classes ({', '.join(d['class_names'])})" in page
