"""A failed write (disk full, read-only, no permission) is one clear ``WriteError`` naming the file,
the cause and what to do, with no temp file left and the file it would have replaced intact; a
training run stopped by a full disk resumes bit for bit once there is space."""
import errno
import io
import os
from types import SimpleNamespace

import pytest
import torch

import depthlab.fileio as fileio
from depthlab.cli import main
from depthlab.fileio import WriteError, append_jsonl, atomic_write_bytes, atomic_write_text

DEV_FULL = "/dev/full"  # Linux: every write fails with ENOSPC
needs_dev_full = pytest.mark.skipif(not os.path.exists(DEV_FULL), reason="no /dev/full")


class FullDisk(io.RawIOBase):
    """A temp file on a full disk: its writes raise ENOSPC (the fd is closed with it)."""

    def __init__(self, fd):
        self.fd = fd

    def writable(self):
        return True

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        return self.fd

    def close(self):
        if not self.closed:
            os.close(self.fd)
        super().close()


def temp_files(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@needs_dev_full
@pytest.mark.parametrize("numel", [10, 1_000_000], ids=["flush", "torch-writer"])
def test_a_torch_save_onto_a_full_disk_names_the_file_and_the_cause_and_keeps_the_old_file(numel, tmp_path,
                                                                                           monkeypatch):
    """torch.save's own writer turns a large ENOSPC into "RuntimeError: unexpected pos"; a small one
    surfaces at flush: either way the error says what happened."""
    path = tmp_path / "ckpt.pt"
    torch.save({"w": torch.ones(3)}, path)
    monkeypatch.setattr(fileio, "_open_temp", lambda fd, tmp: (os.close(fd), open(DEV_FULL, "wb"))[1])
    with pytest.raises(WriteError) as info:
        atomic_write_bytes(path, lambda f: torch.save({"w": torch.zeros(numel)}, f))
    e = info.value
    assert e.errno == errno.ENOSPC and e.filename == str(path)
    assert str(e).startswith(f"cannot write {str(path)!r}: no space left on device; nothing was replaced")
    assert "free space" in str(e) and "resume=True (CLI: --resume)" in str(e)
    assert temp_files(tmp_path) == []
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))


def test_a_write_raising_enospc_is_a_write_error_with_the_temp_file_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_open_temp", lambda fd, tmp: FullDisk(fd))
    path = tmp_path / "sub" / "results.json"
    with pytest.raises(WriteError, match="no space left on device") as info:
        atomic_write_text(path, "{}")
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    assert not path.exists() and temp_files(path.parent) == []


def test_a_runtime_error_on_a_full_disk_without_a_chained_cause_is_named_by_the_free_space(tmp_path, monkeypatch):
    def torch_like(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(fileio.os, "statvfs", lambda d: SimpleNamespace(f_bavail=0))
    with pytest.raises(WriteError, match="no space left on device"):
        atomic_write_bytes(tmp_path / "x.pt", torch_like)
    assert temp_files(tmp_path) == []


def test_an_error_that_is_not_about_the_disk_is_not_disguised(tmp_path):
    """A bug in the writer (free space left) propagates as itself."""
    def buggy(f):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug") as info:
        atomic_write_bytes(tmp_path / "x.pt", buggy)
    assert not isinstance(info.value, WriteError) and temp_files(tmp_path) == []
    with pytest.raises(KeyError):
        atomic_write_bytes(tmp_path / "y.pt", lambda f: {}["missing"])


@pytest.mark.parametrize("below", ["x.json", "sub/x.json"])
def test_a_parent_that_is_a_file_is_named(below, tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / below
    with pytest.raises(WriteError) as info:
        atomic_write_text(target, "{}")
    assert str(info.value) == (f"cannot write {str(target)!r}: {str(tmp_path / 'afile')!r} is a file, not a "
                               f"directory; nothing was replaced")


@needs_dev_full
def test_append_jsonl_onto_a_full_disk_is_a_write_error_naming_the_file():
    with pytest.raises(WriteError, match=f"cannot write '{DEV_FULL}': no space left on device"):
        append_jsonl(DEV_FULL, [{"epoch": 1}])


def test_a_run_stopped_by_a_full_disk_says_so_and_resumes_bit_for_bit(tmp_path, monkeypatch, capsys):
    """The epoch-2 checkpoint hits a full disk: one line naming it and the way on; with space again,
    --resume finishes the run with the weights of a run that never stopped."""
    args = ["train", "--set", "model.name=plain", "model.depth=8", "train.epochs=3", "train.threads=1",
            "data.name=synthetic", "train.device=cpu", "--out-dir", str(tmp_path), "--quiet"]
    real = fileio._open_temp
    monkeypatch.setattr(fileio, "_open_temp", lambda fd, tmp: FullDisk(fd) if "epoch_0002" in tmp else real(fd, tmp))
    assert main(args + ["--run-id", "full"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    ckpt = tmp_path / "full" / "checkpoints"
    assert err == [f"depthlab: error: cannot write {str(ckpt / 'epoch_0002.pt')!r}: no space left on device; nothing "
                   f"was replaced; free space, then run again (a training run continues from its last checkpoint, "
                   f"which is intact, with --resume)"]
    assert sorted(p.name for p in ckpt.iterdir()) == ["epoch_0000.pt", "epoch_0001.pt"]
    monkeypatch.setattr(fileio, "_open_temp", real)
    assert main(args + ["--run-id", "full", "--resume"]) == 0
    assert main(args + ["--run-id", "whole"]) == 0
    a = torch.load(ckpt / "epoch_0003.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "whole" / "checkpoints" / "epoch_0003.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
