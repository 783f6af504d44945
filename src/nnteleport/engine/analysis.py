"""Graph analysis: which neurons of a model can be teleported, and how every parameter scales.

The model is traced with ``torch.fx`` and run once on the example input by an interpreter that, next to the real
values, propagates a *space* per tensor (see :mod:`nnteleport.engine.rules`): an integer tensor naming, for every
element, the neuron variable whose factor ``tau`` scales it (``0`` = the constant 1). Linear maps, convolutions
and affine normalisations create fresh variables; residual adds merge variables (union-find); inputs, outputs and
whatever the engine does not understand pin variables to 1. The result, a :class:`TeleportPlan`, lists

* the free **groups** (one per hidden channel space, named after the module that produces it; spaces merged by
  residual connections belong to the group of the first of them),
* for every parameter the index tensors ``(out_idx, in_idx)`` into ``t = [1, tau_1, ..., tau_n]`` such that the
  teleported parameter is ``p * t[out_idx] / t[in_idx]`` (Armenta et al. 2023, Eq. 4: ``w'_ab = tau_b / tau_a w_ab``),
* the activation sites that need ``g(x) = tau * f(x / tau)``,
* a :class:`~nnteleport.engine.report.TeleportReport` of coverage and of what was pinned and why.

The model is traced in train and in eval mode (when the two graphs differ, e.g. ``if self.training`` in a user's
forward, the constraints of both are combined), so a teleported model is exact in both modes. Plans are cached per
(model, input shapes without the batch axis, dtypes, module structure): teleporting the same model again does not
re-trace.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from nnteleport._choice import Choice
from nnteleport.engine import inspection, rewrite
from nnteleport.engine.plan import GroupInfo, TeleportPlan, _finalize, _State
from nnteleport.engine.trace import Keywords, _flat_values, _graph_key, _trace, keyword_arguments, specializations
from nnteleport.engine.value_trace import sequence_variants
from nnteleport.engine.walk import _NodeFailed, _Walker
from nnteleport.errors import InvalidArgumentError, UnsupportedModelError, UntraceableModelError

__all__ = ["Functional", "GroupInfo", "TeleportPlan", "UntraceableModelError", "analyze"]


class Functional(Choice, what="functional mode"):
    """What to do with activations called as functions (``F.gelu(x)``) in a user's ``forward``.

    * ``"rewrite"`` (default): such calls are teleported too. Where a call needs ``tau * f(x / tau)``, the
      teleported model becomes an instance of a generated subclass ``Teleported<Name>`` of the model's class
      (same methods, attributes, submodule, parameter and ``state_dict`` names, plus the ``tau`` buffers of the
      wrappers) whose ``forward`` runs the traced graph(s) of the model's forward with the calls wrapped
      (:mod:`nnteleport.engine.rewrite`). A model whose forward cannot be replaced by its traced graph (it sets
      attributes or fills containers while running, its ``forward`` is replaced on the instance, it is a
      ``GraphModule``, its signature cannot be mirrored) is analysed as ``"constrain"``, said in the report's
      ``notes`` and by a warning.
    * ``"constrain"``: the model keeps its class and its own ``forward`` runs; positively homogeneous functions
      (``F.relu``, ``F.max_pool2d``) restrict their neurons to ``tau > 0``, other functions pin them to 1.
    * ``"graph"`` (kept for compatibility): the teleported model is a ``torch.fx.GraphModule`` whose forward calls
      ``tau * f(x / tau)`` at each such call (same parameter names); refused when the model's traced graph differs
      between train and eval mode (``if self.training:`` in ``forward``). Same coverage as ``"rewrite"``.
    """

    REWRITE = "rewrite"
    CONSTRAIN = "constrain"
    GRAPH = "graph"


# ---------------------------------------------------------------------------------------------- entry point
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, TeleportPlan]] = weakref.WeakKeyDictionary()


def _as_inputs(x: Any) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise InvalidArgumentError(
        f"x must be an example input batch: a tensor or a tuple of tensors passed to forward(), got {type(x).__name__}"
    )


_CONSTANTS = (bool, int, float, str, type(None))


def _as_call(x: Any) -> tuple[tuple[Tensor, ...], Keywords | None]:
    """The example tensors and, for a dict (``model(**x)``: Hugging Face style ``{"input_ids": ids}``), its
    keywords (see :func:`nnteleport.engine.trace.keyword_arguments`; ``None`` for positional inputs). Entries that
    are plain constants (``use_cache=False``) are passed as they are."""
    if isinstance(x, dict):

        def ok(k: Any, v: Any) -> bool:
            return (
                isinstance(k, str)
                and k.isidentifier()
                and k not in ("self", "_fn")
                and (isinstance(v, Tensor) or type(v) in _CONSTANTS)
            )

        bad = [k for k, v in x.items() if not ok(k, v)]
        tensors = tuple(v for v in x.values() if isinstance(v, Tensor))
        if not tensors or bad:
            raise InvalidArgumentError(
                "x as a dict must map forward()'s parameter names to tensors or plain constants (model(**x)), "
                f"with at least one tensor; got {f'entry {bad[0]!r}' if bad else 'no tensor'}"
            )
        return tensors, tuple(k if isinstance(v, Tensor) else (k, v) for k, v in x.items())
    return _as_inputs(x), None


def _fingerprint(model: nn.Module) -> tuple:
    """Module structure, parameter shapes and sharing (``b.weight = a.weight`` ties two layers), and what can switch
    a forward without changing the structure (plain Python attributes such as ``self.use_skip``, hooks, replaced
    methods: :func:`inspection.state_fingerprint`), in one walk over the modules (checked on every cached call)."""
    first: dict[int, int] = {}  # id(parameter) -> index of its first occurrence

    def param(p: Any) -> Any:
        if p is None:
            return None
        return tuple(p.shape), first.setdefault(id(p), len(first))

    return tuple(
        (
            name,
            type(m),
            tuple((k, param(p)) for k, p in m._parameters.items()),
            inspection.state_fingerprint(m),
        )
        for name, m in model.named_modules(remove_duplicate=False)
    )


def _cache_key(model: nn.Module, inputs: Sequence[Tensor], leaf_modules: tuple, names: Any = None) -> tuple:
    sig = tuple((tuple(t.shape[1:]), t.dtype) for t in inputs)
    return (sig, names, leaf_modules, _fingerprint(model))


def _changed(live: Any, saved: Any) -> bool:
    """Whether a container's contents differ from a shallow copy (by identity, so tensors are never compared)."""
    if isinstance(live, dict):
        return live.keys() != saved.keys() or any(live[k] is not saved[k] for k in live)
    return len(live) != len(saved) or any(a is not b for a, b in zip(live, saved))


