"""Rules of the normalisation layers (Armenta et al. 2023, Sec. 3): the input is pinned, so the statistics (running
or batch) are untouched and the op is exact in train and eval mode; the output is a new free space and the affine
parameters scale with it (``gamma *= tau``, ``beta *= tau``). Module forms and functional forms (``F.batch_norm``
called with a module's own parameters, as timm's norm-act layers do).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnteleport.engine.registry import _Unsupported, fallback, register_function, register_module
from nnteleport.engine.spaces import zeros_like_space

__all__ = ["channel_norm_rule", "functional_norm_rule"]


@register_module(
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm,
)  # fmt: skip
def channel_norm_rule(ctx: Any) -> Any:
    """Batch/instance/group norm (paper rule, Sec. 3): the input space is pinned to 1, so the statistics (running
    or batch) are untouched and the op is exact in train and eval mode; the output is a new free space with
    ``gamma[c] *= tau[c]``, ``beta[c] *= tau[c]``. Without affine parameters the output is pinned too."""
    m = ctx.module
    ctx.pin(ctx.in_space(0), "normalization", f"{ctx.op_name}: normalisation input (statistics untouched)")
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    if weight is None and bias is None:
        return zeros_like_space(ctx.out)
    instance = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}
    nd = next((d for cls, d in instance.items() if isinstance(m, cls)), None)
    if nd is not None and ctx.out.dim() == nd + 1:
        raise _Unsupported(f"{ctx.op_name}: unbatched input (channels on axis 0)")
    C = (weight if weight is not None else bias).shape[0]
    out = ctx.new_space(C)
    if weight is not None:
        ctx.register_param("weight", out, None)
    if bias is not None:
        ctx.register_param("bias", out, None)
    y = ctx.out
    return out.view((1, C) + (1,) * (y.dim() - 2)) if y.dim() >= 2 else fallback(ctx)


def _feature_norm_rule(ctx: Any) -> Any:
    """LayerNorm / RMSNorm: input pinned, output a new free space shaped like ``normalized_shape`` with
    ``gamma *= tau`` (and ``beta *= tau``)."""
    m = ctx.module
    ctx.pin(ctx.in_space(0), "normalization", f"{ctx.op_name}: normalisation input (statistics untouched)")
    weight = getattr(m, "weight", None)
    bias = getattr(m, "bias", None)
    if weight is None and bias is None:
        return zeros_like_space(ctx.out)
    shape = tuple((weight if weight is not None else bias).shape)
    out = ctx.new_space(int(torch.Size(shape).numel())).view(shape)
    if weight is not None:
        ctx.register_param("weight", out, None)
    if bias is not None:
        ctx.register_param("bias", out, None)
    return out.view((1,) * (ctx.out.dim() - len(shape)) + shape)


register_module(nn.LayerNorm)(_feature_norm_rule)
if hasattr(nn, "RMSNorm"):
    register_module(nn.RMSNorm)(_feature_norm_rule)


# functional forms (timm's BatchNormAct2d, GroupNormAct, LayerNorm2d call these with their own parameters):
# name -> (position of weight, position of bias or None, channel-wise)
_FUNCTIONAL_NORMS: dict[Any, tuple[int, int | None, bool]] = {
    F.batch_norm: (3, 4, True),
    F.instance_norm: (3, 4, True),
    F.group_norm: (2, 3, True),
    F.layer_norm: (2, 3, False),
}
if hasattr(F, "rms_norm"):
    _FUNCTIONAL_NORMS[F.rms_norm] = (2, None, False)


def functional_norm_rule(ctx: Any) -> Any:
    """``F.batch_norm``, ``F.instance_norm``, ``F.group_norm``, ``F.layer_norm`` (``F.rms_norm``) called as
    functions: the module rules' maths (input pinned, statistics untouched; ``gamma *= tau``, ``beta *= tau`` on a
    new output space) when ``weight`` and ``bias`` are parameters of the model passed as they are; with no affine
    parameters, or with anything else as ``weight``/``bias`` (a computed tensor), the output is pinned."""
    w_pos, b_pos, channelwise = _FUNCTIONAL_NORMS[ctx.node.target]
    names = {w_pos: "weight", **({b_pos: "bias"} if b_pos is not None else {})}
    ctx.pin(ctx.in_space(0), "normalization", f"{ctx.op_name}: normalisation input (statistics untouched)")
    ctx.pin_inputs("normalization", f"{ctx.op_name}: statistics and other arguments")  # all read, all constant
    affine = {name: ctx.parameter_arg(name, pos) for pos, name in names.items()}
    given = {k: ctx.kwarg(k, pos, None) for pos, k in names.items()}
    if all(v is None for v in given.values()):
        return zeros_like_space(ctx.out)
    if any(given[k] is not None and affine[k] is None for k in names.values()):
        return zeros_like_space(ctx.out)  # a computed weight or bias: cannot scale it, so the output stays fixed
    y = ctx.out
    p0 = next(p for p in affine.values() if p is not None)
    owner = ctx.state.param_names[id(p0)].rpartition(".")[0] or None  # the module whose parameters these are
    if any(p is not None and p.shape != p0.shape for p in affine.values()):
        raise _Unsupported(f"{ctx.op_name}: weight and bias of different shapes")
    if channelwise:
        if y.dim() < 2 or p0.dim() != 1 or p0.shape[0] != y.shape[1]:
            raise _Unsupported(f"{ctx.op_name}: affine parameters that are not one per channel (axis 1)")
        out = ctx.new_space(p0.shape[0], owner)
        view = out.view((1, p0.shape[0]) + (1,) * (y.dim() - 2))
    else:
        shape = tuple(p0.shape)
        if tuple(y.shape[y.dim() - len(shape) :]) != shape:
            raise _Unsupported(f"{ctx.op_name}: affine parameters that do not match the trailing axes")
        out = ctx.new_space(int(p0.numel()), owner).view(shape)
        view = out.view((1,) * (y.dim() - len(shape)) + shape)
    for p in affine.values():
        if p is not None:
            ctx.register_tensor(p, out, None)
    return view


register_function(*_FUNCTIONAL_NORMS)(functional_norm_rule)
