"""Rules of matrix products and attention: ``a @ b`` and ``F.scaled_dot_product_attention``.

``y[..., i, j] = sum_k a[..., i, k] b[..., k, j]`` is linear in each operand. A factor of ``a`` that depends on its row
``i`` only (constant along the contracted axis ``k``) scales row ``i`` of ``y``; a factor of ``b`` that depends on its
column ``j`` only scales column ``j`` of ``y``. A factor that varies along ``k`` does not pass (it would have to
cancel against the other operand's, which the spaces do not express): it is pinned. When both operands carry
factors, the product is of degree two in ``tau``: the smaller operand is pinned, as a gate of :func:`mul_rule`.

Attention ``softmax(q k^T s + mask) v`` is linear in ``v`` along its feature axis: the per-head value neurons keep
their factors (they cancel in the output projection's input columns), while the scores' inputs ``q``, ``k`` and the
mask are pinned (the softmax is not homogeneous). This is the rescaling symmetry of the value/output projections
of a transformer.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nnteleport.engine.registry import fallback, register_function, register_method
from nnteleport.engine.spaces import compress, zeros_like_space

__all__ = ["matmul_rule", "sdpa_rule"]


def _lift(S: Tensor, rank: int) -> Tensor:
    return S.view((1,) * (rank - S.dim()) + tuple(S.shape))


def _hidden(S: Any) -> bool:
    return isinstance(S, Tensor) and bool(S.any())


@register_function(torch.matmul, operator.matmul, torch.bmm)
@register_method("matmul", "bmm")
def matmul_rule(ctx: Any) -> Any:
    """``y = a @ b`` (both of rank >= 2): row factors of ``a`` and column factors of ``b`` pass to ``y``; a factor
    that varies along the contracted axis is pinned; of two hidden operands the smaller is pinned (degree 2)."""
    out = ctx.out
    if not isinstance(out, Tensor) or len(ctx.args) != 2 or ctx.extra_kwargs(()):
        return fallback(ctx)
    a, b = ctx.in_value(0), ctx.in_value(1)
    Sa, Sb = ctx.in_space(0), ctx.in_space(1)
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)) or a.dim() < 2 or b.dim() < 2:
        return fallback(ctx, f"{ctx.op_name}: a product with a vector or a number")
    Sa = compress(Sa) if _hidden(Sa) else None
    Sb = compress(Sb) if _hidden(Sb) else None
    if Sa is not None and Sa.shape[-1] != 1:
        ctx.pin(Sa, "unsupported", f"{ctx.op_name}: left factors vary along the contracted axis")
        Sa = None
    if Sb is not None and Sb.shape[-2] != 1:
        ctx.pin(Sb, "unsupported", f"{ctx.op_name}: right factors vary along the contracted axis")
        Sb = None
    if Sa is not None and Sb is not None:
        if a.numel() >= b.numel():
            ctx.pin(Sb, "gate", f"{ctx.op_name}: product of two hidden tensors, the smaller one is pinned")
            Sb = None
        else:
            ctx.pin(Sa, "gate", f"{ctx.op_name}: product of two hidden tensors, the smaller one is pinned")
            Sa = None
    if Sa is not None:
        return _lift(Sa, out.dim())
    if Sb is not None:
        return _lift(Sb, out.dim())
    return zeros_like_space(out)


_SDPA_KEYWORDS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


@register_function(F.scaled_dot_product_attention)
def sdpa_rule(ctx: Any) -> Any:
    """``softmax(q k^T * scale + mask) v`` (dropout on the weights in train mode): ``q``, ``k`` and the mask are
    pinned (the scores); ``v``'s factors pass when they are constant along its sequence axis (``-2``): each output
    feature is a mix of one value feature over the keys. With ``enable_gqa`` (heads of ``v`` shared by several query
    heads) ``v`` is pinned too."""
    out = ctx.out
    if not isinstance(out, Tensor) or ctx.extra_kwargs(_SDPA_KEYWORDS) or len(ctx.args) < 3:
        return fallback(ctx)
    why = f"{ctx.op_name}: attention scores (query, key, mask)"
    ctx.pin(ctx.in_space(0), "unsupported", why)
    ctx.pin(ctx.in_space(1), "unsupported", why)
    mask = ctx.kwargs["attn_mask"] if "attn_mask" in ctx.kwargs else ctx.args[3] if len(ctx.args) > 3 else None
    ctx.pin(ctx.w.space_of(mask), "unsupported", why)
    for name, pos in zip(_SDPA_KEYWORDS, range(3, 8)):
        ctx.kwarg(name, pos, None)  # every argument read (the mask pinned above; the others are numbers)
    gqa = bool(ctx.kwarg("enable_gqa", 7, False))
    v, Sv = ctx.in_value(2), ctx.in_space(2)
    if not isinstance(v, Tensor) or v.dim() < 2 or not _hidden(Sv):
        return zeros_like_space(out)
    Sv = compress(Sv)
    if gqa or Sv.shape[-2] != 1:
        ctx.pin(Sv, "unsupported", f"{ctx.op_name}: value factors vary along the keys, or shared heads (GQA)")
        return zeros_like_space(out)
    return _lift(Sv, out.dim())
