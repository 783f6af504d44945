"""Per-operation rules of the teleportation engine: the single list of what the engine understands.

Every tensor in a traced model carries a *space*: an integer tensor ``S`` of the tensor's rank, broadcastable to
its shape, whose entries name the neuron variable that scales each element (``0`` is the constant 1: a pinned
element). A hidden ``N x C x H x W`` feature map made by a convolution has ``S`` of shape ``(1, C, 1, 1)`` with
``C`` fresh variables; after ``flatten`` the same variables are repeated over the ``H * W`` features of each channel;
a concatenation concatenates spaces; a residual ``add`` merges the spaces of its operands (union-find over
variables). A CoB assigns one factor ``tau`` to each free variable; every rule below states how its op maps
``x -> tau * x`` on its inputs to ``tau' * y`` on its output, which parameters scale and how.

Rules are looked up by module type (:data:`MODULE_RULES`), function (:data:`FUNCTION_RULES`) and tensor method
name (:data:`METHOD_RULES`). Anything not listed is handled by :func:`fallback`: every space it touches is pinned
to 1 and the op is named in the report -- exact, never silently wrong. Adding a layer type is one entry here.

Rule signature: ``rule(ctx) -> space of the node's output`` (see :class:`nnteleport.engine.analysis.RuleContext`).
A rule that meets a call it does not handle raises :class:`_Unsupported` (or returns :func:`fallback`); the engine
checks what every rule returns (see ``_Walker._checked`` in :mod:`nnteleport.engine.analysis`): hidden inputs it did
not read are pinned, a space that does not fit the output is pinned, an in-place op keeps its input's factors.

Keys are what ``torch.fx`` records: ``h += y`` becomes ``operator.add``, ``x[i]`` ``operator.getitem``;
``F.tanh``, ``F.sigmoid`` and ``F.upsample`` are traced through (to ``Tensor.tanh``, ``Tensor.sigmoid``,
``F.interpolate``), so they are no keys. Every key has a test setting in ``tests/rule_settings.py``.
"""

from __future__ import annotations

import builtins
import dataclasses
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn

from nnteleport.engine.activation import TeleportedActivation
from nnteleport.engine.registry import (  # noqa: F401 (the registry is read as rules.MODULE_RULES, ...)
    FUNCTION_RULES,
    METHOD_RULES,
    MODULE_RULES,
    Rule,
    _callable_name,
    _Unsupported,
    fallback,
    module_rule_for,
    register_function,
    register_method,
    register_module,
)
from nnteleport.engine.spaces import (  # noqa: F401 (space helpers used by callers as rules.compress, ...)
    Kind,
    broadcast_shape,
    channel_vector,
    compress,
    map_tree,
    zeros_like_space,
)


def _identity(ctx: Any) -> Any:
    """Ops that return their input, possibly copied, moved or cast to another floating dtype. A cast to an integer
    or bool dtype truncates (not homogeneous): it pins."""
    S = ctx.in_space(0)
    out = ctx.out
    if isinstance(out, Tensor) and not (out.is_floating_point() or out.is_complex()):
        return fallback(ctx, f"{ctx.op_name}: cast to {out.dtype} truncates")
    if isinstance(out, Tensor) and isinstance(S, Tensor) and S.dim() == out.dim():
        return S
    return fallback(ctx)


def _rearrange(ctx: Any) -> Any:
    """Ops that only move elements (view, permute, cat, indexing, ...): apply the same op to the space. An integer
    or bool result (token ids, masks) carries no factor: its space is constant."""
    leaves = [t for t in _flat_leaves(ctx.out) if isinstance(t, Tensor)]
    if leaves and not any(t.is_floating_point() or t.is_complex() for t in leaves):
        for i in range(len(ctx.args)):
            ctx.in_space(i)
        return zeros_like_space(ctx.out)
    try:
        result = ctx.apply_to_spaces()
    except Exception as exc:  # the op does not accept an integer tensor, or an unforeseen signature
        return fallback(ctx, f"{ctx.op_name} could not be followed ({type(exc).__name__}: {exc})")
    return _compress_tree(result)


