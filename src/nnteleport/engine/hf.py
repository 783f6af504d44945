"""Rules for the layers of Hugging Face ``transformers`` (registered by class name: nothing is imported from it).

* ``transformers.pytorch_utils.Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``): ``y = x W + b`` with ``W`` of
  shape ``(nx, nf)``, a linear layer with its weight transposed: ``W[i, o] *= tau_out[o] / tau_in[i]``,
  ``b[o] *= tau_out[o]``.
* The activation modules of ``transformers.activations`` whose forward is an element-wise function of its input
  (``GELUActivation``, ``NewGELUActivation``, ``QuickGELUActivation``, ...; read in transformers 5.x): as
  ``nn.GELU``, wrapped as ``tau * f(x / tau)`` (:class:`~nnteleport.engine.activation.TeleportedActivation`) where
  a factor is not 1. ``LinearActivation`` is the identity. An instance holding parameters, buffers or submodules
  (not what these classes hold) is pinned instead. Activations with parameters (``XIELUActivation``) have no rule:
  traced through, their functional calls pinned.

A subclass that overrides a method, or an instance with a replaced method, gets no rule (as for every registered
layer, :func:`nnteleport.engine.registry.module_rule_for`).
"""

from __future__ import annotations

from typing import Any

import torch

from nnteleport.engine.registry import fallback, register_named_module
from nnteleport.engine.spaces import Kind, channel_vector

__all__ = ["ELEMENTWISE_ACTIVATIONS", "conv1d_rule"]


@register_named_module("transformers.pytorch_utils.Conv1D")
def conv1d_rule(ctx: Any) -> Any:
    """``y = x W + b`` (``W``: ``(nx, nf)``): a new free space of ``nf`` features; the input's factor must depend on
    the feature axis only, else it is pinned."""
    m = ctx.module
    S, x = ctx.in_space(0), ctx.in_value(0)
    W = m.weight
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or W.dim() != 2 or x.shape[-1] != W.shape[0]:
        return fallback(ctx, f"{ctx.op_name}: unexpected input or weight shape")
    nx, nf = W.shape
    s_in = channel_vector(S, nx, dim=x.dim() - 1)
    if s_in is None:
        ctx.pin(S, "unsupported", f"{ctx.op_name}: input factors vary along a non-feature axis")
        s_in = torch.zeros(nx, dtype=torch.long)
    out = ctx.new_space(nf)
    ctx.register_param("weight", out.view(1, nf), s_in.view(nx, 1))
    if getattr(m, "bias", None) is not None:
        ctx.register_param("bias", out, None)
    return out.view((1,) * (ctx.out.dim() - 1) + (nf,))


#: element-wise activation modules of transformers 5.x (class name -> kind)
_GENERAL = (
    "GELUTanh", "NewGELUActivation", "GELUActivation", "SiLUActivation", "FastGELUActivation", "QuickGELUActivation",
    "ClippedGELUActivation", "AccurateGELUActivation", "MishActivation", "LaplaceActivation", "ReLUSquaredActivation",
    "SqrtSoftplusActivation",
)  # fmt: skip
ELEMENTWISE_ACTIVATIONS: dict[str, Kind] = {
    **{f"transformers.activations.{name}": Kind.GENERAL for name in _GENERAL},
    "transformers.activations.LinearActivation": Kind.LINEAR,
}


def _elementwise(kind: Kind) -> Any:
    def rule(ctx: Any) -> Any:
        m = ctx.module
        if any(True for _ in m.parameters()) or any(True for _ in m.buffers()) or any(True for _ in m.children()):
            return fallback(ctx, f"{ctx.op_name}: an activation holding parameters, buffers or submodules")
        if ctx.extra_kwargs(()) or len(ctx.args) != 1:
            return fallback(ctx, f"{ctx.op_name}: called with more than its input")
        S = ctx.in_space(0)
        if not isinstance(S, torch.Tensor) or not isinstance(ctx.out, torch.Tensor) or ctx.out.dim() != S.dim():
            return fallback(ctx)
        if kind is not Kind.LINEAR:
            ctx.activation_site(S, kind)  # a wrapper tau * f(x / tau) where a factor is not 1
        return S

    rule.__doc__ = f"{kind.value} element-wise activation of transformers (see the module docstring)"
    return rule


for _name, _kind in ELEMENTWISE_ACTIVATIONS.items():
    register_named_module(_name)(_elementwise(_kind))
