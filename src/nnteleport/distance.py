"""Checkpoint-distance regularisation and the balanced (canonical) representative of a rescaling orbit.

Von Bachmann (2020, Sec. 2.1) trains a network normally, stores *checkpoints* of its parameters and then
adds a penalty that places a "hill" on every checkpoint, so that the optimiser is pushed away from where the
network has already been (to escape cells of the loss landscape and to build diverse snapshot ensembles):

.. math::

    L(\\theta) = L_{CE}(\\theta) + s \\sum_c k(\\theta, \\theta_c), \\qquad
    k_{rbf}(\\theta, \\theta_c) = \\exp\\!\\Big(-\\frac{\\lVert\\theta - \\theta_c\\rVert^2}{2\\sigma^2}\\Big)
    \\quad \\text{(Eq. 2.3, 2.8, 2.9)}

with the gradient (Eq. 2.18) :math:`\\nabla_\\theta\\, s\\,k = s\\,(\\theta_c - \\theta)\\,k / \\sigma^2`.
The thesis' plain squared-L2 form (Eq. 2.2, Alg. 5) is offered as ``kernel="squared_l2"`` with
:math:`k = -\\lVert\\theta - \\theta_c\\rVert^2` (negative, so that *minimising* the loss increases the
distance; unbounded, hence only sensible with a small ``strength`` or few steps).

``invariant=True`` measures distances modulo the positive-rescaling symmetry of ReLU networks: both the
current parameters and the checkpoints are mapped to the *balanced representative* of their orbit
(:func:`canonicalize`, DESIGN.md Sec. 3), so the optimiser cannot "escape" a checkpoint by merely sliding
along the orbit without changing the function.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError

__all__ = [
    "CheckpointDistance",
    "CheckpointSchedule",
    "Kernel",
    "StepSchedule",
    "canonicalize",
]

ScheduleLike = float | Callable[[int], float]


class Kernel(Choice, what="kernel"):
    """Kernel ``k(theta, theta_c)`` of the checkpoint penalty ``strength * sum_c k(theta, theta_c)``.

    * ``"rbf"``: ``exp(-||theta - theta_c||^2 / (2 sigma^2))`` in (0, 1] (thesis Eq. 2.3): a bounded hill of
      width ``sigma`` on every checkpoint; its pull vanishes far from the checkpoint.
    * ``"squared_l2"``: ``-||theta - theta_c||^2`` (thesis Eq. 2.2 / Alg. 5 as a negative penalty); ``sigma``
      is ignored. Unbounded below: keep ``strength`` small.
    """

    RBF = "rbf"
    SQUARED_L2 = "squared_l2"


# ---------------------------------------------------------------------------------------------------------
# schedules
# ---------------------------------------------------------------------------------------------------------


class StepSchedule:
    """Step schedule ``initial * gamma ** max(0, (epoch - start) // step_size)`` (as ``StepLR``).

    Usable for ``strength`` and ``sigma`` of :class:`CheckpointDistance`; any callable ``epoch -> float``
    works as well.
    """

    def __init__(self, initial: float, gamma: float = 1.0, step_size: int = 1, start: int = 0) -> None:
        if step_size < 1:
            raise ValueError(f"StepSchedule: step_size must be >= 1, got {step_size}")
        self.initial, self.gamma, self.step_size, self.start = float(initial), float(gamma), step_size, start

    def __call__(self, epoch: int) -> float:
        k = max(0, (epoch - self.start) // self.step_size)
        return self.initial * self.gamma**k

    def __repr__(self) -> str:
        return (
            f"StepSchedule(initial={self.initial}, gamma={self.gamma}, step_size={self.step_size}, start={self.start})"
        )


class CheckpointSchedule:
    """Plain training for ``warmup_epochs`` epochs, then a checkpoint every ``every`` epochs (Alg. 3).

    ``epoch`` counts *completed* epochs: ``should_checkpoint(e)`` is true for ``e = warmup_epochs,
    warmup_epochs + every, ...`` (and at most ``max_checkpoints`` times when given), i.e. call it after each
    epoch with the number of epochs done so far.
    """

    def __init__(self, warmup_epochs: int, every: int, max_checkpoints: int | None = None) -> None:
        if warmup_epochs < 0 or every < 1:
            raise ValueError(
                f"CheckpointSchedule: need warmup_epochs >= 0 and every >= 1, got {warmup_epochs}, {every}"
            )
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"CheckpointSchedule: max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.warmup_epochs, self.every, self.max_checkpoints = warmup_epochs, every, max_checkpoints

    def should_checkpoint(self, epoch: int) -> bool:
        if epoch < self.warmup_epochs or (epoch - self.warmup_epochs) % self.every:
            return False
        index = (epoch - self.warmup_epochs) // self.every
        return self.max_checkpoints is None or index < self.max_checkpoints

    def checkpoint_epochs(self, total_epochs: int) -> list[int]:
        """All epochs in ``1..total_epochs`` after which a checkpoint is taken."""
        return [e for e in range(1, total_epochs + 1) if self.should_checkpoint(e)]


def _as_schedule(value: ScheduleLike, what: str) -> Callable[[int], float]:
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"CheckpointDistance: {what} must be a number or a callable epoch -> float, got {value!r}")
    v = float(value)
    return lambda epoch: v


# ---------------------------------------------------------------------------------------------------------
# balancing: the canonical representative of a positive-rescaling orbit
# ---------------------------------------------------------------------------------------------------------


def _pad_index(idx: Tensor | None, ndim: int, device: torch.device) -> Tensor | None:
    if idx is None:
        return None
    idx = torch.as_tensor(idx, device=device, dtype=torch.long)
    if idx.dim() > ndim:
        raise ValueError(f"scale index of shape {tuple(idx.shape)} has more dims than its parameter ({ndim})")
    return idx.reshape((1,) * (ndim - idx.dim()) + tuple(idx.shape))


class _Balancer:
    """Balances the per-neuron factors of a positive-rescaling orbit (DESIGN.md Sec. 3).

    The orbit of parameters ``p`` is ``p(u) = p * exp(u[out_idx] - u[in_idx])`` with ``u = log t`` on the
    extended vector ``t = cat([1, tau])`` (``u[0] = 0`` is the pinned factor). The squared weight norm

    ``F(u) = sum_p sum_e p_e^2 exp(2 u[out_e] - 2 u[in_e])``

    is convex in ``u`` (a sum of exponentials of linear forms) with ``dF/du_k = 2 (I_k - O_k)``, where
    ``I_k`` (``O_k``) is the incoming (outgoing) squared mass of neuron ``k``. Its minimiser is the balanced
    point ``I_k = O_k``. We run block Gauss-Seidel over classes of groups: groups that share no parameter
    form one class (greedy colouring), and for a class of groups whose parameters never both read and write
    the same group, the neurons decouple and ``u_k += log(O_k / I_k) / 4`` is the exact block minimiser
    (``I_k`` scales by ``t_k^2``, ``O_k`` by ``t_k^{-2}``), so ``F`` decreases monotonically; a group that
    reads and writes itself (self-coupled) is its own class and its step is halved until ``F`` decreases.
    With a single uncoupled class (every BatchNorm network: each group only touches its BN affine
    parameters and the next layer) one sweep is exact. Neurons with zero incoming or outgoing mass keep
    their factor (the infimum is not attained there).
    """

    def __init__(
        self,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        indices: Mapping[str, tuple[Tensor, Tensor | None]],
        groups: Sequence[tuple[int, int]],
        num_free: int,
        device: torch.device,
    ) -> None:
        self.names = list(names)
        self.num = num_free + 1
        self.groups = list(groups)  # (start, stop) ranges in the extended vector, homogeneous groups only
        self.entries: list[tuple[int, Tensor, Tensor | None, tuple[int, ...]]] = []
        self.device = device
        for i, (name, shape) in enumerate(zip(self.names, shapes)):
            if name not in indices:
                continue
            out_idx, in_idx = indices[name]
            ndim = len(shape)
            oi = _pad_index(out_idx, ndim, device)
            ii = _pad_index(in_idx, ndim, device)
            red = tuple(d for d in range(ndim) if oi.shape[d] == 1 and (ii is None or ii.shape[d] == 1))
            self.entries.append((i, oi, ii, red))
        # which entries touch which group (on the out or in side), and self-coupling: one pass over the entries
        # (each entry's distinct indices are located among the group ranges by a sorted search), so the set-up
        # is linear in the number of layers
        G = len(self.groups)
        starts = torch.tensor([a for a, _ in self.groups], dtype=torch.long)
        stops = torch.tensor([b for _, b in self.groups], dtype=torch.long)

        def groups_of(idx: Tensor | None) -> set[int]:
            if idx is None or G == 0:
                return set()
            vals = torch.unique(idx.detach().to("cpu").reshape(-1))
            g = torch.searchsorted(starts, vals, right=True) - 1
            ok = (g >= 0) & (vals < stops[g.clamp(min=0)])
            return set(g[ok].tolist())

        touch: list[set[int]] = [set() for _ in range(G)]
        coupled: list[bool] = [False] * G
        entry_groups: list[set[int]] = []
        for j, (_, oi, ii, _) in enumerate(self.entries):
            o_groups, i_groups = groups_of(oi), groups_of(ii)
            for g in o_groups | i_groups:
                touch[g].add(j)
            for g in o_groups & i_groups:
                coupled[g] = True
            entry_groups.append(o_groups | i_groups)
        neighbours: list[set[int]] = [set() for _ in range(G)]
        for gs in entry_groups:
            for g in gs:
                neighbours[g] |= gs - {g}
        # colour classes: groups sharing no parameter are independent given the others, so one class is
        # updated at once (red-black Gauss-Seidel; one class per sweep for BatchNorm nets, two for a chain)
        colour: list[int] = [-1] * G
        for g in range(G):
            if coupled[g]:
                continue
            used = {colour[h] for h in neighbours[g] if h < g and colour[h] >= 0}
            colour[g] = next(c for c in range(G + 1) if c not in used)
        by_colour: dict[int, list[int]] = {}
        for g in range(G):
            by_colour.setdefault(colour[g], []).append(g)
        self.classes: list[tuple[list[int], Tensor, bool]] = []
        for c in sorted(by_colour):
            members = by_colour[c]
            for chunk in [members] if c >= 0 else [[g] for g in members]:
                entries = sorted(set().union(*(touch[g] for g in chunk)))
                pos = torch.cat([torch.arange(*self.groups[g]) for g in chunk]).to(device)
                self.classes.append((entries, pos, c < 0))
        self.exact_in_one_sweep = len(self.classes) == 1 and not self.classes[0][2]

    def masses(self, params: Sequence[Tensor], dtype: torch.dtype) -> list[Tensor]:
        """Squared entries of every indexed parameter, summed over dims no index distinguishes."""
        out = []
        with torch.no_grad():
            for i, _, _, red in self.entries:
                p = params[i].detach()
                m = p.to(dtype).square()
                out.append(m.sum(dim=red, keepdim=True) if red else m)
        return out

    def _io(self, masses: list[Tensor], u: Tensor, entries: list[int]) -> tuple[Tensor, Tensor, Tensor]:
        inc = torch.zeros(self.num, dtype=u.dtype, device=u.device)
        outg = torch.zeros_like(inc)
        total = torch.zeros((), dtype=u.dtype, device=u.device)
        e2u, em2u = torch.exp(2 * u), torch.exp(-2 * u)
        for j in entries:
            _, oi, ii, _ = self.entries[j]
            e = masses[j] * e2u[oi]
            if ii is not None:
                e = e * em2u[ii]
            e = e.expand(torch.broadcast_shapes(e.shape, oi.shape, () if ii is None else ii.shape))
            inc.index_add_(0, oi.expand(e.shape).reshape(-1), e.reshape(-1))
            if ii is not None:
                outg.index_add_(0, ii.expand(e.shape).reshape(-1), e.reshape(-1))
            total = total + e.sum()
        return inc, outg, total

    def solve(
        self,
        masses: list[Tensor],
        u0: Tensor | None = None,
        tol: float = 1e-10,
        max_iter: int = 1000,
        method: str = "auto",
    ) -> tuple[Tensor, int, float]:
        """Return ``(u, iterations, last_step)``: log-factors of the balanced point, iterations used, and the
        largest Gauss-Seidel step ``|log(O_k / I_k)| / 4`` left (``<= tol`` when converged).

        ``method``: ``"gauss-seidel"`` (block sweeps; cheap per sweep, but on a chain of ``L`` layers a
        perturbation travels one layer per sweep, so a cold start needs ``O(L^2)`` sweeps), ``"newton"``
        (damped Newton on the convex ``F(log t)``; each step solves one sparse system whose pattern is the
        neuron-coupling graph -- block tridiagonal for a chain, linear in ``L`` -- and the number of steps does
        not grow with depth), or ``"auto"``: Gauss-Seidel when one sweep is exact (BatchNorm nets) or when
        warm-started from ``u0`` (the penalty's per-step update), Newton otherwise.
        """
        if method == "auto":
            method = "gauss-seidel" if (self.exact_in_one_sweep or u0 is not None) else "newton"
        if method == "newton":
            return self._solve_newton(masses, u0, tol, max_iter)
        if method != "gauss-seidel":
            raise ValueError(f"unknown balancing method {method!r}; choose auto, newton or gauss-seidel")
        return self._solve_gauss_seidel(masses, u0, tol, max_iter)

    def _edges(self, masses: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Every mass entry as an edge ``(out, in, m)`` of ``F = sum m exp(2 u[out] - 2 u[in])`` (in = 0: pinned)."""
        outs, ins, ms = [], [], []
        for j, (_, oi, ii, _) in enumerate(self.entries):
            m = masses[j]
            shape = torch.broadcast_shapes(m.shape, oi.shape, () if ii is None else ii.shape)
            outs.append(oi.expand(shape).reshape(-1))
            ins.append(torch.zeros_like(outs[-1]) if ii is None else ii.expand(shape).reshape(-1))
            ms.append(m.expand(shape).reshape(-1))
        if not ms:
            z = torch.zeros(0, dtype=torch.long, device=self.device)
            return z, z, torch.zeros(0, dtype=torch.float64, device=self.device)
        o, i, m = torch.cat(outs), torch.cat(ins), torch.cat(ms)
        keep = (o != i) & (m > 0)  # a self-loop's term does not depend on u; a zero mass is no term at all
        return o[keep], i[keep], m[keep]

    def _solve_newton(
        self, masses: list[Tensor], u0: Tensor | None, tol: float, max_iter: int
    ) -> tuple[Tensor, int, float]:
        import numpy as np
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        dtype = masses[0].dtype if masses else torch.float64
        o_t, i_t, m_t = self._edges(masses)
        o, i = o_t.cpu().numpy(), i_t.cpu().numpy()
        m = m_t.to("cpu", torch.float64).numpy()
        n = self.num
        u = np.zeros(n) if u0 is None else u0.detach().to("cpu", torch.float64).numpy().copy()
        in_mass = np.bincount(o, weights=m, minlength=n)  # neuron k's incoming mass (edges into k) at u = 0
        out_mass = np.bincount(i, weights=m, minlength=n)
        in_group = np.zeros(n, dtype=bool)
        for a, b in self.groups:
            in_group[a:b] = True
        # neurons with no incoming or no outgoing mass keep their factor (the infimum is not attained there)
        free = np.flatnonzero(in_group & (in_mass > 0) & (out_mass > 0))
        pos = np.full(n, -1)
        pos[free] = np.arange(len(free))

        def energy(v: np.ndarray) -> tuple[float, np.ndarray]:
            e = m * np.exp(2.0 * (v[o] - v[i]))
            return float(e.sum()), e

        f, e = energy(u)
        step_max = math.inf
        for it in range(1, max_iter + 1):
            inc = np.bincount(o, weights=e, minlength=n)
            outg = np.bincount(i, weights=e, minlength=n)
            step_max = float(np.max(np.abs(0.25 * (np.log(outg[free]) - np.log(inc[free]))), initial=0.0))
            if step_max <= tol or len(free) == 0:
                return torch.as_tensor(u, dtype=dtype, device=self.device), it - 1, step_max
            grad = 2.0 * (inc - outg)[free]
            diag = 4.0 * (inc + outg)[free]
            both = (pos[o] >= 0) & (pos[i] >= 0)
            r, c, w = pos[o[both]], pos[i[both]], -4.0 * e[both]
            hess = sp.coo_matrix(
                (np.concatenate([diag, w, w]), (np.concatenate([np.arange(len(free)), r, c]),
                                                np.concatenate([np.arange(len(free)), c, r]))),
                shape=(len(free), len(free)),
            ).tocsc()  # fmt: skip
            hess = hess + sp.identity(len(free), format="csc") * (1e-12 * float(diag.max()))
            d = spla.spsolve(hess, -grad)
            slope = float(grad @ d)
            alpha = 1.0
            while True:  # backtracking (Armijo): F is convex, the Newton direction descends
                trial = u.copy()
                trial[free] += alpha * d
                f_new, e_new = energy(trial)
                if f_new <= f + 1e-4 * alpha * slope or alpha < 1e-10:
                    break
                alpha *= 0.5
            if f_new > f:  # no progress possible at this precision
                break
            u, f, e = trial, f_new, e_new
        return torch.as_tensor(u, dtype=dtype, device=self.device), max_iter, step_max

    def _solve_gauss_seidel(
        self, masses: list[Tensor], u0: Tensor | None, tol: float, max_iter: int
    ) -> tuple[Tensor, int, float]:
        dtype = masses[0].dtype if masses else torch.float64
        device = self.device
        u = torch.zeros(self.num, dtype=dtype, device=device) if u0 is None else u0.to(dtype).clone()
        step_max = 0.0
        for sweep in range(1, max_iter + 1):
            step_max = 0.0
            for entries, pos, coupled in self.classes:
                inc, outg, f0 = self._io(masses, u, entries)
                i_g, o_g = inc[pos], outg[pos]
                ok = (i_g > 0) & (o_g > 0)
                step = torch.where(ok, 0.25 * (torch.log(o_g) - torch.log(i_g)), torch.zeros_like(i_g))
                alpha = 1.0
                if coupled:  # backtracking: the block is not separable per neuron
                    while alpha > 1e-6:
                        trial = u.clone()
                        trial[pos] += alpha * step
                        if self._io(masses, trial, entries)[2] <= f0:
                            break
                        alpha *= 0.5
                u[pos] += alpha * step
                if pos.numel():
                    step_max = max(step_max, float((alpha * step).abs().max()))
            if step_max <= tol or self.exact_in_one_sweep:
                return u, sweep, step_max
        return u, max_iter, step_max

    def scales(self, u: Tensor, params: Sequence[Tensor]) -> dict[int, Tensor]:
        """Per parameter index: the broadcastable factor ``t[out] / t[in]`` in the parameter's dtype."""
        out = {}
        for i, oi, ii, _ in self.entries:
            s = u[oi] if ii is None else u[oi] - u[ii]
            out[i] = torch.exp(s).to(params[i].dtype)
        return out


def _structure(model: nn.Module, x: Any) -> tuple[_Balancer, Any]:
    """Build the balancer of ``model`` from the teleportation engine's plan (homogeneous groups only)."""
    from nnteleport.engine.analysis import analyze  # the engine; imported lazily (library layering)

    plan = analyze(model, x)
    named = list(model.named_parameters())
    device = named[0][1].device if named else torch.device("cpu")
    groups = [
        (info.offset + 1, info.offset + 1 + info.size)
        for info in plan.groups.values()
        if getattr(info, "homogeneous", False) and info.size > 0
    ]
    balancer = _Balancer(
        [n for n, _ in named],
        [p.shape for _, p in named],
        plan.param_scale_indices,
        groups,
        plan.num_free,
        device,
    )
    return balancer, plan


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def canonicalize(
    model: nn.Module,
    x: Any,
    *,
    inplace: bool = False,
    tol: float = 1e-10,
    max_iter: int = 10_000,
    return_cob: bool = False,
) -> nn.Module | tuple[nn.Module, Any]:
    """Balanced representative of ``model``'s positive-rescaling orbit (DESIGN.md Sec. 3).

    Among all teleportations ``theta -> theta * t[out] / t[in]`` with positive per-neuron factors ``t`` (on
    the groups the engine marks ``homogeneous``, i.e. those whose activations commute with ``t > 0``; all
    other factors stay 1), it returns the one where every hidden neuron's incoming squared norm (with bias,
    BatchNorm affine parameters, ...) equals its outgoing squared norm. That point is the unique minimiser of
    the squared weight norm ``sum_p ||p||^2`` over the orbit, which is convex in ``log t``; it is found by
    block Gauss-Seidel on ``log t`` (each step ``t_k <- t_k (O_k / I_k)^{1/4}``, see ``_Balancer``).

    Two networks in the same orbit have the same canonical representative, so the Euclidean distance between
    canonical representatives is a rescaling-invariant distance. The network function is unchanged.

    Parameters
    ----------
    model:
        Any model the teleportation engine can analyse (``nnteleport.analyze(model, x)``).
    x:
        Example input (shapes and dtype select the cached analysis).
    inplace:
        Rescale ``model``'s parameters in place instead of a deep copy.
    tol, max_iter:
        Stop when the largest ``|log t|`` update of a sweep is ``<= tol`` or after ``max_iter`` sweeps.
    return_cob:
        Also return the change of basis ``t`` (a :class:`nnteleport.CoB`) that maps ``model`` to the result.

    Returns
    -------
    nn.Module or (nn.Module, CoB)
    """
    balancer, plan = _structure(model, x)
    out = model if inplace else copy.deepcopy(model)
    params = [p for _, p in out.named_parameters()]
    device = params[0].device if params else torch.device("cpu")
    masses = balancer.masses(params, _compute_dtype(device))
    u, _, _ = balancer.solve(masses, tol=tol, max_iter=max_iter)
    with torch.no_grad():
        for i, s in balancer.scales(u, params).items():
            params[i].mul_(s)
    if return_cob:
        return out, plan.cob_from_flat(torch.exp(u[1:]))
    return out


# ---------------------------------------------------------------------------------------------------------
# the penalty
# ---------------------------------------------------------------------------------------------------------


def _workspace(buffers: list[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
    """Reusable scratch tensors shaped like ``like`` (fresh large allocations page-fault: ~3x slower on CPU)."""
    if len(buffers) != len(like) or any(
        b.shape != t.shape or b.dtype != t.dtype or b.device != t.device for b, t in zip(buffers, like)
    ):
        buffers[:] = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in like]
    return buffers


def _sq_distances(theta: Sequence[Tensor], checkpoints: Sequence[Sequence[Tensor]], work: list[Tensor]) -> Tensor:
    """``d_c = ||theta - theta_c||^2`` for every checkpoint, shape ``(C,)``, with fused foreach ops."""
    dtype = theta[0].dtype
    out = []
    for ckpt in checkpoints:
        torch._foreach_copy_(work, ckpt)
        torch._foreach_sub_(work, theta)
        norms = torch._foreach_norm(work)
        out.append(torch.stack([n.to(dtype) for n in norms]).square().sum())
    return torch.stack(out)


class _KernelSum(torch.autograd.Function):
    """``strength * sum_c phi(||theta - theta_c||^2)`` with a closed-form, memory-light backward.

    Forward: per checkpoint the difference is formed in a reused workspace and reduced with one fused
    ``_foreach_norm``; nothing per checkpoint is kept for the backward (autograd through ``theta - theta_c``
    would keep one model-sized difference per checkpoint). Backward: ``d/dtheta = strength * sum_c a_c
    (theta_c - theta)`` with ``a_c = -2 phi'(d_c)`` (``k_c / sigma^2`` for the RBF kernel, ``2`` for squared
    L2), recomputing the differences (so the result is exact also when ``theta ~ theta_c``).
    """

    @staticmethod
    def forward(ctx, kernel, sigma, strength, checkpoints, work, *params):  # type: ignore[override]
        d = _sq_distances(params, checkpoints, work)
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


class CheckpointDistance:
    """Penalty ``strength * sum_c k(theta, theta_c)`` that pushes the parameters away from stored checkpoints.

    Von Bachmann (2020), Sec. 2.1, Eq. 2.3 / 2.8 / 2.9: with the RBF kernel each checkpoint becomes a
    Gaussian hill of height ``strength`` and width ``sigma`` in parameter space; adding the penalty to the
    loss makes the optimiser roll away from it. The gradient is (Eq. 2.18)

    ``d/dtheta [strength * sum_c k_c] = strength * sum_c (theta_c - theta) / sigma^2 * k_c``.

    >>> dist = CheckpointDistance(model, sigma=2.0, strength=0.1)      # doctest: +SKIP
    >>> dist.add_checkpoint()                                          # doctest: +SKIP
    >>> loss = criterion(model(x), y) + dist()                         # doctest: +SKIP

    Parameters
    ----------
    model:
        The model whose parameters are regularised.
    kernel:
        ``"rbf"`` (default) or ``"squared_l2"`` (see :class:`Kernel`).
    sigma, strength:
        Numbers or schedules (callables ``epoch -> float``, e.g. :class:`StepSchedule`) evaluated at
        :attr:`epoch`, which :meth:`step` advances (call it once per epoch, like an LR scheduler).
        ``sigma`` must be > 0.
    invariant:
        Measure distances between balanced representatives of the positive-rescaling orbits
        (:func:`canonicalize`); needs ``example_input``. Checkpoints are canonicalised once, when stored.
        The current parameters are canonicalised at every call by balancing factors ``t`` computed under
        ``no_grad`` (warm-started from the previous call, so a few sweeps suffice) and applied as constants:
        ``theta' = theta * t[out] / t[in]``. The gradient is therefore ``t[out] / t[in] * dk/dtheta'``
        and ignores ``dt/dtheta``; it is the exact gradient of the penalty in the chart where ``t`` is
        frozen at the balanced point, and it vanishes exactly where ``dk/dtheta'`` does.
    params:
        Which parameters count: ``None`` (all with ``requires_grad``), an iterable of parameter names, or a
        predicate ``(name, param) -> bool``.
    example_input:
        Example input for the engine's analysis (only with ``invariant=True``).
    max_checkpoints:
        Keep at most this many checkpoints (the oldest is dropped first). Every checkpoint is a full copy of
        the selected parameters: memory grows by one model size per checkpoint.
    balance_tol, balance_max_iter:
        Stopping rule of the balancing in invariant mode (per call).
    """

    def __init__(
        self,
        model: nn.Module,
        kernel: str | Kernel = "rbf",
        sigma: ScheduleLike = 1.0,
        strength: ScheduleLike = 1.0,
        invariant: bool = False,
        params: Iterable[str] | Callable[[str, Tensor], bool] | None = None,
        *,
        example_input: Any = None,
        max_checkpoints: int | None = None,
        balance_tol: float = 1e-7,
        balance_max_iter: int = 200,
    ) -> None:
        self.model = model
        self.kernel = Kernel.parse(kernel)
        self._sigma = _as_schedule(sigma, "sigma")
        self._strength = _as_schedule(strength, "strength")
        self.invariant = bool(invariant)
        self.epoch = 0
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"CheckpointDistance: max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.max_checkpoints = max_checkpoints
        self.balance_tol, self.balance_max_iter = balance_tol, balance_max_iter

        named = list(model.named_parameters())
        self._all_names = [n for n, _ in named]
        if params is None:
            selected = [n for n, p in named if p.requires_grad]
        elif callable(params):
            selected = [n for n, p in named if params(n, p)]
        else:
            wanted = list(params)
            unknown = [n for n in wanted if n not in self._all_names]
            if unknown:
                raise ValueError(
                    f"CheckpointDistance: unknown parameter name(s) {unknown}; the model's parameters are "
                    f"{self._all_names}"
                )
            selected = [n for n in self._all_names if n in set(wanted)]
        if not selected:
            raise ValueError("CheckpointDistance: no parameters selected (check `params`)")
        self.param_names: list[str] = selected
        self._sel = [self._all_names.index(n) for n in selected]
        self.checkpoints: list[list[Tensor]] = []
        self._work: list[Tensor] = []
        self.last_balance_sweeps = 0

        self._balancer: _Balancer | None = None
        self._u: Tensor | None = None
        if self.invariant:
            if example_input is None:
                raise ValueError(
                    "CheckpointDistance(invariant=True) needs `example_input=` (an input batch for the "
                    "engine's analysis of the rescaling symmetry)"
                )
            self._balancer, _ = _structure(model, example_input)
        self._check_sigma()
        self._check_strength()

    # -- schedules ------------------------------------------------------------------------------------
    @property
    def sigma(self) -> float:
        """Current ``sigma`` (the schedule evaluated at :attr:`epoch`)."""
        return float(self._sigma(self.epoch))

    @property
    def strength(self) -> float:
        """Current ``strength`` (the schedule evaluated at :attr:`epoch`)."""
        return float(self._strength(self.epoch))

    def _check_sigma(self) -> float:
        sigma = self.sigma
        if self.kernel is Kernel.RBF and not (sigma > 0 and math.isfinite(sigma)):
            raise InvalidValueError(
                f"CheckpointDistance: sigma must be > 0 and finite, got {sigma} at epoch {self.epoch}"
            )
        return sigma

    def _check_strength(self) -> float:
        strength = self.strength
        if not math.isfinite(strength):
            raise InvalidValueError(
                f"CheckpointDistance: strength must be finite, got {strength} at epoch {self.epoch}"
            )
        return strength

    def step(self) -> None:
        """Advance the epoch counter of the ``sigma`` / ``strength`` schedules by one."""
        self.epoch += 1
        self._check_sigma()
        self._check_strength()

    # -- checkpoints ----------------------------------------------------------------------------------
    def _current(self) -> list[Tensor]:
        params = list(self.model.parameters())
        return [params[i] for i in self._sel]

    def _source_tensors(self, source: nn.Module | Mapping[str, Tensor] | None, names: Sequence[str]) -> list[Tensor]:
        if source is None:
            src: Mapping[str, Tensor] = dict(self.model.named_parameters())
        elif isinstance(source, nn.Module):
            src = dict(source.named_parameters())
        elif isinstance(source, Mapping):
            src = source
        else:
            raise TypeError(
                f"CheckpointDistance.add_checkpoint: expected None, an nn.Module or a mapping "
                f"name -> tensor, "
                f"got {type(source).__name__}"
            )
        own = dict(self.model.named_parameters())
        out = []
        for n in names:
            if n not in src:
                raise ValueError(
                    f"CheckpointDistance: checkpoint lacks parameter {n!r} -- was it saved from "
                    f"another model? "
                    f"(it has {len(src)} entries, e.g. {list(src)[:5]})"
                )
            t = src[n]
            if tuple(t.shape) != tuple(own[n].shape):
                raise ValueError(
                    f"CheckpointDistance: checkpoint parameter {n!r} has shape {tuple(t.shape)}, the model's "
                    f"has {tuple(own[n].shape)} -- checkpoint of another model?"
                )
            stored = t.detach().to(device=own[n].device, dtype=own[n].dtype).clone()
            if not bool(torch.isfinite(stored).all()):
                bad = int((~torch.isfinite(stored)).sum())
                raise InvalidValueError(
                    f"CheckpointDistance.add_checkpoint: parameter {n!r} has {bad} NaN/infinite value(s); a "
                    "non-finite checkpoint would make the penalty NaN for the rest of training (has the run "
                    "diverged?)"
                )
            out.append(stored)
        return out

    def _canonical(self, tensors: list[Tensor], *, warm: bool) -> tuple[dict[int, Tensor], Tensor]:
        assert self._balancer is not None
        dtype = _compute_dtype(tensors[0].device)
        masses = self._balancer.masses(tensors, dtype)
        u0 = self._u if warm else None
        max_iter = self.balance_max_iter if warm else max(self.balance_max_iter, 10_000)
        u, sweeps, _ = self._balancer.solve(masses, u0, tol=self.balance_tol if warm else 1e-10, max_iter=max_iter)
        self.last_balance_sweeps = sweeps
        return self._balancer.scales(u, tensors), u

    def add_checkpoint(self, source: nn.Module | Mapping[str, Tensor] | None = None) -> None:
        """Store a detached copy of the parameters (of ``model``, or of ``source``: a model or state dict).

        In invariant mode the copy is canonicalised (balanced) once, here.
        """
        if self.invariant:
            full = self._source_tensors(source, self._all_names)
            scales, _ = self._canonical(full, warm=False)
            for i, s in scales.items():
                full[i] = full[i] * s
            ckpt = [full[i] for i in self._sel]
        else:
            ckpt = self._source_tensors(source, self.param_names)
        self.checkpoints.append(ckpt)
        if self.max_checkpoints is not None and len(self.checkpoints) > self.max_checkpoints:
            self.checkpoints.pop(0)

    def clear(self) -> None:
        """Remove all checkpoints."""
        self.checkpoints.clear()

    def __len__(self) -> int:
        return len(self.checkpoints)

    # -- evaluation -----------------------------------------------------------------------------------
    def _theta(self) -> list[Tensor]:
        """Current selected parameters, canonicalised (with constant factors) in invariant mode."""
        if not self.invariant:
            return self._current()
        full = list(self.model.parameters())
        scales, u = self._canonical(full, warm=True)
        self._u = u.detach()
        return [full[i] * scales[i] if i in scales else full[i] for i in self._sel]

    def __call__(self, model: nn.Module | None = None) -> Tensor:
        """The penalty ``strength * sum_c k(theta, theta_c)``: scalar with gradients (0 if no checkpoint).

        ``model`` is optional and must be the regularised model: this lets the instance serve directly as
        the ``penalty(model)`` hook of :func:`nnteleport.lab.training.train`.
        """
        if model is not None and model is not self.model:
            raise ValueError(
                "CheckpointDistance: called with another model than the one it was built for; create one "
                "CheckpointDistance per model"
            )
        theta = self._theta() if self.checkpoints else self._current()
        if not self.checkpoints:
            return torch.zeros((), dtype=theta[0].dtype, device=theta[0].device)
        sigma = self._check_sigma()
        work = _workspace(self._work, theta)
        return _KernelSum.apply(self.kernel, sigma, self.strength, self.checkpoints, work, *theta)

    forward = __call__

    @torch.no_grad()
    def distances(self) -> Tensor:
        """Euclidean distances ``||theta - theta_c||`` to every checkpoint, shape ``(C,)`` (no gradient)."""
        theta = [t.detach() for t in self._theta()]
        if not self.checkpoints:
            return torch.zeros(0, dtype=theta[0].dtype, device=theta[0].device)
        return _sq_distances(theta, self.checkpoints, _workspace(self._work, theta)).sqrt()

    # -- serialisation --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Checkpoints and settings (schedules are not saved: recreate them, as for LR schedulers)."""
        return {
            "kernel": self.kernel.value,
            "invariant": self.invariant,
            "epoch": self.epoch,
            "param_names": list(self.param_names),
            "checkpoints": [dict(zip(self.param_names, ckpt)) for ckpt in self.checkpoints],
            "balance_log_tau": None if self._u is None else self._u.clone(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the checkpoints and epoch counter from :meth:`state_dict` (same model and selection)."""
        for key in ("kernel", "invariant", "epoch", "param_names", "checkpoints"):
            if key not in state:
                raise ValueError(f"CheckpointDistance.load_state_dict: missing key {key!r}")
        if Kernel.parse(state["kernel"]) is not self.kernel or bool(state["invariant"]) != self.invariant:
            raise ValueError(
                f"CheckpointDistance.load_state_dict: saved with kernel={state['kernel']!r}, "
                f"invariant={state['invariant']}, but this instance has kernel={self.kernel.value!r}, "
                f"invariant={self.invariant}"
            )
        if list(state["param_names"]) != self.param_names:
            raise ValueError(
                "CheckpointDistance.load_state_dict: the saved parameter selection differs from this one "
                f"(saved {len(state['param_names'])} names, here {len(self.param_names)}; first saved: "
                f"{list(state['param_names'])[:3]}) -- checkpoint of another model or another `params=`?"
            )
        checkpoints = [self._source_tensors(c, self.param_names) for c in state["checkpoints"]]
        self.checkpoints = checkpoints
        self.epoch = int(state["epoch"])
        u = state.get("balance_log_tau")
        self._u = None if u is None else u.clone()
        self._check_sigma()

    def __repr__(self) -> str:
        return (
            f"CheckpointDistance(kernel={self.kernel.value!r}, sigma={self.sigma}, strength={self.strength}, "
            f"invariant={self.invariant}, params={len(self.param_names)}, "
            f"checkpoints={len(self.checkpoints)})"
        )