def _compress_tree(S: Any) -> Any:
    return map_tree(lambda s: compress(s) if isinstance(s, Tensor) else s, S)


def _no_tensor_output(ctx: Any) -> Any:
    """Shape queries (``x.size()``, ``x.shape``, ``x.dim()``): nothing flows, nothing to pin."""
    if isinstance(ctx.out, Tensor):
        return fallback(ctx)
    return None


# --------------------------------------------------------------------------------------------------- linear maps
@register_module(nn.Linear)
def linear_rule(ctx: Any) -> Any:
    """``y = x W^T + b``: a new free space of ``out_features``; ``W[o, i] *= tau_out[o] / tau_in[i]``,
    ``b[o] *= tau_out[o]``. The input's factor must depend on the feature axis only, else it is pinned."""
    m: nn.Linear = ctx.module
    S = ctx.in_space(0)
    x = ctx.in_value(0)
    F_in, O = m.in_features, m.out_features
    s_in = channel_vector(S, F_in, dim=x.dim() - 1) if x.dim() >= 1 else None
    if s_in is None:
        ctx.pin(S, "unsupported", f"{ctx.op_name}: input factors vary along a non-feature axis")
        s_in = torch.zeros(F_in, dtype=torch.long)
    out = ctx.new_space(O)
    ctx.register_param("weight", out.view(O, 1), s_in.view(1, F_in))
    if m.bias is not None:
        ctx.register_param("bias", out, None)
    return out.view((1,) * (ctx.out.dim() - 1) + (O,))


def _conv_spaces(ctx: Any) -> tuple[Tensor, Tensor, int, int, int, tuple[int, ...]]:
    """Shared by (transposed) convolutions: the input channels' variables (pinned if the input is unbatched or its
    factors vary over space), fresh output variables, ``C_in / groups``, ``C_out / groups``, and ``(1,) * d``."""
    m = ctx.module
    nd = m.weight.dim() - 2
    S = ctx.in_space(0)
    C, O, g = m.in_channels, m.out_channels, m.groups
    if ctx.in_value(0).dim() != nd + 2:
        raise _Unsupported(f"{ctx.op_name}: unbatched input")
    s_in = channel_vector(S, C, dim=1)
    if s_in is None:
        ctx.pin(S, "unsupported", f"{ctx.op_name}: factors varying over space")
        s_in = torch.zeros(C, dtype=torch.long)
    return s_in, ctx.new_space(O), C // g, O // g, C, (1,) * nd


