"""depthlab.models.adapt: the model contract on networks depthlab did not build (a torchvision-layout
ResNet with basic and bottleneck blocks, an nn.Sequential MLP), each checked against the original
module and against brute-force references."""
import copy

import pytest
import torch
from torch import nn
from tvnets import Bottleneck, TVResNet, mlp, resnet18_layout

from depthlab import diagnose
from depthlab.data import load_dataset
from depthlab.diagnostics.gradient_flow import gradient_flow
from depthlab.diagnostics.jacobian import jacobian_spectrum
from depthlab.diagnostics.lesion import blocks_disabled, blocks_permuted, lesion_study
from depthlab.models import build_model
from depthlab.models.adapt import AdaptedNet, adapt, find_blocks


def _resnet(block=None, seed=0):
    torch.manual_seed(seed)
    net = TVResNet() if block is None else TVResNet(block=block, layers=(1, 2), width=4)
    for m in net.modules():  # non-trivial BN statistics and affine parameters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.mark.parametrize("block", [None, Bottleneck])
def test_adapting_keeps_the_function_and_the_state_dict(block):
    net = _resnet(block)
    ref = copy.deepcopy(net)
    x = torch.randn(5, 1, 8, 8)
    keys = list(net.state_dict())
    model = adapt(net)
    assert isinstance(model, AdaptedNet) and list(model.net.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-6)
        model.train(), ref.train()
        assert torch.allclose(model(x), ref(x), atol=1e-6)
    assert model.block_names == (["layer1.0", "layer1.1", "layer2.0", "layer2.1"] if block is None
                                 else ["layer1.0", "layer2.0", "layer2.1"])
    assert adapt(build_model("resnet20")) is not None and not isinstance(adapt(build_model("resnet20")), AdaptedNet)


def test_taps_fire_once_each_in_forward_order_and_sums_are_branch_plus_shortcut():
    model = adapt(_resnet())
    taps = model.taps()
    assert list(taps)[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.sum"]
    assert "layer2.0.downsample.0" in taps and list(taps)[-1] == "fc"
    order, outs = [], {}
    def read(name):
        def hook(module, inputs, output):
            order.append(name)
            outs[name] = output.clone()
        return hook

    hooks = [m.register_forward_hook(read(n)) for n, m in taps.items()]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert sorted(order) == sorted(taps) and len(order) == len(taps)
    b = model.net.layer2[0]  # the sum is exactly shortcut + branch, read by hand
    with torch.no_grad():
        inp = model.net.layer1(model.net.relu(model.net.bn1(model.net.conv1(x))))
        by_hand = b.downsample(inp) + b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(inp)))))
    assert torch.allclose(outs["layer2.0.sum"], by_hand, atol=1e-6)


def _branch(b, h):
    return b.bn2(b.conv2(torch.relu(b.bn1(b.conv1(h)))))


def test_a_deleted_block_returns_relu_of_its_shortcut_and_swaps_run_the_other_block():
    net = _resnet()
    model = adapt(net)
    x = torch.randn(4, 1, 8, 8)

    def by_hand(replace):
        h = net.relu(net.bn1(net.conv1(x)))
        for name, blk in [("layer1.0", net.layer1[0]), ("layer1.1", net.layer1[1]), ("layer2.0", net.layer2[0]),
                          ("layer2.1", net.layer2[1])]:
            h = replace.get(name, blk)(h)
        return net.fc(torch.flatten(net.avgpool(h), 1))

    with torch.no_grad():
        with blocks_disabled(model, [1]):
            assert torch.allclose(model(x), by_hand({"layer1.1": lambda h: torch.relu(h)}), atol=1e-6)
        with blocks_disabled(model, [2]):
            down = net.layer2[0].downsample
            assert torch.allclose(model(x), by_hand({"layer2.0": lambda h: torch.relu(down(h))}), atol=1e-6)
        with blocks_permuted(model, [1, 0, 2, 3]):
            first, second = net.layer1
            swapped = by_hand({"layer1.0": lambda h: torch.relu(h + _branch(second, h)),
                               "layer1.1": lambda h: torch.relu(h + _branch(first, h))})
            assert torch.allclose(model(x), swapped, atol=1e-6)
        assert torch.allclose(model(x), by_hand({}), atol=1e-6)  # restored