# in-place methods that change no element of the tensor (metadata only): no snapshot needed
_NOT_WRITES = frozenset({"requires_grad_", "share_memory_", "rename_", "retain_grad"})


# torch functions that write into an argument through a call the guard does not see (a TorchFunctionMode sees the
# outermost overridable call only): F.embedding(max_norm=...) renormalises rows, batch/instance norm update the
# running statistics they are given
_WRITING_FUNCTIONS = frozenset({F.embedding, F.embedding_bag, F.batch_norm, F.instance_norm, torch.batch_norm})


def _writes(func: Any, kwargs: dict[str, Any]) -> bool:
    """Whether a torch call may write into one of its tensor arguments: an in-place name (``x.clamp_``,
    ``torch.relu_``, ``x += y``, ``x[i] = v``, ``x.data = y``), an ``out=`` argument, or one of
    :data:`_WRITING_FUNCTIONS` (decided once per function: the guard sees every torch call of the analysis)."""
    if kwargs and kwargs.get("out") is not None:
        return True
    try:
        return _WRITES[func]
    except KeyError:
        name = getattr(func, "__name__", "")
        w = (
            func in _WRITING_FUNCTIONS
            or name in ("__setitem__", "__set__")
            or (name.startswith("__i") and name.endswith("__"))
            or (name.endswith("_") and not name.endswith("__") and name not in _NOT_WRITES)
        )
        _WRITES[func] = w
        return w
    except TypeError:  # an unhashable callable: decide by name
        name = getattr(func, "__name__", "")
        return name.endswith("_") or name.startswith("__i") or name in ("__setitem__", "__set__")


