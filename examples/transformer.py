"""Is a transformer an ensemble of shallow paths? Veit et al.'s lesion study on a small vision
transformer, the worked example of docs/own-model.md ("A transformer").

    python examples/transformer.py          # ~3 min on 2 CPU cores; writes runs/transformer/

A pre-norm ViT (``examples/layouts.py``: 2x2-pixel patches of the 8x8 digits -> 16 tokens,
width 48, 6 layers of attention + MLP, i.e. 12 residual branches) trains with AdamW in a
hand-written loop under ``depthlab.track``. ``depthlab.adapt`` finds its 12 branches by tracing
(``layers.3#0`` is layer 3's attention, ``layers.3#1`` its MLP); then the lesion study (each
branch deleted, k random branches deleted, swaps of k pairs), the path decomposition, gradient
flow along the residual stream and layer-wise discriminability run on it, and the same lesion
study on the ResNet-18-layout net of ``examples/own_model.py``, trained alike, for comparison.
Writes ``runs/transformer/{vit,resnet}/diagnosis`` (``depthlab report`` pages) and prints the
numbers docs/own-model.md quotes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from layouts import ViT  # noqa: E402
from tvnets import resnet18_layout  # noqa: E402

import depthlab  # noqa: E402
from depthlab.tracking import diagnose_user_model  # noqa: E402

OUT = Path("runs/transformer")
QUANTITIES = "lesion,paths,gradient_flow,discriminability"
OPTIONS = {"lesion": {"max_k": 6, "samples": 10}, "paths": {"num_samples": 20}}


def vit():
    """The example's transformer (the factory ``depthlab diagnose --model`` calls)."""
    return ViT(image=8, patch=2, in_channels=1, dim=48, depth=6, heads=4)


def resnet():
    return resnet18_layout(width=16)


def accuracy(model, x, y) -> float:
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return acc


def train(name, model, data, epochs, opt):
    g = torch.Generator().manual_seed(0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opt.param_groups[0]["lr"],
                                                total_steps=epochs * ((len(data.train_x) + 63) // 64))
    with depthlab.track(model, OUT / name / "training", every=50, overwrite=True) as tracker:
        for _ in range(epochs):
            for idx in torch.randperm(len(data.train_x), generator=g).split(64):
                loss = F.cross_entropy(model(data.train_x[idx]), data.train_y[idx])
                opt.zero_grad()
                loss.backward()
                tracker.step()
                opt.step()
                sched.step()
    print(f"{name}: {tracker.steps} steps, train acc {accuracy(model, data.train_x, data.train_y):.3f}, "
          f"test acc {accuracy(model, data.test_x, data.test_y):.3f}")
    torch.save(model.state_dict(), OUT / name / "weights.pt")
    return model


def summarise(name, records):
    get = {(r["quantity"], r["name"], r["layer"]): r["value"] for r in records}
    blocks = [r["layer"] for r in records if r["quantity"] == "lesion" and r["name"] == "error"]
    intact = get[("lesion", "intact_error", None)]
    print(f"{name}: intact test error {intact:.3f}; each residual branch deleted alone:")
    print("  " + ", ".join(f"{b} {get[('lesion', 'error', b)]:.3f}" for b in blocks))
    ks = get[("lesion", "error_delete_k_mean", None)]
    print("  k branches deleted (mean of draws): " + ", ".join(f"k={k + 1} {e:.3f}" for k, e in enumerate(ks)))
    swaps = get.get(("lesion", "error_swap_k_mean", None)) or []
    print("  k pairs swapped (mean of draws):    " + ", ".join(f"k={k + 1} {e:.3f}" for k, e in enumerate(swaps)))
    lo, hi = get[("paths", "effective_range", None)]
    print(f"  paths: 90% of the gradient comes from paths of length {lo}-{hi} of {len(blocks)} branches")
    acc = [(r["layer"], r["value"]) for r in records
           if r["quantity"] == "discriminability" and r["name"] == "probe_accuracy" and r["layer"].endswith(".sum")]
    print("  discriminability after each branch (ridge read-out test accuracy): "
          + ", ".join(f"{layer[:-4]} {v:.3f}" for layer, v in acc))
    stop = [r for r in records if r["quantity"] == "discriminability" and r["name"] == "probe_stops_rising"]
    if stop:
        print(f"  the read-out stops rising after {stop[0]['layer'][:-4]} ({stop[0]['value'] + 1} of {len(acc)})")


def main(vit_epochs: int = 40, resnet_epochs: int = 10, options=None) -> None:
    torch.manual_seed(0)
    data = depthlab.load_dataset("digits")
    model = vit()
    print("residual branches found:", ", ".join(depthlab.adapt(model).block_names))
    train("vit", model, data, vit_epochs, opt=torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05))
    torch.manual_seed(0)
    net = resnet()
    train("resnet", net, data, resnet_epochs,
          opt=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4))
    here = Path(__file__).resolve().parent
    for name, factory in (("vit", "vit"), ("resnet", "resnet")):
        records = diagnose_user_model(f"{here / 'transformer.py'}:{factory}", "digits", OUT / name / "diagnosis",
                                      QUANTITIES, weights=OUT / name / "weights.pt", options=options or OPTIONS)
        summarise(name, records)
        print("report:", depthlab.write_report(OUT / name / "diagnosis"))


if __name__ == "__main__":
    main()
