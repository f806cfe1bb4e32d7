"""Shared helpers of the tests/test_diag_<diagnostic>.py files: a tiny net, image data with a
class signal, and a hook counting the batch sizes of forward passes."""
from types import SimpleNamespace

import torch

from depthlab.models import build_model


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
