"""Is a transformer an ensemble of shallow paths? Veit et al.'s lesion study on a small vision
transformer, the worked example of docs/own-model.md ("A transformer").

    python examples/transformer.py          # about a minute on a 2-core CPU; writes runs/transformer/

A pre-norm ViT (``examples/layouts.py``: 2x2-pixel patches of the 8x8 digits -> 16 tokens,
width 48, 6 layers of attention + MLP, i.e. 12 residual branches) trains with AdamW in a
hand-written loop under ``depthlab.track``. ``depthlab.adapt`` finds its 12 branches by tracing
(``layers.3#0`` is layer 3's attention, ``layers.3#1`` its MLP); then the lesion study (each
branch deleted, k random branches deleted, swaps of k pairs), the path decomposition, gradient
flow along the residual stream and layer-wise discriminability run on it, and the same lesion
study on the ResNet-18-layout net of ``examples/own_model.py``, trained alike, for comparison.
Writes ``runs/transformer/{vit,resnet}/diagnosis`` (``depthlab report`` pages) and
``runs/transformer/lesion.png``, and prints the numbers docs/own-model.md quotes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from layouts import ViT  # noqa: E402
from own_model import accuracy  # noqa: E402  (the worked example's helper)
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
    """Print the numbers docs/own-model.md quotes; return them for the figure."""
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
    stream = [get[("gradient_flow", "error_rms", f"{b}.sum")] for b in blocks]
    print(f"  gradient flow along the residual stream (backward error RMS at each sum, first / last): "
          f"{stream[0] / stream[-1]:.3g}")
    return {"blocks": blocks, "intact": intact, "single": [get[("lesion", "error", b)] for b in blocks],
            "delete_k": ks, "swap_k": swaps, "distribution": get[("paths", "distribution", None)],
            "stream": stream, "probe": [v for _, v in acc]}


def figure(results, path):
    """Single-branch lesions, k-branch lesions and the path-length distribution, ViT beside ResNet."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    colours = {"vit": "tab:blue", "resnet": "tab:orange"}
    labels = {"vit": "ViT, 6 layers (12 branches)", "resnet": "ResNet-18 layout (8 blocks)"}
    for name, r in results.items():
        n = len(r["blocks"])
        depth = [(i + 0.5) / n for i in range(n)]
        axes[0].plot(depth, [100 * e for e in r["single"]], "o-", color=colours[name], label=labels[name])
        axes[0].axhline(100 * r["intact"], color=colours[name], ls=":", lw=1)
        ks = range(1, len(r["delete_k"]) + 1)
        axes[1].plot(ks, [100 * e for e in r["delete_k"]], "o-", color=colours[name], label=labels[name])
        axes[2].plot(range(len(r["distribution"])), r["distribution"], "o-", color=colours[name], label=labels[name])
    axes[0].set(xlabel="position of the deleted branch (fraction of depth)", ylabel="test error (%)",
                title="one branch deleted (dotted: intact)")
    axes[1].set(xlabel="k random branches deleted", ylabel="test error (%), mean of draws",
                title="k branches deleted")
    axes[2].set(xlabel="path length k (branches on the path)", ylabel="share of the input gradient",
                title="gradient by path length (Veit et al. Fig. 6)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(loc="upper left", fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
    results = {}
    for name in ("vit", "resnet"):
        records = diagnose_user_model(f"{here / 'transformer.py'}:{name}", "digits", OUT / name / "diagnosis",
                                      QUANTITIES, weights=OUT / name / "weights.pt", options=options or OPTIONS)
        results[name] = summarise(name, records)
        print("report:", depthlab.write_report(OUT / name / "diagnosis"))
    print("figure:", figure(results, OUT / "lesion.png"))


if __name__ == "__main__":
    main()
