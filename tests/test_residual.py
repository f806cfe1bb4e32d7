"""depthlab.models.residual through adapt: residual blocks found by tracing in the layouts users
write (functional ReLUs, pre-activation, timm-style with SE / layer scale / drop-path, a
transformer with two branches per layer, an MLP written in one forward), each checked against
its hand-written forward with branches deleted, swapped or detached."""
import itertools
import math
import pickle

import pytest
import torch
from layouts import ConvNet, MLPStack, ViT
from torch import nn

from depthlab import diagnose
from depthlab.data import load_dataset
from depthlab.diagnostics.lesion import blocks_disabled, blocks_permuted, lesion_study
from depthlab.diagnostics.paths import input_gradients, path_gradients
from depthlab.models.adapt import adapt

LAYOUTS = {
    "functional": (lambda: ConvNet("functional"), ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]),
    "preact": (lambda: ConvNet("preact"), ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]),
    "timm": (lambda: ConvNet("timm"), ["layer1.0", "layer1.1", "layer1.2"]),
    "transformer": (lambda: ViT(depth=2), ["layers.0#0", "layers.0#1", "layers.1#0", "layers.1#1"]),
}


def _net(kind, seed=0):
    torch.manual_seed(seed)
    net = LAYOUTS[kind][0]()
    for m in net.modules():  # non-trivial BN statistics: deleting a branch must change the output
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5), m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


def by_hand(net, x, deleted=(), order=None, detach=None):
    """The forward rebuilt from the layout's pieces: position p adds the branch of unit
    ``order[p]`` (none where deleted) to its own shortcut; ``detach`` one side everywhere."""
    head = net.head_of if isinstance(net, ViT) else net.head
    n = 2 * len(net.layers) if isinstance(net, ViT) else len(net.units())
    order = list(range(n)) if order is None else order
    h = net.stem(x)
    for p, i in enumerate(order):
        s = net.shortcut(p, h)
        if order[p] in deleted:
            h = net.post(p, s)
            continue
        b = net.branch(i, h)
        s, b = (s.detach(), b) if detach == "shortcut" else (s, b.detach()) if detach == "branch" else (s, b)
        h = net.post(p, s + b)
    return head(h)


@pytest.mark.parametrize("kind", LAYOUTS)
def test_blocks_are_found_and_deleting_or_swapping_one_matches_the_hand_written_forward(kind):
    net = _net(kind)
    model = adapt(net)
    x = torch.randn(4, 1, 8, 8)
    assert model.block_names == LAYOUTS[kind][1] and model.sums == "fx"
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
        torch.testing.assert_close(by_hand(net, x), net(x))
        n = len(model.blocks)
        for i in range(n):
            with blocks_disabled(model, [i]):
                torch.testing.assert_close(model(x), by_hand(net, x, deleted={i}))
        with blocks_disabled(model, range(n)):
            torch.testing.assert_close(model(x), by_hand(net, x, deleted=set(range(n))))
        order = [1, 0] + list(range(2, n))  # blocks 0 and 1 have the same shape in every layout
        with blocks_permuted(model, order):
            torch.testing.assert_close(model(x), by_hand(net, x, order=order))
        torch.testing.assert_close(model(x), net(x))  # restored


@pytest.mark.parametrize("kind", LAYOUTS)
def test_path_gradients_match_the_forward_with_one_side_detached(kind):
    net = _net(kind, seed=1)
    model = adapt(net)
    x, y = torch.randn(3, 1, 8, 8), torch.randint(0, 10, (3,))
    n = len(model.blocks)
    g0, gn = input_gradients(model, x, y, [[], range(n)], mode="single_path")

    def grad(detach):
        xb = x.clone().requires_grad_(True)
        loss = nn.functional.cross_entropy(by_hand(net, xb, detach=detach), y, reduction="sum")
        return torch.autograd.grad(loss, xb)[0]

    torch.testing.assert_close(g0, grad("branch"))    # the path through every shortcut
    torch.testing.assert_close(gn, grad("shortcut"))  # the path through every branch


def test_every_single_path_of_a_small_mlp_matches_enumeration():
    torch.manual_seed(0)
    net = MLPStack(depth=3).eval()
    model = adapt(net)
    assert model.block_names == ["add", "add_1", "add_2"]
    x, y = torch.randn(4, 64), torch.randint(0, 10, (4,))
    subsets = [s for k in range(4) for s in itertools.combinations(range(3), k)]
    grads = input_gradients(model, x, y, subsets, mode="single_path")
    for s, g in zip(subsets, grads):
        xb = x.clone().requires_grad_(True)
        h = net.inp(xb)
        for i, (w1, w2) in enumerate(zip(net.w1, net.w2)):
            b = w2(torch.relu(w1(h)))
            h = h.detach() + b if i in s else h + b.detach()
        want = torch.autograd.grad(nn.functional.cross_entropy(net.out(h), y, reduction="sum"), xb)[0]
        torch.testing.assert_close(g, want)
    r = path_gradients(model, x, y, num_samples=3)
    assert r["n"] == 3 and list(r["counts"]) == [math.comb(3, k) for k in range(4)] and sum(r["counts"]) == 2 ** 3


