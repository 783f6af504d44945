"""DenseNet-BC for small images (dense blocks whose layers concatenate their input and output channels)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnteleport.errors import InvalidValueError
from nnteleport.lab.models._common import (
    Activation,
    adaptive_avg_pool,
    check_in_shape,
    check_positive,
    conv_layers,
    make_activation,
)


class Bottleneck(nn.Module):
    """Dense layer ``cat([x, conv3x3(act(bn2(conv1x1(act(bn1(x))))))], 1)``: ``growth_rate`` new channels."""

    def __init__(self, in_planes: int, growth_rate: int, conv: type, bn: type, activation: str | Activation):
        super().__init__()
        self.bn1 = bn(in_planes)
        self.act1 = make_activation(activation)
        self.conv1 = conv(in_planes, 4 * growth_rate, kernel_size=1, bias=False)
        self.bn2 = bn(4 * growth_rate)
        self.act2 = make_activation(activation)
        self.conv2 = conv(4 * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act1(self.bn1(x)))
        out = self.conv2(self.act2(self.bn2(out)))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    """``avgpool2(conv1x1(act(bn(x))))`` between dense blocks (pooling skipped on maps smaller than 2)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        conv: type,
        bn: type,
        pool: nn.Module,
        activation: str | Activation,
    ):
        super().__init__()
        self.bn = bn(in_planes)
        self.act = make_activation(activation)
        self.conv = conv(in_planes, out_planes, kernel_size=1, bias=False)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.act(self.bn(x))))


class DenseNet(nn.Module):
    """DenseNet-BC (Huang et al. 2017), CIFAR style: 3x3 stem of ``2 * growth_rate`` channels, dense blocks of
    bottleneck layers, transitions compressing channels by ``reduction``, BN-act, global average pooling,
    linear.

    ``blocks=(6, 12, 24, 16), growth_rate=32`` is DenseNet-121 (the paper's size); the default
    ``blocks=(4, 4, 4), growth_rate=12`` is a quick CPU version.

    Parameters
    ----------
    in_shape
        ``(C, H, W)`` for images, ``(C, L)`` or ``(L,)`` for signals (1-d convolutions).
    num_classes
        Output logits.
    blocks
        Bottleneck layers per dense block.
    growth_rate
        Channels added by each bottleneck layer.
    reduction
        Channel compression of the transitions, in ``(0, 1]``.
    activation
        Name of the element-wise activation.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        blocks: Sequence[int] = (4, 4, 4),
        growth_rate: int = 12,
        reduction: float = 0.5,
        activation: str | Activation = "relu",
    ) -> None:
        super().__init__()
        shape = check_in_shape(in_shape, "densenet", dims=(1, 2, 3))
        check_positive(num_classes, "num_classes", "densenet")
        check_positive(growth_rate, "growth_rate", "densenet")
        if not 0 < reduction <= 1:
            raise InvalidValueError(f"densenet: reduction must be in (0, 1], got {reduction!r}")
        if len(blocks) < 1 or any(int(n) < 1 for n in blocks):
            raise InvalidValueError(f"densenet: blocks must be positive ints, got {blocks!r}")
        channels, rank, spatial, conv, bn, _, avgpool = conv_layers(shape)
        self._unsqueeze = len(shape) == 1
        size = min(spatial)
        planes = 2 * growth_rate
        self.conv1 = conv(channels, planes, kernel_size=3, padding=1, bias=False)
        stages: list[nn.Module] = []
        for i, n in enumerate(blocks):
            layers = []
            for _ in range(int(n)):
                layers.append(Bottleneck(planes, growth_rate, conv, bn, activation))
                planes += growth_rate
            stages.append(nn.Sequential(*layers))
            if i < len(blocks) - 1:
                out_planes = max(1, math.floor(planes * reduction))
                pool: nn.Module = nn.Identity()
                if size >= 2:
                    pool = avgpool(kernel_size=2)
                    size //= 2
                stages.append(Transition(planes, out_planes, conv, bn, pool, activation))
                planes = out_planes
        self.features = nn.Sequential(*stages)
        self.bn = bn(planes)
        self.act = make_activation(activation)
        self.pool = adaptive_avg_pool(rank)
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        out = self.features(self.conv1(x))
        out = self.pool(self.act(self.bn(out)))
        return self.linear(torch.flatten(out, 1))
