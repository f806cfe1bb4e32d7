"""responses: std of each residual branch's last BN output (He et al. 2015, arXiv 1512.03385, Fig. 7).

Per block with a BatchNorm in ``block.branch``, the std over every element of the branch's last ``BatchNorm2d``
output on the first ``batch_size`` test rows, BN in eval mode (in train mode it would only read back ``|gamma|``).
The model is left as it was. Details: docs/diagnostics.md, section responses.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import nn

from depthlab.diagnostics.gradient_flow import model_device_dtype, preserved_state, take_batch
from depthlab.diagnostics.registry import DIAGNOSTICS, record

QUANTITY = "responses"


def branch_norms(model: nn.Module) -> "List[Tuple[str, str, nn.Module]]":
    """``[(block name, BN path inside the block, BN module)]`` for every block whose ``branch``
    holds a BatchNorm (the last one in module order). ValueError if there is none."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no .blocks; responses needs the model contract "
                         "(a depthlab model: build_model)")
    names = list(getattr(model, "block_names", [f"block{i}" for i in range(len(blocks))]))
    found = []
    for name, block in zip(names, blocks):
        branch = getattr(block, "branch", None)
        if branch is None:
            continue
        last = None
        for path, m in branch.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                last = (f"branch.{path}", m)
        if last is not None:
            found.append((name, last[0], last[1]))
    if not found:
        raise ValueError(f"{type(model).__name__} has no block with a BatchNorm2d in its branch; "
                         "responses (He et al. Fig. 7) reads branch BN outputs")
    return found


@dataclass
class Responses:
    blocks: List[str]
    bn: List[str]          # BN path inside each block, e.g. "branch.bn2"
    std: List[float]

    def records(self) -> List[dict]:
        return [record(QUANTITY, "std", s, name) for name, s in zip(self.blocks, self.std)]


def responses(model: nn.Module, x: torch.Tensor) -> Responses:
    """Std of each branch's last BN output on inputs ``x`` (moved to the model's device), BN in
    eval mode (see the module docstring)."""
    found = branch_norms(model)
    device, dtype = model_device_dtype(model)
    x = x.to(device=device, dtype=dtype)
    stds: List[Optional[torch.Tensor]] = [None] * len(found)
    handles = []

    def hook(i):
        def read(module, inputs, output):
            stds[i] = output.detach().float().std(correction=0)
        return read

    with preserved_state(model, bn_train=False):
        try:
            for i, (_, _, bn) in enumerate(found):
                handles.append(bn.register_forward_hook(hook(i)))
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
    # a lesioned / dropped branch does not run its BN: nan
    values = torch.stack([s if s is not None else torch.tensor(float("nan"), device=device)
                          for s in stds]).cpu().tolist()
    return Responses(blocks=[b for b, _, _ in found], bn=[p for _, p, _ in found], std=values)


@DIAGNOSTICS.register(QUANTITY,
                      description="std of each block's last BN output, the layer responses of He et al. 2015 Fig. 7")
def compute(model: nn.Module, data, batch_size: int = 256) -> List[dict]:
    """One ``std`` record per BN-bearing block (layer = block name, e.g. ``stage1.block2``), on
    the first ``batch_size`` rows of ``data.test_x``."""
    x = take_batch(data, "test", batch_size, model, labels=False)
    return responses(model, x).records()


__all__ = ["Responses", "branch_norms", "compute", "responses"]
