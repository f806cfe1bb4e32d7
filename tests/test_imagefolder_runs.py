"""An image folder as the data of an experiment (``reproduce --param dataset=imagefolder data_path=P``)
and of a sweep (``base: {data: {name: imagefolder, path: P}}``): the runs train on it, save its
absolute path, and a second call reuses them even when the path was given relative."""
from __future__ import annotations

import json

import pytest
from imagekit import pack, write_folder

from depthlab.cli import main
from depthlab.config import ConfigError
from depthlab.experiments import reproduce
from depthlab.sweep import run_sweep

SMOKE = {"depths": [8, 14], "epochs": 1}


def test_reproduce_on_an_image_folder_trains_on_it_and_reuses_its_runs(tmp_path, monkeypatch):
    write_folder(tmp_path / "f")
    pack(tmp_path / "f", tmp_path / "pets.tgz")
    monkeypatch.chdir(tmp_path)
    params = {**SMOKE, "dataset": "imagefolder", "data_path": "pets.tgz", "set": ["data.train_subset=9"]}
    doc = reproduce("degradation", seeds=1, params=params, out="exp", device="cpu", quiet=True, report=False)
    assert [r["status"] for r in doc["runs"]] == ["finished"] * 4
    assert doc["data"]["name"] == "imagefolder"
    saved = json.loads((tmp_path / "exp" / "runs" / "plain8-s0" / "config.json").read_text())
    assert saved["data"]["path"] == str(tmp_path / "pets.tgz") and saved["data"]["train_subset"] == 9
    assert saved["model"]["num_classes"] == 3
    again = reproduce("degradation", seeds=1, params=params, out="exp", device="cpu", quiet=True, report=False)
    assert all(r["reused"] for r in again["runs"])


def test_reproduce_names_the_spelling_for_a_folder_given_as_the_dataset(tmp_path, capsys):
    write_folder(tmp_path / "f")
    with pytest.raises(ConfigError, match=r"--param dataset=imagefolder data_path="):
        reproduce("degradation", seeds=1, params={**SMOKE, "dataset": str(tmp_path / "f")}, out=str(tmp_path / "e"),
                  quiet=True, report=False)
    rc = main(["reproduce", "degradation", "--seeds", "1", "--out", str(tmp_path / "e"), "--quiet", "--param",
               "depths=8,14", "epochs=1", "dataset=imagefolder", f"data_path={tmp_path / 'nope'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "data.path" in err[0] and "does not exist" in err[0]


def test_a_sweep_whose_base_sets_data_path_trains_on_the_folder_and_skips_on_rerun(tmp_path, monkeypatch):
    write_folder(tmp_path / "f")
    monkeypatch.chdir(tmp_path)
    sweep = {"name": "folder", "out_dir": "sweeps",
             "base": {"model": {"name": "resnet", "depth": 8, "width": 4}, "data": {"name": "imagefolder", "path": "f"},
                      "train": {"epochs": 1, "batch_size": 4, "device": "cpu"}},
             "grid": {"data.train_subset": [6, None]}, "seeds": 1}
    doc = run_sweep(sweep, quiet=True)
    assert doc["counts"]["finished"] == 2
    for run in (tmp_path / "sweeps" / "folder" / "runs").iterdir():
        saved = json.loads((run / "config.json").read_text())
        assert saved["data"]["path"] == str(tmp_path / "f")
    again = run_sweep(sweep, quiet=True)
    assert again["counts"]["actions"]["skipped"] == 2