def test_gradient_flow_on_an_adapted_resnet_matches_autograd_on_the_tap_outputs():
    model = adapt(_resnet())
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    g = gradient_flow(model, x, y)
    outs = {}
    def keep(name):
        def hook(module, inputs, output):
            outs[name] = output
        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in model.taps().items()]
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    saved = copy.deepcopy(model.net.state_dict())
    loss = nn.functional.cross_entropy(model(x), y)
    names = list(outs)
    grads = torch.autograd.grad(loss, [outs[n] for n in names])
    for h in hooks:
        h.remove()
    model.net.load_state_dict(saved)
    assert g.taps == names
    for name, want, got in zip(names, grads, g.error_norm):
        assert got == pytest.approx(want.norm().item(), rel=1e-4), name


def test_an_mlp_gets_taps_blocks_and_features_and_its_jacobian_matches_brute_force():
    torch.manual_seed(0)
    net = mlp()
    model = adapt(net)
    assert find_blocks(net) == ["1", "3", "5", "7"] and list(model.taps()) == ["1", "3", "5", "7"]
    x = torch.randn(2, 1, 8, 8)
    feats = model.forward_features(x)
    assert torch.allclose(net[7](feats), net(x)) and feats.shape == (2, 32)
    spec = jacobian_spectrum(model, x, exact_max=4096)
    J = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0))[0], x[0]).reshape(10, 64)
    want = torch.linalg.svdvals(J.double())
    assert torch.allclose(torch.tensor(spec.singular_values[0], dtype=torch.float64)[:len(want)], want, rtol=1e-4)


def test_diagnose_runs_the_model_free_quantities_on_any_module_and_says_what_is_missing():
    data = load_dataset("digits")
    torch.manual_seed(0)
    names = "gradient_flow,jacobian,shattering,dead_features,discriminability"
    for net in (mlp(), _resnet()):
        records = diagnose(net, names, data)
        assert {r["quantity"] for r in records} == set(names.split(","))
    records = diagnose(_resnet(), "lesion,paths,responses", data, options={"lesion": {"max_k": 1, "samples": 1}})
    assert {r["quantity"] for r in records} == {"lesion", "paths", "responses"}
    with pytest.raises(ValueError, match="residual blocks"):
        diagnose(mlp(), "paths", data)
    with pytest.raises(ValueError, match="blocks that can be deleted"):  # never a silent no-op deletion
        diagnose(mlp(), "lesion", data)
    with pytest.raises(ValueError, match="blocks not found"):
        adapt(mlp(), blocks=["layer9"])


def test_lesion_study_on_an_adapted_resnet_deletes_and_swaps():
    data = load_dataset("digits")
    model = adapt(_resnet())
    r = lesion_study(model, data, max_k=2, samples=2, n_test=64)
    assert [b["name"] for b in r["blocks"]] == model.block_names
    assert [b["downsampling"] for b in r["blocks"]] == [False, False, True, False]
    assert r["swap_k"] and r["swap_k"][0]["k"] == 1