def test_a_timm_block_in_training_keeps_drop_path_and_the_same_blocks():
    net = _net("timm")
    model = adapt(net)
    assert set(model._graphs) == {False, True}  # traced in both modes: drop-path runs in training
    net.train()
    x = torch.randn(8, 1, 8, 8)
    torch.manual_seed(3)
    got = model(x)
    torch.manual_seed(3)
    torch.testing.assert_close(got, net(x))
    torch.manual_seed(3)
    assert not torch.allclose(net(x), net.eval()(x))  # drop-path did drop something


class Switchable(ConvNet):
    """A user's model with an on/off switch read in its forward."""

    def __init__(self):
        super().__init__("functional")
        self.use_layer2 = True

    def forward(self, x):
        x = self.layer1(self.stem(x))
        if self.use_layer2:
            x = self.layer2(x)
        return self.fc(x.mean((2, 3)))


def test_diagnosing_never_changes_the_model():
    torch.manual_seed(0)
    net = Switchable().eval()
    data = load_dataset("digits")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    records = diagnose(net, "lesion,paths,gradient_flow", data, options={"lesion": {"max_k": 1, "samples": 1}})
    assert {r["quantity"] for r in records} == {"lesion", "paths", "gradient_flow"}
    assert all("forward" not in m.__dict__ for m in net.modules())  # no forward patched, even for a moment left
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    x = data.test_x[:4]
    with torch.no_grad():
        full = net(x)
        net.use_layer2 = False  # the user's own switch still works
        with pytest.raises(RuntimeError):  # 4 channels into fc(8): the switch took effect
            net(x)
    net.use_layer2 = True
    clone = pickle.loads(pickle.dumps(net))
    assert "depthlab" not in pickle.dumps(net).decode("latin-1")
    torch.testing.assert_close(clone(x), full)


def test_a_model_that_does_not_trace_is_read_through_its_named_blocks(caplog):
    class Untraceable(ConvNet):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace the whole model
                x = x * 1.0
            return super().forward(x)

    torch.manual_seed(0)
    net = Untraceable("preact").eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
    with caplog.at_level("WARNING", logger="depthlab"):
        model = adapt(net)  # the layer{N}.{i} modules, each traced on its own
    assert "does not trace with torch.fx" in caplog.text and "layer1.0, layer1.1, layer2.0, layer2.1" in caplog.text
    assert model.sums == "blocks" and model.block_names == ["layer1.0", "layer1.1", "layer2.0", "layer2.1"]
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x))
        with blocks_disabled(model, [2]):
            torch.testing.assert_close(model(x), by_hand(net, x, deleted={2}))
        with blocks_permuted(model, [1, 0, 2, 3]):
            torch.testing.assert_close(model(x), by_hand(net, x, order=[1, 0, 2, 3]))
    assert all("forward" not in m.__dict__ for m in net.modules())  # only inside depthlab's own calls
    assert list(model.taps())[:4] == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.sum"]
    named = adapt(net, blocks=["layer2.0", "layer2.1"])
    assert named.block_names == ["layer2.0", "layer2.1"]
    r = lesion_study(named, load_dataset("digits"), max_k=1, samples=1, n_test=32)
    assert [b["downsampling"] for b in r["blocks"]] == [True, False]


def test_no_residual_addition_gets_a_clear_message():
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    data = load_dataset("digits")
    with pytest.raises(ValueError, match="residual blocks"):
        diagnose(net, "paths", data)
    with pytest.raises(ValueError, match="blocks that can be deleted"):
        diagnose(net, "lesion", data)
    highway = ViT(depth=1)
    assert len(adapt(highway).blocks) == 2  # the position embedding's addition is not a block


def test_discriminability_reads_a_transformers_residual_stream_per_token_feature():
    from depthlab.diagnostics.discriminability import collect_features

    torch.manual_seed(0)
    net = ViT(depth=1).eval()
    model = adapt(net)
    x = torch.randn(5, 1, 8, 8)
    feats = collect_features(model, x, taps=["embed", "layers.0#1.sum", "head"])
    with torch.no_grad():
        stream = net.layers(net.tokens(x))
    assert feats["embed"].shape == (5, 32) and feats["head"].shape == (5, 10)
    torch.testing.assert_close(feats["layers.0#1.sum"], stream.mean(1))  # averaged over the 16 tokens


def test_the_transformer_example_runs_end_to_end(tmp_path, monkeypatch, capsys):
    """examples/transformer.py at one epoch each: training, the diagnosis of both nets, the pages."""
    import transformer

    monkeypatch.chdir(tmp_path)
    transformer.main(vit_epochs=1, resnet_epochs=1, options={"lesion": {"max_k": 2, "samples": 2},
                                                             "paths": {"num_samples": 2},
                                                             "discriminability": {"n_train": 300, "n_test": 100}})
    out = capsys.readouterr().out
    assert "layers.5#1" in out and "paths: 90% of the gradient" in out and "read-out stops rising" in out
    assert (tmp_path / "runs/transformer/lesion.png").stat().st_size > 10_000
    for name in ("vit", "resnet"):
        assert (tmp_path / "runs/transformer" / name / "diagnosis" / "report.html").is_file()
