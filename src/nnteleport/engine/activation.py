"""The teleported activation ``g(x) = tau * f(x / tau)`` (Armenta et al. 2023, Sec. 3, Eq. 5).

A change of basis multiplies the pre-activations of a hidden neuron by its factor ``tau``. For the network to
compute the same function, the activation of that neuron must become ``g(x) = tau * f(x / tau)``: then
``g(tau * z) = tau * f(z)``, so the post-activation carries the same factor and the next layer's ``1 / tau``
cancels it. For positively homogeneous ``f`` (ReLU, LeakyReLU, max pooling) and ``tau > 0`` this is ``f`` itself
and no wrapper is installed; for every other case the engine replaces the activation module by
:class:`TeleportedActivation`.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FunctionalOp", "TeleportedActivation", "call_is_inplace"]


def call_is_inplace(target: Any, args: tuple = (), kwargs: dict | None = None) -> bool:
    """Whether the call ``target(x, *args, **kwargs)`` (or the method ``x.target(...)`` for a string) overwrites
    ``x``: a trailing underscore (``x.relu_()``, ``torch.relu_``, ``F.elu_``) or ``inplace=True`` given by
    keyword or position (``F.relu(x, True)``)."""
    kwargs = kwargs or {}
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    if name.endswith("_") and not name.endswith("__"):
        return True
    if "inplace" in kwargs:
        return bool(kwargs["inplace"])
    if isinstance(target, str) or not args:
        return False
    sig = _signature(target)
    if sig is None:
        return False
    try:
        bound = sig.bind_partial(None, *args)
    except TypeError:
        return False
    return bool(bound.arguments.get("inplace", False))


_SIGNATURES: dict[Any, inspect.Signature | None] = {}


def _signature(target: Any) -> inspect.Signature | None:
    """``inspect.signature(target)`` (``None`` when it has none), cached per callable: computing a signature
    costs tens of microseconds and the analysis asks once per call node."""
    try:
        return _SIGNATURES[target]
    except KeyError:
        pass
    except TypeError:  # unhashable callable
        try:
            return inspect.signature(target)
        except (TypeError, ValueError):
            return None
    try:
        sig: inspect.Signature | None = inspect.signature(target)
    except (TypeError, ValueError):
        sig = None
    if len(_SIGNATURES) < 4096:
        _SIGNATURES[target] = sig
    return sig


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

    An in-place ``fn`` (``nn.SiLU(inplace=True)``, ``x.relu_()`` under ``functional="graph"``) overwrites its
    input, and the code after it may read that input again: when ``fn`` returns its own input (it worked in place;
    ``nn.AlphaDropout(inplace=True)``, for one, does not), the wrapper writes ``tau * f(x / tau)`` back into ``x``
    and returns ``x``, as ``fn`` itself does.
    """

    tau: Tensor

    def __init__(self, fn: nn.Module, tau: Tensor) -> None:
        super().__init__()
        self.fn = fn
        self.register_buffer("tau", tau.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        tau = self.tau
        z = x / tau
        r = self.fn(z)
        if r is z:  # fn worked in place (it returns its input): so does the wrapper
            return x.copy_(tau * r)
        return tau * r

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
