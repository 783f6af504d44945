"""A small built-in model zoo: the paper's architectures sized for small images and vectors.

``build_model(name, in_shape=..., num_classes=...)`` builds one of :data:`MODELS` -- MLP, VGG, ResNet-18,
DenseNet, MobileNetV2 -- for 8x8 digits ``(1, 8, 8)``, MNIST ``(1, 28, 28)``, CIFAR ``(3, 32, 32)`` or
vectors and signals such as MNIST-1D ``(40,)`` (1-d convolutions). They are ordinary PyTorch modules written
the way users write them (``torch.cat``, ``x + shortcut`` in ``forward``), used by the tests, the experiments and
the demo. Every use of an activation is a separate module (none is functional or shared), so a teleport wraps
each one and ``"inter"`` sampling can flip the sign of every free hidden neuron.

Conv models default to small widths for CPU work; ``width=1.0`` (VGG, ResNet, MobileNetV2) and
``blocks=(6, 12, 24, 16), growth_rate=32`` (DenseNet-121) give the paper-scale networks.

>>> from nnteleport.lab.models import build_model
>>> model = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=0.125)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from nnteleport.errors import InvalidArgumentError, InvalidValueError
from nnteleport.lab.models._common import Activation, make_activation
from nnteleport.lab.models.densenet import DenseNet
from nnteleport.lab.models.mlp import MLP
from nnteleport.lab.models.mobilenetv2 import MobileNetV2
from nnteleport.lab.models.resnet import BasicBlock, ResNet, resnet18
from nnteleport.lab.models.vgg import VGG

__all__ = [
    "MLP",
    "MODELS",
    "VGG",
    "Activation",
    "BasicBlock",
    "DenseNet",
    "MobileNetV2",
    "ResNet",
    "build_model",
    "default_kwargs",
    "make_activation",
]

#: name -> constructor ``(in_shape, num_classes, **kw) -> nn.Module``; the single list of zoo models.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "vgg": VGG,
    "resnet18": resnet18,
    "densenet": DenseNet,
    "mobilenetv2": MobileNetV2,
}


def default_kwargs(name: str) -> dict[str, Any]:
    """The architecture options of zoo model ``name`` with their default values (tuples as lists).

    Experiments put these in their ``DEFAULTS["model_kwargs"][name]``, so every option can be changed with
    ``--set model_kwargs.<name>.<option>=...`` and is type-checked.
    """
    if name not in MODELS:
        raise InvalidValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    cls = {"resnet18": ResNet}.get(name, MODELS[name])
    out: dict[str, Any] = {}
    for pname, param in inspect.signature(cls).parameters.items():
        if pname in ("in_shape", "num_classes") or param.default is inspect.Parameter.empty:
            continue
        value = param.default
        out[pname] = list(value) if isinstance(value, tuple) else value
    return out


def build_model(name: str, *, in_shape: Sequence[int], num_classes: int, **kw) -> nn.Module:
    """Build zoo model ``name`` for samples of shape ``in_shape`` (no batch axis) and ``num_classes`` logits.

    Parameters
    ----------
    name
        One of :data:`MODELS`: ``"mlp"``, ``"vgg"``, ``"resnet18"``, ``"densenet"``, ``"mobilenetv2"``.
    in_shape
        ``(C, H, W)`` images, ``(C, L)`` signals or ``(L,)`` vectors (conv nets read them as one channel).
    num_classes
        Number of output logits.
    **kw
        Architecture options of the model's class, e.g. ``hidden=(500,) * 5, activation="tanh"`` for the MLP,
        ``width=0.5`` for VGG/ResNet/MobileNetV2, ``growth_rate=12`` for DenseNet, ``activation=...`` for all.

    Returns
    -------
    nn.Module
        A freshly initialised model (PyTorch default initialisation) in training mode, float32 on CPU.
    """
    if name not in MODELS:
        raise InvalidValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    try:
        return MODELS[name](in_shape, num_classes, **kw)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise InvalidArgumentError(
                f"build_model({name!r}): {exc}; see help(nnteleport.lab.models.MODELS[{name!r}])"
            ) from exc
        raise
