"""Properties of the lesion study (depthlab/diagnostics/lesion.py) that the mutation run (docs/notes/mutation.md)
found unchecked: Kendall tau, swap orders and draws, block shapes, error rates and the option plumbing,
each compared with an independent computation."""
import random
from types import SimpleNamespace

import pytest
import torch
from diagkit import batch_sizes, image_data, tiny
from torch import nn

from depthlab.diagnostics import lesion as les

pytestmark = pytest.mark.usefixtures("one_thread")


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
