"""The learning-rate confound of teleportation: teleport-then-train *is* training the original network with
fixed per-parameter learning rates.

A teleport (no later teleports) is the linear reparametrisation ``V = T W``, ``T`` the per-element factor
``tau_out / tau_in`` of every parameter (:func:`scale_factors`). The teleported network with weights ``V``
computes the original network at ``W = T^-1 V`` for *every* ``V`` (the activation wrappers
``tau f(x / tau)`` of non-homogeneous activations keep their ``tau``), so ``dL/dV = T^-1 dL/dW`` and

* **SGD** (momentum ``mu``, L2 coefficient ``wd``, torch's convention ``buf = mu buf + g + wd p``): one step on
  ``V`` mapped back is ``u = mu u + T^-2 dL/dW + wd W; W -= lr u`` (``u = T^-1 buf_V``): SGD on ``W`` with the
  gradient preconditioned by ``T^-2`` -- per-parameter rates ``lr (tau_in / tau_out)^2`` -- and the weight decay
  *not* preconditioned. :class:`PreconditionedSGD` (the gradient is multiplied by ``T^-2`` before torch's step).
* **Adam** (L2 in the gradient, as ``torch.optim.Adam``): the moments of ``g_V + wd V = T^-1 (g_W + wd T^2 W)``
  are ``m_V = T^-1 m``, ``v_V = T^-2 v``, so the step mapped back is
  ``W -= (lr / |T|) m_hat / (sqrt(v_hat) + |T| eps)`` with the moments of ``G = g_W + wd T^2 W``: Adam with
  per-parameter rates ``lr |tau_in / tau_out|`` and an L2 coefficient ``wd T^2``, **exactly** when ``eps`` is
  scaled by ``|T|`` too (``exact_eps=True``), and up to ``eps`` otherwise (``|T| eps`` vs ``eps`` in the
  denominator: a relative change of the step of at most ``|1 - |T|| eps / sqrt(v_hat)``).
  :class:`PreconditionedAdam`.

The mean SGD factor over neurons is ``E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2))``
(:func:`nnteleport.engine.cob.expected_squared_ratio`; 6.7 at ``s = 0.9``); for Adam ``E|tau_a / tau_b| =
ln((1 + s) / (1 - s)) / (2 s)`` (:func:`expected_abs_ratio`; 1.64 at ``s = 0.9``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nnteleport.errors import InvalidValueError
from nnteleport.lab.training.rng import derived_seed

__all__ = [
    "PreconditionedAdam",
    "PreconditionedSGD",
    "expected_abs_ratio",
    "scale_factors",
    "teleport_cob",
]


def expected_abs_ratio(cob_range: float) -> float:
    """``E|tau_a / tau_b| = E|tau| E[1 / |tau|] = ln((1 + s) / (1 - s)) / (2 s)`` for independent
    ``|tau| ~ U[1 - s, 1 + s]`` (the mean Adam factor)."""
    s = float(cob_range)
    if not 0.0 < s < 1.0:
        raise InvalidValueError(f"cob_range must lie in (0, 1), got {cob_range!r}")
    return math.log((1.0 + s) / (1.0 - s)) / (2.0 * s)


def teleport_cob(model: nn.Module, x: Any, *, seed: int, epoch: int = 0, cob_range: float = 0.9,
                 sampling: str = "inter") -> Any:  # fmt: skip
    """The CoB that :class:`~nnteleport.lab.training.Teleport` (and so ``train(teleport_at=epoch)``) samples for
    ``model`` at ``epoch`` of a run with ``seed`` (the same generator, seeded from ``(seed, epoch, 0x7E1E)``)."""
    from nnteleport.engine.apply import sample_cob

    gen = torch.Generator().manual_seed(derived_seed(seed, epoch, 0x7E1E))
    return sample_cob(model, x, cob_range, sampling, generator=gen)


def scale_factors(model: nn.Module, x: Any, cob: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``T`` per parameter: name -> float64 tensor of the parameter's shape with ``V = T * W`` for the teleport
    of ``model`` by ``cob`` (:func:`nnteleport.engine.optim_state.parameter_factors`, with 1 for the parameters
    that do not move)."""
    from nnteleport.engine.optim_state import parameter_factors

    moving = parameter_factors(model, x, cob)
    return {n: moving.get(n, torch.ones(p.shape, dtype=torch.float64)) for n, p in model.named_parameters()}


