"""Depth units: the block contract (branch, shortcut, enabled, survival_prob) and two blocks.

    residual block:  out = post(sum(shortcut(x) + branch(x)))
    plain block:     out = post(sum(branch(x)))          shortcut kept only for lesions
    branch off:      out = sum(shortcut(x))              lesion, or a stochastic-depth drop

``sum`` is an ``nn.Identity`` right after the residual addition (plain: at the same place), so a
forward hook on it reads the block's pre-``post`` output; it fires even when the branch is off.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch
from torch import nn

from depthlab.models.layers import conv3x3, make_shortcut, sample_mask

DROP_MODES = ("batch", "sample")


class Block(nn.Module):
    """A depth unit with a ``branch`` (the transform) and a ``shortcut``.

    ``enabled = False`` lesions the block (Veit et al. 2016): it returns ``shortcut(x)`` exactly,
    the path that remains when the residual branch is deleted (He et al.'s ReLU is the identity on
    that path for post-ReLU inputs and option A, so no ReLU is added).

    ``survival_prob = p`` is stochastic depth (Huang et al. 2016, eqs. 2 and 5): in train mode the
    branch is dropped for the whole mini-batch with probability 1 - p (drawn from the torch RNG of
    the input's device; a dropped branch is not computed, so the block returns ``shortcut(x)``);
    in eval mode the branch is scaled by p. ``p = 1`` is the deterministic block. A dropped branch
    leaves its parameters unused in that step (DDP needs ``find_unused_parameters=True``).

    ``drop_mode`` chooses the unit of that drop: ``"batch"`` (default, above) or ``"sample"``: in
    train mode each sample keeps its branch with probability p (a Bernoulli mask of shape
    (B, 1, 1, 1) drawn on the input's device; the branch is computed for the whole batch and
    multiplied by the mask, as timm's ``drop_path`` but without its 1/p rescaling). A dropped
    sample's pre-``post`` value is ``shortcut(x)`` (plain blocks too), so it gets
    ``post(shortcut(x))``: the batch-mode drop output ``shortcut(x)`` whenever ``post`` is the
    identity on it (pre-activation blocks; post-activation blocks with option A on post-ReLU
    inputs). Eval mode is the same in both modes (branch scaled by p).

    ``alpha`` is SkipInit / ReZero (De & Smith 2020, arXiv 2002.10444; Bachlechner et al. 2020,
    arXiv 2003.04887): ``None`` (no parameter) unless ``use_rezero_()`` adds a learnable scalar,
    0 at init, that multiplies the branch output: ``out = post(shortcut(x) + alpha * branch(x))``.
    At init the block is then its shortcut path followed by ``post``: pre-activation blocks return
    ``shortcut(x)``, post-activation blocks ``relu(shortcut(x))`` (= ``shortcut(x)`` for option A
    on the non-negative inputs they receive; option B's projection+BN is not rectified already).
    """

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module, has_shortcut: bool, post: nn.Module):
        super().__init__()
        self.branch = branch
        self.shortcut = shortcut
        self.sum = nn.Identity()
        self.post = post
        self.has_shortcut = has_shortcut
        self.enabled = True
        self.survival_prob = 1.0
        self.drop_mode = "batch"
        self.register_parameter("alpha", None)

    def use_rezero_(self) -> "Block":
        """Add the SkipInit/ReZero scalar ``alpha`` (0) on the branch output; returns the block."""
        self.alpha = nn.Parameter(torch.zeros(1))
        return self

    def reset_scalars_(self) -> None:
        """Re-initialise ``alpha`` to 0 (called by every init scheme)."""
        if self.alpha is not None:
            with torch.no_grad():
                self.alpha.zero_()

    @property
    def drop_mode(self) -> str:
        return self._drop_mode

    @drop_mode.setter
    def drop_mode(self, mode: str) -> None:
        if mode not in DROP_MODES:
            raise ValueError(f"drop_mode must be one of {', '.join(map(repr, DROP_MODES))} "
                             f"(a whole mini-batch or each sample), got {mode!r}")
        self._drop_mode = mode

    @property
    def survival_prob(self) -> float:
        return self._survival_prob

    @survival_prob.setter
    def survival_prob(self, p: float) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"survival_prob must be in [0, 1], got {p!r}")
        self._survival_prob = float(p)

    def _branch_off(self, x: torch.Tensor) -> bool:
        if not self.enabled:
            return True
        p = self._survival_prob
        if not self.training or p >= 1.0 or self._drop_mode == "sample":
            return False
        # One draw per mini-batch from the CPU generator: a Python bool without a device round-trip
        # (a draw on CUDA would sync once per block per step); the CPU RNG state is checkpointed.
        return bool(torch.rand(()) >= p)

    def survival_scale(self, y: torch.Tensor) -> torch.Tensor:
        """Stochastic depth on a kept branch quantity ``y`` for blocks that combine it themselves
        (highway gates, dense layers): eval scales by p; train with ``drop_mode = "sample"`` zeroes
        it per sample; batch-mode drops happen in ``_branch_off``, before the branch runs."""
        p = self._survival_prob
        if p >= 1.0:
            return y
        if not self.training:
            return y * p
        if self._drop_mode == "sample":
            return y * sample_mask(y, p)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, H, W) -> (B, C_out, H', W')
        if self._branch_off(x):
            return self.sum(self.shortcut(x))
        y = self.branch(x)
        if self.alpha is not None:
            y = y * self.alpha
        p = self._survival_prob
        if p < 1.0 and not self.training:
            y = y * p
        elif p < 1.0 and self._drop_mode == "sample":  # train, per sample (batch mode: kept, see above)
            mask = sample_mask(y, p)  # (B, 1, 1, 1)
            y = y * mask
            if not self.has_shortcut:  # a dropped plain sample takes the lesion path
                y = y + (1.0 - mask) * self.shortcut(x)
        if self.has_shortcut:
            y = y + self.shortcut(x)
        return self.post(self.sum(y))

    def taps(self) -> "OrderedDict[str, nn.Module]":
        """Local tap names in forward order: the branch's convs by name, then ``sum``."""
        taps = OrderedDict((n, m) for n, m in self.branch.named_children() if isinstance(m, nn.Conv2d))
        taps["sum"] = self.sum
        return taps

    def zero_init_residual_(self) -> None:
        """Make the branch output exactly zero at init (see ``init.zero_init_residual_``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define zero_init_residual_")

    def extra_repr(self) -> str:
        extra = f", drop_mode={self._drop_mode!r}" if self._drop_mode != "batch" else ""
        return f"has_shortcut={self.has_shortcut}, enabled={self.enabled}, survival_prob={self._survival_prob}{extra}"


class BasicBlock(Block):
    """He et al. 2015 post-activation basic block: conv-BN-ReLU-conv-BN (+ shortcut), ReLU.

    ``residual=False`` gives the plain block (same layers, no addition; option-A shortcut kept for
    lesions). ``bias=True`` adds conv biases (the MNIST lecture network). ``act`` makes the
    nonlinearity (``nn.Identity`` gives the linear network of Balduzzi et al. 2017, Fig. 6; the
    module names stay ``relu1`` / ``post`` so taps and state dicts keep their layout).

    ``norm=False`` removes both BNs (no normalisation module is left; the convs get biases instead,
    and an option-B projection has no BN). ``dropout`` (a module factory, e.g.
    ``layers.dropout_layer``) puts a dropout module ``drop1`` right after the activation inside the
    branch, the block's only activation before the sum; ``None`` (default) adds none.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, residual: bool = True,
                 shortcut: str = "A", bias: bool = False, act: Callable[[], nn.Module] = nn.ReLU,
                 norm: bool = True, dropout: Optional[Callable[[], nn.Module]] = None):
        bias = bias or not norm
        layers = [("conv1", conv3x3(c_in, c_out, stride, bias))]  # (B, C_out, ceil(H/s), ceil(W/s))
        layers += [("bn1", nn.BatchNorm2d(c_out))] if norm else []
        layers += [("relu1", act())] + ([("drop1", dropout())] if dropout is not None else [])
        layers += [("conv2", conv3x3(c_out, c_out, 1, bias))]
        layers += [("bn2", nn.BatchNorm2d(c_out))] if norm else []
        super().__init__(nn.Sequential(OrderedDict(layers)),
                         make_shortcut(shortcut if residual else "A", c_in, c_out, stride, norm=norm),
                         has_shortcut=residual, post=act())

    def zero_init_residual_(self) -> None:
        if hasattr(self.branch, "bn2"):
            nn.init.zeros_(self.branch.bn2.weight)
        else:  # no BN: the last conv itself
            nn.init.zeros_(self.branch.conv2.weight)
            nn.init.zeros_(self.branch.conv2.bias)


class PreActBlock(Block):
    """He et al. 2016 ("Identity Mappings in Deep Residual Networks", arXiv 1603.05027) full
    pre-activation block: BN-ReLU-conv-BN-ReLU-conv, + shortcut(x), nothing after the addition.

    The shortcut reads the block's raw input, keeping the identity path clean in every block; an
    option-B projection is a 1x1 conv without BN (the next block's BN normalises the sum).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, shortcut: str = "A"):
        branch = nn.Sequential(OrderedDict([
            ("bn1", nn.BatchNorm2d(c_in)),
            ("relu1", nn.ReLU()),
            ("conv1", conv3x3(c_in, c_out, stride)),  # (B, C_out, ceil(H/s), ceil(W/s))
            ("bn2", nn.BatchNorm2d(c_out)),
            ("relu2", nn.ReLU()),
            ("conv2", conv3x3(c_out, c_out)),
        ]))
        super().__init__(branch, make_shortcut(shortcut, c_in, c_out, stride, norm=False),
                         has_shortcut=True, post=nn.Identity())

    def zero_init_residual_(self) -> None:
        nn.init.zeros_(self.branch.conv2.weight)