_WRITES: dict[Any, bool] = {}


def _storage(t: Tensor) -> int:
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # no storage (meta, some subclasses): nothing to restore
        return 0


class _ParameterWriteGuard(TorchFunctionMode):
    """Copies a parameter just before a torch call that may write into its memory (directly, through a view, or
    through ``.data``), so :func:`_preserved` restores it; parameters nothing writes are never copied (a copy of
    every parameter was a third of the analysis of large models). Entered around the model's own code only
    (tracing, each node the walker runs), not around the engine's rules."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.by_storage: dict[int, list[nn.Parameter]] = {}
        for p in params:
            ptr = _storage(p)
            if ptr:
                self.by_storage.setdefault(ptr, []).append(p)
        self.saved: dict[int, tuple[nn.Parameter, Tensor]] = {}

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if _writes(func, kwargs) and self.by_storage:
            for t in _flat_values((args, kwargs)):
                if isinstance(t, Tensor):
                    for p in self.by_storage.get(_storage(t), ()):
                        if id(p) not in self.saved:
                            self.saved[id(p)] = (p, p.detach().clone())
        return func(*args, **kwargs)


def _set_mode(model: nn.Module, training: bool) -> None:
    """``model.train(training)``; when no module overrides ``train``, the flags are written directly (the same
    effect without ``nn.Module.__setattr__``, a third of the analysis of models with thousands of modules)."""
    mods = list(model.modules())
    if all(type(m).train is nn.Module.train and "training" in vars(m) for m in mods):
        for m in mods:
            vars(m)["training"] = training
    else:
        model.train(training)


@contextlib.contextmanager
def _preserved(model: nn.Module, devices: list[torch.device]) -> Any:
    """Run the model for analysis without side effects: parameters and buffers that the forward overwrites
    (``nn.Embedding(max_norm=...)`` renormalises rows, ``w.data.clamp_()``, in-place updates of statistics),
    module attributes set while tracing (tracing objects stored by user code or hooks), RNG and train/eval modes
    are restored. Buffers are copied up front; a parameter is copied by :class:`_ParameterWriteGuard` just before a
    call writes into it. A parameter changed in a way the guard cannot see (inside a native kernel) is an error."""
    params = dict(model.named_parameters(remove_duplicate=False))
    versions = {k: p._version for k, p in params.items()}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    attrs = {m: dict(vars(m)) for m in model.modules()}
    # containers the forward or its hooks fill (``self.feats[name] = out``): their contents are restored too
    containers = [
        (v, copy.copy(v)) for before in attrs.values() for k, v in before.items()
        if not k.startswith("_") and type(v) in (dict, list)
    ]  # fmt: skip
    guard = _ParameterWriteGuard(list(params.values()))

    def restore_python_state(final: bool = False) -> None:
        """Module attributes and filled containers as they were: also between two traces, so that nothing one
        trace stored (a proxy cached in ``self.cache[key]``) leaks into the next one's graph; the tensor constants
        torch.fx stores (``_tensor_constantN``, read by the walks of the graphs) are removed at the end only."""
        for live, saved in containers:
            if _changed(live, saved):
                live.clear()
                live.update(saved) if isinstance(live, dict) else live.extend(saved)
        for m, before in attrs.items():
            now = vars(m)
            for k in [k for k in now if k not in before and (final or not k.startswith("_tensor_constant"))]:
                del now[k]
            for k, v in before.items():  # (the train/eval flags are the analysis' to set between traces)
                if (now.get(k, v) is not v or k not in now) and (final or k != "training"):
                    now[k] = v

    guard.restore_python_state = restore_python_state
    cuda = [d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda, enabled=True), torch.no_grad():
        try:
            yield guard  # entered around whatever runs the model's code (tracing, each walked node)
        finally:
            for p, saved in guard.saved.values():
                p.copy_(saved)
            for m, t in modes.items():
                if vars(m).get("training") is not t:
                    m.training = t
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
            restore_python_state(final=True)
    unseen = [k for k, p in params.items() if p._version != versions[k] and id(p) not in guard.saved]
    if unseen:
        raise UnsupportedModelError(
            f"the forward of {type(model).__name__} changed parameter {unseen[0]!r} in place in a way analyze cannot "
            "undo (inside a native op); make the forward leave its parameters unchanged, or pass the module that "
            "does this in leaf_modules"
        )


def _batch_variant(inputs: Sequence[Tensor]) -> tuple[Tensor, ...] | None:
    """The example inputs with one more sample (the first repeated), to check that the plan does not depend on the
    batch size (a model that mixes samples: ``torch.cat([h, g])[2:4]``)."""
    if not inputs or any(t.dim() == 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        return None
    return tuple(torch.cat([t, t[:1]]) for t in inputs)


def analyze(
    model: nn.Module, x: Any, *, leaf_modules: Sequence[type | str] = (), functional: str | Functional = "rewrite"
) -> TeleportPlan:
    """Analyse ``model`` for teleportation (cached: a second call with the same input shapes does not re-trace).

    Parameters
    ----------
    model:
        Any ``nn.Module`` traceable by ``torch.fx``.
    x:
        An example input batch (a tensor, or a tuple of tensors passed positionally to ``forward``, or a dict of
        tensors passed by keyword, ``model(**x)``, where plain constants such as ``use_cache=False`` may be among
        them; ``forward``'s further parameters keep their defaults). Only its shapes matter (the batch axis is
        ignored in the cache key); a batch of 2 is enough and fastest.
    leaf_modules:
        Submodule types or qualified names to treat as black boxes (e.g. code ``torch.fx`` cannot trace); their
        inputs and outputs stay at ``tau = 1``.
    functional:
        ``"rewrite"`` (default), ``"constrain"`` or ``"graph"``: how activations called as functions are treated
        (see :class:`Functional`).

    Returns
    -------
    TeleportPlan
        Groups, per-parameter scale indices, activation sites and the report (``print(plan.report)``).

    Notes
    -----
    What can make a forward compute something else than what was analysed, and how the plan stays valid:

    * ``train()``/``eval()`` and ``torch.is_grad_enabled()``: the model is traced in all four combinations and the
      constraints of the distinct graphs are combined, so one plan holds in every mode;
    * the batch size: every rule sees spaces, not values, so a plan depends on the batch size only where a space
      has different factors along the first (batch) axis -- a model that mixes samples, ``torch.cat([h, g])[2:4]``.
      Where that happens, the graph is also run on the example batch with one more sample and the constraints of
      both runs combined, which pins the mixed spaces;
    * plain Python attributes of the modules (``self.use_skip = False``), hooks and replaced methods are part of
      the cache key: changing one re-analyses. Global state the forward reads (a module-level flag) is not seen.

    Raises
    ------
    UnsupportedModelError
        For wrappers that are not the model (``nn.DataParallel``, ``torch.compile``, TorchScript), lazy modules,
        global module hooks, and graphs that fail where ``model(x)`` runs; the message says what to do.
    UntraceableModelError
        When ``torch.fx`` cannot trace the model (data-dependent control flow).
    """
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs, names = _as_call(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    bad = [t for t in leaf_modules if not isinstance(t, (type, str))]
    if bad:
        raise InvalidArgumentError(f"leaf_modules must hold module types or qualified names, got {bad!r}")
    mode = Functional.parse(functional)
    inspection.check_model(model)
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names), names), mode)
    per_model = _CACHE.setdefault(model, {})
    plan = per_model.get(key)
    if plan is not None:
        return plan
    if mode is Functional.REWRITE:
        reason = rewrite.unsupported_reason(model)
        if reason is not None:  # known before tracing: the constrain analysis, with the reason in the report
            plan = per_model[key] = rewrite.constrained(analyze(model, x, leaf_modules=leaf_modules,
                                                                functional="constrain"), reason)  # fmt: skip
            return plan

    state = _State()
    state.param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    t = _trace_modes(model, state, mode, inputs, names, (leaf_types, leaf_names))
    graphs, modes, effects, fsites, site_nodes, constants = (
        t.graphs,
        t.modes,
        t.effects,
        t.fsites,
        t.site_nodes,
        t.constants,
    )
    if mode is Functional.REWRITE:
        state.fsites = fsites
    plan = _finalize(state, model)
    if mode is Functional.GRAPH:
        if plan.functional_sites and effects:
            raise UnsupportedModelError(
                f"functional='graph' replaces the forward of {type(model).__name__} by its traced graph, but "
                f"{'; '.join(effects)}; use functional='rewrite' (the default), which then keeps the model's own "
                "forward, or functional='constrain'"
            )
        plan.graph = graphs[0]
        plan.constants = constants
    elif mode is Functional.REWRITE and plan.functional_sites:
        reasons = effects + rewrite.graph_problems(model, graphs)
        if reasons:  # the traced graph is not all the forward does: keep the model's own forward
            plan = rewrite.constrained(
                analyze(model, x, leaf_modules=leaf_modules, functional="constrain"), "; ".join(reasons)
            )
        else:
            plan.rewrite = rewrite.RewriteInfo(graphs, modes, constants, site_nodes)
    per_model[key] = plan
    return plan


@dataclass
class _Traced:
    """What :func:`_trace_modes` found: the distinct graphs and, for ``functional="rewrite"``, what a rewritten
    forward needs (which graph serves which mode, the call sites, why the graphs may not replace the forward)."""

    graphs: list[fx.Graph] = field(default_factory=list)
    modes: dict[tuple[bool, bool], int] = field(default_factory=dict)  # (training, grad enabled) -> graph index
    effects: list[str] = field(default_factory=list)  # what the forward's Python did besides computing the graph
    fsites: dict[str, Any] = field(default_factory=dict)  # call sites of all graphs, named once
    site_nodes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # site -> (graph, node) per call
    constants: dict[str, Any] = field(default_factory=dict)


def _specialization_check(model: nn.Module, graph: fx.Graph, mode: Functional, effects: list[str]) -> None:
    """A graph specialised to the example's shapes may not become the forward (``"graph"`` refuses,
    ``"rewrite"`` records why it keeps the model's own forward)."""
    found = specializations(graph)
    if found and mode is Functional.GRAPH:
        raise UnsupportedModelError(
            f"functional='graph' makes the traced graph the forward of the teleported model, but the "
            f"graph of {type(model).__name__} is specialised to the example's shapes (at {found[0][0]}); use "
            "functional='rewrite' (the default) or 'constrain', which then keep the model's own forward"
        )
    why = "its traced graph is specialised to the example's shapes"
    if found and mode is Functional.REWRITE and why not in effects:
        effects.append(why)  # a forward rewritten as that graph would hold for those shapes only


