"""``DepthCallback``: ``depthlab.track`` inside a Lightning ``Trainer`` (``pip install
'depthlab[lightning]'``)::

    from depthlab.integrations.lightning import DepthCallback
    trainer = lightning.Trainer(callbacks=[DepthCallback("runs/mine", every=50, data=(x_val, y_val))])

After every backward pass the per-layer weight-gradient norms of the LightningModule are kept on
the device (no sync) and written every ``every`` steps to ``<run_dir>/diagnostics.jsonl``; with
``data`` the heavier ``quantities`` run at the start of fit, every ``every`` steps and at the end,
on the LightningModule read through ``depthlab.adapt`` (its ``forward`` must map inputs to
logits). ``depthlab report <run_dir>`` draws it. Only the global-rank-0 process tracks.
"""
from __future__ import annotations

from typing import Optional

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the standalone package name
    try:
        from pytorch_lightning.callbacks import Callback
    except ImportError as e:
        raise ImportError("depthlab.integrations.lightning needs Lightning: pip install 'depthlab[lightning]'") from e

from depthlab.tracking import Tracker


class DepthCallback(Callback):
    """See the module docstring; arguments as ``depthlab.track``."""

    def __init__(self, run_dir="runs/tracked", every: int = 50, data=None, quantities: Optional[str] = None,
                 tensorboard: bool = True, overwrite: bool = False):
        super().__init__()
        self.kwargs = dict(run_dir=run_dir, every=every, data=data, quantities=quantities, tensorboard=tensorboard,
                           overwrite=overwrite)
        self.tracker: Optional[Tracker] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0:
            self.tracker = Tracker(pl_module, **self.kwargs).__enter__()

    def on_after_backward(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.step()

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.tracker is not None:
            self.tracker.__exit__(None, None, None)
            self.tracker = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        if self.tracker is not None:  # keep what was measured
            self.tracker.__exit__(type(exception), exception, None)
            self.tracker = None