def _aligned(params: Sequence[nn.Parameter], scales: Sequence[Tensor]) -> list[Tensor]:
    if len(params) != len(scales):
        raise InvalidValueError(f"{len(params)} parameters but {len(scales)} scale tensors")
    out = []
    for p, s in zip(params, scales):
        if tuple(s.shape) != tuple(p.shape):
            raise InvalidValueError(f"scale of shape {tuple(s.shape)} for a parameter of shape {tuple(p.shape)}")
        out.append(s.to(device=p.device, dtype=p.dtype))
    return out


def _named(model: nn.Module, factors: Mapping[str, Tensor]) -> tuple[list[nn.Parameter], list[Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [p for _, p in named], [factors[n] for n, _ in named]


class PreconditionedSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose gradients are multiplied by ``T^-2`` (per element) before each step: the
    teleported run (teleport by ``T`` at initialisation, then SGD with the same ``lr``, ``momentum`` and
    ``weight_decay``) mapped back to the original coordinates (module docstring). ``scales[k]`` is ``T`` of
    ``params[k]``; :meth:`for_model` takes the name -> ``T`` mapping of :func:`scale_factors`."""

    def __init__(self, params: Iterable[nn.Parameter], scales: Sequence[Tensor], *, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0) -> None:  # fmt: skip
        params = list(params)
        self._inv_sq = [s.pow(-2) for s in _aligned(params, scales)]
        self._params = params
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @classmethod
    def for_model(cls, model: nn.Module, factors: Mapping[str, Tensor], **kw: Any) -> PreconditionedSGD:
        params, scales = _named(model, factors)
        return cls(params, scales, **kw)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if closure is not None:
            raise InvalidValueError("PreconditionedSGD.step does not take a closure")
        for p, f in zip(self._params, self._inv_sq):
            if p.grad is not None:
                p.grad.mul_(f)
        return super().step()


class PreconditionedAdam(torch.optim.Optimizer):
    """Adam (``torch.optim.Adam``'s update, L2 ``weight_decay`` in the gradient) with per-element rates
    ``lr / |T|``, L2 coefficient ``weight_decay * T^2`` and, with ``exact_eps``, ``eps * |T|``: the teleported
    Adam run mapped back, exactly with ``exact_eps=True``, up to ``eps`` without (module docstring)."""

    def __init__(self, params: Iterable[nn.Parameter], scales: Sequence[Tensor], *, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 exact_eps: bool = False) -> None:  # fmt: skip
        params = list(params)
        self._abs = [s.abs() for s in _aligned(params, scales)]
        self._params = params
        self.exact_eps = bool(exact_eps)
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @classmethod
    def for_model(cls, model: nn.Module, factors: Mapping[str, Tensor], **kw: Any) -> PreconditionedAdam:
        params, scales = _named(model, factors)
        return cls(params, scales, **kw)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if closure is not None:
            raise InvalidValueError("PreconditionedAdam.step does not take a closure")
        index = {id(p): k for k, p in enumerate(self._params)}
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                a = self._abs[index[id(p)]]
                g = p.grad
                if group["weight_decay"]:
                    g = g + group["weight_decay"] * a * a * p
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)
                st["step"] += 1
                m, v, k = st["exp_avg"], st["exp_avg_sq"], st["step"]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                eps = group["eps"] * a if self.exact_eps else group["eps"]
                denom = (v.sqrt() / math.sqrt(1 - b2**k)) + eps
                p.sub_(group["lr"] / (1 - b1**k) * m / (denom * a))
        return None