def _trace_modes(
    model: nn.Module,
    state: _State,
    mode: Functional,
    inputs: tuple[Tensor, ...],
    names: Keywords | None,
    leaves: tuple[tuple[type, ...], frozenset[str]],
) -> _Traced:
    """Trace and walk ``model`` in train and eval mode, with and without gradients (distinct graphs once), into
    ``state``; at other input shapes too when a graph was specialised to the example's."""
    leaf_types, leaf_names = leaves
    out = _Traced()
    graphs, modes, effects, fsites, site_nodes = out.graphs, out.modes, out.effects, out.fsites, out.site_nodes
    devices = list({t.device for t in inputs})
    codes: dict[tuple, int] = {}  # graph key -> index in graphs
    walked: list[tuple[bool, bool, Any, Any]] = []  # (training, grad, walked output, RNG state before the walk)
    was_training = model.training
    specialized = False
    with _preserved(model, devices) as guard:
        for training in (was_training, not was_training):
            _set_mode(model, training)
            for grad in (True, False):
                before = rewrite.snapshot(model) if mode is Functional.REWRITE else None
                with torch.set_grad_enabled(grad), guard:
                    graph = _trace(model, leaf_types, leaf_names, inputs, names, plain=not specialized)
                if before is not None:
                    effects += [e for e in rewrite.side_effects(model, before) if e not in effects]
                guard.restore_python_state()  # the next trace starts from the same Python state
                specialized = specialized or bool(specializations(graph))
                _specialization_check(model, graph, mode, effects)
                code = _graph_key(graph, model)
                if code in codes:
                    modes[(training, grad)] = codes[code]
                    continue
                if codes and mode is Functional.GRAPH:
                    raise UnsupportedModelError(
                        f"functional='graph' rewrites forward() as one traced graph, but {type(model).__name__} "
                        "traces to different graphs in train and eval mode or with and without gradients (e.g. "
                        "`if self.training:` in forward); use functional='rewrite' (the default), which rewrites "
                        "each mode's graph, or functional='constrain', which keeps the model's own forward"
                    )
                modes[(training, grad)] = codes[code] = len(graphs)
                graphs.append(graph)
                if mode is Functional.REWRITE:
                    state.fsites = {}  # this graph's call sites, by node name
                rng = rewrite.rng_state(devices) if mode is not Functional.CONSTRAIN else None
                walker = _walk(model, graph, state, mode, inputs, training, guard, names)
                if rng is not None and names is None:
                    walked.append((training, grad, walker.output, rng))
                variant = _batch_variant(inputs) if walker.axis0_varies and not specialized else None
                if variant is not None:
                    try:
                        _Walker(model, graph, state, mode is not Functional.CONSTRAIN, guard).run(*variant)
                    except _NodeFailed:
                        pass  # the model does not run at that batch size: only the example's holds
                if mode is Functional.REWRITE:
                    rewrite.merge_sites(fsites, site_nodes, state.fsites, graphs, len(graphs) - 1, modes)
        if specialized:
            _walk_variants(model, state, mode, inputs, names, (leaf_types, leaf_names), guard)
        if names is not None and mode is Functional.REWRITE and "it is called with keyword inputs" not in effects:
            effects.append("it is called with keyword inputs")  # the generated forward takes positional ones only
        if state.fsites or fsites:  # the graphs must compute what forward computes where they replace it (there
            # are functional call sites): fx misses aliasing (`skip = h; h += y`)
            for training, grad, output, rng in walked:
                _set_mode(model, training)
                effects += rewrite.compare_forward(model, output, inputs, grad, rng, guard)
        out.constants = {  # tensor constants torch.fx stored on the model while tracing (removed again on exit)
            str(n.target): getattr(model, str(n.target))
            for g in graphs
            for n in g.nodes
            if n.op == "get_attr" and str(n.target).startswith("_tensor_constant") and hasattr(model, str(n.target))
        }
    return out


