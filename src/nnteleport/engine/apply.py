"""Teleportation: apply a change of basis to a model, preserving its function exactly.

``teleport(model, x, cob)`` rescales every parameter as ``p * t[out] / t[in]`` (Armenta et al. 2023, Eq. 4:
``w'_ab = tau_b / tau_a * w_ab``; biases ``b'_b = tau_b * b_b``; batch-norm ``gamma``, ``beta`` by ``tau``) and
installs ``g(x) = tau * f(x / tau)`` on the activations that need it (:class:`TeleportedActivation`). Statistics
of normalisation layers are untouched. The analysis (:func:`nnteleport.analyze`) is cached per model and input
shape, so repeated teleports cost one pass over the parameters.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nnteleport.engine import rewrite
from nnteleport.engine.activation import FunctionalOp, TeleportedActivation
from nnteleport.engine.analysis import Functional, TeleportPlan, _register, analyze
from nnteleport.engine.cob import CoB, Sampling, _validate_cob_range, sample_flat
from nnteleport.engine.rules import Kind
from nnteleport.errors import InvalidValueError

__all__ = ["TeleportedActivation", "apply_cob", "micro_teleport", "sample_cob", "teleport"]


def _scale_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


class _Layout:
    """Precomputed gather indices of one plan on one device: every factor of every parameter is built by one
    gather over the whole model, and applied with one ``_foreach_mul_`` (output factors) and one ``_foreach_div_``
    (input factors) -- two passes over the weights, each in a memory-friendly pattern:

    * a *column* factor ``(O, 1, ..., 1)`` (constant over each row's contiguous block): biases, ``tau_out`` of every
      weight, ``tau_in`` of depthwise kernels;
    * a *row* factor over the flattened trailing dims, the weight viewed as ``(O, I * k * k)``: ``tau_in`` of linear
      and (non-grouped) conv weights, each input channel's factor repeated over its kernel entries.

    Broadcasting an ``(O, I, 1, 1)`` ratio over ``3 x 3`` kernels instead is ~4x slower than a plain pass (measured),
    and building it costs two ``O * I`` gathers. Grouped (not depthwise) convolutions fall back to broadcasting.
    """

    def __init__(self, plan: TeleportPlan, params: dict[str, Tensor], device: torch.device) -> None:
        self.names: list[str] = []
        self.out_idx: list[Tensor] = []
        self.out_shapes: list[tuple[int, ...]] = []
        self.out_views: list[tuple[int, ...] | None] = []
        self.in_names: list[str] = []
        self.in_idx: list[Tensor] = []
        self.in_shapes: list[tuple[int, ...]] = []
        self.in_views: list[tuple[int, ...] | None] = []
        for name, (o, i) in plan.param_scale_indices.items():
            p = params.get(name)
            if p is None:
                raise InvalidValueError(f"parameter {name!r} of the plan is missing from the model")
            if p.device != device:
                continue
            self.names.append(name)
            idx, shape, view = self._factor(o, p)
            self.out_idx.append(idx)
            self.out_shapes.append(shape)
            self.out_views.append(view)
            if i is not None:
                idx, shape, view = self._factor(i, p)
                self.in_names.append(name)
                self.in_idx.append(idx)
                self.in_shapes.append(shape)
                self.in_views.append(view)
        self.out_sizes = [t.numel() for t in self.out_idx]
        self.in_sizes = [t.numel() for t in self.in_idx]
        empty = torch.zeros(0, dtype=torch.long)
        self.out_all = torch.cat(self.out_idx or [empty]).to(device)
        self.in_all = torch.cat(self.in_idx or [empty]).to(device)
        self._prepared: dict[torch.dtype, _Prepared] = {}

    @staticmethod
    def _factor(X: Tensor, p: Tensor) -> tuple[Tensor, tuple[int, ...], tuple[int, ...] | None]:
        """(flat gather index, factor shape, view of ``p`` to apply it to, or None for ``p`` itself)."""
        from nnteleport.engine.rules import compress

        shape = tuple(p.shape)
        X = X.view((1,) * (len(shape) - X.dim()) + tuple(X.shape))
        Xc = compress(X)
        if all(s == 1 for s in Xc.shape[1:]):  # column: constant over each row
            return Xc.reshape(-1), tuple(Xc.shape), None
        if Xc.shape[0] == 1 and p.is_contiguous() and len(shape) >= 2:  # row over the flattened trailing dims
            rest = math.prod(shape[1:])
            return Xc.expand((1, *shape[1:])).reshape(-1), (1, rest), (shape[0], rest)
        return Xc.reshape(-1), tuple(Xc.shape), None  # general broadcast (grouped convolutions)

    def prepared(self, params: dict[str, Tensor], dtype: torch.dtype) -> _Prepared:
        """Persistent factor buffers and parameter views for one parameter dtype (rebuilt if parameters were
        replaced by other tensor objects)."""
        prep = self._prepared.get(dtype)
        if prep is None or not prep.valid_for(params):
            prep = self._prepared[dtype] = _Prepared(self, params, dtype)
        return prep


class _Prepared:
    """For one dtype: ``out_buf``/``in_buf`` filled in place by ``index_select``; ``out_factors``/``in_factors``
    are views into them shaped for each parameter; ``out_targets``/``in_targets`` the (viewed) parameters."""

    def __init__(self, layout: _Layout, params: dict[str, Tensor], dtype: torch.dtype) -> None:
        sd = _scale_dtype(dtype)
        device = layout.out_all.device
        self.params = {n: params[n] for n in layout.names if params[n].dtype == dtype}
        self.out_buf = torch.empty(layout.out_all.numel(), dtype=sd, device=device)
        self.in_buf = torch.empty(layout.in_all.numel(), dtype=sd, device=device)
        self.out_targets, self.out_factors, self.in_targets, self.in_factors = [], [], [], []
        for part, names, sizes, shapes, views, targets, factors in (
            (self.out_buf, layout.names, layout.out_sizes, layout.out_shapes, layout.out_views,
             self.out_targets, self.out_factors),
            (self.in_buf, layout.in_names, layout.in_sizes, layout.in_shapes, layout.in_views,
             self.in_targets, self.in_factors),
        ):  # fmt: skip
            for name, chunk, shape, view in zip(names, torch.split(part, sizes), shapes, views):
                if name in self.params:
                    p = self.params[name]
                    targets.append(p if view is None else p.view(view))
                    factors.append(chunk.view(shape))

    def valid_for(self, params: dict[str, Tensor]) -> bool:
        return all(params.get(n) is p for n, p in self.params.items())


@torch.no_grad()
def apply_cob(model: nn.Module, plan: TeleportPlan, flat: Tensor) -> nn.Module:
    """Teleport ``model`` in place by the flat factors ``flat`` (``plan.num_free`` values, already validated).

    ``p *= t[out]`` then ``p /= t[in]`` for every moving parameter (``t = [1, tau...]``): the factors of all
    parameters are gathered into persistent buffers (one ``index_select`` each) whose views are applied with one
    ``torch._foreach_mul_`` and one ``torch._foreach_div_`` per device and dtype (see :class:`_Layout`); then the
    activation wrappers. Returns ``model``.
    """
    _rescale(model, plan, flat)
    if plan.sites:
        _apply_sites(model, plan, flat)
    return model


@torch.no_grad()
def _rescale(model: nn.Module, plan: TeleportPlan, flat: Tensor) -> None:
    """The parameter part of :func:`apply_cob`."""
    params = dict(model.named_parameters())
    devices = {params[n].device for n in plan.param_scale_indices if n in params}
    for device in devices:
        layout = plan._device_cache.get(("layout", device))
        if layout is None:
            layout = plan._device_cache[("layout", device)] = _Layout(plan, params, device)
        t64 = torch.cat([torch.ones(1, dtype=torch.float64), flat.to(torch.float64)]).to(device)
        for dtype in {params[n].dtype for n in layout.names}:
            prep = layout.prepared(params, dtype)
            t = t64.to(prep.out_buf.dtype)
            if prep.out_targets:
                torch.index_select(t, 0, layout.out_all, out=prep.out_buf)
                torch._foreach_mul_(prep.out_targets, prep.out_factors)
            if prep.in_targets:
                torch.index_select(t, 0, layout.in_all, out=prep.in_buf)
                torch._foreach_div_(prep.in_targets, prep.in_factors)


def _apply_sites(model: nn.Module, plan: TeleportPlan, flat: Tensor) -> bool:
    """Apply the activation sites' factors; whether a module was replaced by a wrapper (the module structure, part
    of the plan cache's key, changed)."""
    dtype = _model_dtype(model)
    t = torch.cat([torch.ones(1, dtype=torch.float64), flat.to(torch.float64)])
    wrapped = False
    for site in plan.sites:
        tau = t[site.index]
        module = model.get_submodule(site.path)
        if isinstance(module, TeleportedActivation):
            module.tau.mul_(tau.to(module.tau.device, module.tau.dtype))
            continue
        if site.kind is Kind.POSITIVE and not bool((tau < 0).any()):
            continue
        if bool((tau == 1).all()):
            continue
        device = next((b.device for b in module.buffers()), None) or next(
            (p.device for p in model.parameters()), torch.device("cpu")
        )
        wrapper = TeleportedActivation(module, tau.to(device, dtype))
        # every place that holds this module object (several parents, or twice in one Sequential)
        places = [(p, a) for p in model.modules() for a, c in p._modules.items() if c is module]
        for parent, attr in places:
            setattr(parent, attr, wrapper)
        wrapped = True
    return wrapped


def teleport(
    model: nn.Module,
    x: Any,
    cob: Mapping[str, Tensor] | None = None,
    *,
    cob_range: float = 0.5,
    sampling: str | Sampling = "intra",
    generator: torch.Generator | None = None,
    inplace: bool = False,
    leaf_modules: Any = (),
    functional: str | Functional = "rewrite",
) -> nn.Module:
    """Teleport ``model``: a model computing exactly the same function at another point of weight space.

    Parameters
    ----------
    model:
        Any ``nn.Module`` traceable by ``torch.fx``; the result is an instance of its class (or of a generated
        subclass, see ``functional``) with the same parameter and buffer names, shapes, device, dtype and
        train/eval mode.
    x:
        Example input batch (tensor or tuple of tensors) used to trace the model; the analysis is cached per
        model and input shape (batch axis excluded), so repeated teleports do not re-trace.
    cob:
        The change of basis (group name -> factors, e.g. from :func:`nnteleport.sample_cob`); groups left out
        keep ``tau = 1``. If ``None``, one is sampled with ``cob_range``, ``sampling`` and ``generator``.
    cob_range, sampling, generator:
        Used only when ``cob`` is ``None`` (see :func:`nnteleport.sample_cob`).
    inplace:
        Modify ``model`` itself (parameters rescaled in place, activation modules replaced by wrappers where
        needed, its class switched to the generated subclass when functional calls need wrappers) instead of a
        deep copy.
    leaf_modules:
        Submodules (types or qualified names) to treat as black boxes at ``tau = 1``.
    functional:
        What to do with activations called as functions in ``forward`` (``F.gelu(h)``, ``h.tanh()``), see
        :class:`nnteleport.engine.analysis.Functional`. ``"rewrite"`` (default): they are teleported; when one
        needs ``tau * f(x / tau)``, the result is an instance of the generated subclass ``Teleported<Name>`` of the
        model's class whose ``forward`` runs the traced graph(s) with such calls wrapped (the ``tau`` buffers are
        ``teleport_functional.<call>.tau`` in ``state_dict``); when none does, the plain class.
        ``"constrain"``: the model's own forward keeps running; such calls restrict their neurons to ``tau > 0``
        (ReLU-like) or pin them. ``"graph"``: as ``"rewrite"``, but the result is a ``torch.fx.GraphModule``
        (refused for mode-dependent graphs and with ``inplace=True``).

    Returns
    -------
    nn.Module
        The teleported model. Same outputs for all inputs, in train and eval mode (batch-norm statistics are
        not touched). Activations that need it become ``TeleportedActivation`` (``tau * f(x / tau)``, ``tau``
        in a buffer, so ``state_dict`` round-trips); teleporting a teleported model composes.
    """
    plan = analyze(model, x, leaf_modules=leaf_modules, functional=functional)
    if cob is None:
        flat = sample_flat(plan.num_free, cob_range, sampling, plan.positive_mask, generator)
    else:
        flat = plan.flat(cob)
    _check_representable(model, plan, flat)
    rewrites = _functional_wrappers(plan, flat)
    if rewrites and inplace and plan.rewrite is None:
        raise InvalidValueError(
            "functional='graph' with inplace=True: functional activation calls need wrappers, which requires a new "
            "GraphModule; use inplace=False (or functional='rewrite', the default, which keeps the model object)"
        )
    target = model if inplace else _deepcopy(model)
    _rescale(target, plan, flat)
    wraps = bool(plan.sites) and _apply_sites(target, plan, flat)  # new wrappers change the module structure
    if rewrites and plan.rewrite is not None:
        device = next((p.device for p in target.parameters()), torch.device("cpu"))
        plan = rewrite.install(target, plan, rewrites, _model_dtype(target), device)
        _register(target, x, plan, leaf_modules, functional)  # the wrapped calls are module sites now
        return target
    if rewrites:
        return _as_graph_module(target, plan, rewrites)
    if target is not model or wraps:
        _register(target, x, plan, leaf_modules, functional)  # a copy or new wrappers: the same analysis
    return target


def _deepcopy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also copies models holding non-leaf tensors in plain attributes (the last outputs
    kept by a hook, ``weight`` computed by old-style ``weight_norm`` or pruning pre-hooks), which
    ``Tensor.__deepcopy__`` refuses: those are copied detached (they are recomputed by the next forward)."""
    memo: dict[int, Any] = {}
    for m in model.modules():
        for v in vars(m).values():
            for t in _tensors_in(v):
                if t.grad_fn is not None:
                    memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def _tensors_in(v: Any, depth: int = 0) -> list[Tensor]:
    if isinstance(v, Tensor):
        return [v]
    if depth < 3 and isinstance(v, (list, tuple)):
        return [t for e in v for t in _tensors_in(e, depth + 1)]
    if depth < 3 and isinstance(v, dict):
        return [t for e in v.values() for t in _tensors_in(e, depth + 1)]
    return []


def _check_representable(model: nn.Module, plan: TeleportPlan, flat: Tensor) -> None:
    """Refuse factors that the model's dtype cannot hold (``1e-300`` on a float32 model would become 0, its
    inverse inf, the teleported weights NaN), before anything is changed."""
    dtypes = {_scale_dtype(p.dtype) for p in model.parameters() if p.is_floating_point()}
    if not dtypes or not flat.numel():
        return
    a = flat.abs().to(torch.float64)
    for dtype in dtypes:
        info = torch.finfo(dtype)
        bad = (a < info.tiny) | (a > info.max) | (1 / a > info.max)
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            group = next(g for g in plan.groups.values() if g.offset <= j < g.offset + g.size)
            raise InvalidValueError(
                f"CoB factor {float(flat[j]):.3g} of group {group.name!r} (neuron {j - group.offset}) is outside the "
                f"range of the model's {dtype} ({info.tiny:.3g} to {info.max:.3g}): teleporting would give inf/NaN; "
                "use factors of moderate size or a float64 model"
            )


def _functional_wrappers(plan: TeleportPlan, flat: Tensor) -> list[tuple[str, Tensor]]:
    """(node name, tau) of the functional call sites whose factors need ``tau * f(x / tau)``."""
    if not plan.functional_sites:
        return []
    t = torch.cat([torch.ones(1, dtype=torch.float64), flat.to(torch.float64)])
    out = []
    for site in plan.functional_sites:
        tau = t[site.index]
        if (site.kind is Kind.POSITIVE and bool((tau < 0).any())) or (
            site.kind is not Kind.POSITIVE and not bool((tau == 1).all())
        ):
            out.append((site.path, tau))
    return out


def _as_graph_module(model: nn.Module, plan: TeleportPlan, rewrites: list[tuple[str, Tensor]]) -> nn.Module:
    """``model`` (already teleported) as a GraphModule whose functional activation calls are wrapped."""
    import torch.fx as fx

    assert plan.graph is not None
    graph = copy.deepcopy(plan.graph)
    for name, value in plan.constants.items():  # tensors torch.fx keeps as graph constants (`model` is a copy)
        setattr(model, name, value)
    gm = fx.GraphModule(model, graph, class_name=f"Teleported{type(model).__name__}")
    nodes = {n.name: n for n in gm.graph.nodes}
    dtype = _model_dtype(model)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    for name, tau in rewrites:
        node = nodes[name]
        fn = FunctionalOp(node.op, node.target, node.args[1:], node.kwargs)
        path = f"teleport_functional.{name}"
        gm.add_submodule(path, TeleportedActivation(fn, tau.to(device, dtype)))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(path, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.recompile()
    gm.training = model.training
    return gm


def micro_teleport(
    model: nn.Module,
    x: Any,
    cob_range: float = 1e-3,
    sampling: str | Sampling = "intra",
    generator: torch.Generator | None = None,
    *,
    leaf_modules: Any = (),
    functional: str | Functional = "rewrite",
) -> Tensor:
    """The micro-teleportation vector ``V - W`` (flattened, in ``model.parameters()`` order) for a small
    ``cob_range`` (paper, Sec. 5.1: it is orthogonal to the back-propagated gradient up to ``O(s)``).

    Computed in float64 from the plan, ``W * (t[out] / t[in] - 1)``, whatever the model's dtype: a teleported copy in
    bfloat16 or float16 would round a change of ``1e-3`` away (the vector would be zero). Returns a float64 vector on
    the device of the model's first parameter; the model is not modified.
    """
    plan = analyze(model, x, leaf_modules=leaf_modules, functional=functional)
    flat = sample_flat(plan.num_free, cob_range, sampling, plan.positive_mask, generator)
    t = torch.cat([torch.ones(1, dtype=torch.float64), flat.to(torch.float64)])
    chunks = []
    for name, p in model.named_parameters():
        entry = plan.param_scale_indices.get(name)
        w = p.detach().to(torch.float64)
        if entry is None:
            chunks.append(torch.zeros(p.numel(), dtype=torch.float64, device=p.device))
            continue
        o, i = entry
        ratio = t[o] if i is None else t[o] / t[i]
        chunks.append((w * (ratio.to(p.device) - 1)).reshape(-1))
    if not chunks:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([c.to(chunks[0].device) for c in chunks])


def sample_cob(
    model: nn.Module,
    x: Any,
    cob_range: float = 0.5,
    sampling: str | Sampling = "intra",
    generator: torch.Generator | None = None,
    *,
    leaf_modules: Any = (),
    functional: str | Functional = "rewrite",
) -> CoB:
    """Sample a CoB for ``model`` (paper, Sec. 4).

    Parameters
    ----------
    model, x:
        The model and an example input batch (tensor or tuple of tensors), used to trace it (cached).
    cob_range:
        ``s`` in ``(0, 1)``; factors lie in ``[1 - s, 1 + s]`` (and the mirrored interval for ``"inter"``).
    sampling:
        ``"intra"`` or ``"inter"``. Neurons that must stay positive (see the report) are never flipped.
    generator:
        Optional ``torch.Generator`` for reproducibility.
    leaf_modules, functional:
        As in :func:`nnteleport.teleport` (``functional="constrain"`` pins or restricts the neurons of activations
        called as functions; the default ``"rewrite"`` frees them).

    Returns
    -------
    CoB
        Group name -> float64 tensor of factors, shape ``(group size,)``.
    """
    s = _validate_cob_range(cob_range)
    mode = Sampling.parse(sampling)
    plan = analyze(model, x, leaf_modules=leaf_modules, functional=functional)
    flat = sample_flat(plan.num_free, s, mode, plan.positive_mask, generator)
    return plan.cob_from_flat(flat)
