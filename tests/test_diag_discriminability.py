"""Properties of the ridge probes (depthlab/diagnostics/discriminability.py) that the mutation run
(docs/notes/mutation.md) found unchecked: parameter-free toy models whose features are the inputs themselves,
so a ridge read-out, a Fisher ratio, the splits and the lambda grid can be written out in numpy."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diagkit import batch_sizes, image_data, tiny
from torch import nn

from depthlab.diagnostics import discriminability as disc

pytestmark = pytest.mark.usefixtures("one_thread")


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
