"""MobileNetV2 for small images (inverted residuals: 1x1 expansion, depthwise 3x3, linear 1x1 projection)."""

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

#: (expansion t, output channels c, blocks n, stride s) of Sandler et al. 2018, Table 2, with the second
#: stage's stride set to 1 for 32x32 inputs (the usual CIFAR adaptation).
CONFIG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """``[pw-expand -> BN -> act] -> dw3x3 -> BN -> act -> pw-linear -> BN`` (+ x when shape is kept)."""

    def __init__(
        self,
        in_planes: int,
        out_planes: int,
        expansion: int,
        stride: int,
        conv: type,
        bn: type,
        activation: str | Activation,
    ) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                conv(in_planes, hidden, kernel_size=1, bias=False),
                bn(hidden),
                make_activation(activation),
            ]
        layers += [
            conv(hidden, hidden, kernel_size=3, stride=stride, padding=1, groups=hidden, bias=False),
            bn(hidden),
            make_activation(activation),
            conv(hidden, out_planes, kernel_size=1, bias=False),
            bn(out_planes),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_planes == out_planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) with a stride-1 3x3 stem for small images.

    With ``width=1.0`` this has the architecture (and, for 1000 classes, the 3,504,872 parameters) of
    torchvision's ``mobilenet_v2``; the default ``width=0.25`` is a quick CPU version (last conv scaled too).

    Parameters
    ----------
    in_shape
        ``(C, H, W)`` for images, ``(C, L)`` or ``(L,)`` for signals (1-d convolutions).
    num_classes
        Output logits.
    width
        Channel multiplier.
    activation
        Name of the element-wise activation (``relu6`` as in the paper of MobileNetV2).
    dropout
        Dropout before the classifier (0 disables).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        width: float = 0.25,
        activation: str | Activation = "relu6",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = check_in_shape(in_shape, "mobilenetv2", dims=(1, 2, 3))
        check_positive(num_classes, "num_classes", "mobilenetv2")
        check_positive(width, "width", "mobilenetv2")
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"mobilenetv2: dropout must be in [0, 1), got {dropout!r}")
        channels, rank, _, conv, bn, _, _ = conv_layers(shape)
        self._unsqueeze = len(shape) == 1
        planes = scaled(32, width)
        layers: list[nn.Module] = [
            conv(channels, planes, kernel_size=3, stride=1, padding=1, bias=False),
            bn(planes),
            make_activation(activation),
        ]
        for t, c, n, s in CONFIG:
            out_planes = scaled(c, width)
            for i in range(n):
                layers.append(InvertedResidual(planes, out_planes, t, s if i == 0 else 1, conv, bn, activation))
                planes = out_planes
        last = scaled(1280, width)
        layers += [conv(planes, last, kernel_size=1, bias=False), bn(last), make_activation(activation)]
        self.features = nn.Sequential(*layers)
        self.pool = adaptive_avg_pool(rank)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        out = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(out))