def test_the_resnet18_layout_has_its_eight_blocks_and_keeps_its_function():
    torch.manual_seed(0)
    net = resnet18_layout().eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
        model = adapt(net)
        assert torch.allclose(model(x), before, atol=1e-6)
    assert model.block_names == [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    assert [hasattr(model.net.get_submodule(n), "downsample") and model.net.get_submodule(n).downsample is not None
            for n in model.block_names] == [False, False, True, False, True, False, True, False]


class CustomResidual(nn.Module):
    """A residual net in no recognised layout: the sums are found by tracing."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Conv2d(1, 4, 3, padding=1)
        self.f1, self.f2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.out = nn.Linear(4, 10)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + torch.relu(self.f1(h))
        h = h + torch.relu(self.f2(h))
        return self.out(h.mean((2, 3)))


class Untraceable(CustomResidual):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return super().forward(x)


def test_blocks_of_a_net_written_in_one_forward_are_found_by_tracing_and_read_their_values():
    torch.manual_seed(0)
    net = CustomResidual()
    model = adapt(net)
    assert model.sums == "fx" and model.block_names == ["add", "add_1"]  # top-level additions: node names
    assert list(model.taps()) == ["inp", "f1", "add.sum", "f2", "add_1.sum", "out"]
    assert list(model.state_dict()) == ["net." + k for k in net.state_dict()]
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    seen = {}
    hook = model.taps()["add.sum"].register_forward_hook(lambda m, i, o: seen.setdefault("sum", o.detach()))
    with torch.no_grad():
        assert torch.allclose(model(x), net(x))
        h = torch.relu(net.inp(x))
        assert torch.allclose(seen["sum"], h + torch.relu(net.f1(h)))
    hook.remove()
    g = gradient_flow(model, x, y)  # the error at the sum is autograd's gradient there
    h0 = torch.relu(net.inp(x))
    s1 = h0 + torch.relu(net.f1(h0))
    s1.retain_grad()
    nn.functional.cross_entropy(net.out((s1 + torch.relu(net.f2(s1))).mean((2, 3))), y).backward()
    assert g.error_norm[g.taps.index("add.sum")] == pytest.approx(s1.grad.norm().item(), rel=1e-5)


def test_a_model_that_does_not_trace_keeps_its_conv_and_linear_taps():
    model = adapt(Untraceable())
    assert model.sums == "none" and list(model.taps()) == ["inp", "f1", "f2", "out"]
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(model(x), model.net(x))


def test_paths_and_responses_on_an_adapted_resnet_match_brute_force():
    from depthlab.diagnostics.paths import input_gradients
    from depthlab.diagnostics.responses import responses

    model = adapt(_resnet(seed=2))
    net = model.net
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    n = len(model.blocks)
    g0, gn = input_gradients(model, x, y, [[], range(n)], mode="single_path")

    def brute_force(detach_branch):
        xb = x.clone().requires_grad_(True)
        h = net.relu(net.bn1(net.conv1(xb)))
        for b in [*net.layer1, *net.layer2]:
            s = h if b.downsample is None else b.downsample(h)
            out = _branch(b, h)
            h = torch.relu(s + out.detach() if detach_branch else s.detach() + out)
        loss = nn.functional.cross_entropy(net.fc(torch.flatten(net.avgpool(h), 1)), y, reduction="sum")
        return torch.autograd.grad(loss, xb)[0]

    torch.testing.assert_close(g0, brute_force(True))  # shortcuts only
    torch.testing.assert_close(gn, brute_force(False))  # branches only
    r = responses(model, x)
    assert r.blocks == model.block_names and r.bn == ["branch.bn2"] * n
    outs = []
    hooks = [model.net.get_submodule(name).bn2.register_forward_hook(lambda m, i, o: outs.append(o.std(correction=0)))
             for name in model.block_names]
    model.eval()
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert r.std == pytest.approx([o.item() for o in outs], rel=1e-5)


class TimmLikeBlock(nn.Module):
    """timm's BasicBlock names (act1, act2) instead of torchvision's relu."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()

    def forward(self, x):
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + x)


def test_blocks_of_another_layout_are_found_by_tracing_and_deleted():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(1, 4, 3, padding=1))
    net.add_module("layer1", nn.Sequential(TimmLikeBlock(4), TimmLikeBlock(4)))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("fc", nn.Linear(4, 10))
    net.eval()
    model = adapt(net)
    assert model.block_names == ["layer1.0", "layer1.1"] and model.sums == "fx"
    assert [t for t in model.taps() if t.endswith("sum")] == ["layer1.0.sum", "layer1.1.sum"]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad(), blocks_disabled(model, [0]):
        b = net.layer1[1]
        h = torch.relu(net.stem(x))  # block 0 deleted: act2(0 + x)
        want = net.fc(net.flat(net.pool(b.act2(b.bn2(b.conv2(b.act1(b.bn1(b.conv1(h))))) + h))))
        assert torch.allclose(model(x), want, atol=1e-6)
    r = lesion_study(model, load_dataset("digits"), max_k=1, samples=1, n_test=16)
    assert [b["name"] for b in r["blocks"]] == ["layer1.0", "layer1.1"]
