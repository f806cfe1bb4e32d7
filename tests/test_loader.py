"""Tests for the DeviceLoader and the batched augmentations.

Nothing here touches the network: ``files.urlopen`` is refused for every test (conftest.py).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depthlab.data import DeviceLoader, crop_at, draw_crop_offsets, draw_flip_mask, random_crop, random_hflip

# ---- DeviceLoader and augmentation ------------------------------------------------------------

def indexed_data(n, shape=(1, 2, 2)):
    """Sample i is filled with the value i and labelled i, so a batch shows which samples it has."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, *shape).contiguous()
    return x, torch.arange(n)


def epoch_batches(loader):
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


@pytest.mark.parametrize("n, batch_size, drop_last, sizes", [
    (10, 4, False, [4, 4, 2]), (10, 4, True, [4, 4]), (12, 4, True, [4, 4, 4]), (3, 8, False, [3]),
])
def test_loader_covers_every_sample_once(n, batch_size, drop_last, sizes):
    x, y = indexed_data(n)
    loader = DeviceLoader(x, y, batch_size=batch_size, drop_last=drop_last, seed=1)
    assert len(loader) == len(sizes)
    for _ in range(2):  # two epochs
        batches = epoch_batches(loader)
        assert [len(yb) for _, yb in batches] == sizes
        seen = torch.cat([yb for _, yb in batches])
        assert len(set(seen.tolist())) == len(seen)  # no sample twice
        if not drop_last:
            assert torch.equal(seen.sort().values, torch.arange(n))
        for xb, yb in batches:  # images travel with their labels
            assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_loader_epoch_is_a_pure_function_of_seed_and_epoch():
    x = torch.randn(50, 3, 8, 8)
    y = torch.arange(50)

    def make():
        return DeviceLoader(x, y, batch_size=16, augment="crop-flip", crop_padding=2, seed=7)

    direct = make()
    direct.set_epoch(3)
    target = epoch_batches(direct)
    sequential = make()
    for _ in range(3):
        epoch_batches(sequential)  # epochs 0, 1, 2 advance the epoch by themselves
    jumping = make()
    jumping.set_epoch(9)
    epoch_batches(jumping)
    jumping.set_epoch(3)
    for other in (epoch_batches(sequential), epoch_batches(jumping)):
        for (xa, ya), (xb, yb) in zip(target, other):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    direct.set_epoch(4)
    assert not torch.equal(epoch_batches(direct)[0][1], target[0][1])  # a new epoch, a new order
    other_seed = DeviceLoader(x, y, batch_size=16, augment="crop-flip", crop_padding=2, seed=8)
    other_seed.set_epoch(3)
    assert not torch.equal(epoch_batches(other_seed)[0][1], target[0][1])


def test_loader_order_and_augmentation_streams_are_separate():
    x = torch.randn(40, 3, 8, 8)
    y = torch.arange(40)
    plain = DeviceLoader(x, y, batch_size=8, seed=3)
    augmented = DeviceLoader(x, y, batch_size=8, augment="crop-flip", seed=3)
    for (xa, ya), (xb, yb) in zip(plain, augmented):
        assert torch.equal(ya, yb)  # augmenting draws nothing from the order stream
        assert xb.shape == xa.shape and xb.dtype == xa.dtype
    in_order = torch.cat([yb for _, yb in DeviceLoader(x, y, batch_size=8, shuffle=False)])
    assert torch.equal(in_order, torch.arange(40))


def test_epoch_seeds_differ_across_seed_epoch_and_stream():
    from depthlab.data.loader import epoch_seed

    seeds = {epoch_seed(s, e, k) for s in range(4) for e in range(50) for k in (0, 1)}
    assert len(seeds) == 4 * 50 * 2  # order and augmentation never share a stream
    assert epoch_seed(3, 7, 1) == epoch_seed(3, 7, 1) and 0 <= epoch_seed(3, 7, 1) < 2 ** 63


def test_iter_claims_its_epoch_immediately():
    x, y = indexed_data(20)
    loader = DeviceLoader(x, y, batch_size=5, seed=0)
    first = iter(loader)
    loader.set_epoch(0)
    reference = epoch_batches(loader)
    assert torch.equal(torch.cat([yb for _, yb in first]), torch.cat([yb for _, yb in reference]))


@pytest.mark.parametrize("kwargs, field", [
    (dict(batch_size=0), "batch_size"), (dict(batch_size=-2), "batch_size"),
    (dict(batch_size=4, augment="rotate"), "augment"),
    (dict(batch_size=4, crop_padding=-1), "crop_padding"),
])
def test_loader_rejects_bad_arguments(kwargs, field):
    x, y = indexed_data(4)
    with pytest.raises(ValueError, match=field):
        DeviceLoader(x, y, **kwargs)


def test_random_crop_padding_zero_is_identity():
    x = torch.randn(5, 3, 6, 7)
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(0)), x)


def test_random_crop_matches_per_sample_reference():
    x = torch.randn(64, 2, 5, 7)  # non-square, to catch swapped axes
    padding = 3
    out = random_crop(x, padding, torch.Generator().manual_seed(11))
    rows, cols = draw_crop_offsets(64, padding, torch.Generator().manual_seed(11), x.device)
    assert int(rows.min()) >= 0 and int(rows.max()) <= 2 * padding
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # offsets really vary
    padded = F.pad(x, (padding,) * 4)
    reference = torch.stack([padded[i, :, r:r + 5, c:c + 7]
                             for i, (r, c) in enumerate(zip(rows.tolist(), cols.tolist()))])
    assert out.shape == x.shape and torch.equal(out, reference)
    centre = torch.full((64,), padding)
    assert torch.equal(crop_at(x, padding, centre, centre), x)


def test_random_hflip_flips_exactly_the_selected_samples():
    x = torch.randn(64, 3, 4, 5)
    out = random_hflip(x, torch.Generator().manual_seed(5))
    mask = draw_flip_mask(64, torch.Generator().manual_seed(5), x.device)
    assert 0 < int(mask.sum()) < 64
    assert torch.equal(out[mask], x[mask].flip(-1))
    assert torch.equal(out[~mask], x[~mask])
