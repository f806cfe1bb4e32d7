"""depthlab.track in a user's own loop: per-step gradient norms equal the gradients' norms read by
hand, the loop trains exactly as without the tracker (heavier quantities included), records land in
diagnostics.jsonl, and depthlab report draws the directory."""
import json

import pytest
import torch
from torch.nn import functional as F
from tvnets import TVResNet, mlp

import depthlab
from depthlab.cli import main
from depthlab.data import load_dataset
from depthlab.report.diagnostic_plots import step_series


def _loop(model, data, steps, tracker=None, seed=0):
    """A plain user loop: SGD on digits batches of 32; returns the per-step norms read by hand."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    by_hand = []
    for i in range(steps):
        x, y = data.train_x[32 * i:32 * (i + 1)], data.train_y[32 * i:32 * (i + 1)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        by_hand.append([m.weight.grad.norm().item() for m in model.modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))])
        if tracker is not None:
            tracker.step()
        opt.step()
    return by_hand


@pytest.mark.parametrize("make", [mlp, TVResNet])
def test_per_step_norms_equal_the_gradients_and_the_loop_is_unchanged(make, tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(1)
    model, ref = make(), make()
    ref.load_state_dict(model.state_dict())
    with depthlab.track(model, tmp_path / "mine", every=4, data=data, tensorboard=False) as t:
        got = _loop(model, data, 10, t)
    want = _loop(ref, data, 10)
    assert got == want  # heavier quantities at init, steps 4 and 8 and the end changed nothing
    for a, b in zip(model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    records = [json.loads(line) for line in (tmp_path / "mine" / "diagnostics.jsonl").read_text().splitlines()]
    series = step_series(records)
    layers = json.loads((tmp_path / "mine" / "tracked.json").read_text())["layers"]
    assert list(series) == layers
    for j, layer in enumerate(layers):
        steps, values = series[layer]
        assert steps == list(range(1, 11))
        assert values == pytest.approx([row[j] for row in want], rel=1e-5)
    flows = sorted({r["step"] for r in records if r["quantity"] == "gradient_flow"})
    assert flows == [0, 4, 8, 10]


def test_report_draws_a_tracked_directory_and_bad_arguments_say_what_is_wrong(tmp_path):
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = mlp()
    with depthlab.track(model, tmp_path / "mine", every=3, tensorboard=False) as t:
        _loop(model, data, 5, t)
    assert main(["report", str(tmp_path / "mine")]) == 0
    page = (tmp_path / "mine" / "report.html").read_text()
    assert "Tracked run" in page and "gradient_tracking" in page
    with pytest.raises(ValueError, match="every must be a positive"):
        depthlab.track(model, tmp_path / "x", every=0)
    with pytest.raises(ValueError, match="quantities need data"):
        depthlab.track(model, tmp_path / "x", quantities="jacobian")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        depthlab.track(model, tmp_path / "mine").__enter__()
    with depthlab.track(model, tmp_path / "mine", every=3, tensorboard=False, overwrite=True) as t:
        _loop(model, data, 2, t)
    kept = [json.loads(line) for line in (tmp_path / "mine" / "diagnostics.jsonl").read_text().splitlines()]
    assert step_series(kept)[json.loads((tmp_path / "mine" / "tracked.json").read_text())["layers"][0]][0] == [1, 2]
    with pytest.raises(TypeError, match="data must be"):
        depthlab.track(model, tmp_path / "x", data=[1, 2, 3])


def test_the_cli_diagnoses_a_users_model_from_a_factory_a_state_dict_and_a_tensor_file(tmp_path, capsys):
    (tmp_path / "mynets.py").write_text(
        "import sys\nsys.path.insert(0, %r)\nfrom tvnets import TVResNet\n\ndef make_net():\n    return TVResNet()\n"
        % str(__import__("pathlib").Path(__file__).parents[1] / "examples"))
    torch.manual_seed(3)
    net = TVResNet()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    data = load_dataset("digits")
    torch.save({"x": data.test_x[:64], "y": data.test_y[:64]}, tmp_path / "val.pt")
    out = tmp_path / "diag"
    assert main(["diagnose", "--model", f"{tmp_path / 'mynets.py'}:make_net", "--weights", str(tmp_path / "net.pt"),
                 "--data", str(tmp_path / "val.pt"), "--quantities", "gradient_flow,lesion", "--out", str(out),
                 "--option", "lesion.max_k=1", "lesion.samples=1"]) == 0
    meta = json.loads((out / "tracked.json").read_text())
    assert meta["blocks"] == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    records = [json.loads(line) for line in (out / "diagnostics.jsonl").read_text().splitlines()]
    flow = {r["layer"]: r["value"] for r in records if r["quantity"] == "gradient_flow" and r["name"] == "error_rms"}
    assert "layer2.0.sum" in flow
    # the weights were loaded: the intact error is that of the saved net on the file's 64 images
    intact = next(r["value"] for r in records if r["name"] == "intact_error")
    with torch.no_grad():
        want = (net.eval()(data.test_x[:64]).argmax(1) != data.test_y[:64]).float().mean().item()
    assert intact == pytest.approx(want)
    assert (out / "report.html").exists()
    capsys.readouterr()
    assert main(["diagnose", "--model", f"{tmp_path / 'mynets.py'}:make_net"]) == 2
    assert "--model needs --data" in capsys.readouterr().err


def test_factories_resolve_from_a_module_path_or_a_file_and_bad_ones_say_so(tmp_path):
    from depthlab.tracking import load_factory

    assert load_factory("tvnets:TVResNet") is TVResNet
    with pytest.raises(ValueError, match="must look like"):
        load_factory("tvnets.TVResNet")
    with pytest.raises(ValueError, match="--model 'tvnets:Nope'"):
        load_factory("tvnets:Nope")
    with pytest.raises(FileNotFoundError, match="no file"):
        load_factory(f"{tmp_path / 'missing.py'}:f")
