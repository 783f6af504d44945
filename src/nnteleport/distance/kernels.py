"""Kernels of the checkpoint penalty and their fused, memory-light evaluation.

``strength * sum_c k(theta, theta_c)`` with ``k`` a function of ``d_c = ||theta - theta_c||^2`` only
(thesis Eq. 2.2, 2.3); :class:`KernelSum` is the autograd function that evaluates it over a list of
checkpoints with ``torch._foreach_*`` ops and a closed-form backward (Eq. 2.18).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from nnteleport._choice import Choice

__all__ = ["Kernel", "KernelSum", "sq_distances", "workspace"]

# The fused multi-tensor ops are underscore names of torch (the ones torch.optim's foreach paths use). Should one
# disappear or be renamed, importing this module fails here, naming it, instead of mid-training.
_FOREACH_OPS = ("_foreach_add_", "_foreach_copy_", "_foreach_mul_", "_foreach_norm", "_foreach_sub", "_foreach_sub_")
_missing_ops = [name for name in _FOREACH_OPS if not callable(getattr(torch, name, None))]
if _missing_ops:  # pragma: no cover - depends on the torch version
    raise ImportError(
        f"nnteleport.distance needs torch.{', torch.'.join(_missing_ops)} (private multi-tensor ops), which torch "
        f"{torch.__version__} lacks; install a torch version that has them (Makefile: TORCH_SPEC)"
    )


class Kernel(Choice, what="kernel"):
    """Kernel ``k(theta, theta_c)`` of the checkpoint penalty ``strength * sum_c k(theta, theta_c)``.

    * ``"rbf"``: ``exp(-||theta - theta_c||^2 / (2 sigma^2))`` in (0, 1] (thesis Eq. 2.3): a bounded hill of
      width ``sigma`` on every checkpoint; its pull vanishes far from the checkpoint.
    * ``"squared_l2"``: ``-||theta - theta_c||^2`` (thesis Eq. 2.2 / Alg. 5 as a negative penalty); ``sigma``
      is ignored. Unbounded below: keep ``strength`` small.
    """

    RBF = "rbf"
    SQUARED_L2 = "squared_l2"


def workspace(buffers: list[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
    """Reusable scratch tensors shaped like ``like`` (fresh large allocations page-fault: ~3x slower on CPU)."""
    if len(buffers) != len(like) or any(
        b.shape != t.shape or b.dtype != t.dtype or b.device != t.device for b, t in zip(buffers, like)
    ):
        buffers[:] = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
    return buffers


def sq_distances(theta: Sequence[Tensor], checkpoints: Sequence[Sequence[Tensor]], work: list[Tensor]) -> Tensor:
    """``d_c = ||theta - theta_c||^2`` for every checkpoint, shape ``(C,)``, with fused foreach ops."""
    dtype = theta[0].dtype
    out = []
    for ckpt in checkpoints:
        torch._foreach_copy_(work, ckpt)
        torch._foreach_sub_(work, theta)
        norms = torch._foreach_norm(work)
        out.append(torch.stack([n.to(dtype) for n in norms]).square().sum())
    return torch.stack(out)


class KernelSum(torch.autograd.Function):
    """``strength * sum_c phi(||theta - theta_c||^2)`` with a closed-form, memory-light backward.

    Forward: per checkpoint the difference is formed in a reused workspace and reduced with one fused
    ``_foreach_norm``; nothing per checkpoint is kept for the backward (autograd through ``theta - theta_c``
    would keep one model-sized difference per checkpoint). Backward: ``d/dtheta = strength * sum_c a_c
    (theta_c - theta)`` with ``a_c = -2 phi'(d_c)`` (``k_c / sigma^2`` for the RBF kernel, ``2`` for squared
    L2), recomputing the differences (so the result is exact also when ``theta ~ theta_c``).
    """

    @staticmethod
    def forward(ctx, kernel, sigma, strength, checkpoints, work, *params):  # type: ignore[override]
        d = sq_distances(params, checkpoints, work)
        if kernel is Kernel.RBF:
            k = torch.exp(-d / (2.0 * sigma**2))
            coeff = k / sigma**2
        else:
            k = -d
            coeff = torch.full_like(d, 2.0)
        ctx.checkpoints, ctx.work, ctx.strength = checkpoints, work, strength
        ctx.save_for_backward(coeff, *params)
        return strength * k.sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        coeff, *params = ctx.saved_tensors
        w = grad_out * ctx.strength * coeff  # (C,)
        on_cpu = w.device.type == "cpu"
        grads = torch._foreach_sub(ctx.checkpoints[0], params)
        torch._foreach_mul_(grads, w[0])
        for c in range(1, len(ctx.checkpoints)):
            work = ctx.work
            torch._foreach_copy_(work, ctx.checkpoints[c])
            torch._foreach_sub_(work, params)
            if on_cpu:  # a Python scalar saves one pass; on accelerators it would synchronise
                torch._foreach_add_(grads, work, alpha=float(w[c]))
            else:
                torch._foreach_mul_(work, w[c])
                torch._foreach_add_(grads, work)
        return (None, None, None, None, None, *grads)
