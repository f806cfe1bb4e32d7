"""Residual networks written the ways users write them, for ``depthlab.adapt``'s traced blocks
(docs/own-model.md, the tests): functional ReLUs, pre-activation, a timm-style block (SE,
layer scale, drop-path) and a small vision transformer. Each class also has ``branch(i, h)``,
``shortcut(i, h)`` and ``post(i, h)`` for its i-th residual addition, the hand-written pieces
the tests rebuild the forward from."""
import torch
import torch.nn.functional as F
from torch import nn


def _bn(c):
    return nn.BatchNorm2d(c)


class FunctionalBlock(nn.Module):
    """torchvision's BasicBlock names, written with ``F.relu`` (no ``relu`` module)."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), _bn(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), _bn(c_out)
        self.downsample = None if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class PreActBlock(nn.Module):
    """He et al. 2016's pre-activation block: BN-ReLU-conv twice, nothing after the addition."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.bn1, self.conv1 = _bn(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = _bn(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class DropPath(nn.Module):
    """timm's drop-path: each sample's branch is dropped with probability ``p`` in training."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        mask.div_(keep)
        return x * mask


class LayerScale(nn.Module):
    def __init__(self, c, init=0.5):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(c, 1, 1))

    def forward(self, x):
        return x * self.gamma


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=2):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class TimmBlock(nn.Module):
    """timm's BasicBlock with its extras: ``act1``/``act2`` modules (in place), squeeze-excite,
    layer scale and drop-path on the branch."""

    def __init__(self, c, drop=0.1):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c), nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, 1, 1, bias=False), _bn(c)
        self.se, self.ls, self.drop_path = SqueezeExcite(c), LayerScale(c), DropPath(drop)
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.se(self.bn2(self.conv2(x)))
        x = self.drop_path(self.ls(x))
        x += shortcut
        return self.act2(x)


class ConvNet(nn.Module):
    """A stem, residual ``layer{N}.{i}`` blocks of one kind, global pooling and ``fc``."""

    def __init__(self, kind="functional", width=4, in_channels=1, num_classes=10):
        super().__init__()
        self.kind = kind
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = _bn(width)
        if kind == "timm":
            self.layer1 = nn.Sequential(TimmBlock(width), TimmBlock(width), TimmBlock(width))
            out = width
        else:
            block = {"functional": FunctionalBlock, "preact": PreActBlock}[kind]
            self.layer1 = nn.Sequential(block(width, width), block(width, width))
            self.layer2 = nn.Sequential(block(width, 2 * width, 2), block(2 * width, 2 * width))
            out = 2 * width
        self.final_bn = _bn(out) if kind == "preact" else None
        self.fc = nn.Linear(out, num_classes)

    def stages(self):
        return [self.layer1] + ([self.layer2] if hasattr(self, "layer2") else [])

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages():
            x = stage(x)
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        return self.fc(x.mean((2, 3)))

    # the hand-written pieces of residual addition i (tests)
    def units(self):
        return [b for s in self.stages() for b in s]

    def stem(self, x):
        return F.relu(self.bn1(self.conv1(x)))

    def head(self, x):
        if self.final_bn is not None:
            x = F.relu(self.final_bn(x))
        return self.fc(x.mean((2, 3)))

    def branch(self, i, h):
        b = self.units()[i]
        if self.kind == "functional":
            return b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h)))))
        if self.kind == "preact":
            return b.conv2(F.relu(b.bn2(b.conv1(F.relu(b.bn1(h))))))
        return b.drop_path(b.ls(b.se(b.bn2(b.conv2(F.relu(b.bn1(b.conv1(h))))))))

    def shortcut(self, i, h):
        b = self.units()[i]
        if self.kind == "functional":
            return h if b.downsample is None else b.downsample(h)
        if self.kind == "preact":
            return h if b.shortcut is None else b.shortcut(F.relu(b.bn1(h)))
        return h

    def post(self, i, h):
        return h if self.kind == "preact" else F.relu(h)


class TransformerLayer(nn.Module):
    """Pre-norm: ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))`` (two residual branches)."""

    def __init__(self, d, heads=2, mlp_ratio=2):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp_ratio * d), nn.GELU(), nn.Linear(mlp_ratio * d, d))

    def attend(self, x):
        h = self.ln1(x)
        return self.attn(h, h, h, need_weights=False)[0]

    def forward(self, x):
        x = x + self.attend(x)
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """A small vision transformer: ``patch``-pixel patches -> tokens (+ learned positions),
    ``depth`` pre-norm layers, final LayerNorm, mean over tokens, linear head."""

    def __init__(self, image=8, patch=2, in_channels=1, dim=32, depth=4, heads=2, num_classes=10):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(in_channels * patch * patch, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2, dim))
        self.layers = nn.Sequential(*[TransformerLayer(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def tokens(self, x):
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p)           # B, C, H/p, W/p, p, p
        x = x.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # B, tokens, C*p*p
        return self.embed(x) + self.pos

    def forward(self, x):
        return self.head(self.norm(self.layers(self.tokens(x))).mean(1))

    def stem(self, x):
        return self.tokens(x)

    def head_of(self, x):
        return self.head(self.norm(x).mean(1))

    def branch(self, i, h):
        layer = self.layers[i // 2]
        return layer.attend(h) if i % 2 == 0 else layer.mlp(layer.ln2(h))

    def shortcut(self, i, h):
        return h

    def post(self, i, h):
        return h


class MLPStack(nn.Module):
    """A residual MLP written in one forward: ``h = h + W2 relu(W1 h)``, no submodule per block."""

    def __init__(self, d_in=64, d=16, depth=3, num_classes=10):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.w1 = nn.ModuleList([nn.Linear(d, d) for _ in range(depth)])
        self.w2 = nn.ModuleList([nn.Linear(d, d) for _ in range(depth)])
        self.out = nn.Linear(d, num_classes)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for w1, w2 in zip(self.w1, self.w2):
            h = h + w2(torch.relu(w1(h)))
        return self.out(h)
