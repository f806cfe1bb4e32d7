"""depthlab on your own network, in your own loop: the worked example of docs/own-model.md.

    python examples/own_model.py            # ~2 min on 2 CPU cores; writes runs/own-model/

Two networks depthlab did not build, a ResNet-18-layout net (torchvision's module names, width 16)
and a 6-layer MLP, train on digits in a hand-written loop with ``depthlab.track``; then
``depthlab.diagnose`` reads the trained ResNet's blocks (lesions, paths) and both nets' Jacobians.
Every number printed is what docs/own-model.md shows.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from tvnets import mlp, resnet18_layout  # noqa: E402

import depthlab  # noqa: E402


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(name, model, data, epochs=4, out=Path("runs/own-model")):
    """Your loop: SGD with momentum, batches of 64, reshuffled each epoch; depthlab.track around it."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    val = (data.test_x[:256], data.test_y[:256])
    with depthlab.track(model, out / name, every=20, data=val, overwrite=True) as tracker:
        for _ in range(epochs):
            for idx in torch.randperm(len(data.train_x), generator=g).split(64):
                loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
                opt.zero_grad()
                loss.backward()
                tracker.step()
                opt.step()
    print(f"{name}: {tracker.steps} steps, train acc {accuracy(model, data.train_x, data.train_y):.3f}, "
          f"test acc {accuracy(model, data.test_x, data.test_y):.3f}")
    return model


def main() -> None:
    torch.manual_seed(0)
    data = depthlab.load_dataset("digits")
    resnet = train("resnet18-layout", resnet18_layout(width=16), data)
    net = train("mlp", mlp(depth=6), data)

    torch.save(resnet.state_dict(), Path("runs/own-model") / "resnet18-layout.pt")  # for the CLI form
    adapted = depthlab.adapt(resnet)
    print("recognised blocks:", ", ".join(adapted.block_names))
    records = depthlab.diagnose(resnet, "lesion,paths", data, options={"lesion": {"max_k": 2}})
    get = {(r["quantity"], r["name"], r["layer"]): r["value"] for r in records}
    print(f"lesion: intact test error {get[('lesion', 'intact_error', None)]:.3f}; one block deleted:")
    for name in adapted.block_names:
        print(f"  {name:<9} {get[('lesion', 'error', name)]:.3f}")
    print(f"paths: effective range of path lengths {get[('paths', 'effective_range', None)]} of "
          f"{len(adapted.block_names)} blocks")
    for label, model in (("resnet18-layout", resnet), ("mlp", net)):
        rms = [r["value"] for r in depthlab.diagnose(model, "gradient_flow", data) if r["name"] == "error_rms"]
        print(f"gradient_flow ({label}): backward error RMS first tap / last tap {rms[0] / rms[-1]:.3g} "
              f"over {len(rms)} taps")
        jac = [r for r in depthlab.diagnose(model, "jacobian", data) if r["name"] == "condition_number"]
        print(f"jacobian condition number ({label}): "
              + ", ".join(f"{v:.3g}" for r in jac for v in (r["value"] if isinstance(r["value"], list)
                                                               else [r["value"]])))
    for name in ("resnet18-layout", "mlp"):
        print("report:", depthlab.write_report(Path("runs/own-model") / name))


if __name__ == "__main__":
    main()
