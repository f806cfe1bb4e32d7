"""DepthCallback in a Lightning Trainer: it records the per-step gradient norms and the scheduled
quantities, and the model trains exactly as without it."""
import json

import pytest
import torch
from tvnets import TVResNet

from depthlab.data import load_dataset
from depthlab.report.diagnostic_plots import step_series

lightning = pytest.importorskip("lightning")  # in the test extra: CI always has it
from own_model_lightning import Classifier  # noqa: E402  (examples/, the documented LightningModule)

from depthlab.integrations.lightning import DepthCallback  # noqa: E402


def _fit(callbacks, tmp_path):
    data = load_dataset("digits")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_x[:160], data.train_y[:160]),
                                         batch_size=32)
    torch.manual_seed(0)
    model = Classifier(TVResNet(width=4))
    trainer = lightning.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                                default_root_dir=str(tmp_path))
    trainer.fit(model, loader)
    return model, data


def test_callback_records_and_does_not_change_training(tmp_path):
    data = load_dataset("digits")
    cb = DepthCallback(tmp_path / "mine", every=2, data=(data.test_x[:64], data.test_y[:64]), tensorboard=False)
    tracked, _ = _fit([cb], tmp_path)
    bare, _ = _fit([], tmp_path)
    for a, b in zip(tracked.state_dict().values(), bare.state_dict().values()):
        assert torch.equal(a, b)
    records = [json.loads(line) for line in (tmp_path / "mine" / "diagnostics.jsonl").read_text().splitlines()]
    series = step_series(records)
    assert series and all(steps == [1, 2, 3, 4, 5] for steps, _ in series.values())
    assert all(v > 0 for _, values in series.values() for v in values)
    flow = [r for r in records if r["quantity"] == "gradient_flow" and r["name"] == "error_rms"]
    assert sorted({r["step"] for r in flow}) == [0, 2, 4, 5]
    assert "net.layer2.0.sum" in {r["layer"] for r in flow}  # the blocks were found inside the module
