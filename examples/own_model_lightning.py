"""DepthCallback in a Lightning Trainer: the Lightning part of docs/own-model.md.

    pip install 'depthlab[lightning]'
    python examples/own_model_lightning.py      # ~30 s on 2 CPU cores; writes runs/own-model/lightning
"""
import json
import sys
from pathlib import Path

import lightning
import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tvnets import resnet18_layout  # noqa: E402

import depthlab  # noqa: E402
from depthlab.integrations.lightning import DepthCallback  # noqa: E402
from depthlab.report.diagnostic_plots import step_series  # noqa: E402


class Classifier(lightning.LightningModule):
    """Any classifier ``net`` (default: the ResNet-18-layout net at width 16), trained with SGD."""

    def __init__(self, net=None):
        super().__init__()
        self.net = net if net is not None else resnet18_layout(width=16)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def main() -> None:
    torch.manual_seed(0)
    data = depthlab.load_dataset("digits")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_x, data.train_y), batch_size=64,
                                         shuffle=True)
    cb = DepthCallback("runs/own-model/lightning", every=20, data=(data.test_x[:256], data.test_y[:256]),
                       overwrite=True)
    lightning.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=[cb]).fit(Classifier(), loader)
    rs = [json.loads(line) for line in open("runs/own-model/lightning/diagnostics.jsonl")]
    series = step_series(rs)
    print(len(series), "layers tracked over", len(next(iter(series.values()))[0]), "steps;",
          "gradient_flow at steps", sorted({r["step"] for r in rs if r["quantity"] == "gradient_flow"}))
    print("blocks found inside the LightningModule:",
          ", ".join(sorted({r["layer"][:-4] for r in rs if (r["layer"] or "").endswith(".sum")})))
    print("report:", depthlab.write_report("runs/own-model/lightning"))


if __name__ == "__main__":
    main()
