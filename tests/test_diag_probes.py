"""Discriminability (ridge probe per tap) and lesion diagnostics against brute-force references."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from depthlab.diagnostics import discriminability as disc
from depthlab.diagnostics import lesion as les
from depthlab.diagnostics.registry import DIAGNOSTICS
from depthlab.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = 3


def tiny(family="resnet", depth=8, seed=0):
    torch.manual_seed(seed)
    kw = {"width": 4} if family in ("resnet", "plain") else {}
    return build_model(family, depth=depth, num_classes=CLASSES, in_channels=1, **kw)


def tiny_data(n_train=60, n_test=30, seed=1, size=8):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n_train + n_test) % CLASSES
    y = y[torch.randperm(len(y), generator=g)]
    # class-dependent mean so the probe has something to find
    x = torch.randn(len(y), 1, size, size, generator=g) + 0.8 * y.float()[:, None, None, None]
    return SimpleNamespace(train_x=x[:n_train], train_y=y[:n_train], test_x=x[n_train:],
                           test_y=y[n_train:], num_classes=CLASSES)


def stacked_features(model, x, batch_size, pool=1):
    """Reference features: own hooks, own pooling, the same batching, stacked in numpy float64."""
    taps = model.taps()
    out = {n: [] for n in taps}
    cur = {}
    handles = [m.register_forward_hook(lambda _m, _i, o, n=n: cur.__setitem__(n, o)) for n, m in taps.items()]
    model.eval()
    try:
        with torch.no_grad():
            for lo in range(0, len(x), batch_size):
                model(x[lo:lo + batch_size])
                for n in taps:
                    o = cur[n]
                    f = o.mean((2, 3)) if pool == 1 else torch.nn.functional.adaptive_avg_pool2d(o, pool).flatten(1)
                    out[n].append(f.double().numpy())
    finally:
        for h in handles:
            h.remove()
    return {n: np.concatenate(v) for n, v in out.items()}


# ----------------------------------------------------------------------------- discriminability
@pytest.mark.parametrize("pool", [1, 2])
def test_accumulated_ridge_equals_direct_solve(pool):
    model, data = tiny(), tiny_data()
    x, y = data.train_x, data.train_y
    stats = disc.accumulate_stats(model, x, y, CLASSES, pool=pool, batch_size=7)
    feats = stacked_features(model, x, batch_size=7, pool=pool)
    onehot = np.eye(CLASSES)[y.numpy()]
    assert list(stats) == list(model.taps())
    for name, X in feats.items():
        Xa = np.hstack([X, np.ones((len(X), 1))])
        A, B = Xa.T @ Xa, Xa.T @ onehot
        np.testing.assert_allclose(stats[name]["A"].numpy(), A, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(stats[name]["B"].numpy(), B, rtol=1e-10, atol=1e-10)
        lam = 0.3
        D = np.eye(len(A))
        D[-1, -1] = 0.0  # unpenalised bias
        W_ref = np.linalg.solve(A + lam * D, B)
        W = disc.ridge_solve(stats[name]["A"], stats[name]["B"], lam).numpy()
        np.testing.assert_allclose(W, W_ref, rtol=1e-7, atol=1e-9)


def test_ridge_bias_is_sklearn_ridge_with_intercept():
    from sklearn.linear_model import Ridge
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 5)) * 3 + 1
    Y = np.eye(CLASSES)[rng.integers(0, CLASSES, 40)]
    Xa = np.hstack([X, np.ones((40, 1))])
    W = disc.ridge_solve(torch.tensor(Xa.T @ Xa), torch.tensor(Xa.T @ Y), 2.5).numpy()
    ref = Ridge(alpha=2.5, fit_intercept=True).fit(X, Y)
    np.testing.assert_allclose(W[:-1], ref.coef_.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(W[-1], ref.intercept_, rtol=1e-8, atol=1e-10)


def test_probe_predictions_match_sklearn_ridge_classifier():
    from sklearn.linear_model import RidgeClassifier
    model, data = tiny(), tiny_data()
    lam = 0.05
    res = disc.probe_taps(model, data, lambdas=[lam], lambda_scale="absolute", batch_size=16,
                          keep_weights=True, seed=3)
    tr_idx, _ = disc.probe_splits(len(data.train_x), None, 0.2, seed=3)
    f_tr = disc.collect_features(model, data.train_x[tr_idx], batch_size=16)
    f_te = disc.collect_features(model, data.test_x, batch_size=16)
    for r in res:
        Xtr, Xte = f_tr[r["tap"]].double().numpy(), f_te[r["tap"]].double().numpy()
        # RidgeClassifier codes targets in {-1, 1}: 2 * one-hot - 1, an affine map that keeps argmax
        clf = RidgeClassifier(alpha=lam, fit_intercept=True).fit(Xtr, data.train_y[tr_idx].numpy())
        W = r["weights"].numpy()
        ours = (Xte @ W[:-1] + W[-1]).argmax(1)
        np.testing.assert_array_equal(ours, clf.predict(Xte))
        assert r["lambda"] == lam
        assert r["probe_accuracy"] == pytest.approx(clf.score(Xte, data.test_y.numpy()), abs=1e-12)


def test_fisher_ratio_matches_numpy():
    model, data = tiny(), tiny_data()
    res = disc.probe_taps(model, data, batch_size=16, seed=0)
    tr_idx, _ = disc.probe_splits(len(data.train_x), None, 0.2, seed=0)
    y = data.train_y[tr_idx].numpy()
    feats = stacked_features(model, data.train_x[tr_idx], batch_size=16)
    for r in res:
        X = feats[r["tap"]]
        mu = X.mean(0)
        between = sum((y == c).sum() * ((X[y == c].mean(0) - mu) ** 2).sum() for c in range(CLASSES))
        within = sum(((X[y == c] - X[y == c].mean(0)) ** 2).sum() for c in range(CLASSES))
        assert r["fisher_ratio"] == pytest.approx(between / within, rel=1e-6)


def test_one_forward_pass_per_split_and_every_tap():
    model, data = tiny("resnet", depth=14), tiny_data(n_train=50, n_test=30)
    calls = []
    h = model.register_forward_pre_hook(lambda m, inp: calls.append(len(inp[0])))
    model.train()
    bn = model.blocks[0].branch.bn1
    running = bn.running_mean.clone()
    try:
        res = disc.probe_taps(model, data, batch_size=16, val_fraction=0.2, pool=2)
    finally:
        h.remove()
    # probe-train 40 (3 batches), val 10 (1), test 30 (2): every sample once per split
    assert calls == [16, 16, 8, 10, 16, 14]
    assert [r["tap"] for r in res] == list(model.taps())
    assert len(res) == len(model.taps())
    assert res[0]["dim"] == 4 * model.stem.conv.out_channels  # pool=2: 2x2 per channel
    assert all(0.0 <= r["probe_accuracy"] <= 1.0 and r["lambda"] > 0 for r in res)
    # train mode restored, BN statistics untouched, hooks removed
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(bn.running_mean, running)
    assert all(not m._forward_hooks for m in model.taps().values())


def test_lambda_chosen_on_validation_and_relative_scale():
    model, data = tiny(), tiny_data()
    grid = [1e-3, 1e-1, 10.0]
    res = disc.probe_taps(model, data, lambdas=grid, batch_size=32)
    for r in res:
        best = max(r["val_accuracies"])
        i = grid.index(r["lambda_grid"])
        assert r["val_accuracies"][i] == best == r["val_accuracy"]
        assert all(a < best for a in r["val_accuracies"][i + 1:])  # ties -> largest lambda
        assert r["lambda"] > 0
    with pytest.raises(ValueError):
        disc.probe_taps(model, data, lambda_scale="nope")


def test_depth_where_probe_stops_rising():
    accs = [0.5, 0.6, 0.62, 0.623, 0.61]
    recs = [{"quantity": "discriminability", "name": "probe_accuracy", "layer": "stem.conv", "value": 0.99}]
    for b, a in enumerate(accs):
        recs.append({"quantity": "discriminability", "name": "probe_accuracy",
                     "layer": f"stage1.block{b + 1}.conv1", "value": 0.99})
        recs.append({"quantity": "discriminability", "name": "probe_accuracy",
                     "layer": f"stage1.block{b + 1}.sum", "value": a})
    stop = disc.depth_where_probe_stops_rising(recs, tol=0.005)
    assert stop == {"index": 2, "name": "stage1.block3.sum", "accuracy": 0.62, "num_taps": 5}
    assert disc.depth_where_probe_stops_rising(recs, tol=0.0)["index"] == 3
    assert disc.depth_where_probe_stops_rising([]) is None


def test_discriminability_registered_records():
    model, data = tiny(), tiny_data()
    fn = DIAGNOSTICS.get("discriminability")
    recs = fn(model, data, batch_size=32)
    per_tap = {"probe_accuracy", "val_accuracy", "lambda", "fisher_ratio", "dim"}
    for name in per_tap:
        assert [r["layer"] for r in recs if r["name"] == name] == list(model.taps())
    stop = [r for r in recs if r["name"] == "probe_stops_rising"]
    assert len(stop) == 1 and stop[0]["layer"].endswith(".sum")
    assert all(r["quantity"] == "discriminability" for r in recs)


# ----------------------------------------------------------------------------- lesion
def manual_forward_skipping(model, x, skip):
    h = model.stem(x)
    for j, b in enumerate(model.blocks):
        h = b.shortcut(h) if j == skip else b(h)
    return model.head(model.final(h))


@pytest.mark.parametrize("family", ["resnet", "plain", "preact-resnet"])
def test_lesion_one_block_equals_manual_skip(family):
    model = tiny(family, depth=14)
    model.eval()
    x = tiny_data().test_x
    with torch.no_grad():
        for i in range(len(model.blocks)):
            with les.blocks_disabled(model, [i]):
                assert not model.blocks[i].enabled
                out = model(x)
            assert torch.equal(out, manual_forward_skipping(model, x, i))
            assert all(b.enabled for b in model.blocks)


def test_swap_and_swap_back_restore_outputs():
    model = tiny("resnet", depth=14)
    model.eval()
    x = tiny_data().test_x
    original = list(model.blocks)
    n = len(original)
    shapes = les.block_shapes(model, x)
    assert shapes[0][0] == shapes[0][1] == shapes[1][0] == shapes[1][1]  # stage1 blocks swappable
    with torch.no_grad():
        ref = model(x)
        order = les.swap_order(n, [(0, 1)])
        with les.blocks_permuted(model, order):
            assert list(model.blocks) == [original[i] for i in order]
            swapped = model(x)
            # swapping back inside: the permutation composed with itself is the identity
            with les.blocks_permuted(model, les.swap_order(n, [(0, 1)])):
                assert torch.equal(model(x), ref)
        assert not torch.equal(swapped, ref)
        assert list(model.blocks) == original
        assert torch.equal(model(x), ref)
    with pytest.raises(ValueError):
        with les.blocks_permuted(model, [0] * n):
            pass


def test_kendall_tau():
    from scipy.stats import kendalltau
    for n in range(2, 9):
        assert les.kendall_tau(list(range(n))) == 1.0
        assert les.kendall_tau(les.swap_order(n, [(0, 1)])) == pytest.approx(1 - 4 / (n * (n - 1)))
        assert les.kendall_tau(list(range(n))[::-1]) == -1.0
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(7).tolist()
        assert les.kendall_tau(perm) == pytest.approx(kendalltau(np.arange(7), perm)[0])


def test_lesion_study_structure_and_flags_restored():
    model = tiny("resnet", depth=14)
    data = tiny_data()
    model.blocks[5].enabled = False  # a pre-existing lesion must survive the study
    model.train()
    original = list(model.blocks)
    r = les.lesion_study(model, data, max_k=2, samples=3, seed=0, batch_size=16)
    assert [b.enabled for b in model.blocks] == [True] * 5 + [False]
    assert list(model.blocks) == original and model.training
    assert [b["downsampling"] for b in r["blocks"]] == [False, False, True, False, True, False]
    assert [b["name"] for b in r["blocks"]] == model.block_names
    assert [d["k"] for d in r["delete_k"]] == [1, 2]
    assert all(len(d["errors"]) == 3 and all(len(set(s)) == d["k"] for s in d["deleted"]) for d in r["delete_k"])
    # only stage1.block1/2 share a shape (blocks 3 and 5 are alone in theirs): one pair possible
    assert [d["k"] for d in r["swap_k"]] == [1]
    assert r["swap_k"][0]["pairs"] == [[[0, 1]]] * 3
    assert r["swap_k"][0]["kendall_tau"] == [pytest.approx(1 - 4 / 30)] * 3
    # seeded: the same draws again
    assert les.lesion_study(model, data, max_k=2, samples=3, seed=0, batch_size=16) == r


@pytest.mark.parametrize("when", ["delete", "swap"])
def test_flags_and_order_restored_on_error(monkeypatch, when):
    model = tiny("resnet", depth=14)
    data = tiny_data()
    original = list(model.blocks)
    real = les.error_rate

    def flaky(m, x, y, batch_size=256):
        disabled = any(not b.enabled for b in m.blocks)
        permuted = list(m.blocks) != original
        if (when == "delete" and disabled) or (when == "swap" and permuted):
            raise RuntimeError("boom")
        return real(m, x, y, batch_size)

    monkeypatch.setattr(les, "error_rate", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        les.lesion_study(model, data, max_k=1, samples=1, deletions=(when == "delete"), batch_size=16)
    assert all(b.enabled for b in model.blocks)
    assert list(model.blocks) == original


def test_lesion_plain_and_densenet_records():
    data = tiny_data()
    fn = DIAGNOSTICS.get("lesion")
    for family, depth in (("plain", 8), ("densenet", 10)):
        model = tiny(family, depth=depth)
        recs = fn(model, data, max_k=2, samples=2, batch_size=32)
        names = {r["name"] for r in recs}
        assert {"intact_error", "error", "downsampling", "same_shape", "error_delete_k",
                "error_delete_k_mean"} <= names
        assert [r["layer"] for r in recs if r["name"] == "error"] == model.block_names
        assert all(0.0 <= r["value"] <= 1.0 for r in recs if r["name"] in ("error", "intact_error"))
        down = {r["layer"]: r["value"] for r in recs if r["name"] == "downsampling"}
        if family == "densenet":
            assert down["stage1.transition"] and not down["stage1.block1"]
        assert all(b.enabled for b in model.blocks)
