"""VGG for small images (CIFAR-style: 3x3 convs, optional BatchNorm, max pooling, one linear classifier)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnteleport.errors import InvalidValueError
from nnteleport.lab.models._common import (
    Activation,
    check_in_shape,
    check_positive,
    conv_layers,
    make_activation,
    scaled,
)

#: Layer configurations of Simonyan & Zisserman (numbers: 3x3 conv output channels, "M": 2x2 max pooling).
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    """VGG network: ``[Conv3x3 -> (BN) -> act]`` blocks with max pooling, flatten, ``Linear``.

    A pooling layer ``"M"`` is skipped once the feature map is smaller than 2 (8x8 digits keep 3 of VGG's
    5 poolings), so every configuration fits every input size; the classifier reads the flattened final map
    (``channels * remaining spatial size`` features), as CIFAR VGGs do.

    Parameters
    ----------
    in_shape
        ``(C, H, W)`` for images, ``(C, L)`` or ``(L,)`` for signals (1-d convolutions).
    num_classes
        Output logits.
    config
        A name from :data:`CONFIGS` (``"vgg11"`` ... ``"vgg19"``) or an explicit list of ints and ``"M"``.
    width
        Channel multiplier (``1.0`` is the paper's VGG; the default ``0.25`` is a quick CPU version).
    batchnorm
        BatchNorm after every convolution.
    activation
        Name of the element-wise activation.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        config: str | Sequence[int | str] = "vgg11",
        width: float = 0.25,
        batchnorm: bool = True,
        activation: str | Activation = "relu",
    ) -> None:
        super().__init__()
        shape = check_in_shape(in_shape, "vgg", dims=(1, 2, 3))
        check_positive(num_classes, "num_classes", "vgg")
        check_positive(width, "width", "vgg")
        if isinstance(config, str):
            if config not in CONFIGS:
                raise InvalidValueError(f"vgg: unknown config {config!r}; choose one of: {', '.join(CONFIGS)}")
            config = CONFIGS[config]
        channels, _, spatial, conv, bn, maxpool, _ = conv_layers(shape)
        self._unsqueeze = len(shape) == 1
        size = list(spatial)
        layers: list[nn.Module] = []
        for item in config:
            if item == "M":
                if min(size) >= 2:
                    layers.append(maxpool(kernel_size=2, stride=2))
                    size = [s // 2 for s in size]
                continue
            if not isinstance(item, int) or item < 1:
                raise InvalidValueError(f"vgg: config entries must be positive ints or 'M', got {item!r}")
            out = scaled(item, width)
            layers.append(conv(channels, out, kernel_size=3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(bn(out))
            layers.append(make_activation(activation))
            channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels * math.prod(size), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._unsqueeze:
            x = x.unsqueeze(1)
        x = self.features(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
