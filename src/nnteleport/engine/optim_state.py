"""Optimizer state across a teleport: transform it like the gradients instead of resetting it.

A teleport ``V = T W`` (``T`` the per-element factor ``tau_out / tau_in`` of each parameter, from the plan) keeps the
function, so the gradient transforms as ``dL/dV = T^-1 dL/dW`` (Armenta et al. 2023, Theorem 2). State that is a
running sum of gradients transforms like a gradient, state that sums squared gradients like its square:

==============================  ==========================  ====================
optimizer                       state                       factor
==============================  ==========================  ====================
SGD (momentum)                  ``momentum_buffer``         ``T^-1``
Adam, AdamW, NAdam, RAdam       ``exp_avg``                 ``T^-1``
                                ``exp_avg_sq``,             ``T^-2``
                                ``max_exp_avg_sq``
Adagrad                         ``sum``                     ``T^-2``
RMSprop (not centered, no       ``square_avg``              ``T^-2``
momentum)
==============================  ==========================  ====================

Step counters are unchanged. Any other floating-point state of a parameter is refused (an
:class:`~nnteleport.errors.InvalidValueError` naming the key), never guessed. With the state transformed, momentum
SGD after a teleport is exactly momentum SGD on ``W`` with per-parameter learning rates ``lr T^-2``; for Adam the
transformed moments keep the update's direction and size per element up to ``eps`` (``m / sqrt(v)`` scales by
``T^-1 / |T^-1|``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nnteleport.engine.analysis import analyze
from nnteleport.errors import InvalidValueError

__all__ = ["parameter_factors", "transform_optimizer_state"]

_GRADIENT_LIKE = frozenset({"momentum_buffer", "exp_avg"})
_SQUARED = frozenset({"exp_avg_sq", "max_exp_avg_sq", "sum", "square_avg"})
_SCALARS = frozenset({"step", "mu_product"})  # counters and products of scalars: unchanged


def parameter_factors(model: nn.Module, x: Any, cob: Mapping[str, Tensor], **analyze_kw: Any) -> dict[str, Tensor]:
    """``name -> T`` (float64, the parameter's shape) with ``teleport(model, x, cob=cob)`` mapping ``W`` to ``T W``;
    parameters that do not move are left out. Call it before teleporting in place (it analyses ``model``)."""
    plan = analyze(model, x, **analyze_kw)
    t = torch.cat([torch.ones(1, dtype=torch.float64), plan.flat(cob)])
    params = dict(model.named_parameters())
    out = {}
    for name, (o, i) in plan.param_scale_indices.items():
        p = params.get(name)
        if p is None:
            continue
        T = t[o] / t[i] if i is not None else t[o]
        out[name] = T.expand(p.shape).clone()
    return out


def transform_optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, factors: Mapping[str, Tensor]
) -> None:
    """Transform ``optimizer``'s per-parameter state in place after ``model`` was teleported in place by
    ``factors`` (from :func:`parameter_factors`): gradient-like state ``*= 1 / T``, squared-gradient state
    ``*= 1 / T**2`` (see the module docstring). Refuses state it does not know, before changing anything."""
    names = {id(p): n for n, p in model.named_parameters()}
    todo: list[tuple[Tensor, Tensor]] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = names.get(id(p))
            T = factors.get(name) if name is not None else None
            state = optimizer.state.get(p, {})
            if T is None or not state:
                continue
            if group.get("centered") or (group.get("momentum") and "square_avg" in state):
                raise InvalidValueError(
                    f"optimizer state of parameter {name!r}: centered or momentum RMSprop is not transformed "
                    "(use optimizer_state_on_teleport='reset')"
                )
            for key, v in state.items():
                if not isinstance(v, Tensor) or key in _SCALARS or not v.is_floating_point() or v.dim() == 0:
                    continue
                if key in _GRADIENT_LIKE:
                    todo.append((v, T.reciprocal()))
                elif key in _SQUARED:
                    todo.append((v, T.pow(-2)))
                else:
                    raise InvalidValueError(
                        f"optimizer state {key!r} of parameter {name!r} ({type(optimizer).__name__}) has no known "
                        "transformation under a teleport; use optimizer_state_on_teleport='reset'"
                    )
    with torch.no_grad():
        for v, f in todo:
            v.mul_(f.to(device=v.device, dtype=v.dtype))
