"""``functional="rewrite"``: teleport activations called as functions, keeping the user's class.

A CoB gives a hidden neuron the factor ``tau``; an activation ``f`` it passes through must become
``g(x) = tau * f(x / tau)`` (Armenta et al. 2023, Eq. 5) unless ``f`` commutes with ``tau``. An activation *module*
is replaced by :class:`~nnteleport.engine.activation.TeleportedActivation`; a *call* in the user's ``forward``
(``F.gelu(h)``, ``h.tanh()``, ``torch.sigmoid(h)``) has no module to replace. This module replaces the forward:

* the model's class becomes a generated subclass ``Teleported<Name>`` of the user's class (so
  ``isinstance(result, type(model))``, every method and attribute stays), created once per (user class, graphs);
* its ``forward`` runs the graph(s) ``torch.fx`` traced from the user's forward -- one per distinct graph of
  (train/eval, grad enabled or not) -- with each call that needs it replaced by the submodule
  ``teleport_functional.<call>`` = ``TeleportedActivation(FunctionalOp(f, args), tau)``; the ``tau`` buffers are
  persistent, so ``state_dict`` holds the user's keys plus ``teleport_functional.<call>.tau``;
* ``copy.deepcopy`` and ``pickle`` rebuild the class from the user's class and the graphs (``__reduce_ex__``);
  teleporting the result again traces the rewritten forward (its wrappers are modules then) and composes.

A traced graph is the forward only as far as the Python that ran while tracing left no other trace: the analysis
refuses to rewrite (falls back to ``"constrain"``, says so in the report's ``notes`` and warns) a forward that sets
module attributes or fills module containers, a ``forward`` replaced on the instance, a ``GraphModule``, and a
forward whose signature cannot be mirrored. Tracing already refuses data-dependent control flow. At run time the
rewritten forward refuses (:class:`~nnteleport.errors.UnsupportedModelError`) what would make the user's forward
compute something else than the graph: optional arguments other than those traced, hooks, plain attributes or
submodules changed on the modules whose code the graph inlines, and mixed train/eval modes among them when the
graph depends on the mode. Loading the teleported ``state_dict`` into a fresh instance of the user's class fails with
``strict=True`` (unexpected ``teleport_functional.*.tau`` keys): the wrappers are part of the function.

Only ``forward`` is rewritten; the rest of the user's code that makes a wrapped call would compute without its
wrapper on the rescaled parameters, so it refuses to run (:mod:`nnteleport.engine.rewrite_guards`): a submodule
whose code the graph inlines and holds a functional call site (``model.block1(h)``, ``model.stages(h)``) gets a
generated subclass ``Teleported<Name>`` of its class whose ``forward`` raises, naming the module; a method of the
user's classes other than ``forward`` (``forward_features``, ``embed``) raises when its own code (directly or
through plain functions, not inside a submodule's forward) calls a wrapped target. Methods that call the model
(``self(x)``) and leaf modules run as usual. Tensor constants that ``forward`` built from no input
(``torch.linspace(...)``, a frozen ``_tensor_constantN`` of the class) are what the graph holds: a random one is
caught by the comparison with the forward (fallback), tensors built from the input's shape are graph nodes (right
at every shape), and after a dtype conversion of the model the rewritten forward refuses to run with floating
constants (forward may build them from the dtype). ``optimize_cob`` and ``select_cob`` analyse with
``"constrain"`` (the user's forward runs there).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import warnings
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from nnteleport.engine import inspection, rewrite_guards
from nnteleport.engine.activation import FunctionalOp, TeleportedActivation
from nnteleport.errors import UnsupportedModelError

__all__ = ["WRAPPERS", "RewriteInfo", "base_class", "install", "teleported_class"]

WRAPPERS = "teleport_functional"  # the submodule that holds the wrappers of functional calls


@dataclasses.dataclass
class RewriteInfo:
    """What the analysis keeps for a rewrite: the distinct traced graphs, which (training, grad enabled) mode runs
    which graph, the tensor constants torch.fx took out of the forward, and per functional call site (the name in
    ``plan.functional_sites``) its nodes ``(graph index, node name)``."""

    graphs: list[fx.Graph]
    modes: dict[tuple[bool, bool], int]
    constants: dict[str, Tensor]
    site_nodes: dict[str, list[tuple[int, str]]]


# ---------------------------------------------------------------------------------------------- analysis side
def base_class(model: nn.Module) -> type:
    """The user's class of ``model`` (the class a generated ``Teleported<Name>`` subclasses)."""
    return getattr(type(model), "_nnteleport_base", type(model))


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s forward cannot be replaced by a rewritten graph, known before tracing (or ``None``)."""
    if isinstance(model, fx.GraphModule):
        return f"{type(model).__name__} is a torch.fx.GraphModule (its forward is generated code)"
    if "forward" in vars(model):
        return f"the forward of {type(model).__name__} is replaced on the instance"
    return None


def constrained(plan: Any, reason: str) -> Any:
    """The ``"constrain"`` plan standing in for a rewrite: unchanged when functional calls cost nothing there,
    else a copy whose report notes ``reason`` (and a warning says it)."""
    rep = plan.report
    costs = any(p["category"] == "functional" for p in rep.pinned) or any(
        "functional call" in p["why"] for p in rep.positive_only
    )
    if not costs:
        return plan
    note = (
        f"functional='rewrite' fell back to 'constrain' (the model's own forward runs; activations called as "
        f"functions stay pinned or tau > 0): {reason}"
    )
    warnings.warn(f"nnteleport: {note}", UserWarning, stacklevel=4)
    return dataclasses.replace(plan, report=dataclasses.replace(rep, notes=[*rep.notes, note]))


def snapshot(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], list[tuple[Any, Any]]]]:
    """Every module's attributes and the contents of its plain dict/list attributes, before a trace."""
    out = []
    for m in model.modules():
        before = dict(vars(m))
        conts = [(v, copy.copy(v)) for k, v in before.items() if not k.startswith("_") and type(v) in (dict, list)]
        out.append((m, before, conts))
    return out


