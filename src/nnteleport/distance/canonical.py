"""The balanced (canonical) representative of a positive-rescaling orbit (DESIGN.md Sec. 3).

:func:`canonicalize` maps a model to the point of its orbit ``theta -> theta * t[out] / t[in]`` (``t > 0`` per
neuron of the engine's homogeneous groups) with the smallest squared weight norm, where every hidden neuron's
incoming squared norm equals its outgoing one; :class:`Balancer` finds the log-factors ``u = log t``
(Gauss-Seidel or Newton on the convex ``F(u)``) and is reused by the invariant
:class:`~nnteleport.distance.CheckpointDistance` at every call.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Balancer", "balancer_of", "canonicalize", "compute_dtype"]


def _pad_index(idx: Tensor | None, ndim: int, device: torch.device) -> Tensor | None:
    if idx is None:
        return None
    idx = torch.as_tensor(idx, device=device, dtype=torch.long)
    if idx.dim() > ndim:
        raise ValueError(f"scale index of shape {tuple(idx.shape)} has more dims than its parameter ({ndim})")
    return idx.reshape((1,) * (ndim - idx.dim()) + tuple(idx.shape))


class Balancer:
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
        largest Gauss-Seidel step ``|log(O_k / I_k)| / 4`` left (``<= tol`` when converged; ``0`` when
        one sweep is exact, which then reads nothing from the device).

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
            # the largest step of the sweep stays on the device and is read once per sweep (one host sync)
            largest = torch.zeros((), dtype=dtype, device=device)
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
                    largest = torch.maximum(largest, (alpha * step).abs().max())
            if self.exact_in_one_sweep:  # solved exactly: nothing is left, and nothing needs to be read
                return u, sweep, 0.0
            step_max = float(largest)
            if step_max <= tol:
                return u, sweep, step_max
        return u, max_iter, step_max

    def scales(self, u: Tensor, params: Sequence[Tensor]) -> dict[int, Tensor]:
        """Per parameter index: the broadcastable factor ``t[out] / t[in]`` in the parameter's dtype."""
        out = {}
        for i, oi, ii, _ in self.entries:
            s = u[oi] if ii is None else u[oi] - u[ii]
            out[i] = torch.exp(s).to(params[i].dtype)
        return out


def balancer_of(model: nn.Module, x: Any) -> tuple[Balancer, Any]:
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
    balancer = Balancer(
        [n for n, _ in named],
        [p.shape for _, p in named],
        plan.param_scale_indices,
        groups,
        plan.num_free,
        device,
    )
    return balancer, plan


def compute_dtype(device: torch.device) -> torch.dtype:
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
    block Gauss-Seidel on ``log t`` (each step ``t_k <- t_k (O_k / I_k)^{1/4}``, see ``Balancer``).

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
    balancer, plan = balancer_of(model, x)
    out = model if inplace else copy.deepcopy(model)
    params = [p for _, p in out.named_parameters()]
    device = params[0].device if params else torch.device("cpu")
    masses = balancer.masses(params, compute_dtype(device))
    u, _, _ = balancer.solve(masses, tol=tol, max_iter=max_iter)
    with torch.no_grad():
        for i, s in balancer.scales(u, params).items():
            params[i].mul_(s)
    if return_cob:
        return out, plan.cob_from_flat(torch.exp(u[1:]))
    return out
