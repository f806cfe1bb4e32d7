"""Properties of the lesion, discriminability and gradient_flow diagnostics that the mutation run
(issue 13) found unchecked: defaults, edge cases named in the docstrings (n < 2, empty or
singular statistics, a zero denominator, too-small splits), the option plumbing (n_test, n_train,
taps, batch sizes) and the dtype/autocast contract. Numbers are compared with an independent
computation: parameter-free toy models whose features are the inputs themselves, so a ridge probe,
a Fisher ratio or a top-1 error can be written out in numpy."""
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from depthlab.diagnostics import discriminability as disc
from depthlab.diagnostics import gradient_flow as gf
from depthlab.diagnostics import lesion as les
from depthlab.diagnostics.registry import record
from depthlab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(family="resnet", depth=8, classes=3, seed=0):
    torch.manual_seed(seed)
    return build_model(family, depth=depth, num_classes=classes, in_channels=1, width=4)


def image_data(n_train=30, n_test=12, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % classes
    x = torch.randn(len(y), 1, 8, 8, generator=g) + 0.8 * y.float()[:, None, None, None]
    return SimpleNamespace(train_x=x[:n_train], train_y=y[:n_train], test_x=x[n_train:], test_y=y[n_train:],
                           num_classes=classes)


def batch_sizes(model):
    """Forward-pre hook on ``model`` recording the batch size of every forward pass."""
    calls = []
    handle = model.register_forward_pre_hook(lambda _m, inp: calls.append(len(inp[0])))
    return calls, handle


# ====================================================================================== lesion
class Affine(nn.Module):
    """A parameter-free block ``x * a + b`` (scalar a, per-class b); deleted, it is the identity."""

    def __init__(self, a, b):
        super().__init__()
        self.a, self.b, self.enabled = a, torch.as_tensor(b, dtype=torch.float32), True

    def forward(self, x):
        return x * self.a + self.b if self.enabled else x

    def reference(self, x):
        return x * self.a + self.b


class Chain(nn.Module):
    """The lesion contract with no parameter, no buffer and no ``block_names``: blocks run in order and
    their output is the logits."""

    def __init__(self, blocks):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def chain(n=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    signs = [1.0, -1.0, 1.0, 1.0, -1.0, 1.0]
    return Chain([Affine(signs[i % 6] * (0.5 + i / 4), torch.randn(classes, generator=g)) for i in range(n)])


def chain_data(model, n=40, classes=4, seed=2, flip=0.3):
    """Inputs, and labels = the intact chain's predictions with a fraction ``flip`` changed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, classes, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    wrong = torch.rand(n, generator=g) < flip
    y = torch.where(wrong, (y + 1) % classes, y)
    return SimpleNamespace(test_x=x, test_y=y, train_x=x, train_y=y)


def chain_error(model, x, y, order=None, skipped=()):
    """Top-1 error of the chain written out: blocks in ``order`` (original indices), ``skipped`` ones off."""
    order = range(len(model.blocks)) if order is None else order
    h = x
    for i in order:
        if i not in skipped:
            h = model.blocks[i].reference(h)
    return float((h.argmax(1) != y).float().mean())


def test_kendall_tau_is_one_below_two_items_and_is_measured_against_the_given_reference():
    assert les.kendall_tau([]) == 1.0
    assert les.kendall_tau([7], reference=[7]) == 1.0
    assert les.kendall_tau([1, 0]) == -1.0  # n = 2 is measured, not the n < 2 default
    p = [2, 0, 3, 1]
    assert les.kendall_tau(p, reference=p) == 1.0
    assert les.kendall_tau(p, reference=p[::-1]) == -1.0
    # one adjacent exchange relative to the reference: 1 - 4 / (n (n - 1))
    assert les.kendall_tau([0, 1, 2, 3], reference=[1, 0, 2, 3]) == pytest.approx(1 - 4 / 12)
    with pytest.raises(ValueError):
        les.kendall_tau([0, 1], reference=[0, 1, 2])


def test_swap_order_exchanges_the_pairs_in_turn():
    assert les.swap_order(4, []) == [0, 1, 2, 3]
    assert les.swap_order(4, [(0, 1), (1, 2)]) == [1, 2, 0, 3]


def test_error_rate_is_the_fraction_of_wrong_top1_over_every_batch():
    model = Chain([])  # the identity: the inputs are the logits
    x = torch.eye(3)[[0, 1, 2, 0, 1, 2, 0]]
    y = torch.tensor([1, 1, 2, 0, 1, 0, 2])  # samples 0, 5 and 6 are wrong (first and last batch)
    assert les.error_rate(model, x, y, batch_size=3) == pytest.approx(3 / 7)
    assert les.error_rate(model, x, y, batch_size=256) == pytest.approx(3 / 7)
    assert les.error_rate(model, x[:1], y[:1]) == 1.0  # one sample, wrong: error 1, not 1/2
    assert les.error_rate(model, x[:0], y[:0]) == 0.0  # no sample: 0, no division by zero


def test_error_rate_is_float32_with_autocast_disabled():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    x = torch.tensor([[1.0, 1e-3]], dtype=torch.float64)  # logits 1 and 1.001: equal in bfloat16
    y = torch.tensor([1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert les.error_rate(lin, x, y) == 0.0


def test_lesion_of_a_parameter_free_model_names_blocks_by_index_and_matches_a_manual_forward():
    model = chain(n=4)
    data = chain_data(model)
    r = les.lesion_study(model, data, max_k=1, samples=2, seed=3)
    x, y = data.test_x, data.test_y
    assert r["intact_error"] == pytest.approx(chain_error(model, x, y))
    assert [b["name"] for b in r["blocks"]] == ["block0", "block1", "block2", "block3"]
    assert [b["index"] for b in r["blocks"]] == [0, 1, 2, 3]
    assert [b["error"] for b in r["blocks"]] == pytest.approx([chain_error(model, x, y, skipped={i})
                                                              for i in range(4)])
    for b in r["blocks"]:
        assert (b["in_shape"], b["out_shape"], b["same_shape"], b["downsampling"]) == ([4], [4], True, False)
    for d in r["delete_k"]:
        assert d["errors"] == pytest.approx([chain_error(model, x, y, skipped=set(s)) for s in d["deleted"]])
        assert d["mean_error"] == pytest.approx(sum(d["errors"]) / len(d["errors"]))


def test_lesion_study_defaults_are_three_ks_five_seeded_draws_and_both_studies():
    model = chain(n=6)
    data = chain_data(model)
    r = les.lesion_study(model, data)
    assert r == les.lesion_study(model, data, max_k=3, samples=5, seed=0, batch_size=256,
                                 deletions=True, swaps=True)
    assert [d["k"] for d in r["delete_k"]] == [1, 2, 3]
    assert [d["k"] for d in r["swap_k"]] == [1, 2, 3]  # six same-shape blocks: three disjoint pairs
    assert all(len(d["errors"]) == 5 for d in r["delete_k"] + r["swap_k"])


def test_swap_errors_are_those_of_the_permuted_model_and_k_stops_at_max_k():
    model = chain(n=6)
    data = chain_data(model)
    x, y = data.test_x, data.test_y
    r = les.lesion_study(model, data, max_k=2, samples=3, seed=1, deletions=False)
    assert r["delete_k"] == []
    assert [d["k"] for d in r["swap_k"]] == [1, 2]  # a third pair exists, but max_k = 2
    for d in r["swap_k"]:
        orders = [les.swap_order(6, [tuple(p) for p in pairs]) for pairs in d["pairs"]]
        for pairs in d["pairs"]:
            flat = [i for p in pairs for i in p]
            assert len(pairs) == d["k"] and len(set(flat)) == len(flat) and all(i < j for i, j in pairs)
        assert d["errors"] == pytest.approx([chain_error(model, x, y, order=o) for o in orders])
        assert d["kendall_tau"] == pytest.approx([les.kendall_tau(o) for o in orders])
        assert d["mean_error"] == pytest.approx(sum(d["errors"]) / len(d["errors"]))
    assert any(e != r["intact_error"] for d in r["swap_k"] for e in d["errors"])  # swaps do change errors


def test_max_k_zero_leaves_only_the_per_block_study_and_bad_counts_raise():
    model = chain(n=3)
    data = chain_data(model)
    r = les.lesion_study(model, data, max_k=0, samples=1)
    assert r["delete_k"] == [] and r["swap_k"] == [] and len(r["blocks"]) == 3
    with pytest.raises(ValueError):
        les.lesion_study(model, data, max_k=-1, samples=1)
    with pytest.raises(ValueError):
        les.lesion_study(model, data, max_k=1, samples=0)


def test_lesion_passes_are_one_single_sample_shape_pass_then_batches_of_batch_size():
    model = chain(n=3)
    data = chain_data(model, n=300)
    calls, handle = batch_sizes(model)
    try:
        les.lesion_study(model, data, max_k=1, samples=1)
        default = list(calls)
        calls.clear()
        les.lesion_study(model, data, max_k=1, samples=1, n_test=10, batch_size=4)
        small = list(calls)
        calls.clear()
        les.lesion_study(model, data, max_k=0, samples=1, n_test=1000)
        clipped = list(calls)
        calls.clear()
        les.error_rate(model, data.test_x, data.test_y)
        assert calls == [256, 44]  # error_rate's own default batch size
    finally:
        handle.remove()
    # shapes from x[:1]; then intact, 3 single deletions, 1 draw of k=1 deletion, 1 swap draw
    assert default[0] == 1 and default[1:] == [256, 44] * 6
    assert small[0] == 1 and small[1:] == [4, 4, 2] * 6
    assert clipped[0] == 1 and clipped[1:] == [256, 44] * 4  # n_test beyond the data: all of it


def test_lesion_study_casts_inputs_to_float32():
    model = tiny("resnet", depth=8)
    data = image_data()
    as_double = SimpleNamespace(test_x=data.test_x.double(), test_y=data.test_y.int())
    kw = dict(max_k=1, samples=1, swaps=False)
    assert les.lesion_study(model, as_double, **kw) == les.lesion_study(model, data, **kw)


def test_block_records_carry_the_measured_shapes_and_flags():
    model = tiny("resnet", depth=14)
    data = image_data()
    shapes = []
    handles = [b.register_forward_hook(lambda _m, i, o: shapes.append((list(i[0].shape[1:]), list(o.shape[1:]))))
               for b in model.blocks]
    try:
        with torch.no_grad():
            model.eval()(data.test_x[:1])
    finally:
        for h in handles:
            h.remove()
    r = les.lesion_study(model, data, max_k=2, samples=2, deletions=False)
    assert [b["name"] for b in r["blocks"]] == model.block_names
    assert [(b["in_shape"], b["out_shape"]) for b in r["blocks"]] == shapes
    assert [b["same_shape"] for b in r["blocks"]] == [True, True, False, True, False, True]
    assert [b["downsampling"] for b in r["blocks"]] == [i[1:] != o[1:] for i, o in shapes]
    # blocks 3 and 5 are same-shape but alone in their shapes: the only pair is stage1's, and k stops at 1
    assert [d["k"] for d in r["swap_k"]] == [1] and r["swap_k"][0]["pairs"] == [[[0, 1]]] * 2
    dense = tiny("densenet", depth=10)
    blocks = les.lesion_study(dense, image_data(), max_k=0, samples=1)["blocks"]
    grows = [b for b in blocks if b["in_shape"][0] != b["out_shape"][0] and b["in_shape"][1:] == b["out_shape"][1:]]
    assert grows and all(not b["same_shape"] and not b["downsampling"] for b in grows)


def test_swap_pairs_are_drawn_uniformly_over_all_same_shape_pairs():
    groups = [[0, 1, 2], [4, 5], [7, 8]]  # 3 + 1 + 1 = 5 pairs
    rng = random.Random(0)
    counts = {}
    for _ in range(4000):
        (pair,) = les._swap_draw(rng, groups, 1)
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) == {(0, 1), (0, 2), (1, 2), (4, 5), (7, 8)}
    assert all(abs(c / 4000 - 0.2) < 0.035 for c in counts.values()), counts
    three = les._swap_draw(rng, groups, 3)  # one pair from each group, disjoint
    assert sorted(p[0] // 3 for p in three) == [0, 1, 2] and len({i for p in three for i in p}) == 6
    assert les._swap_draw(rng, groups, 4) is None
    assert groups == [[0, 1, 2], [4, 5], [7, 8]]  # the caller's groups are not consumed


# ============================================================================ discriminability
class Features(nn.Module):
    """Parameter-free model on (B, d) inputs whose taps output known features: ``first`` = x,
    ``second.sum`` = 2x - 1, ``const.sum`` = zeros (a constant feature), ``small.sum`` = x / 100 (a
    centred scatter of trace below 1)."""

    def __init__(self):
        super().__init__()
        self.first, self.second, self.const, self.small = nn.Identity(), nn.Identity(), nn.Identity(), nn.Identity()

    def taps(self):
        return {"first": self.first, "second.sum": self.second, "const.sum": self.const, "small.sum": self.small}

    def forward(self, x):
        h = self.second(2 * self.first(x) - 1)
        return h + self.const(torch.zeros_like(x)) + 0 * self.small(x / 100)


FEATURES = {"first": lambda x: x, "second.sum": lambda x: 2 * x - 1, "const.sum": lambda x: 0 * x,
            "small.sum": lambda x: x / 100}


def vector_data(n_train=40, n_test=20, d=3, classes=3, seed=4, sep=1.2):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % classes
    y = y[torch.randperm(len(y), generator=g)]
    x = torch.randn(len(y), d, generator=g) + sep * F.one_hot(y, d).float()
    return SimpleNamespace(train_x=x[:n_train], train_y=y[:n_train], test_x=x[n_train:], test_y=y[n_train:],
                           num_classes=classes)


def ridge_reference(X, y, classes, lam):
    """Ridge with an unpenalised intercept, in numpy float64: W (d+1, classes), bias last."""
    Xa = np.hstack([X, np.ones((len(X), 1))])
    D = np.eye(Xa.shape[1])
    D[-1, -1] = 0.0
    return np.linalg.solve(Xa.T @ Xa + lam * D, Xa.T @ np.eye(classes)[y])


def accuracy(W, X, y):
    return float(((X @ W[:-1] + W[-1]).argmax(1) == y).mean())


def fisher_reference(X, y, classes):
    mu = X.mean(0)
    present = [c for c in range(classes) if (y == c).any()]
    between = sum((y == c).sum() * ((X[y == c].mean(0) - mu) ** 2).sum() for c in present)
    within = sum(((X[y == c] - X[y == c].mean(0)) ** 2).sum() for c in present)
    return between / within if within > 0 else (math.inf if between > 0 else math.nan)


def test_probe_on_known_features_matches_a_numpy_ridge_reference():
    data = vector_data()
    grid = [1e-3, 1e-1, 10.0]
    res = disc.probe_taps(Features(), data, lambdas=grid, n_train=30, val_fraction=0.25, n_test=15, seed=3,
                          batch_size=7, keep_weights=True)
    tr, va = disc.probe_splits(40, 30, 0.25, 3)
    assert (len(tr), len(va)) == (22, 8)
    y_tr, y_va, y_te = (t.numpy() for t in (data.train_y[tr], data.train_y[va], data.test_y[:15]))
    assert [r["tap"] for r in res] == ["first", "second.sum", "const.sum", "small.sum"]
    for r in res:
        f = FEATURES[r["tap"]]
        X_tr, X_va, X_te = (f(t).double().numpy() for t in (data.train_x[tr], data.train_x[va], data.test_x[:15]))
        d = X_tr.shape[1]
        trace = ((X_tr - X_tr.mean(0)) ** 2).sum()
        scale = trace / d if trace > 0 else 1.0  # constant features: the grid values as they are
        Ws = [ridge_reference(X_tr, y_tr, 3, g * scale) for g in grid]
        val = [accuracy(W, X_va, y_va) for W in Ws]
        i = max(j for j, a in enumerate(val) if a == max(val))
        assert r["dim"] == d == 3
        assert r["val_accuracies"] == pytest.approx(val, abs=1e-12)
        assert r["val_accuracy"] == pytest.approx(val[i], abs=1e-12)
        assert r["lambda_grid"] == grid[i]
        assert r["lambda"] == pytest.approx(grid[i] * scale, rel=1e-9)
        np.testing.assert_allclose(r["weights"].numpy(), Ws[i], rtol=1e-7, atol=1e-9)
        assert r["probe_accuracy"] == pytest.approx(accuracy(Ws[i], X_te, y_te), abs=1e-12)
        fisher = fisher_reference(X_tr, y_tr, 3)
        assert r["fisher_ratio"] == pytest.approx(fisher, rel=1e-9, nan_ok=True)
    const, small = res[2], res[3]
    assert const["lambda"] == const["lambda_grid"] and math.isnan(const["fisher_ratio"])
    assert 0 < small["lambda"] < small["lambda_grid"]  # a trace below 1 still scales the grid
    for r in disc.probe_taps(Features(), data, lambdas=[0.5, 2.0], lambda_scale="absolute"):
        assert r["lambda"] == r["lambda_grid"]
    assert res[0]["probe_accuracy"] > 0.5  # the features carry the class


def test_probe_defaults_are_pool_1_seed_0_no_weights_and_batches_of_256():
    model, data = tiny(), image_data()
    res = disc.probe_taps(model, data)
    assert res == disc.probe_taps(model, data, pool=1, lambda_scale="trace", val_fraction=0.2, seed=0,
                                  keep_weights=False)
    assert res[0]["dim"] == model.stem.conv.out_channels and "weights" not in res[0]
    toy, vec = Features(), vector_data(n_train=20, n_test=300)
    calls, handle = batch_sizes(toy)
    try:
        disc.probe_taps(toy, vec)
        assert calls == [16, 4, 256, 44]  # probe-train, validation, test in batches of 256
        calls.clear()
        disc.probe_taps(toy, vec, batch_size=7, n_test=10)
        assert calls == [7, 7, 2, 4, 7, 3]  # batch_size reaches every pass
        calls.clear()
        disc.collect_features(toy, vec.test_x)
        disc.accumulate_stats(toy, vec.test_x, vec.test_y, 3)
        assert calls == [256, 44] * 2
    finally:
        handle.remove()
    assert disc.probe_taps(model, data, pool=2, taps=["stem.conv"])[0]["dim"] == 4 * model.stem.conv.out_channels


def test_probe_only_measures_the_requested_taps_and_the_first_n_test_samples():
    data = vector_data(sep=4.0)
    res = disc.probe_taps(Features(), data, taps=["second.sum"], lambdas=[0.1], n_test=1, keep_weights=True)
    assert [r["tap"] for r in res] == ["second.sum"]
    W = res[0]["weights"].numpy()
    X_te = FEATURES["second.sum"](data.test_x[:1]).double().numpy()
    assert res[0]["probe_accuracy"] == accuracy(W, X_te, data.test_y[:1].numpy())  # 0 or 1 of one sample
    assert res[0]["probe_accuracy"] == 1.0
    full = disc.probe_taps(Features(), data, taps=["second.sum"], lambdas=[0.1], n_test=1000, keep_weights=True)
    X_all = FEATURES["second.sum"](data.test_x).double().numpy()
    assert full[0]["probe_accuracy"] == pytest.approx(accuracy(W, X_all, data.test_y.numpy()), abs=1e-12)


def test_probe_validates_pool_and_the_lambda_grid():
    data = vector_data()
    assert len(disc.probe_taps(Features(), data, pool=1, lambdas=[0.5])) == 4
    with pytest.raises(ValueError, match="pool"):
        disc.probe_taps(Features(), data, pool=0)
    for bad in ([], [0.0, 1.0], [-1.0]):
        with pytest.raises(ValueError, match="lambdas"):
            disc.probe_taps(Features(), data, lambdas=bad)


def test_number_of_classes_comes_from_data_then_model_spec_then_the_largest_label_of_any_split():
    data = vector_data()
    model = tiny(classes=10)
    spec_only = SimpleNamespace(**{k: v for k, v in vars(image_data()).items() if k != "num_classes"})
    w = disc.probe_taps(model, spec_only, taps=["stem.conv"], lambdas=[1.0], keep_weights=True)[0]["weights"]
    assert w.shape[1] == 10  # data has no num_classes: the model's spec says 10
    five = SimpleNamespace(**vars(spec_only), num_classes=5)
    w = disc.probe_taps(model, five, taps=["stem.conv"], lambdas=[1.0], keep_weights=True)[0]["weights"]
    assert w.shape[1] == 5  # the data's num_classes comes first
    for spec in (SimpleNamespace(), SimpleNamespace(num_classes=None)):  # a spec that does not say
        toy = Features()
        toy.spec = spec
        plain = SimpleNamespace(**{k: v for k, v in vars(data).items() if k != "num_classes"})
        w = disc.probe_taps(toy, plain, taps=["first"], lambdas=[1.0], keep_weights=True)[0]["weights"]
        assert w.shape[1] == 3
    plain = SimpleNamespace(**{k: v for k, v in vars(data).items() if k != "num_classes"})
    _, va = disc.probe_splits(len(plain.train_x), None, 0.2, 0)
    for split, label in (("train", 5), ("val", 6), ("test", 7)):
        labels = {"train": plain.train_y.clone(), "test": plain.test_y.clone()}
        if split == "val":
            labels["train"][va[0]] = label
        elif split == "train":
            not_val = [i for i in range(len(plain.train_y)) if i not in set(va.tolist())]
            labels["train"][not_val[0]] = label
        else:
            labels["test"][0] = label
        d = SimpleNamespace(train_x=plain.train_x, train_y=labels["train"], test_x=plain.test_x,
                            test_y=labels["test"])
        res = disc.probe_taps(Features(), d, taps=["first"], lambdas=[1.0], keep_weights=True)
        assert res[0]["weights"].shape == (4, label + 1), split


def test_probe_splits_are_seeded_at_least_one_validation_sample_and_validated():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    tr, va = disc.probe_splits(10)
    assert torch.equal(va, perm[:2]) and torch.equal(tr, perm[2:])  # default: 20 % held out, seed 0
    perm3 = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    tr, va = disc.probe_splits(10, n_train=5, val_fraction=0.2, seed=3)
    assert torch.equal(va, perm3[:1]) and torch.equal(tr, perm3[1:5])
    tr, va = disc.probe_splits(10, n_train=50, seed=3)
    assert torch.equal(torch.cat([va, tr]), perm3)
    tr, va = disc.probe_splits(4, val_fraction=0.1)
    assert (len(tr), len(va)) == (3, 1)  # round(0.4) = 0: at least one validation sample
    tr, va = disc.probe_splits(2, val_fraction=0.5)
    assert (len(tr), len(va)) == (1, 1)  # the smallest possible probe set
    with pytest.raises(ValueError, match="too small"):
        disc.probe_splits(1)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="must be in"):
            disc.probe_splits(10, val_fraction=bad)


def test_fisher_ratio_on_hand_statistics_including_absent_and_singleton_classes():
    X = np.array([[0.1, 0.0], [0.3, 0.1], [0.2, 0.05], [-0.2, 0.1], [0.05, -0.1]])
    y = np.array([0, 0, 0, 1, 3])  # class 2 absent, classes 1 and 3 have one sample each
    sums = torch.tensor(np.stack([X[y == c].sum(0) if (y == c).any() else np.zeros(2) for c in range(4)]))
    counts = torch.tensor([3, 1, 0, 1])
    got = disc.fisher_ratio(sums, counts, torch.tensor(float((X ** 2).sum()), dtype=torch.float64))
    assert got == pytest.approx(fisher_reference(X, y, 4), rel=1e-9)
    assert 0 < got < math.inf
    # every sample at its class mean: within = 0 -> inf (between > 0) or nan (between = 0)
    small = np.array([[0.1, 0.0], [0.1, 0.0], [0.3, 0.0]])
    ys = np.array([0, 0, 1])
    sums = torch.tensor(np.stack([small[ys == c].sum(0) for c in range(2)]))
    sumsq = torch.tensor(float((small ** 2).sum()), dtype=torch.float64)
    assert disc.fisher_ratio(sums, torch.tensor([2, 1]), sumsq) == math.inf
    same = torch.tensor([[0.2, 0.0], [0.1, 0.0]])
    assert math.isnan(disc.fisher_ratio(same, torch.tensor([2, 1]), torch.tensor(0.03, dtype=torch.float64)))


def test_accumulated_statistics_equal_numpy_sums_over_batches():
    data = vector_data()
    y = data.train_y.int()  # integer labels of any width
    stats = disc.accumulate_stats(Features(), data.train_x, y, 4, batch_size=7, taps=["second.sum"])
    assert list(stats) == ["second.sum"]
    X = FEATURES["second.sum"](data.train_x).double().numpy()
    Y = np.eye(4)[y.numpy()]
    Xa = np.hstack([X, np.ones((len(X), 1))])
    s = {k: v.numpy() for k, v in stats["second.sum"].items()}
    assert all(v.dtype == np.float64 for v in s.values())
    np.testing.assert_allclose(s["A"], Xa.T @ Xa, rtol=1e-12)
    np.testing.assert_allclose(s["B"], Xa.T @ Y, rtol=1e-12)
    np.testing.assert_allclose(s["class_sums"], Y.T @ X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s["counts"], Y.sum(0))
    assert float(s["sumsq"]) == pytest.approx(float((X ** 2).sum()), rel=1e-12)
    everything = disc.accumulate_stats(tiny(), image_data().train_x, image_data().train_y, 3)
    assert list(everything) == list(tiny().taps())
    assert everything["stem.conv"]["A"].shape == (5, 5)  # default pool 1: d = channels


def test_pool_features_shapes_and_values():
    out = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    flat = torch.randn(2, 5)
    assert disc.pool_features(flat) is flat and disc.pool_features(flat, pool=2) is flat
    assert torch.allclose(disc.pool_features(out), out.mean((2, 3)))
    quads = out.reshape(2, 3, 2, 2, 2, 2).mean((3, 5)).reshape(2, 12)  # channel-major 2x2 means
    assert disc.pool_features(out, 2).shape == (2, 12) and torch.allclose(disc.pool_features(out, 2), quads)


def test_collect_features_defaults_to_every_tap_pooled_to_1x1_and_honours_a_subset():
    model, x = tiny(), image_data().train_x[:6]
    feats = disc.collect_features(model, x)
    assert list(feats) == list(model.taps())
    assert feats["stem.conv"].shape == (6, model.stem.conv.out_channels)
    sub = disc.collect_features(model, x, taps=["stage1.block1.sum"])
    assert list(sub) == ["stage1.block1.sum"]
    assert torch.allclose(sub["stage1.block1.sum"], feats["stage1.block1.sum"])


def test_features_are_float32_with_autocast_disabled_and_any_input_dtype():
    model, x = tiny(), image_data().train_x[:6]
    seen = []
    handle = model.taps()["stage3.block1.sum"].register_forward_hook(lambda _m, _i, o: seen.append(o.mean((2, 3))))
    with torch.no_grad():
        model.eval()(x)  # the reference: a plain float32 forward
    handle.remove()
    ref = seen[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = disc.collect_features(model, x.double(), taps=["stage3.block1.sum"])["stage3.block1.sum"]
    assert cast.dtype == torch.float32 and torch.allclose(cast, ref, rtol=1e-5, atol=1e-6)


def test_a_tap_that_does_not_fire_is_an_error():
    model = Features()
    model.taps = lambda: {"first": model.first, "unused": nn.Identity()}
    with pytest.raises(RuntimeError, match="did not fire"):
        disc.collect_features(model, torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="did not fire"):
        disc.accumulate_stats(model, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), 3)
    assert not model.first._forward_hooks
    # a tap that is not requested is not hooked, so it may stay silent
    res = disc.probe_taps(model, vector_data(), taps=["first"], lambdas=[1.0])
    assert [r["tap"] for r in res] == ["first"]


def test_ridge_penalty_is_applied_in_float64():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(6, 2))
    Xa = np.hstack([X, np.ones((6, 1))])
    Y = np.eye(2)[[0, 1, 0, 1, 1, 0]]
    A, B = Xa.T @ Xa, Xa.T @ Y
    ref = np.linalg.solve(A + 0.1 * np.diag([1.0, 1.0, 0.0]), B)  # 0.1 is not a float32 number
    W = disc.ridge_solve(torch.tensor(A), torch.tensor(B), 0.1)
    np.testing.assert_allclose(W.numpy(), ref, rtol=1e-12, atol=1e-13)


def test_ridge_without_data_falls_back_to_a_finite_least_squares_solution():
    """No data: A = B = 0, so A + lam D is singular (for lam = 0 entirely, for lam > 0 in the bias)."""
    for lam in (0.0, 1.0):
        W = disc.ridge_solve(torch.zeros(3, 3), torch.zeros(3, 2), lam)
        assert W.dtype == torch.float64 and torch.equal(W, torch.zeros(3, 2, dtype=torch.float64)), lam


def test_depth_where_probe_stops_rising_reads_probe_dicts_and_skips_other_records():
    dicts = [{"tap": "stem.conv", "probe_accuracy": 0.99}, {"tap": "s1.b1.sum", "probe_accuracy": 0.5},
             {"tap": "s1.b2.sum", "probe_accuracy": 0.6}, {"tap": "s1.b3.sum", "probe_accuracy": 0.604}]
    assert disc.depth_where_probe_stops_rising(dicts) == {"index": 1, "name": "s1.b2.sum", "accuracy": 0.6,
                                                          "num_taps": 3}
    records = [{"name": "lambda", "layer": "s1.b1.sum", "value": 9.0},
               {"tap": "s9.sum"},  # neither a probe dict nor a probe record
               {"quantity": "lesion", "name": "probe_accuracy", "layer": "s1.b0.sum", "value": 0.99},
               {"name": "probe_accuracy", "layer": None, "value": 0.99},
               {"name": "probe_accuracy", "layer": "s1.b1.conv1", "value": 0.99},
               {"name": "probe_accuracy", "layer": "s1.b1.sum", "value": 0.5},
               {"quantity": "discriminability", "name": "probe_accuracy", "layer": "s1.b2.sum", "value": 0.6},
               {"name": "probe_accuracy", "layer": "s1.b3.sum", "value": 0.604}]
    assert disc.depth_where_probe_stops_rising(records) == {"index": 1, "name": "s1.b2.sum", "accuracy": 0.6,
                                                            "num_taps": 3}
    assert disc.depth_where_probe_stops_rising(records, suffix=".conv1")["name"] == "s1.b1.conv1"
    # every later tap counts, the next one included; a rise of exactly tol is not more than tol
    dip = [{"tap": f"b{i}.sum", "probe_accuracy": a} for i, a in enumerate([0.5, 0.9, 0.5])]
    assert disc.depth_where_probe_stops_rising(dip)["index"] == 1
    edge = [{"tap": f"b{i}.sum", "probe_accuracy": a} for i, a in enumerate([0.5, 0.75])]
    assert disc.depth_where_probe_stops_rising(edge, tol=0.25)["index"] == 0


# ============================================================================== gradient_flow
def test_first_to_last_ratios_are_inf_for_a_zero_denominator_and_nan_for_zero_over_zero():
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[1.0, 0.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[0.0, 0.0], error_numel=[1, 1])
    assert flow.weight_grad_ratio == math.inf and math.isnan(flow.error_ratio)
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[3.0, 2.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[6.0, 1.0], error_numel=[9, 1])
    assert flow.weight_grad_rms == [1.5, 2.0 / 3.0] and flow.error_rms == [2.0, 1.0]
    assert flow.weight_grad_ratio == 1.5 and flow.error_ratio == 2.0  # b = 1 divides, it is not zero


def test_gradient_flow_records_list_every_value_in_forward_order():
    flow = gf.GradientFlow(loss=0.5, layers=["a", "b"], weight_grad_norm=[3.0, 2.0], weight_numel=[4, 9],
                           taps=["t", "u"], error_norm=[6.0, 1.0], error_numel=[9, 1])
    q = "gradient_flow"
    assert flow.records() == [
        record(q, "loss", 0.5),
        record(q, "weight_grad_norm", 3.0, "a"), record(q, "weight_grad_rms", 1.5, "a"),
        record(q, "weight_grad_norm", 2.0, "b"), record(q, "weight_grad_rms", 2.0 / 3.0, "b"),
        record(q, "error_norm", 6.0, "t"), record(q, "error_rms", 2.0, "t"),
        record(q, "error_norm", 1.0, "u"), record(q, "error_rms", 1.0, "u"),
        record(q, "error_rms_first_last_ratio", 2.0), record(q, "weight_grad_first_last_ratio", 1.5)]


def test_take_batch_converts_to_the_model_dtype_and_int64_labels():
    model = tiny().double()
    data = image_data()
    x, y = gf.take_batch(SimpleNamespace(train_x=data.train_x, train_y=data.train_y.int()), "train", 1, model)
    assert x.dtype == torch.float64 and y.dtype == torch.int64 and len(x) == len(y) == 1
    assert torch.equal(gf.take_batch(data, "test", 5, model, labels=False), data.test_x[:5].double())
    assert gf.model_device_dtype(nn.ReLU()) == (torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="batch_size"):
        gf.take_batch(data, "train", 0, model)
    with pytest.raises(ValueError, match="val_x"):
        gf.take_batch(data, "val", 4, model)


def test_gradient_flow_casts_the_batch_and_reads_zero_for_a_layer_off_the_loss_path():
    model, data = tiny(), image_data(n_train=6)
    ref = gf.gradient_flow(model, data.train_x, data.train_y)
    model.add_module("unused", nn.Linear(2, 2))  # parametric, never called
    flow = gf.gradient_flow(model, data.train_x.double(), data.train_y.int())
    assert flow.layers == ref.layers + ["unused"]
    assert flow.weight_grad_norm[:-1] == pytest.approx(ref.weight_grad_norm, rel=1e-6)
    assert flow.weight_grad_norm[-1] == 0.0 and flow.weight_grad_ratio == math.inf
    assert flow.error_norm == pytest.approx(ref.error_norm, rel=1e-6)


class TupleTap(nn.Module):
    def forward(self, x):
        return x, x


def test_parametric_layers_of_a_model_without_taps_are_named_by_module_path():
    conv, lin = nn.Conv2d(1, 2, 3), nn.Linear(2, 2)
    assert gf.parametric_layers(nn.Sequential(conv, nn.BatchNorm2d(2), nn.ReLU(), lin)) == [("0", conv), ("3", lin)]


def test_gradient_flow_errors_for_a_missing_or_empty_tap_list_and_for_a_tap_without_a_tensor_output():
    with pytest.raises(ValueError, match="taps"):
        gf.gradient_flow(nn.Sequential(nn.Linear(4, 3)), torch.randn(2, 4), torch.tensor([0, 1]))
    model = tiny()
    data = image_data(n_train=4)
    model.taps = lambda: {}
    with pytest.raises(ValueError, match="empty"):
        gf.gradient_flow(model, data.train_x, data.train_y)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.pair = nn.Linear(4, 3), TupleTap()

        def taps(self):
            return {"fc": self.fc, "pair": self.pair}

        def forward(self, x):
            return self.pair(self.fc(x))[0]

    with pytest.raises(ValueError, match="no gradient"):
        gf.gradient_flow(Net(), torch.randn(4, 4), torch.tensor([0, 1, 2, 0]))


def test_tracker_history_is_empty_before_any_step_and_after_clear():
    model = tiny()
    tracker = gf.GradientFlowTracker(model)
    assert not tracker.attached and tracker.names == []
    tracker.attach()
    n = len(gf.parametric_layers(model))
    assert tracker.history().shape == (0, n)
    assert torch.equal(tracker.read(), torch.zeros(n))  # no gradient yet: every layer reads 0
    F.cross_entropy(model(image_data().train_x[:4]), torch.tensor([0, 1, 2, 0])).backward()
    first = tracker.step()
    assert torch.equal(tracker.history(), first[None]) and (first > 0).all()
    tracker.clear()
    assert tracker.history().shape == (0, n)
    second = tracker.step()
    assert torch.equal(tracker.history(), second[None])  # stepping again after clear() starts afresh
    tracker.detach()
    assert not tracker.attached
    single = gf.GradientFlowTracker(nn.Linear(3, 2)).attach()  # one layer, no gradient yet
    assert torch.equal(single.read(), torch.zeros(1))