def side_effects(model: nn.Module, before: list[tuple[nn.Module, dict[str, Any], list[tuple[Any, Any]]]]) -> list[str]:
    """What a trace changed on the modules besides torch.fx's own tensor constants and the mode: attributes set
    or replaced, containers filled (a rewritten forward would not do it)."""
    found: list[tuple[nn.Module, str]] = []
    for m, attrs, conts in before:
        now = vars(m)
        for k in now:
            if k not in attrs and not k.startswith("_tensor_constant"):
                found.append((m, f"sets attribute {k!r}"))
        for k, v in attrs.items():
            if k != "training" and (k not in now or now[k] is not v):
                found.append((m, f"changes attribute {k!r}"))
        for live, saved in conts:
            if (
                (live.keys() != saved.keys() or any(live[k] is not saved[k] for k in live))
                if isinstance(live, dict)
                else (len(live) != len(saved) or any(a is not b for a, b in zip(live, saved)))
            ):
                found.append((m, "fills a container attribute"))
    if not found:
        return []
    names = {id(m): p for p, m in model.named_modules()}
    return [f"the forward of {names.get(id(m)) or type(model).__name__!r} {what} while running" for m, what in found]


def rng_state(devices: list[torch.device]) -> tuple[Tensor, list[tuple[int, Tensor]]]:
    """The CPU and CUDA RNG states, to run the forward with the random draws of a walk."""
    cuda = [d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"]
    return torch.get_rng_state(), [(i, torch.cuda.get_rng_state(i)) for i in cuda]


def _leaves(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _leaves(e)]
    if isinstance(v, dict):
        return [x for k in v for x in _leaves(v[k])]
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _leaves([getattr(v, f.name) for f in dataclasses.fields(v)])
    return [v]


def compare_forward(model: nn.Module, graph_out: Any, inputs: tuple[Tensor, ...], grad: bool,
                    rng: tuple[Tensor, list[tuple[int, Tensor]]], guard: Any) -> list[str]:  # fmt: skip
    """``[]`` when ``model.forward`` on the example (same random draws) gives what the walked graph gave, else why
    not: torch.fx traces ``h += y`` as ``h + y`` (an alias ``skip = h`` taken before keeps the old value in the
    graph), and a forward may read state the trace fixed. Relative tolerance ``min(1e-6, 1000 eps)`` of the output's
    dtype (the same ops run: float64 outputs must agree to ~2e-13, so a small real difference is not accepted)."""
    cpu, cuda = rng
    torch.set_rng_state(cpu)
    for i, st in cuda:
        torch.cuda.set_rng_state(st, i)
    try:
        with torch.set_grad_enabled(grad), guard:
            out = model.forward(*(t.clone() for t in inputs))
    except Exception as exc:
        return [f"its forward fails where its traced graph runs ({type(exc).__name__})"]
    a, b = _leaves(graph_out), _leaves(out)
    mode = "train" if model.training else "eval"
    why = f"its traced graph computes another output than its forward on the example ({mode} mode)"
    if len(a) != len(b):
        return [why]
    for p, q in zip(a, b):
        if isinstance(p, Tensor) != isinstance(q, Tensor):
            return [why]
        if isinstance(p, Tensor):
            if p.shape != q.shape or p.dtype != q.dtype:
                return [why]
            if p.is_floating_point() or p.is_complex():
                p, q = p.detach(), q.detach()
                scale = float(p.abs().max()) if p.numel() else 0.0
                tol = min(1e-6, 1000 * torch.finfo(p.dtype).eps) if p.is_floating_point() else 1e-6
                if p.numel() and not float((p - q).abs().max()) <= tol * scale:
                    return [why + " (e.g. an alias of a tensor changed in place: `skip = h; h += y`)"]
            elif not torch.equal(p, q):
                return [why]
        elif type(p) is not type(q):
            return [why]
    return []


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(base_class(model).forward)
    except (TypeError, ValueError):
        return None


def graph_problems(model: nn.Module, graphs: list[fx.Graph]) -> list[str]:
    """Why the traced graphs cannot stand for ``forward`` (placeholders that are not parameters of the forward's
    signature, graphs with different inputs), or ``[]``."""
    sig = _signature(model)
    if sig is None:
        return [f"the signature of {type(model).__name__}.forward cannot be read"]
    params = list(sig.parameters.values())[1:]
    plain = {p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    names = [[str(n.target) for n in g.nodes if n.op == "placeholder"] for g in graphs]
    if any(ns != names[0] for ns in names):
        return ["its traced graphs take different inputs in different modes"]
    bad = [n for n in names[0] if n not in plain]
    if bad:
        return [f"the traced graph's inputs {bad} are not named parameters of {type(model).__name__}.forward"]
    return []


def _label(modes: dict[tuple[bool, bool], int], k: int) -> str:
    ms = [m for m, i in modes.items() if i == k]
    training, grad = ms[0] if ms else (True, True)
    return ("train" if training else "eval") + ("" if grad else ", no grad")


def merge_sites(
    acc: dict[str, Any],
    site_nodes: dict[str, list[tuple[int, str]]],
    new: dict[str, Any],
    graphs: list[fx.Graph],
    k: int,
    modes: dict[tuple[bool, bool], int],
) -> None:
    """Add the functional call sites ``new`` of graph ``k`` (node name -> site) to ``acc``: a call that graph 0
    (or an earlier graph) has under the same node name, with the same function, arguments and factors, is the same
    site (one wrapper serves both graphs); any other gets a name of its own, ``"<node> (<mode>)"``."""
    nodes = {n.name: n for n in graphs[k].nodes}
    for name, site in new.items():
        node = nodes[name]
        prev = acc.get(name)
        if prev is not None:
            k0, n0 = site_nodes[name][0]
            other = next(n for n in graphs[k0].nodes if n.name == n0)
            same = (
                prev.kind is site.kind
                and prev.S.shape == site.S.shape
                and bool(torch.equal(prev.S, site.S))
                and (other.op, other.target, other.args[1:], other.kwargs)
                == (node.op, node.target, node.args[1:], node.kwargs)
            )
            if same:
                site_nodes[name].append((k, name))
                continue
            key, i = f"{name} ({_label(modes, k)})", 2
            while key in acc:
                key, i = f"{name} ({_label(modes, k)} {i})", i + 1
        else:
            key = name
        acc[key] = dataclasses.replace(site, path=key)
        site_nodes[key] = [(k, name)]


# ---------------------------------------------------------------------------------------------- install
def install(model: nn.Module, plan: Any, rewrites: list[tuple[str, Tensor]], dtype: torch.dtype,
            device: torch.device) -> Any:  # fmt: skip
    """Make ``model`` (already teleported by ``plan``'s parameters) compute through wrapped functional calls:
    ``rewrites`` lists (site name, ``tau``) of the calls that need ``tau * f(x / tau)``. Adds the wrappers under
    :data:`WRAPPERS` and sets ``model.__class__`` to the generated subclass (the object keeps its identity).

    Returns the plan of the rewritten model: ``plan`` with the wrapped calls as module sites of their wrappers
    (teleporting again multiplies their ``tau``) and the rewritten graphs, so a new teleport does not re-trace."""
    info: RewriteInfo = plan.rewrite
    base = base_class(model)
    holder = model._modules.get(WRAPPERS)
    if holder is None:
        if hasattr(model, WRAPPERS):
            raise UnsupportedModelError(
                f"{type(model).__name__} has an attribute {WRAPPERS!r}, the name the teleported model's functional "
                "activation wrappers need; rename it or use functional='constrain'"
            )
        holder = nn.Module()
        model.add_module(WRAPPERS, holder)
    names: dict[str, str] = {}
    targets: list[str] = []
    for key, tau in rewrites:
        k0, n0 = info.site_nodes[key][0]
        node = next(n for n in info.graphs[k0].nodes if n.name == n0)
        wname, i = n0, 1
        while wname in holder._modules:
            wname, i = f"{n0}_w{i}", i + 1
        targets.append(rewrite_guards.target_name(node.op, node.target) or "")
        fn = FunctionalOp(node.op, node.target, node.args[1:], node.kwargs)
        holder.add_module(wname, TeleportedActivation(fn, tau.to(device, dtype)))
        names[key] = wname
    graphs = []
    for k, g in enumerate(info.graphs):
        g = copy.deepcopy(g)
        nodes = {n.name: n for n in g.nodes}
        for key, wname in names.items():
            for kk, name in info.site_nodes[key]:
                if kk != k:
                    continue
                node = nodes[name]
                with g.inserting_after(node):
                    new = g.call_module(f"{WRAPPERS}.{wname}", (node.args[0],))
                node.replace_all_uses_with(new)
                g.erase_node(node)
        g.lint()
        graphs.append(g)
    refusal = _guard_parts(model, info, targets)
    spec = _Spec(tuple(graphs), tuple(sorted(info.modes.items())), dict(info.constants), refusal)
    model.__class__ = teleported_class(base, spec)
    vars(model)["_nnteleport_guard"] = _Guard(model, graphs, len(set(info.modes.values())) > 1, info.constants)
    wrapped = [s for s in plan.functional_sites if s.path in names]
    info2 = RewriteInfo(graphs, dict(info.modes), dict(info.constants),
                        {k: v for k, v in info.site_nodes.items() if k not in names})  # fmt: skip
    return dataclasses.replace(
        plan,
        sites=[*plan.sites, *(dataclasses.replace(s, path=f"{WRAPPERS}.{names[s.path]}") for s in wrapped)],
        functional_sites=[s for s in plan.functional_sites if s.path not in names],
        rewrite=info2,
    )


def _guard_parts(model: nn.Module, info: RewriteInfo, targets: list[str]) -> rewrite_guards.Refusal:
    """Give the submodules whose code holds a functional call site of the graphs (every site, wrapped or not: a
    later teleport may wrap it, from a graph traced anew without module stacks), and those guarded by an earlier
    teleport, their refusing class (:func:`~nnteleport.engine.rewrite_guards.guard_class`); the refused targets are
    those of ``targets`` and of earlier teleports. Returns the :class:`~nnteleport.engine.rewrite_guards.Refusal`."""
    prev = getattr(type(model), "_nnteleport_spec", None)
    names = [*(prev.refusal.names if prev is not None else ()), *(t for t in targets if t)]
    nodes = {(k, n.name): n for k, g in enumerate(info.graphs) for n in g.nodes}
    rewrite_guards.check_module_stacks(list(nodes.values()))
    paths = rewrite_guards.site_modules([nodes[kn] for kns in info.site_nodes.values() for kn in kns if kn in nodes])
    paths += [p for p, m in model.named_modules() if p and hasattr(type(m), "_nnteleport_refusal")]
    parts = []
    for path in dict.fromkeys(paths):
        if path == WRAPPERS or path.startswith(WRAPPERS + "."):
            continue
        try:
            parts.append((path, model.get_submodule(path)))
        except AttributeError:
            continue
    refusal = rewrite_guards.Refusal(tuple(names), (base_class(model), *(base_class(m) for _, m in parts)))
    root = f"Teleported{base_class(model).__name__}"
    for path, m in parts:
        vars(m)["_nnteleport_part"] = (root, path)
        m.__class__ = rewrite_guards.guard_class(base_class(m), refusal)
    return refusal


# ---------------------------------------------------------------------------------------------- the class
class _Spec:
    """The rewritten graphs of a generated class and what its guards refuse (immutable; shared, not copied, by
    ``copy.deepcopy``)."""

    def __init__(self, graphs: tuple[fx.Graph, ...], modes: tuple, constants: dict[str, Tensor],
                 refusal: rewrite_guards.Refusal) -> None:  # fmt: skip
        from nnteleport.engine.trace import _tensor_identity

        self.graphs, self.modes, self.constants, self.refusal = graphs, modes, constants, refusal
        self.code = [g.python_code(root_module="self") for g in graphs]
        self.mode_index = dict(modes)
        self.key = (
            tuple(c.src for c in self.code),
            tuple(tuple(sorted((k, id(v)) for k, v in c.globals.items())) for c in self.code),
            modes,
            tuple((k, _tensor_identity(v)) for k, v in sorted(constants.items())),
            refusal.key,
        )

    def __reduce__(self) -> Any:
        return _Spec, (self.graphs, self.modes, self.constants, self.refusal)

    def __deepcopy__(self, memo: dict) -> _Spec:
        return self


_CLASSES: dict[tuple, type] = {}


def teleported_class(base: type, spec: _Spec) -> type:
    """The generated subclass ``Teleported<Name>`` of ``base`` whose ``forward`` runs ``spec``'s graphs (cached)."""
    key = (base, spec.key)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls
    fns = []
    for code in spec.code:
        namespace = dict(code.globals)
        exec(compile(code.src, f"<nnteleport Teleported{base.__name__}>", "exec"), namespace)
        fns.append(namespace["forward"])
    ns: dict[str, Any] = {
        **rewrite_guards.guarded_methods(base, f"Teleported{base.__name__}"),
        "forward": _forward(base, spec, fns),
        "__reduce_ex__": _reduce_ex,
        "__module__": base.__module__,
        "__qualname__": f"Teleported{base.__qualname__}",
        "__doc__": f"{base.__name__} teleported by nnteleport: forward runs its traced graph with functional "
        f"activations wrapped as tau * f(x / tau) (see nnteleport.engine.rewrite).",
        "_nnteleport_base": base,
        "_nnteleport_spec": spec,
        "_nnteleport_refusal": spec.refusal,
        **spec.constants,
    }
    return rewrite_guards.generated_subclass(base, ns, _CLASSES, key)


def _rebuild(base: type, spec: _Spec) -> nn.Module:
    cls = teleported_class(base, spec)
    return cls.__new__(cls)


def _reduce_ex(self: nn.Module, protocol: int) -> Any:
    """Pickle / deepcopy a teleported model: the generated class is rebuilt from the user's class and graphs."""
    cls = type(self)
    return _rebuild, (cls._nnteleport_base, cls._nnteleport_spec), dict(vars(self))


def _forward(base: type, spec: _Spec, fns: list[Any]) -> Any:
    """A ``forward`` with the signature of ``base.forward`` that runs the graph of the current mode."""
    sig = inspect.signature(base.forward)
    params = list(sig.parameters.values())
    inputs = [str(n.target) for n in spec.graphs[0].nodes if n.op == "placeholder"]
    parts, extras, defaults = [], [], {}
    star = False
    for j, p in enumerate(params):
        d = ""
        if p.default is not p.empty:
            defaults[f"_d{j}"] = p.default
            d = f"=_d{j}"
        if p.kind is p.VAR_POSITIONAL:
            parts.append(f"*{p.name}")
            star = True
            extras.append(f"({p.name!r}, {p.name}, ())")
        elif p.kind is p.VAR_KEYWORD:
            parts.append(f"**{p.name}")
            extras.append(f"({p.name!r}, {p.name}, {{}})")
        else:
            if p.kind is p.KEYWORD_ONLY and not star:
                parts.append("*")
                star = True
            parts.append(p.name + d)
            if j and p.name not in inputs:
                extras.append(f"({p.name!r}, {p.name}, _d{j})" if d else f"({p.name!r}, {p.name}, _REQUIRED)")
        if p.kind is p.POSITIONAL_ONLY and (j + 1 == len(params) or params[j + 1].kind is not p.POSITIONAL_ONLY):
            parts.append("/")
    src = (
        f"def forward({', '.join(parts)}):\n"
        f"    return _run({params[0].name}, ({', '.join(inputs)}{',' if inputs else ''}), "
        f"({', '.join(extras)}{',' if extras else ''}))\n"
    )
    namespace: dict[str, Any] = {**defaults, "_REQUIRED": _REQUIRED, "_run": _runner(base, spec, fns)}
    exec(compile(src, f"<nnteleport Teleported{base.__name__}.forward>", "exec"), namespace)
    forward = namespace["forward"]
    forward.__doc__ = base.forward.__doc__
    forward.__qualname__ = f"Teleported{base.__qualname__}.forward"
    return forward


_REQUIRED = object()  # a required parameter of forward that the traced graph does not take


def _same(value: Any, default: Any) -> bool:
    if value is default:
        return True
    if isinstance(default, (tuple, dict)) and not default:
        return isinstance(value, type(default)) and not value
    plain = (bool, int, float, str, type(None))
    return type(value) is type(default) and isinstance(value, plain) and value == default


def _runner(base: type, spec: _Spec, fns: list[Any]) -> Any:
    def run(self: nn.Module, inputs: tuple, extras: tuple) -> Any:
        for name, value, default in extras:
            if not _same(value, default):
                raise UnsupportedModelError(
                    f"{type(self).__name__}.forward runs the graph traced by teleport, which took "
                    f"{name!r} at its default: this call passes another value ({type(value).__name__}); teleport "
                    "with functional='constrain' (the model's own forward runs) to call it with other arguments"
                )
        guard = vars(self).get("_nnteleport_guard")
        if guard is not None:
            guard.check(self)
        return fns[spec.mode_index[(bool(self.training), torch.is_grad_enabled())]](self, *inputs)

    return run


def _fingerprint(m: nn.Module, root: bool) -> tuple:
    fp = inspection.state_fingerprint(m)
    if root:  # the root's own hooks run around the rewritten forward as around the user's
        fp = tuple(e for e in fp if e[0] not in inspection._MODULE_HOOKS)
    return fp


class _Guard:
    """What the rewritten forward's graph assumed of the modules whose code it inlines (the root and every module
    that is not called as a graph node, nor inside one): their plain attributes, hooks, replaced methods and
    submodules, and -- when the graph depends on the mode -- that they share the root's train/eval mode."""

    def __init__(self, model: nn.Module, graphs: list[fx.Graph], by_mode: bool, constants: dict[str, Tensor]) -> None:
        called = {str(n.target) for g in graphs for n in g.nodes if n.op == "call_module"}
        inlined = []
        for path, m in model.named_modules():
            if path == WRAPPERS or any(path == c or path.startswith(c + ".") for c in called | {WRAPPERS}):
                continue
            inlined.append((path, m))
        self.entries = [(p, m, _fingerprint(m, not p), tuple(m._modules.items())) for p, m in inlined]
        self.by_mode = by_mode
        floats = [(k, t.dtype) for k, t in constants.items() if t.is_floating_point() or t.is_complex()]
        probe = next(((m, n, p.dtype) for m in model.modules() for n, p in m.named_parameters(recurse=False)
                      if p.is_floating_point()), None) if floats else None  # fmt: skip
        self.probe = (*probe, floats) if probe is not None else None  # a float parameter, its dtype, the constants

    def check(self, model: nn.Module) -> None:
        if self.probe is not None:
            m, n, dtype, floats = self.probe
            now = getattr(m, n, None)
            if isinstance(now, Tensor) and now.dtype != dtype:
                raise UnsupportedModelError(
                    f"{type(model).__name__}.forward runs the graph traced when the model was {dtype}, which holds "
                    f"tensor constants that forward built ({', '.join(f'{k}: {d}' for k, d in floats)}); forward "
                    f"may build them otherwise now that the model is {now.dtype}: teleport after converting the "
                    "model, or teleport with functional='constrain'"
                )
        for path, m, fp, children in self.entries:
            now = tuple(m._modules.items())
            if (
                _fingerprint(m, not path) != fp
                or len(now) != len(children)
                or any(a != c or b is not d for (a, b), (c, d) in zip(now, children))
            ):
                what = repr(path) if path else type(model).__name__
                raise UnsupportedModelError(
                    f"{what} changed since teleport (a plain attribute, a hook, a replaced method or a submodule) "
                    f"and {type(model).__name__}.forward runs the graph traced before the change, which inlines its "
                    "code: make the change before teleporting, or teleport with functional='constrain'"
                )
            if self.by_mode and m.training != model.training:
                raise UnsupportedModelError(
                    f"submodule {path!r} is in {'train' if m.training else 'eval'} mode and "
                    f"{type(model).__name__} is not: its forward runs the graph traced for one mode of the whole "
                    "model; set the mode with model.train()/model.eval()"
                )
