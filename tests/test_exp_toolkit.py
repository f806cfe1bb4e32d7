"""toolkit experiment (the lecture's remove-one / add-one tables): every cell trains what its name
says (read back from config.json), end to end with smoke params and verdicts recomputed from the
run directories and measurements, the init ratio against a fresh net measured again by hand, and
the deletion measurements' exact properties."""
import json
import math

import expcheck as ec
import torch

from depthlab.data import load_dataset
from depthlab.diagnostics.gradient_flow import gradient_flow, take_batch
from depthlab.experiments.runner import reproduce
from depthlab.experiments.toolkit import TOOLS, Toolkit, _zero_channels, cells
from depthlab.models import build_model

# what each tool's switch sets in the model section of config.json, on / off
ON = {"rectifier": ("activation", "relu"), "batch-norm": ("norm", "batch"), "identity": ("name", "resnet"),
      "init": ("init", "kaiming")}
OFF = {"rectifier": ("activation", "sigmoid"), "batch-norm": ("norm", "none"), "identity": ("name", "plain"),
       "init": ("init", "small-gaussian")}


def _tools_on(model_cfg: dict, p: float) -> set:
    """The tools a config.json model section has switched on (and asserts each is on or off)."""
    on = set()
    for t in TOOLS:
        if t == "dropout":
            assert model_cfg["dropout"] in (0.0, p)
            if model_cfg["dropout"] == p:
                on.add(t)
            continue
        key, value = ON[t]
        assert model_cfg[key] in (value, OFF[t][1]), (t, model_cfg[key])
        if model_cfg[key] == value:
            on.add(t)
    return on


def test_each_cell_switches_exactly_one_tool_of_its_base():
    p = Toolkit.scales["quick"]
    ids = [c[0] for c in cells(p)]
    assert len(ids) == len(set(ids)) == 2 * (len(TOOLS) + 1)
    for cid, table, tool, ov in cells(p):
        base = "full" if table == "remove-one" else "bare"
        assert cid == (base if tool is None else f"{base}{'-' if base == 'full' else '+'}{tool}")
        assert f"model.depth={p['depth']}" in ov


def test_the_real_scale_drops_elements_where_the_quick_scale_drops_maps():
    from depthlab.config import RunConfig

    for scale, mode in (("quick", "channel"), ("real", "element")):
        p = Toolkit.scales[scale]
        for cid, _, _, ov in cells(p):
            m = RunConfig().with_overrides(ov).model
            assert (m.dropout == p["dropout"]) == (cid in ("full", "full-rectifier", "full-batch-norm",
                                                            "full-identity", "full-init", "bare+dropout"))
            if m.dropout:
                assert (m.dropout_mode or "channel") == mode, (scale, cid)
                net = build_model("resnet", depth=8, width=4, dropout=m.dropout, dropout_mode=m.dropout_mode)
                drops = [type(x).__name__ for x in net.modules() if "Dropout" in type(x).__name__]
                assert drops and set(drops) == {"Dropout2d" if mode == "channel" else "Dropout"}


