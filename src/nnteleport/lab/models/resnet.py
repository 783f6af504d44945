"""ResNet-18 for small images (CIFAR-style stem, BasicBlocks with residual adds and projection shortcuts)."""

from __future__ import annotations

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
    scaled,
)


class BasicBlock(nn.Module):
    """``act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`` (He et al. 2016).

    The shortcut is the identity, or a 1x1 convolution with BatchNorm (projection) when the stride or the
    number of channels changes. Each use of the activation is its own module (``act1``, ``act2``; they hold no
    parameters), so a teleport can wrap every one of them and ``"inter"`` sampling may flip the sign of every
    hidden neuron (a functional ``F.relu`` cannot hold a wrapper and pins the neurons it sees to positive CoB
    factors; ``tests/engine_models.py`` covers that case).
    """

    def __init__(
        self, in_planes: int, planes: int, stride: int, conv: type, bn: type, activation: str | Activation
    ) -> None:
        super().__init__()
        self.conv1 = conv(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(planes)
        self.act1 = make_activation(activation)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = bn(planes)
        self.act2 = make_activation(activation)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                conv(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                bn(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.act2(out)


class ResNet(nn.Module):
    """ResNet with BasicBlocks; ``blocks=(2, 2, 2, 2)`` is ResNet-18.

    CIFAR-style stem (one 3x3 convolution, stride 1, no max pooling), four stages of ``64, 128, 256, 512``
    channels (times ``width``) with strides ``1, 2, 2, 2``, global average pooling and a linear classifier.
    With ``width=1.0`` on ``(3, 32, 32)`` and 10 classes this is the usual CIFAR ResNet-18 (11,173,962
    parameters).

    Parameters
    ----------
    in_shape
        ``(C, H, W)`` for images, ``(C, L)`` or ``(L,)`` for signals (1-d convolutions).
    num_classes
        Output logits.
    width
        Channel multiplier (``1.0``: the paper's ResNet-18; default ``0.25``: 16-32-64-128 channels).
    blocks
        BasicBlocks per stage.
    activation
        Name of the element-wise activation (the arXiv version's feature maps use ``relu`` and ``tanh``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: float = 0.25,
        blocks: Sequence[int] = (2, 2, 2, 2),
        activation: str | Activation = "relu",
    ) -> None:
        super().__init__()
        shape = check_in_shape(in_shape, "resnet18", dims=(1, 2, 3))
        check_positive(num_classes, "num_classes", "resnet18")
        check_positive(width, "width", "resnet18")
        if len(blocks) != 4 or any(int(n) < 1 for n in blocks):
            raise InvalidValueError(f"resnet18: blocks must be 4 positive ints (one per stage), got {blocks!r}")
        channels, rank, _, conv, bn, _, _ = conv_layers(shape)
        self._unsqueeze = len(shape) == 1
        planes = scaled(64, width)
        self.conv1 = conv(channels, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = bn(planes)
        self.act = make_activation(activation)
        stages = []
        in_planes = planes
        for i, n in enumerate(blocks):
            out_planes = scaled(64 * 2**i, width)
            stride = 1 if i == 0 else 2
            layer = []
            for j in range(int(n)):
                layer.append(BasicBlock(in_planes, out_planes, stride if j == 0 else 1, conv, bn, activation))
                in_planes = out_planes
            stages.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = adaptive_avg_pool(rank)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.pool(out).flatten(1)
        return self.fc(out)


def resnet18(in_shape: Sequence[int], num_classes: int, **kw) -> ResNet:
    """ResNet-18 (``blocks=(2, 2, 2, 2)``); keyword arguments as :class:`ResNet`."""
    kw.setdefault("blocks", (2, 2, 2, 2))
    return ResNet(in_shape, num_classes, **kw)
