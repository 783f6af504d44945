"""Hand-written models for the engine tests: one op family each, and combinations (user-style code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBNResidual(nn.Module):
    """Conv-BN-ReLU with an identity and a projection residual, max pooling, flatten into a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.act2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.proj = nn.Conv2d(8, 12, 1, stride=2)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2, padding=1)
        self.fc = nn.Linear(12 * 2 * 2, 5)

    def forward(self, x):
        h = self.act(self.bn0(self.conv0(x)))
        h = h + self.bn1(self.conv1(h))  # identity residual
        h = self.act2(h)
        h = self.pool(h)
        h = self.proj(h) + self.conv2(h)  # projection residual
        h = F.relu(h)
        return self.fc(torch.flatten(h, 1))


class DenseCat(nn.Module):
    """Concatenation of feature maps (DenseNet style), avg pooling, functional flatten via view."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.a1 = nn.Tanh()
        self.c2 = nn.Conv2d(4, 3, 3, padding=1)
        self.a2 = nn.GELU()
        self.c3 = nn.Conv2d(7, 5, 1)
        self.a3 = nn.ELU()
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(5 * 2 * 2, 3)

    def forward(self, x):
        h1 = self.a1(self.c1(x))
        h2 = self.a2(self.c2(h1))
        h = torch.cat([h1, h2], dim=1)
        h = self.pool(self.a3(self.c3(h)))
        return self.fc(h.view(h.size(0), -1))


class DepthwiseShuffle(nn.Module):
    """Grouped and depthwise convolutions, channel shuffle (view/transpose/reshape), ReLU6, global mean."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 1)
        self.a1 = nn.ReLU6()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.a2 = nn.SiLU()
        self.g = nn.Conv2d(8, 12, 1, groups=4)
        self.a3 = nn.Hardswish()
        self.fc = nn.Linear(12, 4)

    def forward(self, x):
        h = self.a1(self.c1(x))
        h = self.a2(self.dw(h))
        n, c, hh, ww = h.shape
        h = h.view(n, 2, c // 2, hh, ww).transpose(1, 2).reshape(n, c, hh, ww)  # channel shuffle
        h = self.a3(self.g(h))
        return self.fc(h.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation gate: x * sigmoid(fc(pool(x))), with functional and module activations."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.fc1 = nn.Conv2d(6, 3, 1)
        self.fc2 = nn.Conv2d(3, 6, 1)
        self.gate = nn.Sigmoid()
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.act(self.c(x))
        s = F.adaptive_avg_pool2d(h, 1)
        s = self.gate(self.fc2(F.relu(self.fc1(s))))
        h = h * s
        return self.head(F.adaptive_avg_pool2d(h, 1).flatten(1))


class MLPFunctional(nn.Module):
    """Functional-style MLP: F.relu, torch.tanh, dropout, LayerNorm, an extra residual."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 10)
        self.l2 = nn.Linear(10, 10)
        self.norm = nn.LayerNorm(10)
        self.l3 = nn.Linear(10, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        h = F.relu(self.l1(x))
        h = h + F.relu(self.l2(h))
        h = self.norm(h)
        h = torch.tanh(self.l3(h))
        return self.out(self.drop(h))


class BNTrainMLP(nn.Module):
    """BatchNorm1d on features, Softplus, cumsum (unsupported: must be pinned), shared activation module."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(5, 9)
        self.bn = nn.BatchNorm1d(9)
        self.act = nn.Softplus()
        self.l2 = nn.Linear(9, 9)
        self.l3 = nn.Linear(9, 6)
        self.l4 = nn.Linear(6, 2)

    def forward(self, x):
        h = self.act(self.bn(self.l1(x)))
        h = self.act(self.l2(h))  # the same module at two places
        h = torch.cumsum(self.l3(h), dim=1)
        return self.l4(h)


class Conv1dTranspose(nn.Module):
    """Conv1d, ConvTranspose1d, GroupNorm, Embedding input."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.c = nn.Conv1d(6, 8, 3, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.act = nn.Mish()
        self.ct = nn.ConvTranspose1d(8, 4, 2, stride=2)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, idx):
        h = self.emb(idx).transpose(1, 2)  # N x 6 x L
        h = self.act(self.gn(self.c(h)))
        h = self.act2(self.ct(h))
        return self.fc(h.mean(2))


class Conv3dInstance(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(2, 4, 3, padding=1)
        self.n = nn.InstanceNorm3d(4, affine=True)
        self.a = nn.CELU()
        self.p = nn.AdaptiveMaxPool3d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.p(self.a(self.n(self.c(x)))).flatten(1))


def hand_written_cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, model, example input) in float64."""
    g = torch.Generator().manual_seed(0)
    cases = [
        ("conv_bn_residual", ConvBNResidual(), torch.randn(4, 3, 8, 8, generator=g)),
        ("dense_cat", DenseCat(), torch.randn(3, 2, 4, 4, generator=g)),
        ("depthwise_shuffle", DepthwiseShuffle(), torch.randn(3, 3, 5, 5, generator=g)),
        ("squeeze_excite", SqueezeExcite(), torch.randn(3, 3, 6, 6, generator=g)),
        ("mlp_functional", MLPFunctional(), torch.randn(5, 6, generator=g)),
        ("bn_train_mlp", BNTrainMLP(), torch.randn(6, 5, generator=g)),
        ("conv1d_transpose", Conv1dTranspose(), torch.randint(0, 11, (3, 7), generator=g)),
        ("conv3d_instance", Conv3dInstance(), torch.randn(2, 2, 4, 4, 4, generator=g)),
    ]
    out = []
    for name, m, x in cases:
        m = m.double()
        with torch.no_grad():  # non-trivial BN/GN/IN affine parameters and running statistics
            for mod in m.modules():
                if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm3d, nn.LayerNorm)):
                    if getattr(mod, "weight", None) is not None:
                        mod.weight.uniform_(0.5, 1.5, generator=g)
                        mod.bias.uniform_(-0.5, 0.5, generator=g)
                    if getattr(mod, "running_mean", None) is not None:
                        mod.running_mean.uniform_(-0.2, 0.2, generator=g)
                        mod.running_var.uniform_(0.5, 1.5, generator=g)
        out.append((name, m, x.double() if x.is_floating_point() else x))
    return out
