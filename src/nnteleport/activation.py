"""The teleported activation ``g(x) = tau * f(x / tau)`` (Armenta et al. 2023, Sec. 3, Eq. 5).

A change of basis multiplies the pre-activations of a hidden neuron by its factor ``tau``. For the network to
compute the same function, the activation of that neuron must become ``g(x) = tau * f(x / tau)``: then
``g(tau * z) = tau * f(z)``, so the post-activation carries the same factor and the next layer's ``1 / tau``
cancels it. For positively homogeneous ``f`` (ReLU, LeakyReLU, max pooling) and ``tau > 0`` this is ``f`` itself
and no wrapper is installed; for every other case the engine replaces the activation module by
:class:`TeleportedActivation`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FunctionalOp", "TeleportedActivation"]


class TeleportedActivation(nn.Module):
    """Wrap an element-wise or channel-wise module ``f`` as ``g(x) = tau * f(x / tau)``.

    Parameters
    ----------
    fn:
        The original activation module (``nn.Tanh()``, ``nn.GELU()``, ``nn.MaxPool2d(2)``, ...). It must act on
        each channel separately (element-wise functions, pooling).
    tau:
        Factors broadcastable against the activation's input without its batch dimension, e.g. shape ``(C, 1, 1)``
        for ``N x C x H x W`` feature maps or ``(F,)`` for ``N x F`` features. Stored as the buffer ``tau`` so
        ``state_dict()`` round-trips.

    Teleporting a model that already holds wrappers multiplies their ``tau`` (composition:
    ``tau2 * (tau1 * f(x / (tau1 tau2)))``).
    """

    tau: Tensor

    def __init__(self, fn: nn.Module, tau: Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.register_buffer("tau", tau.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        tau = self.tau
        return tau * self.fn(x / tau)

    def extra_repr(self) -> str:
        t = self.tau
        neg = int((t < 0).sum())
        return f"tau: shape={tuple(t.shape)}, negative={neg}"


@torch.no_grad()
def _unwrap(module: nn.Module) -> nn.Module:
    """The innermost activation of (possibly nested) wrappers."""
    while isinstance(module, TeleportedActivation):
        module = module.fn
    return module


class FunctionalOp(nn.Module):
    """A functional call of a user's ``forward`` (``F.gelu(x)``, ``x.tanh()``, ``F.max_pool2d(x, 2)``) as a module,
    so that ``functional="graph"`` teleportation can wrap it as ``tau * f(x / tau)``.

    ``op`` is ``"call_function"`` or ``"call_method"``; ``args``/``kwargs`` are the call's constant arguments after
    the tensor.
    """

    def __init__(self, op: str, target: Any, args: tuple = (), kwargs: dict | None = None) -> None:
        super().__init__()
        self.op, self.target, self.args, self.kwargs = op, target, tuple(args), dict(kwargs or {})

    def forward(self, x: Tensor) -> Tensor:
        if self.op == "call_method":
            return getattr(x, self.target)(*self.args, **self.kwargs)
        return self.target(x, *self.args, **self.kwargs)

    def extra_repr(self) -> str:
        name = self.target if isinstance(self.target, str) else getattr(self.target, "__name__", repr(self.target))
        return f"{name}, args={self.args}, kwargs={self.kwargs}"
