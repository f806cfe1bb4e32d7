"""Damaged checkpoints are never used without a word: each carries a SHA-256 digest of its content
(checked on load with the CRCs of its zip records); a damaged one is named, set aside as evidence,
and resume / eval / diagnose fall back to the newest good one, or stop naming every file."""
import json
import logging
import struct
import zipfile

import pytest
import torch

from depthlab.cli import main
from depthlab.config import RunConfig
from depthlab.diagnose_run import diagnose
from depthlab.training import evaluate_run, train
from depthlab.training.checkpoint import (
    CheckpointDamaged,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    state_digest,
    write_checkpoint,
)

RUN = ["model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=3", "train.batch_size=128",
       "train.device=cpu", "train.threads=1", "data.augment=crop-flip", "data.crop_padding=1",
       "data.val_fraction=0.1", "train.keep_best=true"]


def _cfg(out, run_id, *overrides):
    return RunConfig().with_overrides([*RUN, f"out_dir={out}", f"run_id={run_id}", *overrides])


def _cli(out, run_id, *extra):
    return ["train", "--quiet", *extra, "--set", *RUN, "train.epochs=2", f"out_dir={out}", f"run_id={run_id}"]


def _rows(cfg):
    return [r for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())
            if r.get("kind") == "epoch"]


def _ckpts(cfg):
    return cfg.run_dir / "checkpoints"


