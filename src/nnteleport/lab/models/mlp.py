"""Multi-layer perceptron (the paper's MLP: 1 x 128 hidden for micro-teleportation, 5 x 500 for training)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from nnteleport.errors import InvalidValueError
from nnteleport.lab.models._common import Activation, check_in_shape, check_positive, make_activation


class MLP(nn.Module):
    """Fully connected net ``x -> flatten -> [Linear -> (BatchNorm1d) -> act -> (Dropout)] * k -> Linear``.

    Parameters
    ----------
    in_shape
        Shape of one sample without the batch axis; it is flattened to ``prod(in_shape)`` features.
    num_classes
        Output features (logits).
    hidden
        Widths of the hidden layers, e.g. ``(500,) * 5`` as in the paper's training experiments.
    activation
        Name of the element-wise activation (see :class:`~nnteleport.lab.models._common.Activation`).
    bias
        Whether the linear layers have a bias.
    batchnorm
        Insert ``BatchNorm1d`` after every hidden linear layer.
    dropout
        Dropout probability after every hidden activation (0 disables).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        hidden: Sequence[int] = (128, 128),
        activation: str | Activation = "relu",
        bias: bool = True,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape = check_in_shape(in_shape, "mlp", dims=(1, 2, 3, 4))
        check_positive(num_classes, "num_classes", "mlp")
        if not 0.0 <= dropout < 1.0:
            raise InvalidValueError(f"mlp: dropout must be in [0, 1), got {dropout!r}")
        self.in_features = math.prod(shape)
        layers: list[nn.Module] = []
        width = self.in_features
        for i, h in enumerate(hidden):
            check_positive(h, f"hidden[{i}]", "mlp")
            layers.append(nn.Linear(width, int(h), bias=bias))
            if batchnorm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.flatten(1)))
