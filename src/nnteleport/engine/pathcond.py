"""A conditioning rescaling in the spirit of PathCond: align the diagonal of the path kernel with a multiple of
the identity, over the CoB orbit.

PathCond (Lebeurrier, Vayer, Gribonval, "Path-conditioned training: a principled way to rescale ReLU neural
networks", arXiv 2602.19799, 2026) factorises a ReLU network through its path-lifting ``Phi(theta)`` (one
coordinate per input-output path, the product of the weights along it, biases starting paths of their own) and
chooses, once at initialisation, the rescaling whose path kernel ``G = J^T J`` (``J = dPhi / dtheta``) is best
aligned with a multiple of the identity, measured by a log-det divergence on its diagonal. What we implement:

* **Path-kernel diagonal** (:func:`path_kernel_diagonal`): ``G_e = sum over the paths p through entry e of
  prod_{e' in p, e' != e} theta_{e'}^2``. It is computed as in the paper's code: the network with every
  parameter squared, evaluated on an all-ones input, is the sum over all paths of the products of squared
  weights, ``Psi = sum_p prod_{e in p} theta_e^2`` (every ReLU sees a non-negative input and is the identity),
  and ``G_e = dPsi / d(theta_e^2)``. BatchNorm layers count as the affine map ``gamma x + beta`` (the running
  statistics of a fresh layer, ``mu = 0``, ``sigma^2 = 1``, which is where a rescaling at initialisation is
  applied; with trained statistics it is still this formula, not the exact kernel of the trained network).
  Max-pooling passes the largest path sum, not all of them (a deviation for CNNs with max-pooling; average
  pooling and sums are exact). Refused, with an error: activations that are not positively homogeneous
  (``tanh``, ``GELU``, ...: no path-lifting) and normalisations other than BatchNorm.
* **Rescaling** ``theta'_e = theta_e t[out_e] / t[in_e]`` (the engine's CoB, positive factors, ``u = log t``)
  leaves every path product unchanged and maps ``G_e -> G_e exp(-2 (u[out_e] - u[in_e]))``.
* **Criterion** (the minimum over ``alpha`` of the log-det divergence ``tr(alpha D) - log det(alpha D) - N``
  between ``alpha D``, ``D = diag(G')``, and the identity, divided by ``N``)::

      C(u) = log( mean_e G'_e ) - mean_e log G'_e   >= 0,   = 0 iff all G'_e are equal,

  over the ``N`` entries with ``G_e > 0`` (an entry on no path with non-zero weights has ``G_e = 0`` at every
  rescaling and is left out). ``C`` is convex in ``u`` (log-sum-exp of affine functions minus a linear one).
* **Algorithm** (:func:`pathcond_cob`): exact coordinate minimisation, one neuron at a time (the log of the
  sum couples all of them). As a function of neuron ``k``'s change ``s = exp(2 du_k)``,
  ``N C = N log(A / s + B s + D) - c log s + const`` with ``A`` (``B``) the sum of ``G'`` over the entries
  into (out of) ``k``, ``D`` the rest and ``c = n_out - n_in`` the difference of their counts; the minimiser
  is the positive root of ``(N - c) B s^2 - c D s - (N + c) A = 0`` (unique, since ``|c| < N``), clipped to
  the range when one is given. Sweeps decrease ``C`` monotonically.

This is "in the spirit of" PathCond: the paper's criterion and update on the engine's CoB group, for any model
whose plan the engine computes; the paper's own experiments, schedules and approximations are not reproduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from nnteleport.engine.analysis import TeleportPlan, _as_inputs, analyze
from nnteleport.engine.cob import _validate_cob_range
from nnteleport.engine.optimize import OptimizedCoB
from nnteleport.engine.spaces import Kind
from nnteleport.errors import InvalidArgumentError, InvalidValueError

__all__ = ["path_kernel_diagonal", "pathcond_cob", "pathcond_criterion"]

_OTHER_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def _check_path_liftable(model: nn.Module, plan: TeleportPlan) -> None:
    for site in plan.sites:
        if site.kind is Kind.GENERAL:
            raise InvalidValueError(
                f"pathcond: activation at {site.path!r} is not positively homogeneous; the path kernel is defined "
                "for ReLU-type networks only"
            )
    for name, m in model.named_modules():
        if isinstance(m, _OTHER_NORMS):
            raise InvalidValueError(
                f"pathcond: {name!r} is a {type(m).__name__}; only BatchNorm normalisations have a path-lifting "
                "(an affine map)"
            )


def path_kernel_diagonal(model: nn.Module, x: Any) -> dict[str, Tensor]:
    """``name -> G`` (float64, the parameter's shape, on its device): the diagonal of the path kernel, see the
    module docstring. ``x`` is an example batch (only its shapes are used: the network is evaluated on a single
    all-ones input). The model's parameters, buffers and train/eval modes are unchanged afterwards."""
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(x)
    names = [n for n, _ in model.named_parameters()]
    sq = {n: p.detach().double().pow(2).requires_grad_(True) for n, p in model.named_parameters()}
    state: dict[str, Tensor] = {n: (b.double() if b.is_floating_point() else b) for n, b in model.named_buffers()}
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            prefix = f"{mname}." if mname else ""
            if m.running_mean is not None:
                state[prefix + "running_mean"] = torch.zeros_like(state[prefix + "running_mean"])
                state[prefix + "running_var"] = torch.full_like(state[prefix + "running_var"], 1.0 - m.eps)
    ones = tuple(
        torch.ones((1, *t.shape[1:]), dtype=torch.float64, device=t.device) if t.is_floating_point() else t[:1]
        for t in inputs
    )
    modes = {m: m.training for m in model.modules()}
    model.eval()  # BatchNorm as an affine map (the statistics above)
    try:
        out = functional_call(model, {**state, **sq}, ones)
    finally:
        for m, mode in modes.items():
            m.training = mode
    leaves = [out] if isinstance(out, Tensor) else [t for t in _flatten(out) if isinstance(t, Tensor)]
    psi = sum(t.double().sum() for t in leaves)
    grads = torch.autograd.grad(psi, [sq[n] for n in names], allow_unused=True)
    return {n: (torch.zeros_like(sq[n]) if g is None else g.detach()).clamp_min(0.0) for n, g in zip(names, grads)}


def _flatten(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [u for w in v for u in _flatten(w)]
    if isinstance(v, dict):
        return [u for w in v.values() for u in _flatten(w)]
    return [v]


class _Entries:
    """The entries with ``G_e > 0``: ``log G_e``, and ``o_e``, ``i_e`` indices into ``t = [1, tau]`` (both 0
    for parameters the plan does not move; ``o_e = i_e`` entries are constant), as numpy float64 / int64."""

    def __init__(self, model: nn.Module, plan: TeleportPlan, G: dict[str, Tensor]) -> None:
        lg, o, i = [], [], []
        for name, p in model.named_parameters():
            g = G[name].detach().cpu().reshape(-1)
            entry = plan.param_scale_indices.get(name)
            if entry is None:
                oe = ie = torch.zeros(g.numel(), dtype=torch.long)
            else:
                oe = entry[0].expand(p.shape).reshape(-1).cpu()
                ie = torch.zeros_like(oe) if entry[1] is None else entry[1].expand(p.shape).reshape(-1).cpu()
            keep = g > 0
            lg.append(g[keep].log())
            o.append(oe[keep])
            i.append(ie[keep])
        self.lg = torch.cat(lg).numpy().astype(np.float64) if lg else np.zeros(0)
        self.o = torch.cat(o).numpy() if o else np.zeros(0, dtype=np.int64)
        self.i = torch.cat(i).numpy() if i else np.zeros(0, dtype=np.int64)
        self.N = len(self.lg)
        if self.N == 0:
            raise InvalidValueError(
                "pathcond: every entry of the path-kernel diagonal is 0 (no path with non-zero weights)"
            )
        moving = self.o != self.i
        n = plan.num_free + 1
        self.incoming = _csr(np.where(moving, self.o, 0), moving, n)
        self.outgoing = _csr(np.where(moving, self.i, 0), moving, n)

    def criterion(self, u: np.ndarray) -> float:
        """``C(u) = log(mean G') - mean log G'`` (``u`` of shape ``(num_free,)``)."""
        ue = np.concatenate([[0.0], u])
        lg = self.lg - 2.0 * (ue[self.o] - ue[self.i])
        m = lg.max()
        return float(m + math.log(np.exp(lg - m).mean()) - lg.mean())


def _csr(key: np.ndarray, mask: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Entries with ``mask`` grouped by ``key`` in ``[0, n)``: ``(order, offsets)`` with ``order[offsets[k]:
    offsets[k + 1]]`` the entries of ``k``."""
    idx = np.nonzero(mask)[0]
    order = idx[np.argsort(key[idx], kind="stable")]
    counts = np.bincount(key[idx], minlength=n)
    return order, np.concatenate([[0], np.cumsum(counts)])


def _root(A: float, B: float, D: float, N: int, c: int) -> float:
    """The positive root ``s`` of ``(N - c) B s^2 - c D s - (N + c) A = 0`` (NaN when there is none)."""
    q = math.sqrt((c * D) ** 2 + 4.0 * (N - c) * (N + c) * A * B)
    if c * D >= 0:
        den = 2.0 * (N - c) * B
        return (c * D + q) / den if den > 0 else math.nan
    den = q - c * D
    return 2.0 * (N + c) * A / den if den > 0 else math.nan


def _sweep(e: _Entries, lg: np.ndarray, u: np.ndarray, lo: float, hi: float) -> float:
    """One sweep of exact coordinate minimisation over all neurons, in place; returns the largest ``|du|``."""
    m = lg.max()
    w = np.exp(lg - m)
    S = float(w.sum())
    (io, ioff), (oo, ooff) = e.incoming, e.outgoing
    biggest = 0.0
    for k in range(len(u)):
        inc, out = io[ioff[k + 1] : ioff[k + 2]], oo[ooff[k + 1] : ooff[k + 2]]
        if not len(inc) and not len(out):
            continue
        A, B = float(w[inc].sum()), float(w[out].sum())
        D = max(S - A - B, 0.0)
        s = _root(A, B, D, e.N, len(out) - len(inc))
        if not (math.isfinite(s) and s > 0):
            continue  # no minimum along this neuron (it keeps its factor)
        du = min(max(0.5 * math.log(s), lo - u[k]), hi - u[k])
        if du == 0.0:
            continue
        u[k] += du
        lg[inc] -= 2.0 * du
        lg[out] += 2.0 * du
        w[inc] = np.exp(lg[inc] - m)
        w[out] = np.exp(lg[out] - m)
        S = D + float(w[inc].sum()) + float(w[out].sum())
        biggest = max(biggest, abs(du))
    return biggest


def pathcond_criterion(model: nn.Module, x: Any, *, leaf_modules: Sequence[type | str] = ()) -> float:
    """``C = log(mean_e G_e) - mean_e log G_e`` of ``model`` as it is (module docstring): 0 for a perfectly
    conditioned diagonal, larger the more the path-kernel diagonal is spread."""
    plan = analyze(model, x, leaf_modules=leaf_modules)
    _check_path_liftable(model, plan)
    e = _Entries(model, plan, path_kernel_diagonal(model, x))
    return e.criterion(np.zeros(plan.num_free))


def pathcond_cob(
    model: nn.Module,
    x: Any,
    *,
    cob_range: float | None = None,
    tol: float = 1e-6,
    max_sweeps: int = 100,
    leaf_modules: Sequence[type | str] = (),
) -> OptimizedCoB:
    """The CoB with positive factors minimising the PathCond-style criterion ``C`` over the orbit (see the
    module docstring for the objective and the algorithm).

    Parameters
    ----------
    model, x:
        A ReLU-type network (linear/conv layers, positively homogeneous activations, pooling, sums, BatchNorm)
        and an example input batch (shapes only).
    cob_range:
        ``None`` (default): the minimum over the whole positive orbit; ``s`` in ``(0, 1)``: over the box
        ``1 - s <= tau <= 1 + s`` (each coordinate step is clipped, the exact minimiser of a convex 1-D function
        on an interval).
    tol, max_sweeps:
        Stop when the largest ``|log tau|`` change of a sweep is ``<= tol``, or after ``max_sweeps`` sweeps.

    Returns
    -------
    OptimizedCoB
        ``cob``; ``trace``: ``C`` at the identity and after each sweep (non-increasing); ``value``, ``initial``;
        ``objective = "pathcond"``. Apply it with ``nnteleport.teleport(model, x, cob=result.cob)``.
    """
    if cob_range is None:
        lo, hi = -math.inf, math.inf
    else:
        s = _validate_cob_range(cob_range)
        lo, hi = math.log1p(-s), math.log1p(s)
    if not isinstance(max_sweeps, int) or max_sweeps < 1:
        raise InvalidValueError(f"pathcond_cob: max_sweeps must be a positive integer, got {max_sweeps!r}")
    plan = analyze(model, x, leaf_modules=leaf_modules)
    _check_path_liftable(model, plan)
    e = _Entries(model, plan, path_kernel_diagonal(model, x))
    u = np.zeros(plan.num_free)
    lg = e.lg.copy()
    trace = [e.criterion(u)]
    for _ in range(max_sweeps):
        biggest = _sweep(e, lg, u, lo, hi)
        trace.append(e.criterion(u))
        lg = e.lg - 2.0 * (np.concatenate([[0.0], u])[e.o] - np.concatenate([[0.0], u])[e.i])  # no drift
        if biggest <= tol:
            break
    cob = plan.cob_from_flat(torch.from_numpy(np.exp(u)))
    return OptimizedCoB(cob, trace, trace[-1], trace[0], "pathcond")
