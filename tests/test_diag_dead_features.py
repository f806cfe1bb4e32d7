"""dead_features against a brute-force reference (tap outputs captured here, channels checked one
by one in Python), on a net with a channel killed by hand and a net whose output is constant."""
import torch

from depthlab.data import load_dataset
from depthlab.diagnose_run import diagnose
from depthlab.models import build_model


def _reference(model, x, tol=1e-6):
    outputs = {}
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.__setitem__(n, o.detach().clone()))
               for n, m in model.taps().items()]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    ref = {}
    for name, out in outputs.items():
        dead = constant = 0
        for c in range(out.shape[1]):
            values = [float(v) for v in out[:, c].flatten()]
            dead += max(values) <= 0
            constant += max(values) - min(values) <= tol * max(1.0, max(abs(v) for v in values))
        ref[name] = (dead / out.shape[1], constant / out.shape[1])
    return ref


def _measured(records):
    per = {}
    for r in records:
        if r["layer"] is not None:
            per.setdefault(r["layer"], {})[r["name"]] = r["value"]
    return {k: (v["dead_fraction"], v["constant_fraction"]) for k, v in per.items()}


def test_matches_a_channel_by_channel_reference_and_finds_the_channel_killed_by_hand():
    torch.manual_seed(0)
    data = load_dataset("digits")
    model = build_model("plain", depth=8, width=4, in_channels=1)
    bn = model.blocks[0].branch.bn2
    with torch.no_grad():  # channel 2 of the first block's output: relu(0 * z - 1) = 0 for every input
        bn.weight[2], bn.bias[2] = 0.0, -1.0
    records = diagnose(model, ["dead_features"], data=data, options={"dead_features": {"batch_size": 64}})
    assert model.training  # the training flag is restored
    measured = _measured(records)
    assert measured == _reference(model, data.test_x[:64])
    first_sum = next(name for name in measured if name.endswith(".sum"))
    assert measured[first_sum] == (0.25, 0.25)  # exactly the one channel of four
    out = {r["name"]: r["value"] for r in records if r["layer"] is None}
    assert out["output_spread"] > 0 and out["output_constant"] is False


def test_a_net_whose_output_ignores_its_input_is_flagged_constant():
    torch.manual_seed(0)
    model = build_model("resnet", depth=8, width=4, in_channels=1)
    with torch.no_grad():
        model.head.fc.weight.zero_()  # logits = the bias, whatever the input
    records = diagnose(model, ["dead_features"], data=load_dataset("digits"))
    out = {r["name"]: r["value"] for r in records if r["layer"] is None}
    assert out == {"output_spread": 0.0, "output_constant": True}