@register_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def conv_rule(ctx: Any) -> Any:
    """Convolution: a new free space of ``out_channels`` (one factor per feature map).
    ``W[o, j, ...] *= tau_out[o] / tau_in[g(o) * C_in / groups + j]`` (channel ``o`` reads the input channels of
    its group only: grouped and depthwise convolutions), ``b[o] *= tau_out[o]``. Any padding mode is exact (it
    copies or zeroes values within a channel)."""
    s_in, out, cg, og, _, ones = _conv_spaces(ctx)
    O = out.numel()
    if ctx.module.groups == 1:  # every output channel reads every input channel: a broadcast (1, C) index
        in_idx = s_in.view(1, cg, *ones)
    else:
        cols = (torch.arange(O) // og).view(O, 1) * cg + torch.arange(cg).view(1, cg)
        in_idx = s_in[cols].view(O, cg, *ones)
    ctx.register_param("weight", out.view(O, 1, *ones), in_idx)
    if ctx.module.bias is not None:
        ctx.register_param("bias", out, None)
    return out.view(1, O, *ones)


@register_module(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
def conv_transpose_rule(ctx: Any) -> Any:
    """Transposed convolution, weight ``(C_in, C_out / groups, ...)``: ``W[i, j] *= tau_out[g(i) C_out/groups + j]
    / tau_in[i]``."""
    s_in, out, cg, og, C, ones = _conv_spaces(ctx)
    rows = (torch.arange(C) // cg).view(C, 1) * og + torch.arange(og).view(1, og)
    ctx.register_param("weight", out[rows].view(C, og, *ones), s_in.view(C, 1, *ones))
    if ctx.module.bias is not None:
        ctx.register_param("bias", out, None)
    return out.view(1, out.numel(), *ones)


@register_module(nn.Embedding)
def embedding_rule(ctx: Any) -> Any:
    """``y = W[idx]``: a new free space over the embedding dimension, ``W[:, d] *= tau[d]``. Exact unless
    ``max_norm`` renormalises rows (then the space is constant)."""
    m: nn.Embedding = ctx.module
    if m.max_norm is not None:
        return fallback(ctx, f"{ctx.op_name}: max_norm renormalises rows")
    D = m.embedding_dim
    out = ctx.new_space(D)
    ctx.register_param("weight", out.view(1, D), None)
    return out.view((1,) * (ctx.out.dim() - 1) + (D,))


# --------------------------------------------------------------------------------------------------- activations
def _windowed_axes(ctx: Any) -> int | None:
    """How many trailing axes a pooling, resampling or padding op reads across (its window), or ``None``."""
    m = ctx.module
    x = ctx.in_value(0)
    pad = getattr(m, "padding", None) if m is not None else None
    if m is not None and "Pad" in type(m).__name__ and isinstance(pad, (tuple, list)):
        return len(pad) // 2
    if m is None and ctx.node.target is F.pad:
        return len(ctx.kwarg("pad", 1, ())) // 2
    name = (type(m).__name__ if m is not None else getattr(ctx.node.target, "__name__", "")).lower()
    for nd in (1, 2, 3):
        if name.endswith(f"{nd}d"):
            return nd
    if isinstance(x, Tensor) and x.dim() >= 3:  # Upsample / interpolate: every axis after (N, C)
        return x.dim() - 2
    return None


def _window_check(ctx: Any, S: Tensor) -> str | None:
    """``None`` when every window of the op lies within one factor (the factor is constant along the windowed
    trailing axes; a batched or unbatched input alike), else why not."""
    nd = _windowed_axes(ctx)
    if nd is None or S.dim() < nd + 1:
        return f"{ctx.op_name}: windowed axes not recognised for an input of rank {S.dim()}"
    if nd and any(s != 1 for s in S.shape[-nd:]):
        return f"{ctx.op_name}: factors vary inside a window (the op reads across the channel or feature axis)"
    return None


def _activation(kind: Kind, channelwise: bool = False) -> Rule:
    """Element-wise (or, with ``channelwise``, per-channel such as pooling) op ``f``: output space = input space.

    A module called once gets the wrapper ``g(x) = tau * f(x / tau)`` at teleport time where needed. A function
    (``F.relu``), or a module called at several places, cannot hold a per-site wrapper: a positively homogeneous
    ``f`` then restricts its neurons to ``tau > 0`` (where ``g = f``); any other ``f`` pins them to 1.
    """

    def rule(ctx: Any) -> Any:
        S = ctx.in_space(0)
        if not isinstance(S, Tensor) or not isinstance(ctx.out, Tensor):
            return fallback(ctx)
        if channelwise:
            S = compress(S)
            why = _window_check(ctx, S)
            if why is not None:
                return fallback(ctx, why)
        if ctx.out.dim() != S.dim():
            return fallback(ctx)
        if kind is Kind.LINEAR:
            return S
        ctx.activation_site(S, kind)
        return S

    rule.__doc__ = f"{kind.value} {'channel' if channelwise else 'element'}-wise op"
    return rule


_ELEMENTWISE_LINEAR = [nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d]
_ELEMENTWISE_POSITIVE = [nn.ReLU, nn.LeakyReLU, nn.RReLU]
_ELEMENTWISE_GENERAL = [
    nn.ReLU6, nn.Hardtanh, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardsigmoid, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink,
    nn.Hardshrink, nn.Threshold, nn.AlphaDropout, nn.FeatureAlphaDropout,
]  # fmt: skip
_CHANNELWISE_LINEAR = [
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d,
    nn.CircularPad3d,
]  # fmt: skip
_CHANNELWISE_POSITIVE = [
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d,
]  # fmt: skip

register_module(*_ELEMENTWISE_LINEAR)(_activation(Kind.LINEAR))
register_module(*_ELEMENTWISE_POSITIVE)(_activation(Kind.POSITIVE))
register_module(*_ELEMENTWISE_GENERAL)(_activation(Kind.GENERAL))
register_module(*_CHANNELWISE_LINEAR)(_activation(Kind.LINEAR, channelwise=True))
register_module(*_CHANNELWISE_POSITIVE)(_activation(Kind.POSITIVE, channelwise=True))


@register_module(nn.PReLU)
def prelu_rule(ctx: Any) -> Any:
    """PReLU is positively homogeneous; it holds a parameter, so rather than wrapping it (which would rename
    ``act.weight``) its neurons are restricted to ``tau > 0``."""
    S = ctx.in_space(0)
    ctx.positive(S, f"{ctx.op_name}: PReLU keeps its parameter names, so tau > 0")
    return S


@register_module(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)
def constant_pad_rule(ctx: Any) -> Any:
    kind = Kind.LINEAR if ctx.module.value == 0 else Kind.GENERAL
    return _activation(kind, channelwise=True)(ctx)


@register_module(TeleportedActivation)
def teleported_activation_rule(ctx: Any) -> Any:
    """A wrapper from an earlier teleport: behaves like its inner op; teleporting again multiplies its ``tau``."""
    inner = ctx.module.fn
    while isinstance(inner, TeleportedActivation):
        inner = inner.fn
    rule = module_rule_for(inner)
    if rule is None or rule is prelu_rule:
        return _activation(Kind.GENERAL)(ctx)
    return rule(ctx)


_POS_FUNCS = [F.relu, torch.relu, F.relu_, torch.relu_, F.leaky_relu, F.leaky_relu_, F.rrelu, F.rrelu_]
_POS_CHANNEL_FUNCS = [
    F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d,
]  # fmt: skip
_LIN_FUNCS = [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout]
_LIN_CHANNEL_FUNCS = [
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, torch.avg_pool1d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, torch.adaptive_avg_pool1d, F.interpolate,
]  # fmt: skip
_GENERAL_FUNCS = [
    F.gelu, F.silu, F.elu, F.selu, F.celu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.mish, F.softplus,
    F.softsign, F.logsigmoid, F.tanhshrink, F.softshrink, F.hardshrink, F.threshold, torch.tanh, torch.sigmoid,
    torch.nn.functional.elu_, torch.selu, torch.celu, torch.sigmoid_, torch.tanh_, torch.exp, torch.log, torch.sqrt,
    torch.abs, torch.clamp, torch.clamp_, torch.clip, torch.pow,
]  # fmt: skip


def _functional_activation(kind: Kind, channelwise: bool = False) -> Rule:
    base = _activation(kind, channelwise)

    def rule(ctx: Any) -> Any:
        if kind is Kind.LINEAR:
            return base(ctx)
        S = ctx.in_space(0)
        if not isinstance(S, Tensor) or not isinstance(ctx.out, Tensor):
            return fallback(ctx)
        if channelwise:
            why = _window_check(ctx, compress(S))
            if why is not None:
                return fallback(ctx, why)
        if ctx.functional_site(S, kind):  # functional="graph": a per-call wrapper in a rewritten forward
            return S
        if kind is Kind.POSITIVE:
            ctx.positive(S, f"{ctx.op_name}: functional call cannot hold a wrapper, so tau > 0")
            return S
        ctx.pin(
            S,
            "functional",
            f"{ctx.op_name}: a functional non-homogeneous activation cannot hold a wrapper "
            "(use its nn.Module form, or functional='graph', to teleport this space)",
        )
        return S

    return rule


register_function(*_POS_FUNCS)(_functional_activation(Kind.POSITIVE))
register_function(*_POS_CHANNEL_FUNCS)(_functional_activation(Kind.POSITIVE, channelwise=True))
register_function(*_LIN_FUNCS)(_functional_activation(Kind.LINEAR))
register_function(*_LIN_CHANNEL_FUNCS)(_functional_activation(Kind.LINEAR, channelwise=True))
register_function(*_GENERAL_FUNCS)(_functional_activation(Kind.GENERAL))
register_method("relu", "relu_")(_functional_activation(Kind.POSITIVE))
register_method("sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "abs", "clamp", "clamp_", "clip", "pow")(
    _functional_activation(Kind.GENERAL)
)

#: The only list of positively homogeneous ops in nnteleport: ``f(a x) = a f(x)`` for every ``a > 0``
#: (``Kind.POSITIVE``) or every ``a`` (``Kind.LINEAR``), per element or per channel. The engine registers its rules
#: from it; :mod:`nnteleport.gspace` reads it (chain discovery) through :func:`homogeneity`.
HOMOGENEOUS_MODULES: dict[type[nn.Module], Kind] = {
    **dict.fromkeys(_ELEMENTWISE_LINEAR + _CHANNELWISE_LINEAR, Kind.LINEAR),
    **dict.fromkeys(_ELEMENTWISE_POSITIVE + _CHANNELWISE_POSITIVE, Kind.POSITIVE),
}
HOMOGENEOUS_FUNCTIONS: dict[Callable[..., Any], Kind] = {
    **dict.fromkeys(_LIN_FUNCS + _LIN_CHANNEL_FUNCS, Kind.LINEAR),
    **dict.fromkeys(_POS_FUNCS + _POS_CHANNEL_FUNCS, Kind.POSITIVE),
}
HOMOGENEOUS_METHODS: dict[str, Kind] = {"relu": Kind.POSITIVE, "relu_": Kind.POSITIVE}


def homogeneity(target: type[nn.Module] | nn.Module | Callable[..., Any] | str) -> Kind | None:
    """``Kind.LINEAR`` / ``Kind.POSITIVE`` when ``target`` (a module or its type, a function, a tensor-method name)
    is homogeneous as listed above, else ``None``. Subclasses of a listed module type count only when they keep
    the base class's ``forward``."""
    if isinstance(target, str):
        return HOMOGENEOUS_METHODS.get(target)
    if isinstance(target, nn.Module):
        target = type(target)
    if isinstance(target, type):
        for base in target.__mro__:
            if base in HOMOGENEOUS_MODULES:
                return HOMOGENEOUS_MODULES[base] if target.forward is base.forward else None
        return None
    return HOMOGENEOUS_FUNCTIONS.get(target)


@register_function(F.pad)
def pad_rule(ctx: Any) -> Any:
    value = ctx.kwarg("value", 3, 0.0) or 0.0
    mode = ctx.kwarg("mode", 2, "constant")
    if mode == "constant" and value != 0:
        return _functional_activation(Kind.GENERAL, channelwise=True)(ctx)
    return _functional_activation(Kind.LINEAR, channelwise=True)(ctx)


# --------------------------------------------------------------------------------------------------- arithmetic
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, bool)) and not isinstance(v, Tensor)


@register_function(operator.add, torch.add, operator.sub, torch.sub)
@register_method("add", "add_", "sub", "sub_")
def add_rule(ctx: Any) -> Any:
    """Residual add ``y = a + b``: both operands and the result share one space (variables merged element by
    element; a constant operand pins the other). Adding a non-zero number pins the operand."""
    a, b = ctx.in_value(0), ctx.in_value(1)
    Sa, Sb = ctx.in_space(0), ctx.in_space(1)
    if isinstance(ctx.out, (tuple, list)) and isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        # ``a.chunk(2, 1) + b.chunk(2, 1)``: concatenation of sequences, the spaces are concatenated alike
        Sa = Sa if Sa is not None else zeros_like_space(a)
        Sb = Sb if Sb is not None else zeros_like_space(b)
        return type(ctx.out)([*Sa, *Sb])
    if not isinstance(ctx.out, Tensor):
        return None
    if ctx.extra_kwargs(("alpha",)):
        return fallback(ctx, f"{ctx.op_name}: unexpected keyword arguments {ctx.extra_kwargs(('alpha',))}")
    if _is_number(b) or _is_number(a):
        num, S = (b, Sa) if _is_number(b) else (a, Sb)
        if num != 0:
            ctx.pin(S, "constant", f"{ctx.op_name}: adding the number {num} to a hidden tensor")
        return S if isinstance(S, Tensor) else zeros_like_space(ctx.out)
    if not (isinstance(Sa, Tensor) and isinstance(Sb, Tensor)):
        return fallback(ctx)
    return ctx.merge(Sa, Sb)


@register_function(operator.mul, torch.mul)
@register_method("mul", "mul_")
def mul_rule(ctx: Any) -> Any:
    """``y = a * b``: with a number or a constant tensor the space passes through. For a product of two hidden
    tensors (gates, squeeze-excitation) the smaller operand (the gate) is pinned, which keeps the product exact."""
    a, b = ctx.in_value(0), ctx.in_value(1)
    Sa, Sb = ctx.in_space(0), ctx.in_space(1)
    if not isinstance(ctx.out, Tensor):
        return None
    if ctx.extra_kwargs(()):
        return fallback(ctx, f"{ctx.op_name}: unexpected keyword arguments {ctx.extra_kwargs(())}")
    if _is_number(a) or not isinstance(Sa, Tensor):
        return Sb if isinstance(Sb, Tensor) else zeros_like_space(ctx.out)
    if _is_number(b) or not isinstance(Sb, Tensor):
        return Sa
    a_const, b_const = not bool(Sa.any()), not bool(Sb.any())
    if b_const:
        return _broadcast_space(Sa, ctx.out)
    if a_const:
        return _broadcast_space(Sb, ctx.out)
    keep, gate = (Sa, Sb) if a.numel() >= b.numel() else (Sb, Sa)
    ctx.pin(gate, "gate", f"{ctx.op_name}: product of two hidden tensors, the smaller one (gate) is pinned")
    return _broadcast_space(keep, ctx.out)


@register_function(operator.truediv, torch.div)
@register_method("div", "div_")
def div_rule(ctx: Any) -> Any:
    """``y = a / b``: the numerator's space passes; a hidden denominator is pinned. A rounding division
    (``rounding_mode=``, ``//``) is not homogeneous: its inputs are pinned."""
    Sa, Sb = ctx.in_space(0), ctx.in_space(1)
    if not isinstance(ctx.out, Tensor):
        return None
    if ctx.kwarg("rounding_mode", 2, None) is not None or ctx.extra_kwargs(("rounding_mode",)):
        return fallback(ctx, f"{ctx.op_name}: rounding division (not homogeneous)")
    if isinstance(Sb, Tensor) and bool(Sb.any()):
        ctx.pin(Sb, "gate", f"{ctx.op_name}: hidden denominator is pinned")
    if isinstance(Sa, Tensor):
        return _broadcast_space(Sa, ctx.out)
    return zeros_like_space(ctx.out)


@register_function(operator.neg, torch.neg)
@register_method("neg")
def neg_rule(ctx: Any) -> Any:
    return _identity(ctx)


def _broadcast_space(S: Tensor, out: Tensor) -> Tensor:
    if S.dim() < out.dim():
        S = S.view((1,) * (out.dim() - S.dim()) + tuple(S.shape))
    return S


@register_function(torch.mean, torch.sum)
@register_method("mean", "sum")
def reduction_rule(ctx: Any) -> Any:
    """Sum/mean over axes along which the factor is constant (global average pooling written by hand)."""
    x = ctx.in_value(0)
    S = ctx.in_space(0)
    if not isinstance(S, Tensor) or not isinstance(ctx.out, Tensor) or not x.is_floating_point():
        return fallback(ctx)
    if ctx.extra_kwargs(("dim", "keepdim", "dtype")):
        return fallback(ctx, f"{ctx.op_name}: unexpected keyword arguments")
    dim = ctx.kwarg("dim", 1, None)
    keepdim = bool(ctx.kwarg("keepdim", 2, False))
    if isinstance(dim, torch.dtype):  # torch.sum(x, torch.float64)
        dim = None
    if isinstance(dim, (tuple, list)) and len(dim) == 0:
        dim = None  # sum/mean with dim=[] reduce over every axis
    dims = list(range(x.dim())) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    dims = [d % x.dim() for d in dims] if x.dim() else []
    Sc = compress(S)
    if any(Sc.shape[d] != 1 for d in dims):
        return fallback(ctx, f"{ctx.op_name}: reduction over an axis with several factors")
    if keepdim:
        return Sc
    keep = [d for d in range(Sc.dim()) if d not in dims]
    return Sc.permute(*keep, *dims).reshape(tuple(Sc.shape[d] for d in keep)) if keep else Sc.reshape(())


# --------------------------------------------------------------------------------------------------- rearrangements
register_function(
    torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze, torch.cat,
    torch.concat, torch.stack, torch.chunk, torch.split, torch.unbind, torch.flip, torch.roll, torch.narrow,
    torch.select, torch.movedim, torch.swapaxes, torch.t, operator.getitem, torch.unflatten,
    F.pixel_shuffle, F.pixel_unshuffle, torch.channel_shuffle, torch.tile,
)(_rearrange)  # fmt: skip
register_method(
    "view", "reshape", "flatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "chunk", "split", "unbind",
    "flip", "roll", "narrow", "select", "movedim", "swapaxes", "expand", "repeat", "unflatten", "view_as",
    "reshape_as", "expand_as", "tile",
)(_rearrange)  # fmt: skip
register_module(nn.Flatten, nn.Unflatten, nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)(_rearrange)

register_method(
    "contiguous", "clone", "detach", "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu",
    "cuda", "requires_grad_",
)(_identity)  # fmt: skip
register_function(torch.clone, torch.detach)(_identity)
register_function(torch.numel)(_no_tensor_output)
register_method("size", "dim", "numel", "ndimension", "nelement", "get_device")(_no_tensor_output)


@register_method("new_empty", "new_zeros", "new_ones", "new_full", "new_tensor")
@register_function(
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.rand_like, torch.randn_like,
    torch.randint_like,
)  # fmt: skip
def metadata_rule(ctx: Any) -> Any:
    """Ops that read only the shape, dtype and device of their tensor input (``x.new_empty(shape)``,
    ``torch.zeros_like(x)``): the output does not depend on the input's values, so it is a constant and nothing is
    pinned. timm's ``drop_path`` draws its mask as ``x.new_empty(...).bernoulli_(keep)``; the product of ``x`` with
    that constant mask then keeps ``x``'s factors."""
    for i in range(len(ctx.args)):
        ctx.in_value(i)  # read: the values of every argument are irrelevant (a tensor argument only lends metadata)
    for name in ctx.kwargs:
        ctx.kwarg(name, 10**6, None)
    if not all(isinstance(t, Tensor) for t in _flat_leaves(ctx.out)):
        return fallback(ctx)
    return zeros_like_space(ctx.out)


def _flat_leaves(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _flat_leaves(e)]
    return [v]


@register_function(builtins.getattr)
def getattr_rule(ctx: Any) -> Any:
    """``x.T`` / ``x.mT`` rearrange; a field of a NamedTuple or dataclass built in the graph (see
    :func:`record_rule`) has that field's space."""
    obj, name = ctx.in_value(0), ctx.in_value(1)
    S = ctx.in_space(0)
    if isinstance(S, dict) and name in S:
        return S[name]
    if isinstance(S, tuple) and isinstance(obj, tuple) and name in getattr(type(obj), "_fields", ()):
        return S[type(obj)._fields.index(name)]
    if not isinstance(ctx.out, Tensor):
        return None
    if name in ("T", "mT"):
        return _rearrange(ctx)
    return fallback(ctx)


def record_rule(ctx: Any) -> Any:
    """A NamedTuple or dataclass built from tensors (``Out(logits, feats)``, Hugging Face ``ModelOutput``): a
    container, so each field keeps the space of the value it holds (a tuple of spaces in field order for a NamedTuple,
    a dict field -> space for a dataclass)."""
    cls, out = ctx.node.target, ctx.out
    ctx.read.update(ctx.node.all_input_nodes)
    if isinstance(out, tuple) and hasattr(cls, "_fields"):
        bound = dict(zip(cls._fields, ctx.args))
        bound.update(ctx.kwargs)
        return tuple(_space_or_none(ctx, bound.get(f)) for f in cls._fields)
    if dataclasses.is_dataclass(cls) and not isinstance(out, (tuple, list)):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        bound = dict(zip(names, ctx.args))
        bound.update(ctx.kwargs)
        keys = list(out.keys()) if isinstance(out, dict) else names
        return {k: _space_or_none(ctx, bound.get(k)) for k in keys}
    return fallback(ctx)


def _space_or_none(ctx: Any, a: Any) -> Any:
    return ctx.w.space_of(a) if isinstance(a, fx.Node) else None


def is_record_type(target: Any) -> bool:
    """A NamedTuple or dataclass type called as a function in a traced graph (handled by :func:`record_rule`)."""
    return isinstance(target, type) and (
        (issubclass(target, tuple) and hasattr(target, "_fields")) or dataclasses.is_dataclass(target)
    )


def _is_zero(v: Any, S: Any) -> bool:
    """The constant 0: the number, or a tensor of zeros that carries no factor (``torch.zeros_like(h)``)."""
    if _is_number(v):
        return v == 0
    return isinstance(v, Tensor) and (not isinstance(S, Tensor) or not bool(S.any())) and not bool(v.any())


@register_function(torch.maximum, torch.minimum, torch.fmax, torch.fmin)
@register_method("maximum", "minimum", "fmax", "fmin")
def maximum_rule(ctx: Any) -> Any:
    """``max(tau a, tau b) = tau max(a, b)`` for ``tau > 0``: both operands share one space (merged as for a residual
    add; an operand that is a non-zero constant pins the other) restricted to ``tau > 0``. With the constant 0
    (``torch.maximum(h, zeros)``, a ReLU) the hidden operand's space passes, restricted to ``tau > 0``."""
    if not isinstance(ctx.out, Tensor) or len(ctx.args) != 2 or ctx.extra_kwargs(()):
        return fallback(ctx)
    a, b = ctx.in_value(0), ctx.in_value(1)
    Sa, Sb = ctx.in_space(0), ctx.in_space(1)
    if not (isinstance(Sa, Tensor) and isinstance(Sb, Tensor)):
        return fallback(ctx)
    if _is_zero(b, Sb) or _is_zero(a, Sa):
        S = Sa if _is_zero(b, Sb) else Sb
    else:
        S = ctx.merge(Sa, Sb)
    ctx.positive(S, f"{ctx.op_name}: max/min commute with tau > 0 only")
    return S


@register_function(torch.where)
def where_rule(ctx: Any) -> Any:
    """``torch.where(cond, a, b)``: ``cond`` carries no factor (a mask computed from hidden values is pinned by the
    comparison that made it); the branches share one space (merged as for a residual add; a non-zero constant
    branch pins the other), except a branch that is the constant 0, which any factor leaves 0."""
    if not isinstance(ctx.out, Tensor) or len(ctx.args) != 3 or ctx.extra_kwargs(()):
        return fallback(ctx)
    ctx.pin(ctx.in_space(0), "unsupported", f"{ctx.op_name}: condition")
    a, b = ctx.in_value(1), ctx.in_value(2)
    Sa, Sb = ctx.in_space(1), ctx.in_space(2)
    if _is_zero(b, Sb) and isinstance(Sa, Tensor):
        return Sa
    if _is_zero(a, Sa) and isinstance(Sb, Tensor):
        return Sb
    if not (isinstance(Sa, Tensor) and isinstance(Sb, Tensor)):
        for S in (Sa, Sb):
            ctx.pin(S, "constant", f"{ctx.op_name}: a branch that is a non-zero number")
        return zeros_like_space(ctx.out)
    return ctx.merge(Sa, Sb)


@register_function(builtins.len)
def len_rule(ctx: Any) -> Any:
    return None


# the normalisation, matrix-product/attention and transformers rules live in their own modules; importing them
# registers them
from nnteleport.engine import attention_rules, hf, norm_rules  # noqa: E402, F401
from nnteleport.engine.norm_rules import channel_norm_rule, functional_norm_rule  # noqa: E402, F401
