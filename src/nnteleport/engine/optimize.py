"""Optimized teleportation: choose the CoB by an objective instead of at random.

A CoB ``tau`` (one non-zero factor per free neuron, :class:`~nnteleport.engine.cob.CoB`) moves the parameters to
``V(tau) = p * t[out] / t[in]`` with ``t = [1, tau_1, ..., tau_n]`` (Armenta et al. 2023, Eq. 4) and, where the
plan lists activation sites, replaces ``f`` by ``tau * f(x / tau)``; the network function is unchanged, its
gradient, curvature and parameter norms are not. Here ``V(tau)`` and the model's output are differentiable
functions of ``tau`` (:class:`CoBFunction`, evaluated with :func:`torch.func.functional_call`, no model copy), with
``tau = sign * exp(u)``, the signs held fixed and ``u = log |tau|`` optimised:

* :func:`optimize_cob` -- projected gradient ascent (or descent) on ``u`` of one :class:`Objective` (Zhao et al.,
  "Symmetry Teleportation for Accelerated Optimization", NeurIPS 2022: maximise the squared gradient norm; Zhao et
  al., ICLR 2024: towards flatter or sharper minima), every ``|tau|`` kept in ``[1 - s, 1 + s]``;
* :func:`select_cob` -- the best of ``n`` random CoBs (:func:`~nnteleport.engine.cob.sample_flat`);
* :func:`balanced_cob` -- the CoB minimising ``sum_p ||V(tau)_p||^2`` over the positive orbit (ENorm, Stock et al.
  2019), by exact coordinate minimisation in ``u``, optionally inside ``[1 - s, 1 + s]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from nnteleport._choice import Choice
from nnteleport.engine.analysis import TeleportPlan, _as_inputs, analyze
from nnteleport.engine.cob import CoB, Sampling, _validate_cob_range, sample_flat
from nnteleport.engine.spaces import Kind
from nnteleport.errors import InvalidArgumentError, InvalidValueError

__all__ = ["CoBFunction", "Objective", "OptimizedCoB", "balanced_cob", "optimize_cob", "select_cob"]


class Objective(Choice, what="objective"):
    """What :func:`optimize_cob` and :func:`select_cob` optimise at the teleported point ``V = V(tau)``.

    With ``L`` the loss on the batch and ``g_k = dL/dV_k`` the gradient of parameter tensor ``k``:

    * ``"grad_norm"`` -- ``sum_k ||g_k||^2`` (Zhao et al. 2022; larger: a faster first SGD step);
    * ``"grad_norm_normalized"`` -- ``sum_k ||g_k||^2 ||V_k||^2``, invariant to rescaling a whole layer and its
      successor by ``c`` and ``1 / c`` (``g_k`` scales by ``1 / c``, ``V_k`` by ``c``), so only the non-uniform,
      per-neuron part of a CoB changes it. (The element-wise ``sum (g * V)^2`` would be no objective: it is
      invariant under every CoB of a positively homogeneous network, since ``g' = g * t[in] / t[out]``.)
    * ``"lookahead"`` -- ``L(V) - L(V - eta g)``, the decrease of the loss by one SGD step of learning rate ``eta``
      (``lookahead_lr``);
    * ``"sharpness"`` -- Hutchinson's estimate ``mean_j v_j^T H v_j`` of the trace of the Hessian ``H`` of ``L``
      w.r.t. ``V``, with Rademacher probes ``v_j`` drawn once from ``seed`` and held fixed (common random
      numbers: the objective is a deterministic function of ``tau``). Minimise it (``maximize=False``) for a
      flatter point, maximise it for a sharper one.
    """

    GRAD_NORM = "grad_norm"
    GRAD_NORM_NORMALIZED = "grad_norm_normalized"
    LOOKAHEAD = "lookahead"
    SHARPNESS = "sharpness"


class _Optimizer(Choice, what="optimizer"):
    ADAM = "adam"
    SGD = "sgd"


@dataclass
class OptimizedCoB:
    """The result of :func:`optimize_cob`, :func:`select_cob` or :func:`balanced_cob`.

    Attributes
    ----------
    cob: the chosen CoB (float64 factors per group; ``nnteleport.teleport(model, x, cob=result.cob)`` applies it).
    trace: the objective per step: ``steps + 1`` values at ``u_0, ..., u_steps`` (:func:`optimize_cob`), one per
        candidate (:func:`select_cob`), or ``sum_p ||V_p||^2`` after each sweep, starting at the identity
        (:func:`balanced_cob`).
    value: the objective at ``cob``.
    initial: the objective at the start (the identity or ``init``; :func:`select_cob`: at the identity).
    objective: the objective's name (``"sq_norm"`` for :func:`balanced_cob`).
    """

    cob: CoB
    trace: list[float]
    value: float
    initial: float
    objective: str


# ---------------------------------------------------------------------------------------------- V(tau)
class CoBFunction:
    """The teleported parameters ``V(tau)`` and the teleported model's output as differentiable functions of the
    flat factors ``tau`` (shape ``(plan.num_free,)``, same order as ``plan.flat``).

    ``V(tau)_p = p * t[out_idx] / t[in_idx]`` with ``t = cat([1, tau])`` for every parameter the plan moves (the
    others are the model's own tensors), and at every activation site that :func:`nnteleport.teleport` would wrap
    (a non-homogeneous activation, or a positively homogeneous one with a negative factor) the activation ``f``
    becomes ``tau * f(x / tau)``, applied by temporary forward hooks during :meth:`forward` (removed afterwards).
    The model is evaluated with :func:`torch.func.functional_call`; it is never copied and its parameters and
    buffers are never written (buffers are passed as copies, so batch-norm statistics do not move in train mode).

    The analysis is ``functional="constrain"``: the user's forward runs, so activations called as functions must
    need no wrapper (they restrict their neurons to ``tau > 0`` or pin them). Its CoB applies with
    ``nnteleport.teleport(model, x, cob, functional="constrain")``.
    """

    def __init__(self, model: nn.Module, x: Any, *, leaf_modules: Sequence[type | str] = ()) -> None:
        if not isinstance(model, nn.Module):
            raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.plan: TeleportPlan = analyze(model, x, leaf_modules=leaf_modules, functional="constrain")
        self.named = dict(model.named_parameters())
        missing = [n for n in self.plan.param_scale_indices if n not in self.named]
        if missing:
            raise InvalidValueError(f"parameter {missing[0]!r} of the plan is missing from the model")

    def t(self, tau: Tensor) -> Tensor:
        """``t = cat([1, tau])``, shape ``(num_free + 1,)``."""
        if tau.shape != (self.plan.num_free,):
            raise InvalidValueError(f"tau must have shape ({self.plan.num_free},), got {tuple(tau.shape)}")
        return torch.cat([tau.new_ones(1), tau])

    def parameters(self, tau: Tensor) -> dict[str, Tensor]:
        """``V(tau)``: name -> teleported parameter (the model's dtype and device), for every named parameter."""
        t = self.t(tau)
        out: dict[str, Tensor] = {}
        for name, p in self.named.items():
            entry = self.plan.param_scale_indices.get(name)
            if entry is None:
                out[name] = p
                continue
            o, i = entry
            tp = t.to(p.device, p.dtype)
            ratio = tp[o.to(p.device)] if i is None else tp[o.to(p.device)] / tp[i.to(p.device)]
            out[name] = p * ratio
        return out

    def _hooks(self, tau: Tensor) -> list[Any]:
        t = self.t(tau)
        negative = t.detach() < 0
        handles = []
        for site in self.plan.sites:
            if site.kind is Kind.POSITIVE and not bool(negative[site.index].any()):
                continue  # f(tau z) = tau f(z) for tau > 0: no wrapper (as in teleport)
            module = self.model.get_submodule(site.path)
            factor = t[site.index]

            def pre(m: nn.Module, args: tuple, factor: Tensor = factor) -> tuple:
                f = factor.to(args[0].device, args[0].dtype)
                return (args[0] / f, *args[1:])

            def post(m: nn.Module, args: tuple, out: Tensor, factor: Tensor = factor) -> Tensor:
                return out * factor.to(out.device, out.dtype)

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))
        return handles

    def forward(self, tau: Tensor, inputs: Any, params: Mapping[str, Tensor] | None = None) -> Any:
        """The teleported model's output on ``inputs`` (a tensor or tuple of tensors), at the parameters
        ``params`` (default ``V(tau)``; pass e.g. ``V(tau) - eta * g`` for a look-ahead step) and with the
        activation wrappers of ``tau``."""
        params = self.parameters(tau) if params is None else params
        state = {**{k: b.clone() for k, b in self.model.named_buffers()}, **params}
        handles = self._hooks(tau)
        try:
            return functional_call(self.model, state, _as_inputs(inputs))
        finally:
            for h in handles:
                h.remove()

    __call__ = forward


# ---------------------------------------------------------------------------------------------- objectives
def _probes(params: dict[str, Tensor], names: list[str], num: int, seed: int) -> list[list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        vs = []
        for n in names:
            p = params[n]
            r = torch.randint(0, 2, p.shape, generator=g, dtype=torch.int64) * 2 - 1
            vs.append(r.to(p.device, p.dtype))
        out.append(vs)
    return out


class _ObjectiveFn:
    """``tau -> objective(V(tau))`` as a differentiable scalar (float64), see :class:`Objective`."""

    def __init__(
        self,
        fn: CoBFunction,
        x: Any,
        y: Any,
        loss_fn: Callable[[Any, Any], Tensor],
        objective: Objective,
        lookahead_lr: float,
        probes: int,
        seed: int,
    ) -> None:
        if not callable(loss_fn):
            raise InvalidArgumentError(f"loss_fn must be callable (output, y) -> scalar, got {type(loss_fn).__name__}")
        if objective is Objective.LOOKAHEAD and not (math.isfinite(lookahead_lr) and lookahead_lr > 0):
            raise InvalidValueError(f"lookahead_lr must be a positive number, got {lookahead_lr!r}")
        if objective is Objective.SHARPNESS and (not isinstance(probes, int) or probes < 1):
            raise InvalidValueError(f"probes must be a positive integer, got {probes!r}")
        self.fn, self.x, self.y, self.loss_fn, self.objective = fn, x, y, loss_fn, objective
        self.lookahead_lr = float(lookahead_lr)
        self.names = [n for n, p in fn.named.items() if p.requires_grad]
        if not self.names:
            raise InvalidValueError("the model has no parameter that requires grad: no gradient objective")
        self.probes = _probes(fn.named, self.names, probes, seed) if objective is Objective.SHARPNESS else []

    def __call__(self, tau: Tensor) -> Tensor:
        V = self.fn.parameters(tau)
        ps = [V[n] for n in self.names]
        loss = self.loss_fn(self.fn.forward(tau, self.x, V), self.y)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise InvalidValueError("loss_fn must return a scalar tensor")
        g = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
        g = [torch.zeros_like(p) if gk is None else gk for p, gk in zip(ps, g)]
        obj = self.objective
        if obj is Objective.GRAD_NORM:
            val = sum(gk.double().pow(2).sum() for gk in g)
        elif obj is Objective.GRAD_NORM_NORMALIZED:
            val = sum(gk.double().pow(2).sum() * p.double().pow(2).sum() for gk, p in zip(g, ps))
        elif obj is Objective.LOOKAHEAD:
            stepped = dict(V)
            for n, gk in zip(self.names, g):
                stepped[n] = V[n] - self.lookahead_lr * gk
            loss2 = self.loss_fn(self.fn.forward(tau, self.x, stepped), self.y)
            val = (loss - loss2).double()
        else:  # Hutchinson: v^T H v = v . d(g . v)/dV
            vals = []
            for vs in self.probes:
                gv = sum((gk * v).sum() for gk, v in zip(g, vs))
                hv = torch.autograd.grad(gv, ps, create_graph=True, allow_unused=True)
                vals.append(sum((h * v).sum().double() for h, v in zip(hv, vs) if h is not None))
            val = sum(vals) / len(vals)
        return torch.as_tensor(val, dtype=torch.float64).reshape(())


def _signs_and_u(plan: TeleportPlan, init: Mapping[str, Tensor] | None, lo: float, hi: float) -> tuple[Tensor, Tensor]:
    if init is None:
        return torch.ones(plan.num_free, dtype=torch.float64), torch.zeros(plan.num_free, dtype=torch.float64)
    flat = plan.flat(init)
    a = flat.abs()
    bad = (a.log() < lo - 1e-12) | (a.log() > hi + 1e-12)
    if bool(bad.any()):
        k = int(bad.nonzero()[0])
        raise InvalidValueError(f"init factor {float(flat[k]):.6g} (flat index {k}) is outside the cob_range")
    return flat.sign(), a.log()


def optimize_cob(
    model: nn.Module,
    x: Any,
    y: Any,
    loss_fn: Callable[[Any, Any], Tensor],
    objective: str | Objective = "grad_norm",
    *,
    steps: int = 20,
    lr: float = 0.05,
    cob_range: float = 0.5,
    maximize: bool = True,
    init: Mapping[str, Tensor] | None = None,
    optimizer: str = "adam",
    lookahead_lr: float = 0.1,
    probes: int = 4,
    seed: int = 0,
    leaf_modules: Sequence[type | str] = (),
) -> OptimizedCoB:
    """Choose a CoB by projected gradient ascent (``maximize=True``) or descent on an :class:`Objective`.

    The factors are ``tau = sign * exp(u)``, ``u = log |tau|``, the signs those of ``init`` (default: the identity,
    all positive). Each step computes ``objective(V(tau))`` and its gradient w.r.t. ``u`` (second-order autograd
    through ``dL/dV``, third-order for ``"sharpness"``), takes an Adam (``optimizer="adam"``, default: invariant to
    the objective's scale) or plain gradient step (``"sgd"``, Zhao et al. 2022) of learning rate ``lr`` on ``u``,
    and projects ``u`` onto ``[log(1 - s), log(1 + s)]``, so every factor satisfies ``1 - s <= |tau| <= 1 + s``
    (``s = cob_range``, the range of :func:`nnteleport.sample_cob`).

    Parameters
    ----------
    model, x, y, loss_fn:
        The model, an input batch (also used for the analysis), its targets, and ``loss_fn(model(x), y) ->`` scalar.
        Use ``model.eval()`` when it has dropout: in train mode the objective is stochastic.
    objective:
        ``"grad_norm"``, ``"grad_norm_normalized"``, ``"lookahead"`` or ``"sharpness"`` (:class:`Objective`).
    steps, lr, optimizer:
        Number of steps, step size on ``u``, ``"adam"`` or ``"sgd"``.
    cob_range:
        ``s`` in ``(0, 1)``.
    maximize:
        Ascent (default) or descent (``"sharpness"`` towards flatter points).
    init:
        Starting CoB (signs are kept; factors must lie in the range).
    lookahead_lr, probes, seed:
        ``eta`` of ``"lookahead"``; number of Rademacher probes and their seed for ``"sharpness"``.
    leaf_modules:
        As in :func:`nnteleport.teleport`.

    Returns
    -------
    OptimizedCoB
        ``cob``: the best iterate of ``u_0, ..., u_steps`` (never worse than the start), ``trace`` the objective at
        each, ``value`` at ``cob``, ``initial`` at ``u_0``.
    """
    s = _validate_cob_range(cob_range)
    if not isinstance(steps, int) or steps < 0:
        raise InvalidValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InvalidValueError(f"lr must be a positive number, got {lr!r}")
    obj = Objective.parse(objective)
    method = _Optimizer.parse(optimizer)
    fn = CoBFunction(model, x, leaf_modules=leaf_modules)
    f = _ObjectiveFn(fn, x, y, loss_fn, obj, lookahead_lr, probes, seed)
    lo, hi = math.log1p(-s), math.log1p(s)
    sign, u0 = _signs_and_u(fn.plan, init, lo, hi)
    u = u0.clone().requires_grad_(True)
    opt: torch.optim.Optimizer = (torch.optim.Adam if method is _Optimizer.ADAM else torch.optim.SGD)([u], lr=lr)
    trace: list[float] = []
    best_u, best = u0.clone(), -math.inf
    for step in range(steps + 1):
        val = f(sign * torch.exp(u))
        v = float(val.detach())
        trace.append(v)
        score = v if maximize else -v
        if score > best:  # the first finite value, then strict improvements
            best, best_u = score, u.detach().clone()
        if step == steps or u.numel() == 0:
            break
        (grad,) = torch.autograd.grad(val, u, allow_unused=True)
        if grad is None:
            break  # the objective does not depend on the CoB
        u.grad = -grad if maximize else grad
        opt.step()
        with torch.no_grad():
            u.clamp_(lo, hi)
    cob = fn.plan.cob_from_flat((sign * torch.exp(best_u)).detach())
    return OptimizedCoB(cob, trace, best if maximize else -best, trace[0], str(obj))


def select_cob(
    model: nn.Module,
    x: Any,
    y: Any,
    loss_fn: Callable[[Any, Any], Tensor],
    n: int = 10,
    *,
    cob_range: float = 0.5,
    objective: str | Objective = "grad_norm",
    maximize: bool = True,
    sampling: str | Sampling = "intra",
    generator: torch.Generator | None = None,
    lookahead_lr: float = 0.1,
    probes: int = 4,
    seed: int = 0,
    leaf_modules: Sequence[type | str] = (),
) -> OptimizedCoB:
    """The best of ``n`` random CoBs (sampled as by :func:`nnteleport.sample_cob`: ``U[1 - s, 1 + s]``, signs
    flipped with probability 1/2 under ``"inter"`` where the plan allows) by an :class:`Objective`.

    Returns an :class:`OptimizedCoB` whose ``trace`` holds the objective of each candidate in sampling order,
    ``value`` the best of them and ``initial`` the objective at the identity (for comparison; the identity is not a
    candidate). Other parameters as in :func:`optimize_cob`.
    """
    s = _validate_cob_range(cob_range)
    if not isinstance(n, int) or n < 1:
        raise InvalidValueError(f"n must be a positive integer, got {n!r}")
    obj = Objective.parse(objective)
    fn = CoBFunction(model, x, leaf_modules=leaf_modules)
    f = _ObjectiveFn(fn, x, y, loss_fn, obj, lookahead_lr, probes, seed)
    plan = fn.plan
    initial = float(f(torch.ones(plan.num_free, dtype=torch.float64)).detach())
    trace: list[float] = []
    best_flat, best = None, -math.inf
    for _ in range(n):
        flat = sample_flat(plan.num_free, s, sampling, plan.positive_mask, generator)
        v = float(f(flat).detach())
        trace.append(v)
        score = v if maximize else -v
        if best_flat is None or score > best:
            best, best_flat = score, flat
    assert best_flat is not None
    return OptimizedCoB(plan.cob_from_flat(best_flat), trace, best if maximize else -best, initial, str(obj))


# ---------------------------------------------------------------------------------------------- balancing
class _Orbit:
    """``F(u) = sum_e w_e exp(2 (u[o_e] - u[i_e]))`` over the entries ``e`` of every moving parameter, with
    ``w_e = p_e^2`` (float64) and ``u = log t`` on ``t = [1, tau]`` (``u[0] = 0``): ``sum_p ||V_p||^2`` on the
    positive orbit. Entries with ``o_e = i_e`` (a weight from a space into itself) are constant and dropped."""

    def __init__(self, model: nn.Module, plan: TeleportPlan) -> None:
        named = dict(model.named_parameters())
        w, o, i = [], [], []
        self.const = 0.0
        for name, p in named.items():
            pd = p.detach().to("cpu", torch.float64)
            entry = plan.param_scale_indices.get(name)
            if entry is None:
                self.const += float(pd.pow(2).sum())
                continue
            oe = entry[0].expand(p.shape).reshape(-1)
            ie = torch.zeros_like(oe) if entry[1] is None else entry[1].expand(p.shape).reshape(-1)
            keep = oe != ie
            self.const += float(pd.reshape(-1)[~keep].pow(2).sum())
            w.append(pd.reshape(-1)[keep].pow(2))
            o.append(oe[keep])
            i.append(ie[keep])
        empty = torch.zeros(0, dtype=torch.long)
        self.w = torch.cat(w) if w else torch.zeros(0, dtype=torch.float64)
        self.o = torch.cat(o) if o else empty
        self.i = torch.cat(i) if i else empty
        self.n = plan.num_free + 1

    def value(self, u: Tensor) -> Tensor:
        """``F(u)`` (``u`` of shape ``(num_free,)``, differentiable)."""
        ue = torch.cat([u.new_zeros(1), u])
        return self.const + (self.w * torch.exp(2 * (ue[self.o] - ue[self.i]))).sum()

    def masses(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Incoming ``a_k`` and outgoing ``b_k`` squared mass of every neuron at ``u`` (shape ``(num_free,)``):
        ``F = a_k tau_k^2 + b_k tau_k^-2 + const`` as a function of ``tau_k`` alone."""
        ue = torch.cat([u.new_zeros(1), u])
        m = self.w * torch.exp(2 * (ue[self.o] - ue[self.i]))
        a = torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.o, m)[1:]
        b = torch.zeros(self.n, dtype=torch.float64).index_add_(0, self.i, m)[1:]
        return a, b

    def touching(self, idx: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The entries whose ``o_e`` or ``i_e`` is one of the neurons ``idx`` (indices into ``u``), in their
        order: ``(w, o, i)`` restricted to them, what :meth:`block_masses` needs for those neurons."""
        mark = torch.zeros(self.n, dtype=torch.bool)
        mark[idx + 1] = True
        keep = (mark[self.o] | mark[self.i]).nonzero().squeeze(1)
        return self.w[keep], self.o[keep], self.i[keep]

    def block_masses(self, u: Tensor, idx: Tensor, part: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """``masses(u)`` at the neurons ``idx`` alone, from their entries ``part = touching(idx)``: the same
        terms added in the same order, so the same numbers, at the cost of those entries only."""
        w, o, i = part
        ue = torch.cat([u.new_zeros(1), u])
        m = w * torch.exp(2 * (ue[o] - ue[i]))
        a = torch.zeros(self.n, dtype=torch.float64).index_add_(0, o, m)[idx + 1]
        b = torch.zeros(self.n, dtype=torch.float64).index_add_(0, i, m)[idx + 1]
        return a, b


def _coordinate_step(a: Tensor, b: Tensor, u: Tensor, lo: float, hi: float) -> Tensor:
    """Exact minimiser of ``a e^{2 u'} + b e^{-2 u'}`` over ``u'`` in ``[lo, hi]`` given ``a, b`` at ``u``:
    ``u' = u + log(b / a) / 4`` (``tau^2 = sqrt(b / a)`` times the current ``tau^2``), clipped; with ``a = 0``
    (``b = 0``) the function decreases towards ``hi`` (``lo``); with no bound there (``inf``), or ``a = b = 0``,
    the neuron keeps its factor."""
    with torch.no_grad():
        d = torch.where((a > 0) & (b > 0), torch.log(b / a) / 4, torch.zeros_like(u))
        new = u + d
        new = torch.where((a == 0) & (b > 0), torch.full_like(u, hi), new)
        new = torch.where((b == 0) & (a > 0), torch.full_like(u, lo), new)
        new = torch.where(torch.isfinite(new), new, u)
        return new.clamp(lo, hi)


def balanced_cob(
    model: nn.Module,
    x: Any,
    *,
    cob_range: float | None = None,
    tol: float = 1e-12,
    max_sweeps: int = 1000,
    leaf_modules: Sequence[type | str] = (),
) -> OptimizedCoB:
    """The CoB with positive factors that minimises ``F = sum_p ||V(tau)_p||^2`` over the orbit (ENorm, Stock et al.
    2019): weights, biases and normalisation parameters of every moving parameter, all free neurons.

    ``F(u) = sum_e p_e^2 exp(2 (u[out_e] - u[in_e]))`` is convex in ``u = log tau``; as a function of one neuron's
    ``tau_k`` it is ``a_k tau_k^2 + b_k / tau_k^2 + const`` (``a_k``, ``b_k`` its incoming and outgoing squared
    mass), minimised exactly by ``tau_k^2 <- tau_k^2 sqrt(b_k / a_k)``. Sweeps of exact coordinate minimisation
    (all neurons of a group at once when no parameter couples two neurons of that group, else one neuron at a
    time) decrease ``F`` monotonically and converge to the global minimum, which balances ``a_k = b_k`` for every
    neuron. With ``cob_range = s`` each coordinate step is clipped to ``1 - s <= tau <= 1 + s`` (the exact
    minimiser of a convex 1-D function on an interval): the result is the minimum over that box. Neurons with zero
    incoming or outgoing mass keep their factor when unbounded (no minimum exists) and go to the bound otherwise.

    Stops when the largest ``|u|`` change of a sweep is ``<= tol`` or after ``max_sweeps`` sweeps. For ReLU networks
    the teleported model needs no activation wrapper; for others :func:`nnteleport.teleport` installs them (the
    distance module's ``canonicalize`` balances the ``homogeneous`` groups only). ``trace`` holds ``F`` at the
    identity and after each sweep.
    """
    if cob_range is None:
        lo, hi = -math.inf, math.inf
    else:
        s = _validate_cob_range(cob_range)
        lo, hi = math.log1p(-s), math.log1p(s)
    plan = analyze(model, x, leaf_modules=leaf_modules)
    orbit = _Orbit(model, plan)
    u = torch.zeros(plan.num_free, dtype=torch.float64)
    blocks: list[Tensor] = []  # index sets (into u) updated together
    for g in plan.groups.values():
        k0, k1 = g.offset + 1, g.offset + 1 + g.size  # range in t
        coupled = bool(((orbit.o >= k0) & (orbit.o < k1) & (orbit.i >= k0) & (orbit.i < k1)).any())
        idx = torch.arange(g.offset, g.offset + g.size)
        blocks.extend(idx[j : j + 1] for j in range(g.size)) if coupled else blocks.append(idx)
    parts = [orbit.touching(idx) for idx in blocks]  # each block's update reads only the entries it touches
    f = orbit.value(u)
    trace = [float(f)]
    for _ in range(max_sweeps):
        before = u.clone()
        for idx, part in zip(blocks, parts):
            a, b = orbit.block_masses(u, idx, part)
            new = _coordinate_step(a, b, u[idx], lo, hi)
            # every entry touching the block touches one of its neurons once: F moves by
            # sum_k a_k (e^{2 d_k} - 1) + b_k (e^{-2 d_k} - 1), d = new - old (no pass over the other entries)
            d = new - u[idx]
            f = f + (a * torch.expm1(2 * d) + b * torch.expm1(-2 * d)).sum()
            u[idx] = new
        trace.append(float(f))
        if not u.numel() or float((u - before).abs().max()) <= tol:
            break
    trace[-1] = float(orbit.value(u))  # the final value recomputed from scratch (no accumulated round-off)
    return OptimizedCoB(plan.cob_from_flat(torch.exp(u)), trace, trace[-1], trace[0], "sq_norm")
