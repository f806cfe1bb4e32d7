"""Training numbers checked against an independent computation, each test named for the property a
small plausible bug would break: an epoch's train loss and accuracy are the sample-weighted means
over its batches (a short last batch weighs less), and a checkpoint's RNG state puts every stream
(torch, numpy, Python) back where it was."""
import dataclasses
import json
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from depthlab.config import RunConfig
from depthlab.data import load_dataset
from depthlab.data.loader import DeviceLoader
from depthlab.models import build_model
from depthlab.training import train
from depthlab.training.checkpoint import load_checkpoint, rng_state, set_rng_state


def test_epoch_metrics_equal_a_hand_replayed_epoch_with_a_short_last_batch(tmp_path):
    # lr 1e-9: the weights stay put to float32 precision, so the checkpoint after the epoch is the model
    # every batch saw; the replay takes the loader's batches, the per-batch mean loss the step
    # minimises, and weighs each batch by its size.
    full = load_dataset("digits", seed=0)
    dataset = dataclasses.replace(full, train_x=full.train_x[:230], train_y=full.train_y[:230],
                                  test_x=full.test_x[:50], test_y=full.test_y[:50])
    batch = 64
    n = len(dataset.train_x)
    assert n % batch, "the test needs a short last batch"
    cfg = RunConfig().with_overrides([
        "model.name=resnet", "model.depth=8", "data.name=digits", "train.epochs=1", f"train.batch_size={batch}",
        "train.lr=1e-9", "train.device=cpu", f"out_dir={tmp_path}", "run_id=r"])
    train(cfg, quiet=True, dataset=dataset)
    row = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[0])

    saved = json.loads((cfg.run_dir / "config.json").read_text())["model"]
    model = build_model("resnet", depth=8, in_channels=saved["in_channels"], num_classes=saved["num_classes"])
    model.load_state_dict(load_checkpoint(cfg.run_dir / "checkpoints" / "epoch_0001.pt")["model"])
    model.train()
    loader = DeviceLoader(dataset.train_x, dataset.train_y, batch_size=batch, shuffle=True, seed=cfg.train.seed)
    losses, sizes, correct = [], [], 0
    with torch.no_grad():
        for xb, yb in loader.batches(0):
            out = model(xb)
            losses.append(float(F.cross_entropy(out, yb)))
            sizes.append(len(yb))
            correct += int((out.argmax(1) == yb).sum())
    assert sum(sizes) == n and sizes[-1] == n % batch and len(set(sizes)) == 2
    weighted = sum(loss * size for loss, size in zip(losses, sizes)) / n
    unweighted = sum(losses) / len(losses)
    assert abs(weighted - unweighted) > 1e-4 * weighted  # the two readings are distinguishable here
    assert row["train_loss"] == pytest.approx(weighted, rel=1e-5)
    assert row["train_acc"] == pytest.approx(correct / n, abs=1.5 / n)
    assert row["step"] == len(sizes)


def _draws():
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(), np.random.randn(3).tolist(),
            [random.random() for _ in range(4)], random.gauss(0, 1))


@pytest.mark.parametrize("stream", ["torch", "numpy", "python"])
def test_checkpoint_rng_state_restores_each_stream(stream):
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    np.random.randn(1)  # numpy holds a cached gaussian, Python's gauss a spare value: both are state
    random.gauss(0, 1)
    state = rng_state()
    first = _draws()
    torch.manual_seed(2)
    np.random.seed(2)
    random.seed(2)
    set_rng_state(state)
    again = _draws()
    index = {"torch": [0], "numpy": [1, 2], "python": [3, 4]}[stream]
    assert [again[i] for i in index] == [first[i] for i in index]


def test_checkpoint_rng_state_survives_a_saved_file(tmp_path):
    torch.manual_seed(5)
    path = tmp_path / "rng.pt"
    torch.save({"rng": rng_state()}, path)
    first = _draws()
    torch.manual_seed(6)
    set_rng_state(torch.load(path, weights_only=True)["rng"])
    assert _draws() == first
