"""Neuron *spaces*: the integer tensors the engine propagates next to every value of a traced model.

A space ``S`` of a tensor of shape ``(N, C, H, W)`` has the same rank and broadcasts to that shape; ``S[n, c, h, w]``
names the neuron variable whose factor ``tau`` scales that element (``0`` is the constant 1: a pinned element). A
CoB maps ``x -> t[S] * x`` with ``t = [1, tau_1, ..., tau_n]``. :class:`Kind` says how an element- or channel-wise
op reacts to such a factor.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "Kind",
    "broadcast_shape",
    "channel_vector",
    "compress",
    "is_tensor_space",
    "map_tree",
    "zeros_like_space",
]


class Kind(str, Enum):
    """How an element-/channel-wise op ``f`` reacts to a per-channel factor ``tau``."""

    LINEAR = "linear"  # f(tau x) = tau f(x) for every tau: nothing to do
    POSITIVE = "positive"  # f(tau x) = tau f(x) for tau > 0 (ReLU, max pool): wrapper only where tau < 0
    GENERAL = "general"  # anything else (tanh, GELU, ...): wrapper g(x) = tau f(x / tau) wherever tau != 1


def map_tree(fn: Callable[[Any], Any], value: Any) -> Any:
    """Apply ``fn`` to every leaf of nested tuples/lists/dicts (named tuples become tuples)."""
    if isinstance(value, (tuple, list)):
        out = [map_tree(fn, v) for v in value]
        return type(value)(out) if type(value) in (tuple, list) else tuple(out)
    if isinstance(value, dict):
        return {k: map_tree(fn, v) for k, v in value.items()}
    return fn(value)


def zeros_like_space(value: Any) -> Any:
    """The pinned space (all constant) of a value: a tensor of zeros with the value's rank, or a structure."""
    return map_tree(lambda v: torch.zeros((1,) * v.dim(), dtype=torch.long) if isinstance(v, Tensor) else None, value)


def compress(S: Tensor) -> Tensor:
    """Shrink every axis along which ``S`` is constant to size 1 (keeps the rank). Broadcast axes (stride 0)
    are shrunk without looking at the values."""
    for d in range(S.dim()):
        if S.shape[d] > 1 and S.stride(d) == 0:
            S = S.narrow(d, 0, 1)
    for d in range(S.dim()):
        if S.shape[d] > 1:
            first = S.narrow(d, 0, 1)
            if bool((S == first).all()):
                S = first
    return S.contiguous()


def broadcast_shape(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """NumPy broadcasting of two shapes (``torch.broadcast_shapes`` imports sympy on first use: seconds)."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} do not broadcast")
        out.append(max(x, y) if 1 in (x, y) else x)
    return tuple(out)


def is_tensor_space(S: Any) -> bool:
    return isinstance(S, Tensor)


def channel_vector(S: Tensor, channels: int, dim: int = 1) -> Tensor | None:
    """The per-channel variables of a space whose factor depends on axis ``dim`` only, else ``None``."""
    S = compress(S)
    for d in range(S.dim()):
        if d != dim and S.shape[d] != 1:
            return None
    v = S.reshape(-1) if S.dim() else S.reshape(1)
    return v.expand(channels).clone() if v.numel() == 1 else v.clone()
