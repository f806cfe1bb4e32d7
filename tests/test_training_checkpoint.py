"""Checkpoint files (``depthlab.training.checkpoint``): their names, position order, pruning to the last K,
and refusal of unreadable files."""
import os

import pytest
import torch

from depthlab.training.checkpoint import (
    CheckpointError,
    checkpoint_name,
    checkpoint_position,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)


# ----------------------------------------------------------------------------------- checkpoint files
def test_checkpoint_names_follow_the_documented_pattern():
    assert checkpoint_name(3) == "epoch_0003.pt"
    assert checkpoint_name(3, 12) == "epoch_0003_step_000012.pt"
    assert checkpoint_name(12345, 1) == "epoch_12345_step_000001.pt"


def test_a_checkpoint_position_is_read_back_from_its_name_and_a_stray_name_is_refused(tmp_path):
    for e, s in [(0, 0), (3, 0), (3, 12), (12345, 1), (2, 1000000)]:
        assert checkpoint_position(tmp_path / checkpoint_name(e, s)) == (e, s)
    assert checkpoint_position("epoch_0007.pt") == (7, 0)  # a str path too; no step part: step 0
    for bad in ("best.pt", "epoch_001.pt", "epoch_0007.pt.tmp"):
        with pytest.raises(ValueError, match=rf"'{bad}' is not named like a checkpoint \(epoch_NNNN.pt or "
                                             r"epoch_NNNN_step_NNNNNN.pt\)"):
            checkpoint_position(bad)


def test_checkpoints_are_listed_in_position_order_and_other_files_ignored(tmp_path):
    assert list_checkpoints(tmp_path / "missing") == [] and latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    positions = [(9999, 0), (3, 12), (3, 0), (10000, 0), (2, 1000000), (3, 2)]
    for e, s in positions:
        (tmp_path / checkpoint_name(e, s)).write_bytes(b"")
    for other in ("best.pt", "epoch_001.pt", ".epoch_0005.pt.x1y2.tmp", "epoch_0007.pt.tmp", "notes.txt"):
        (tmp_path / other).write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == [checkpoint_name(e, s) for e, s in sorted(positions)]
    assert latest_checkpoint(tmp_path).name == "epoch_10000.pt"


def test_saving_keeps_only_the_newest_keep_last_positions(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    written = [save_checkpoint(ckpt_dir, e, {"epoch": torch.tensor(e)}, keep_last=2, **({"step": s} if s else {}))
               for e, s in [(0, 0), (1, 0), (1, 5), (2, 0)]]
    assert [p.name for p in written] == ["epoch_0000.pt", "epoch_0001.pt", "epoch_0001_step_000005.pt",
                                         "epoch_0002.pt"]
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_0001_step_000005.pt", "epoch_0002.pt"]
    assert int(load_checkpoint(written[-1])["epoch"]) == 2
    save_checkpoint(ckpt_dir, 3, {}, keep_last=1)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["epoch_0003.pt"]


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unreadable_checkpoints_are_refused_naming_the_file_and_the_first_reason(tmp_path):
    missing = tmp_path / "epoch_0001.pt"
    with pytest.raises(FileNotFoundError):
        load_checkpoint(missing)
    empty = tmp_path / "epoch_0002.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(empty)
    assert str(err.value) == (f"checkpoint {str(empty)!r} is unreadable (truncated or not a torch file): EOFError")
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    assert load_checkpoint(good)["w"].device == torch.device("cpu")
    cut = tmp_path / "epoch_0003.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(RuntimeError) as torch_err:
        torch.load(cut, weights_only=True)
    assert ". " in str(torch_err.value)  # torch's reason runs to several sentences
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cut)
    assert str(err.value) == (f"checkpoint {str(cut)!r} is unreadable (truncated or not a torch file): "
                              f"{str(torch_err.value).split('. ')[0]}")  # its first sentence only
    garbage = tmp_path / "epoch_0005.pt"
    garbage.write_bytes(b"not a checkpoint. at all\n")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(garbage)
    assert str(err.value).startswith(f"checkpoint {str(garbage)!r} is unreadable (truncated or not a torch file): ")
    evil = tmp_path / "epoch_0004.pt"
    torch.save({"w": _Payload()}, evil)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(evil)
    assert str(err.value) == (f"refusing checkpoint {str(evil)!r}: it carries a pickled object "
                              f"({os.getcwd.__module__}.getcwd) beyond tensors and plain containers; depthlab never "
                              f"writes one, and loading it could run code")
