"""Everyday mistakes on the command line end in one line naming the problem and exit code 2, never a
traceback, and leave nothing half-written: unwritable output places, bad data and weights files for
``diagnose --model``, a run_id that leads outside out_dir."""
import builtins
import errno
import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from depthlab.cli import main

NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
'''
TINY = ["--set", "model.name=plain", "model.depth=8", "train.epochs=1", "train.threads=1", "data.name=synthetic",
        "train.device=cpu"]


def one_error(capsys, rc, *words):
    """The command failed as a user error: exit 2, one stderr line naming ``words``, no traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("depthlab: error: "), err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def files_under(path: Path):
    return sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).exists() else []


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A directory where every write fails with EROFS, as on a read-only mount. Tests may run as
    root, whom chmod does not stop, so the mount is emulated at the os calls that create files."""
    root = tmp_path / "ro"
    root.mkdir()

    def guard(path):
        p = os.path.abspath(os.fsdecode(path))
        if p == str(root) or p.startswith(str(root) + os.sep):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_open, real_io_open = os.mkdir, os.open, io.open

    def mkdir(path, *a, **k):
        if not os.path.exists(path):  # the kernel says EEXIST before EROFS
            guard(path)
        return real_mkdir(path, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            guard(path)
        return real_open(path, flags, *a, **k)

    def io_open(file, mode="r", *a, **k):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            guard(file)
        return real_io_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", io_open)
    monkeypatch.setattr(builtins, "open", io_open)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One finished tiny run (plain-8 on synthetic, one epoch)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out-dir", str(out), "--run-id", "r", "--quiet"]) == 0
    return out / "r"


# ----------------------------------------------------------------------------- unwritable places

@pytest.mark.parametrize("command", [
    ["train", *TINY, "--quiet", "--out-dir", "{out}"],
    ["demo", "--depths", "8", "--epochs", "1", "--threads", "1", "--quiet", "--out", "{out}/demo"],
    ["reproduce", "degradation", "--param", "depths=8,20", "epochs=1", "--seeds", "1", "--quiet", "--out", "{out}/x"],
], ids=["train", "demo", "reproduce"])
def test_a_read_only_output_place_is_one_line_naming_it_and_nothing_is_written(command, read_only, capsys):
    rc = main([a.replace("{out}", str(read_only)) for a in command])
    line = one_error(capsys, rc, str(read_only), "read-only file system")
    assert "write somewhere you can" in line
    assert files_under(read_only) == []


def test_an_out_dir_below_a_file_is_one_line_naming_it(tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    rc = main(["train", *TINY, "--quiet", "--out-dir", str(blocker / "runs")])
    one_error(capsys, rc, str(blocker / "runs"), "not a directory")
    assert files_under(tmp_path) == [blocker]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through chmod")
def test_an_out_dir_without_write_permission_is_one_line(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        rc = main(["train", *TINY, "--quiet", "--out-dir", str(locked)])
        one_error(capsys, rc, str(locked), "permission denied")
        assert files_under(locked) == []
    finally:
        locked.chmod(0o755)


def test_report_markdown_to_a_read_only_place_fails_before_writing_the_html(run_dir, read_only, capsys):
    before = files_under(run_dir)
    rc = main(["report", str(run_dir), "--markdown", str(read_only / "docs" / "run.md")])
    one_error(capsys, rc, str(read_only / "docs" / "run.md"), "read-only file system")
    assert files_under(run_dir) == before and not (run_dir / "report.html").exists()
    assert files_under(read_only) == []


def test_report_markdown_into_a_read_only_run_fails_before_writing_the_markdown(run_dir, tmp_path, monkeypatch,
                                                                              capsys):
    real_open = os.open

    def os_open(path, flags, *a, **k):  # the run directory is read-only; the Markdown's place is not
        if str(path).startswith(str(run_dir)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    md = tmp_path / "md" / "run.md"
    rc = main(["report", str(run_dir), "--markdown", str(md)])
    one_error(capsys, rc, str(run_dir / "report.html"), "read-only file system")
    assert not md.exists() and not (run_dir / "report.html").exists()


# ----------------------------------------------------------------------------- diagnose --model: data files

@pytest.fixture
def net(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET)
    return f"{path}:make"


def _data(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def _xy(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


class _Payload:
    """Unpickling it would run code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def bad_data_files(tmp_path):
    x, y = _xy()
    labels = y.clone()
    labels[3] = 27
    labels[5:9] = 25
    nan = x.clone()
    nan[12, 0, 0, 0] = float("nan")
    nan[14:18] = float("inf")
    inf = x.clone()
    inf[2, 1] = float("-inf")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"hello, not a tensor file " * 20)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    torch.save((x, y), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    plain_pickle = tmp_path / "pickled.pt"
    plain_pickle.write_bytes(pickle.dumps({"x": [1.0], "y": [0]}))
    return {
        "labels": (_data(tmp_path, "labels.pt", (x, labels)),
                   ["label 27 at index 3 is out of range for a model with 10 outputs (valid 0..9", "5 labels"]),
        "nan": (_data(tmp_path, "nan.pt", {"x": nan, "y": y}),
                ["x holds NaN at sample 12 (first of 5 non-finite samples)"]),
        "inf": (_data(tmp_path, "inf.pt", (inf, y)), ["x holds inf at sample 2 (first of 1 non-finite sample)"]),
        "lengths": (_data(tmp_path, "lengths.pt", (x, y[:20])), ["32 samples", "20 labels", "same length"]),
        "no samples": (_data(tmp_path, "none.pt", (x[:0], y[:0])), ["no samples", "(0, 3, 8, 8)"]),
        "float labels": (_data(tmp_path, "floaty.pt", (x, y.float())), ["y must hold integer class labels",
                                                                         "float32"]),
        "uint8 images": (_data(tmp_path, "uint8.pt", ((x * 50).to(torch.uint8), y)),
                         ["x must be a float tensor of shape (N, C, ...)", "uint8", "x.float() / 255"]),
        "label shape": (_data(tmp_path, "yshape.pt", (x, y[:, None])), ["y must have shape (N,)", "(32, 1)"]),
        "flat x": (_data(tmp_path, "flat.pt", (y.float(), y)), ["x must have shape (N, C, ...)", "(32,)"]),
        "one tensor": (_data(tmp_path, "tensor.pt", x), ["expected (x, y)", "Tensor"]),
        "dict keys": (_data(tmp_path, "keys.pt", {"images": x, "labels": y}), ["must hold 'x' and 'y'", "'images'"]),
        "wrong channels": (_data(tmp_path, "gray.pt", (x[:, :1], y)),
                           ["cannot take a sample of shape (1, 1, 8, 8)", "channels"]),
        "empty file": (empty, ["the data file is empty (0 bytes)"]),
        "garbage": (garbage, ["not a data file written by torch.save"]),
        "truncated": (truncated, ["not a data file written by torch.save, or truncated"]),
        "plain pickle": (plain_pickle, ["not a data file written by torch.save"]),
        "missing": (tmp_path / "missing.pt", ["no such data file"]),
    }


@pytest.mark.parametrize("case", ["labels", "nan", "inf", "lengths", "no samples", "float labels", "uint8 images",
                                  "label shape", "flat x", "one tensor", "dict keys", "wrong channels",
                                  "empty file", "garbage", "truncated", "plain pickle", "missing"])
def test_a_bad_data_file_is_named_with_the_first_bad_index_and_nothing_is_written(case, net, tmp_path, capsys):
    path, words = bad_data_files(tmp_path)[case]
    out = tmp_path / "diag"
    rc = main(["diagnose", "--model", net, "--data", str(path), "--out", str(out), "--quantities",
               "gradient_flow"])
    line = one_error(capsys, rc, str(path), *words)
    assert "weights_only" not in line
    assert not out.exists()


def test_a_data_file_carrying_code_is_refused_without_running_it(net, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    path = _data(tmp_path, "hostile.pt", (_Payload(marker), torch.zeros(2, dtype=torch.long)))
    rc = main(["diagnose", "--model", net, "--data", str(path), "--out", str(tmp_path / "diag")])
    line = one_error(capsys, rc, str(path), "refusing to load the data file", "pickled object", "could run code")
    assert "weights_only" not in line and not marker.exists()


def test_good_data_and_weights_still_diagnose(net, tmp_path, capsys):
    from depthlab.tracking import load_factory

    x, y = _xy()
    data = _data(tmp_path, "good.pt", (x, y))
    weights = _data(tmp_path, "w.pt", load_factory(net)().state_dict())
    out = tmp_path / "diag"
    assert main(["diagnose", "--model", net, "--weights", str(weights), "--data", str(data), "--out", str(out),
                 "--quantities", "gradient_flow"]) == 0
    rows = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    assert rows and all(r["quantity"] == "gradient_flow" for r in rows)


# ----------------------------------------------------------------------------- diagnose --model: weights files

def test_weights_that_do_not_fit_name_missing_unexpected_and_mis_shaped_keys(net, tmp_path, capsys):
    from depthlab.tracking import load_factory

    state = load_factory(net)().state_dict()
    del state["6.weight"], state["6.bias"]
    state["head.weight"] = torch.zeros(10, 4)
    state["0.weight"] = torch.zeros(8, 3, 3, 3)
    weights = _data(tmp_path, "w.pt", state)
    data = _data(tmp_path, "d.pt", _xy())
    rc = main(["diagnose", "--model", net, "--weights", str(weights), "--data", str(data), "--out",
               str(tmp_path / "diag")])
    one_error(capsys, rc, str(weights), "2 missing keys (6.bias, 6.weight)", "1 unexpected key (head.weight)",
              "1 shape mismatch (0.weight: file (8, 3, 3, 3), model (4, 3, 3, 3))")
    assert not (tmp_path / "diag").exists()


def test_weights_saved_from_data_parallel_get_the_fix(net, tmp_path, capsys):
    from depthlab.tracking import load_factory

    state = {f"module.{k}": v for k, v in load_factory(net)().state_dict().items()}
    weights = _data(tmp_path, "w.pt", state)
    rc = main(["diagnose", "--model", net, "--weights", str(weights), "--data", str(_data(tmp_path, "d.pt", _xy())),
               "--out", str(tmp_path / "diag")])
    one_error(capsys, rc, "6 missing keys", "6 unexpected keys", "... (3 more)", "model.module.state_dict()")


@pytest.mark.parametrize("case", ["garbage", "hostile", "empty", "not a dict"])
def test_a_bad_weights_file_is_refused_in_one_line_never_advising_weights_only_false(case, net, tmp_path, capsys):
    marker = tmp_path / "ran.txt"
    weights = tmp_path / "w.pt"
    if case == "garbage":
        weights.write_bytes(b"\x80\x02garbage that is no torch file" * 10)
        words = ["not a weights file written by torch.save"]
    elif case == "hostile":
        torch.save({"fc.weight": _Payload(marker)}, weights)
        words = ["refusing to load the weights file", "pickled object", "could run code"]
    elif case == "empty":
        weights.write_bytes(b"")
        words = ["the weights file is empty"]
    else:
        torch.save([torch.zeros(3)], weights)
        words = ["expected a state dict", "got list"]
    rc = main(["diagnose", "--model", net, "--weights", str(weights), "--data", str(_data(tmp_path, "d.pt", _xy())),
               "--out", str(tmp_path / "diag")])
    line = one_error(capsys, rc, str(weights), *words)
    assert "weights_only" not in line and not marker.exists() and not (tmp_path / "diag").exists()


# ----------------------------------------------------------------------------- run_id

@pytest.mark.parametrize("run_id", ["../../escaped", "{abs}", "a/b", "a\\b", ".."])
def test_a_run_id_that_leads_outside_out_dir_is_refused_and_nothing_is_written(run_id, tmp_path, capsys):
    out = tmp_path / "deep" / "runs"
    run_id = run_id.replace("{abs}", str(tmp_path / "elsewhere"))
    rc = main(["train", *TINY, "--quiet", "--out-dir", str(out), "--run-id", run_id])
    one_error(capsys, rc, "run_id", "single directory name inside out_dir")
    assert files_under(tmp_path) == [] and not (tmp_path / "elsewhere").exists()


# ----------------------------------------------------------------------------- what main() turns into one line

def test_an_os_error_is_one_line_naming_the_path_and_the_cause(monkeypatch, capsys):
    import depthlab.cli.commands as commands

    def denied(args):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), "/data/runs/x")

    monkeypatch.setattr(commands, "_cmd_datasets", denied)
    rc = main(["datasets"])
    one_error(capsys, rc, "'/data/runs/x': permission denied; write somewhere you can")


def test_a_bare_key_error_is_a_bug_and_keeps_its_traceback(monkeypatch):
    import depthlab.cli.commands as commands

    monkeypatch.setattr(commands, "_cmd_datasets", lambda args: {}["epoch"])
    with pytest.raises(KeyError, match="epoch"):
        main(["datasets"])