def test_end_to_end_cells_verdicts_and_measurements(tmp_path):
    p = Toolkit.smoke
    doc = reproduce("toolkit", seeds=1, params=p, out=str(tmp_path), quiet=True)
    saved = json.loads((tmp_path / "experiment.json").read_text())
    assert (tmp_path / "report.html").exists() and len(saved["verdicts"]) == 17
    dropout = saved["params"]["dropout"]
    run_of = {}
    for rid, cfg in ec.configs(tmp_path).items():  # every cell trains what its name says
        on = _tools_on(cfg["model"], dropout)
        assert cfg["model"]["depth"] == p["depth"] and cfg["model"]["width"] == p["width"]
        cid = ("full" + "".join(f"-{t}" for t in TOOLS if t not in on) if len(on) >= 4
               else "bare" + "".join(f"+{t}" for t in TOOLS if t in on))
        run_of[cid] = rid
    assert set(run_of) == {c[0] for c in cells(saved["params"])}

    # the init ratio of one cell, measured again on a fresh net built by hand with the same seed
    init = ec.measurement(tmp_path, "init")
    cfg = ec.configs(tmp_path)[run_of["bare"]]["model"]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model("plain", depth=p["depth"], width=p["width"], in_channels=1, activation="sigmoid",
                            norm="none", init="small-gaussian", num_classes=cfg["num_classes"])
        x, y = take_batch(load_dataset("digits"), "train", p["probe_batch"], model)
        want = gradient_flow(model, x, y).error_ratio
    assert math.isclose(init["bare-s0"], want, rel_tol=1e-5)
    assert init["bare-s0"] < 1e-2  # sigmoid + N(0, 0.01^2): the error vanishes on its way down

    # robustness: the intact accuracy is the run's own final test accuracy (same weights, eval mode)
    rob = ec.measurement(tmp_path, "robustness")
    assert set(rob) == {run_of[c] for c in ("full", "full-dropout", "bare", "bare+dropout")}
    for rid, r in rob.items():
        assert math.isclose(r["intact"], ec.acc(tmp_path, rid, "test_acc"), abs_tol=1e-9)
        assert all(0 <= r[k] <= 1 for k in ("train", "channels", "blocks"))

    # verdicts recomputed from the run directories
    tr = {c: ec.acc(tmp_path, rid, if_diverged=0.1) for c, rid in run_of.items()}
    sp = doc["params"]

    def shown(c):  # a cell as a verdict shows it: accuracy and the init ratio it rests on
        r = init[f"{c}-s0"]
        return f"{c} {ec.pct([tr[c]])} (error ratio at init {'overflow' if r == math.inf else f'{r:.3g}'})"

    ec.check(ec.verdict(saved, "full toolkit trains"), ec.rule([tr["full"]], [sp["trains"]], 0), shown("full"))
    ec.check(ec.verdict(saved, "without identity shortcuts"), ec.rule([tr["full"]], [tr["full-identity"]], sp["gap"]),
             f"{shown('full')}, {shown('full-identity')}")
    ec.check(ec.verdict(saved, "the bare net stays near chance"), ec.rule([0.1 + sp["near_chance"]], [tr["bare"]], 0),
             shown("bare"))
    for tool in ("batch-norm", "identity"):
        ec.check(ec.verdict(saved, "alone makes the bare net train", "batch" if tool == "batch-norm" else "identity"),
                 ec.rule([tr[f"bare+{tool}"]], [0.1 + sp["near_chance"]], 0), shown(f"bare+{tool}"))
    gap = {c: rob[run_of[c]]["train"] - rob[run_of[c]]["intact"] for c in ("full", "full-dropout")}
    ec.check(ec.verdict(saved, "dropout narrows the train-test gap"), ec.rule([gap["full-dropout"]], [gap["full"]], 0),
             f"train - test: full {ec.pct([gap['full']])}, full-dropout {ec.pct([gap['full-dropout']])}")
    again = reproduce("toolkit", seeds=1, params=p, out=str(tmp_path), quiet=True, report=False)
    assert all(r["reused"] for r in again["runs"]) and again["verdicts"] == doc["verdicts"]


def test_channel_deletion_hook_zeroes_exactly_the_masked_channels():
    torch.manual_seed(0)
    net = build_model("resnet", depth=8, width=4, in_channels=1).eval()
    x = torch.randn(3, 1, 8, 8)
    keep_all = [b.branch.relu1.register_forward_hook(_zero_channels(torch.ones(b.branch.conv1.out_channels,
                                                                             dtype=torch.bool)))
                for b in net.blocks]
    with torch.no_grad():
        assert torch.equal(net(x), build_and_run(net, x))
    for h in keep_all:
        h.remove()
    seen = {}
    mask = torch.tensor([True, False, True, False])
    net.blocks[0].branch.relu1.register_forward_hook(_zero_channels(mask))
    net.blocks[0].branch.relu1.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    with torch.no_grad():
        net(x)
    assert (seen["out"][:, ~mask] == 0).all() and (seen["out"][:, mask] != 0).any()


def build_and_run(net, x):
    """The same net's output with no hooks at all (a fresh copy of its weights)."""
    clean = build_model("resnet", depth=8, width=4, in_channels=1).eval()
    clean.load_state_dict(net.state_dict())
    return clean(x)