def _walk(
    model: nn.Module,
    graph: fx.Graph,
    state: _State,
    mode: Functional,
    inputs: tuple[Tensor, ...],
    training: bool,
    guard: Any = None,
    names: Keywords | None = None,
) -> _Walker:
    walker = _Walker(model, graph, state, mode is not Functional.CONSTRAIN, guard)
    guard = walker.guard
    sizes = {t.shape[0] for t in inputs if t.dim()}
    walker.batch = sizes.pop() if len(sizes) == 1 and len(inputs) == sum(t.dim() > 0 for t in inputs) else None
    try:
        walker.output = walker.run(*(t.clone() for t in inputs))  # a forward writing into its input keeps x
        return walker
    except _NodeFailed as failed:
        exc, node = failed.exc, failed.node
        try:
            with guard:
                model(**keyword_arguments(names, inputs)) if names is not None else model(*inputs)
            runs = True
        except Exception:
            runs = False
        what = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        if not runs:
            raise UnsupportedModelError(
                f"running {type(model).__name__} on the example input failed ({what}), in "
                f"{'train' if training else 'eval'} mode: pass an input batch that forward() accepts"
            ) from exc
        where = node.meta.get("stack_trace", "").strip().splitlines()
        line = f" (`{where[-1].strip()}`)" if where else ""
        hooked = [p for p, m in model.named_modules() if inspection.hooks_of(m)]
        if any(n.op == "get_attr" and str(n.target).startswith("_tensor_constant") for n in graph.nodes) and hooked:
            raise UnsupportedModelError(
                f"the torch.fx graph of {type(model).__name__} fails at node {node.name!r}{line} with {what}, although "
                f"model(x) runs: forward() reads a tensor stored on the model, e.g. by the hooks on {hooked}, which "
                "tracing fixes to its current value; read such features through the module's return value, or "
                f"pass leaf_modules=[...] naming the submodule whose forward reads them"
            ) from exc
        raise UnsupportedModelError(
            f"the torch.fx graph of {type(model).__name__} fails at node {node.name!r}{line} with {what}, although "
            f"model(x) runs: the forward depends on something tracing fixed (a value read as a Python number, a "
            "shape used in control flow); pass leaf_modules=[...] naming the submodule that holds that code"
        ) from exc


