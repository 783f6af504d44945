"""Shared building blocks of the model zoo: activations by name and dimension-generic layers.

The zoo works on images ``(C, H, W)`` with 2-d layers and on signals/vectors ``(C, L)`` / ``(L,)`` with 1-d
layers, so the same architectures run on 8x8 digits, 28x28 MNIST, 32x32 CIFAR and 40-point MNIST-1D.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError


class Activation(Choice, what="activation"):
    """Element-wise activation functions accepted by the zoo (``activation="..."``)."""

    RELU = "relu"
    RELU6 = "relu6"
    LEAKY_RELU = "leaky_relu"
    ELU = "elu"
    SELU = "selu"
    CELU = "celu"
    GELU = "gelu"
    SILU = "silu"
    MISH = "mish"
    TANH = "tanh"
    SIGMOID = "sigmoid"
    HARDTANH = "hardtanh"
    HARDSWISH = "hardswish"
    HARDSIGMOID = "hardsigmoid"
    SOFTPLUS = "softplus"
    IDENTITY = "identity"


_ACTIVATIONS: dict[Activation, Callable[[], nn.Module]] = {
    Activation.RELU: nn.ReLU,
    Activation.RELU6: nn.ReLU6,
    Activation.LEAKY_RELU: lambda: nn.LeakyReLU(0.01),
    Activation.ELU: nn.ELU,
    Activation.SELU: nn.SELU,
    Activation.CELU: nn.CELU,
    Activation.GELU: nn.GELU,
    Activation.SILU: nn.SiLU,
    Activation.MISH: nn.Mish,
    Activation.TANH: nn.Tanh,
    Activation.SIGMOID: nn.Sigmoid,
    Activation.HARDTANH: nn.Hardtanh,
    Activation.HARDSWISH: nn.Hardswish,
    Activation.HARDSIGMOID: nn.Hardsigmoid,
    Activation.SOFTPLUS: nn.Softplus,
    Activation.IDENTITY: nn.Identity,
}


def make_activation(name: str | Activation) -> nn.Module:
    """Return a fresh activation module for ``name`` (see :class:`Activation`)."""
    return _ACTIVATIONS[Activation(name)]()


def check_in_shape(in_shape: Sequence[int], model: str, *, dims: tuple[int, ...]) -> tuple[int, ...]:
    """Validate ``in_shape`` (one sample, without the batch axis) and return it as a tuple of ints."""
    try:
        shape = tuple(int(d) for d in in_shape)
    except TypeError as exc:
        raise TypeError(f"{model}: in_shape must be a sequence of ints such as (1, 8, 8), got {in_shape!r}") from exc
    if len(shape) not in dims or any(d < 1 for d in shape):
        wanted = " or ".join(f"{d}-d" for d in dims)
        raise InvalidValueError(
            f"{model}: in_shape must be a {wanted} shape of positive sizes without the batch axis "
            f"(e.g. (1, 8, 8) for digits, (3, 32, 32) for CIFAR, (40,) for MNIST-1D), got {in_shape!r}"
        )
    return shape


def check_positive(value: float, name: str, model: str) -> None:
    """Raise a ``ValueError`` naming ``model`` and ``name`` unless ``value > 0``."""
    if not value > 0:
        raise InvalidValueError(f"{model}: {name} must be > 0, got {value!r}")


def conv_layers(in_shape: tuple[int, ...]) -> tuple[int, int, tuple[int, ...], type, type, type, type]:
    """Channels, spatial rank, spatial size and the layer classes for a conv net on ``in_shape``.

    ``(L,)`` is read as one channel of length ``L`` (the model unsqueezes the channel axis in ``forward``);
    ``(C, L)`` uses 1-d layers, ``(C, H, W)`` 2-d layers.

    Returns
    -------
    (channels, rank, spatial, Conv, BatchNorm, MaxPool, AvgPool)
    """
    if len(in_shape) == 1:
        return 1, 1, in_shape, nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d
    if len(in_shape) == 2:
        return in_shape[0], 1, in_shape[1:], nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d
    return in_shape[0], 2, in_shape[1:], nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d


def adaptive_avg_pool(rank: int) -> nn.Module:
    """Global average pooling to size 1 for a ``rank``-d feature map."""
    return nn.AdaptiveAvgPool1d(1) if rank == 1 else nn.AdaptiveAvgPool2d(1)


def scaled(channels: int, width: float, minimum: int = 2) -> int:
    """``channels * width`` rounded, at least ``minimum`` (the zoo's width multiplier)."""
    return max(minimum, round(channels * width))