def _flip_tensor_bytes(path, n=64):
    """Flip ``n`` bytes in the middle of the largest tensor record, as a failing disk would: the
    zip's CRC no longer matches (torch.load itself does not notice)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - n // 2
    data[start:start + n] = bytes(b ^ 0xFF for b in data[start:start + n])
    path.write_bytes(bytes(data))


def _same_weights(a, b):
    wa, wb = (load_checkpoint(_ckpts(c) / "epoch_0003.pt")["model"] for c in (a, b))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "depthlab"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("ref"), "straight")
    train(cfg, quiet=True)
    return cfg


def test_a_checkpoint_with_flipped_tensor_bytes_is_named_set_aside_and_resume_from_the_previous_one_is_bit_exact(
        tmp_path, straight, caplog):
    cfg = _cfg(tmp_path, "flipped")
    train(cfg, quiet=True)
    bad = _ckpts(cfg) / "epoch_0003.pt"
    _flip_tensor_bytes(bad)
    flipped = bad.read_bytes()
    with pytest.raises(CheckpointDamaged, match=r"epoch_0003\.pt' is damaged: its record '.*' fails its CRC check"):
        load_checkpoint(bad)

    caplog.set_level(logging.WARNING, logger="depthlab")
    assert train(cfg, resume=True, quiet=True)["status"] == "finished"
    (warning,) = _warnings(caplog)
    assert warning == (f"checkpoint {str(bad)!r} is damaged: its record "
                       f"{warning.split('its record ')[1].split(' fails')[0]} fails its CRC check (set aside as "
                       f"epoch_0003.pt.damaged); resuming from epoch_0002.pt (epoch 2, step 0), the newest good "
                       f"checkpoint: 1 epoch(s) of training are redone and 1 metrics row(s) past it are dropped")
    assert (_ckpts(cfg) / "epoch_0003.pt.damaged").read_bytes() == flipped  # the evidence, as found
    assert [p.name for p in list_checkpoints(_ckpts(cfg))] == ["epoch_0002.pt", "epoch_0003.pt"]
    assert [r["epoch"] for r in _rows(cfg)] == [1, 2, 3]
    assert [r["train_loss"] for r in _rows(cfg)] == [r["train_loss"] for r in _rows(straight)]
    assert _same_weights(cfg, straight)


def test_a_truncated_newest_checkpoint_is_passed_over_and_the_resumed_run_is_bit_exact(tmp_path, straight, caplog):
    cfg = _cfg(tmp_path, "cut")
    train(cfg, quiet=True)
    bad = _ckpts(cfg) / "epoch_0003.pt"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 3])
    caplog.set_level(logging.WARNING, logger="depthlab")
    assert train(cfg, resume=True, quiet=True)["status"] == "finished"
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"checkpoint {str(bad)!r} is unreadable (truncated or not a torch file): ")
    assert "(set aside as epoch_0003.pt.damaged); resuming from epoch_0002.pt (epoch 2, step 0)" in warning
    assert [r["epoch"] for r in _rows(cfg)] == [1, 2, 3]
    assert _same_weights(cfg, straight)


def test_when_every_checkpoint_is_damaged_resume_stops_with_one_line_naming_each_and_renames_nothing(
        tmp_path, capsys):
    assert main(_cli(tmp_path, "all")) == 0
    ckpts = tmp_path / "all" / "checkpoints"
    names = [p.name for p in list_checkpoints(ckpts)]
    assert names == ["epoch_0001.pt", "epoch_0002.pt"]  # keep_last=2
    _flip_tensor_bytes(ckpts / "epoch_0002.pt")
    (ckpts / "epoch_0001.pt").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in ckpts.iterdir()}
    capsys.readouterr()
    assert main(_cli(tmp_path, "all", "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"depthlab: error: no usable checkpoint in {str(ckpts)!r}: ")
    assert "epoch_0002.pt is damaged: its record" in err[0] and "epoch_0001.pt is unreadable" in err[0]
    assert err[0].endswith("restore them from a backup, or train the run again with --overwrite")
    assert {p.name: p.read_bytes() for p in ckpts.iterdir()} == before  # nothing renamed or rewritten


def test_eval_and_diagnose_with_last_fall_back_to_the_newest_good_checkpoint_with_a_warning(tmp_path, caplog):
    cfg = _cfg(tmp_path, "readers")
    train(cfg, quiet=True)
    _flip_tensor_bytes(_ckpts(cfg) / "epoch_0003.pt")
    caplog.set_level(logging.WARNING, logger="depthlab")
    row = evaluate_run(cfg.run_dir, "last", device="cpu")
    want = evaluate_run(cfg.run_dir, "epoch_0002.pt", device="cpu")
    assert row["checkpoint"] == str(_ckpts(cfg) / "epoch_0002.pt") and row["epoch"] == 2
    assert row["test_acc"] == want["test_acc"] and row["test_loss"] == want["test_loss"]
    records = diagnose(cfg.run_dir, ["orthonormality"], checkpoint="last", device="cpu", write=False)
    assert records and {r["step"] for r in records} == {2 * _rows(cfg)[0]["step"]}  # epoch 2 (row 1: 1 epoch's steps)
    bad = str(_ckpts(cfg) / "epoch_0003.pt")
    assert len(_warnings(caplog)) == 2
    for w in _warnings(caplog):  # the same one line for both, and the file stays where it is (readers)
        assert w.startswith(f"checkpoint {bad!r} is damaged: its record ")
        assert w.endswith("fails its CRC check; using epoch_0002.pt (epoch 2, step 0), the newest good checkpoint: "
                          "its weights are 1 epoch(s) of training behind the newest checkpoint")
    assert (_ckpts(cfg) / "epoch_0003.pt").exists()


def test_an_explicitly_named_damaged_checkpoint_or_best_is_an_error_naming_it(tmp_path, capsys):
    assert main(_cli(tmp_path, "named")) == 0
    ckpts = tmp_path / "named" / "checkpoints"
    _flip_tensor_bytes(ckpts / "epoch_0002.pt")
    _flip_tensor_bytes(ckpts / "best.pt")
    for name in ("epoch_0002.pt", "best"):
        capsys.readouterr()
        assert main(["eval", str(tmp_path / "named"), "--device", "cpu", "--checkpoint", name]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        file = ckpts / ("best.pt" if name == "best" else name)
        assert err == [f"depthlab: error: checkpoint {str(file)!r} is damaged: its record "
                       f"{err[0].split('its record ')[1].split(' fails')[0]} fails its CRC check; name another "
                       f"checkpoint, or use --checkpoint last for the newest good one"]
    assert main(["diagnose", str(tmp_path / "named"), "--device", "cpu", "--checkpoint", "epoch_0002.pt",
                 "--quantities", "orthonormality"]) == 2
    assert "epoch_0002.pt' is damaged" in capsys.readouterr().err


def test_flipped_bytes_anywhere_in_a_checkpoint_are_caught_or_change_nothing(tmp_path):
    """Every 7th byte of a small checkpoint, flipped: it loads as written (bytes no content depends
    on: zip header dates, alignment padding) or fails naming the file; never different content."""
    state = {"model": {"w": torch.arange(24, dtype=torch.float32).reshape(4, 6), "n": torch.tensor(3)},
             "epoch": 3, "lr": 0.1, "names": ["a", None, True]}
    good = write_checkpoint(tmp_path / "epoch_0003.pt", state)
    data, bad = good.read_bytes(), tmp_path / "epoch_0004.pt"
    with zipfile.ZipFile(good) as z:
        pickle_record = z.getinfo(next(n for n in z.namelist() if n.endswith("data.pkl")))
        directory = z.start_dir
    caught = set()
    for i in range(0, len(data), 7):
        bad.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1:])
        try:
            got = load_checkpoint(bad)
        except CheckpointDamaged as e:
            assert str(e).startswith(f"checkpoint {str(bad)!r} is ") and str(e).count("\n") == 0
            caught.add(i)
            continue
        assert got.keys() == state.keys() and torch.equal(got["model"]["w"], state["model"]["w"])
        assert [got[k] for k in ("epoch", "lr", "names")] == [3, 0.1, ["a", None, True]]
        assert torch.equal(got["model"]["n"], state["model"]["n"])
    pickle_start = pickle_record.header_offset + 30 + len(pickle_record.filename)
    assert any(pickle_start < i < pickle_start + pickle_record.file_size for i in caught)  # the pickle
    assert any(i >= directory for i in caught)  # the zip's central directory


def test_the_digest_catches_content_rewritten_with_valid_crcs_and_old_checkpoints_still_load(tmp_path, caplog):
    state = {"model": {"w": torch.ones(3)}, "epoch": 1}
    path = write_checkpoint(tmp_path / "epoch_0001.pt", state)
    raw = torch.load(path, weights_only=True)
    assert raw["digest"] == state_digest(state) and raw["digest"].startswith("sha256:") and len(raw["digest"]) == 71
    assert "digest" not in load_checkpoint(path)  # the state as the caller wrote it
    # a tool that rewrote the file (fresh CRCs) with one weight changed: only the digest can tell
    torch.save({**raw, "model": {"w": torch.tensor([1.0, 1.0, 1.0 + 2 ** -20])}}, path)
    with pytest.raises(CheckpointDamaged, match=r"is damaged: its content does not match the SHA-256 digest"):
        load_checkpoint(path)
    old = tmp_path / "epoch_0002.pt"
    torch.save(state, old)  # a checkpoint from before digests
    caplog.set_level(logging.DEBUG, logger="depthlab")
    assert torch.equal(load_checkpoint(old)["model"]["w"], state["model"]["w"])
    assert any("has no content digest" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_best_pt_is_written_with_a_digest(straight):
    raw = torch.load(_ckpts(straight) / "best.pt", weights_only=True)
    assert raw["digest"] == state_digest(raw)


def test_damaged_files_set_aside_are_never_listed_picked_or_pruned(tmp_path):
    for e in (1, 2):
        save_checkpoint(tmp_path, e, {"epoch": e}, keep_last=3)
    (tmp_path / "epoch_0002.pt").rename(tmp_path / "epoch_0002.pt.damaged")
    (tmp_path / "epoch_0009.pt.unlogged").write_bytes(b"")
    for e in (3, 4):
        save_checkpoint(tmp_path, e, {"epoch": e}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_0003.pt", "epoch_0004.pt"]
    assert (tmp_path / "epoch_0002.pt.damaged").exists() and (tmp_path / "epoch_0009.pt.unlogged").exists()