def _walk_variants(
    model: nn.Module,
    state: _State,
    mode: Functional,
    inputs: tuple[Tensor, ...],
    names: Keywords | None,
    leaves: tuple[tuple[type, ...], frozenset[str]],
    guard: Any,
) -> None:
    """A graph specialised to the example (:func:`nnteleport.engine.trace.specializations`) holds for inputs that
    take its branches: the model is also traced and walked, in every mode, at one more sample and at other sequence
    lengths (:func:`~nnteleport.engine.value_trace.sequence_variants`), and the constraints of all graphs combine. A
    variant the model itself does not run on is skipped; one it runs on but the analysis cannot follow is an error."""
    variants = [v for v in (_batch_variant(inputs), *sequence_variants(inputs)) if v is not None]
    for variant in variants:
        codes: set[tuple] = set()
        for training in (False, True):
            _set_mode(model, training)
            for grad in (True, False):
                try:
                    with torch.set_grad_enabled(grad), guard:
                        graph = _trace(model, *leaves, variant, names, plain=False)
                    guard.restore_python_state()
                    code = _graph_key(graph, model)
                    if code not in codes:
                        codes.add(code)
                        _walk(model, graph, state, mode, variant, training, guard, names)
                except (UnsupportedModelError, UntraceableModelError) as exc:
                    try:
                        with torch.set_grad_enabled(grad), guard:
                            model(**keyword_arguments(names, variant)) if names is not None else model(*variant)
                    except Exception:
                        break  # the model does not run on this variant: nothing to hold there
                    shapes = [tuple(t.shape) for t in variant]
                    raise UnsupportedModelError(
                        f"{type(model).__name__} was traced specialised to the example's shapes; at input shapes "
                        f"{shapes} the analysis fails: {exc}"
                    ) from exc


def _register(
    model: nn.Module, x: Any, plan: TeleportPlan, leaf_modules: Sequence[type | str] = (), functional: Any = "rewrite"
) -> None:
    """Record ``plan`` for ``model`` (e.g. after in-place wrapping changed its module structure)."""
    inputs, names = _as_call(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names), names), Functional.parse(functional))
    _CACHE.setdefault(model, {})[key] = plan
