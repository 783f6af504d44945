"""Graph analysis: which neurons of a model can be teleported, and how every parameter scales.

The model is traced with ``torch.fx`` and run once on the example input by an interpreter that, next to the real
values, propagates a *space* per tensor (see :mod:`nnteleport.rules`): an integer tensor naming, for every
element, the neuron variable whose factor ``tau`` scales it (``0`` = the constant 1). Linear maps, convolutions
and affine normalisations create fresh variables; residual adds merge variables (union-find); inputs, outputs and
whatever the engine does not understand pin variables to 1. The result, a :class:`TeleportPlan`, lists

* the free **groups** (one per hidden channel space, named after the module that produces it; spaces merged by
  residual connections belong to the group of the first of them),
* for every parameter the index tensors ``(out_idx, in_idx)`` into ``t = [1, tau_1, ..., tau_n]`` such that the
  teleported parameter is ``p * t[out_idx] / t[in_idx]`` (Armenta et al. 2023, Eq. 4: ``w'_ab = tau_b / tau_a w_ab``),
* the activation sites that need ``g(x) = tau * f(x / tau)``,
* a :class:`~nnteleport.report.TeleportReport` of coverage and of what was pinned and why.

The model is traced in train and in eval mode (when the two graphs differ, e.g. ``if self.training`` in a user's
forward, the constraints of both are combined), so a teleported model is exact in both modes. Plans are cached per
(model, input shapes without the batch axis, dtypes, module structure): teleporting the same model again does not
re-trace.
"""

from __future__ import annotations

import contextlib
import enum
import operator
import traceback
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from nnteleport import rules
from nnteleport.activation import TeleportedActivation
from nnteleport.errors import UnsupportedModelError, UntraceableModelError
from nnteleport.rules import Kind, _callable_name, zeros_like_space

__all__ = ["Functional", "GroupInfo", "TeleportPlan", "UntraceableModelError", "analyze"]


class Functional(str, enum.Enum):
    """What to do with activations called as functions (``F.gelu(x)``) in a user's ``forward``.

    * ``"constrain"`` (default): the model keeps its class and ``forward``; positively homogeneous functions
      (``F.relu``, ``F.max_pool2d``) restrict their neurons to ``tau > 0``, other functions pin them to 1.
    * ``"graph"``: the teleported model is a ``torch.fx.GraphModule`` whose forward calls
      ``tau * f(x / tau)`` at each such call (same parameter names); refused when the model's traced graph differs
      between train and eval mode (``if self.training:`` in ``forward``).
    """

    CONSTRAIN = "constrain"
    GRAPH = "graph"

    @classmethod
    def parse(cls, value: str | Functional) -> Functional:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in cls)
            raise ValueError(f"unknown functional mode {value!r}; allowed values: {allowed}") from None


@dataclass(frozen=True)
class GroupInfo:
    """One free neuron group of a plan.

    Attributes
    ----------
    name: the module that produces the space (e.g. ``"layer1.0.bn2"``), or the first of merged spaces.
    size: number of free neurons (one per channel of a feature map).
    offset: position of the group's first factor in the flat CoB vector.
    positive_mask: bool tensor ``(size,)``; True where the factor must be positive (functional or shared
        positively homogeneous activations, PReLU).
    homogeneous: True when no neuron of the group passes through a non-homogeneous activation, i.e. positive
        factors need no activation wrapper (the positive-rescaling symmetry of ReLU networks).
    aliases: other spaces merged into this group (residual connections, shared modules).
    """

    name: str
    size: int
    offset: int
    positive_mask: Tensor
    homogeneous: bool
    aliases: tuple[str, ...] = ()

    @property
    def positive_only(self) -> bool:
        return bool(self.positive_mask.all())


@dataclass
class _Site:
    path: str
    S: Tensor  # raw variable ids, compressed, rank of the activation input
    kind: Kind


@dataclass
class _PinEvent:
    vars: Tensor
    category: str
    why: str


@dataclass
class ActivationSite:
    """A module whose activation may need the wrapper ``tau * f(x / tau)``: ``index`` selects its factors."""

    path: str
    index: Tensor  # indices into t = [1, tau...], shaped to broadcast against the input without batch axis
    kind: Kind


# ---------------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str]) -> None:
        super().__init__()
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, TeleportedActivation) or qualname in self.leaf_names:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if rules.module_rule_for(m) is not None:
            return True
        return super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        qualname = self.path_of_module(m)
        self.stack.append(qualname)
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = qualname  # the innermost submodule whose code broke tracing
            raise
        finally:
            self.stack.pop()


def _trace(model: nn.Module, leaf_types: tuple[type, ...], leaf_names: frozenset[str]) -> fx.Graph:
    tracer = _Tracer(leaf_types, leaf_names)
    try:
        return tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or ""
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
        call = f" at {frames[-1].filename}:{frames[-1].lineno} `{(frames[-1].line or '').strip()}`" if frames else ""
        inside = f" inside submodule {where!r} ({type(model.get_submodule(where)).__name__})" if where else ""
        hint = (
            f" Pass leaf_modules=[{where!r}] to treat that submodule as a black box (its spaces stay at tau = 1)"
            if where
            else " Pass leaf_modules=[...] naming the submodules (paths or types) that hold such code"
        )
        raise UntraceableModelError(
            f"torch.fx could not trace {type(model).__name__}{inside}{call}: {type(exc).__name__}: {exc}.{hint}, "
            "or make the control flow independent of tensor values."
        ) from exc


# ---------------------------------------------------------------------------------------------- the walk
class _State:
    """Variables and constraints collected over one or more traced graphs of a model."""

    def __init__(self) -> None:
        self.n_vars = 1  # variable 0 is the constant 1
        self.spaces: list[tuple[str, int, int]] = []  # (name, first var, count) in allocation order
        self.module_out: dict[str, Tensor] = {}  # module path -> its output variables (reused)
        self.merges: list[Tensor] = []  # (k, 2) pairs of variables to unite
        self.pins: list[_PinEvent] = []
        self.positives: list[tuple[Tensor, str]] = []
        self.params: dict[int, tuple[str, Tensor, Tensor | None]] = {}  # id(param) -> (name, out, in)
        self.sites: dict[str, _Site] = {}
        self.fsites: dict[str, _Site] = {}  # functional call sites (node name), functional="graph" only
        self.general_vars: list[Tensor] = []

    def new(self, n: int, name: str) -> Tensor:
        ids = torch.arange(self.n_vars, self.n_vars + n, dtype=torch.long)
        self.spaces.append((name, self.n_vars, n))
        self.n_vars += n
        return ids


class RuleContext:
    """What a rule sees of the node it handles (see :mod:`nnteleport.rules`)."""

    def __init__(self, walker: _Walker, node: fx.Node, out: Any) -> None:
        self.w = walker
        self.state = walker.state
        self.node = node
        self.out = out
        self.module: nn.Module | None = walker.submodules.get(node.target) if node.op == "call_module" else None
        self.path = node.target if node.op == "call_module" else None

    # --- inputs
    @property
    def op_name(self) -> str:
        n = self.node
        if n.op == "call_module":
            return f"{n.target!r} ({type(self.module).__name__})"
        if n.op == "call_method":
            return f"Tensor.{n.target} (node {n.name!r})"
        return f"{_callable_name(n.target)} (node {n.name!r})"

    def _arg(self, i: int) -> Any:
        return self.node.args[i] if i < len(self.node.args) else None

    def in_value(self, i: int) -> Any:
        a = self._arg(i)
        return self.w.value_of(a)

    def in_space(self, i: int) -> Any:
        a = self._arg(i)
        return self.w.space_of(a)

    def kwarg(self, name: str, pos: int, default: Any) -> Any:
        if name in self.node.kwargs:
            return self.w.value_of(self.node.kwargs[name])
        if pos < len(self.node.args):
            return self.w.value_of(self.node.args[pos])
        return default

    def apply_to_spaces(self) -> Any:
        """Run this node's op on the spaces of its tensor arguments (expanded to the arguments' shapes)."""
        w = self.w

        def sub(a: fx.Node) -> Any:
            v = w.value_of(a)
            if isinstance(v, Tensor):
                S = w.space_of(a)
                if not isinstance(S, Tensor):
                    S = zeros_like_space(v)
                return S.expand(v.shape).contiguous() if v.is_floating_point() or v.is_complex() else v.cpu()
            if isinstance(v, (tuple, list)) and v and all(isinstance(t, Tensor) for t in v):
                S = w.space_of(a)
                return type(v)(
                    (s if isinstance(s, Tensor) else zeros_like_space(t)).expand(t.shape).contiguous()
                    for s, t in zip(S, v)
                )
            return v

        args = map_arg(self.node.args, sub)
        kwargs = map_arg(self.node.kwargs, sub)
        n = self.node
        if n.op == "call_function":
            return n.target(*args, **kwargs)
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return self.module(*args, **kwargs)

    # --- effects
    def new_space(self, n: int) -> Tensor:
        """Fresh variables for this node's output; a module called again (or in another trace) reuses them,
        so a shared layer has one set of factors."""
        if self.path is not None:
            prev = self.state.module_out.get(self.path)
            if prev is not None and prev.numel() == n:
                return prev
        ids = self.state.new(n, self.path if self.path is not None else self.node.name)
        if self.path is not None:
            self.state.module_out[self.path] = ids
        return ids

    def pin(self, S: Any, category: str, why: str) -> None:
        for t in _tensors(S):
            v = torch.unique(t)
            v = v[v != 0]
            if v.numel():
                self.state.pins.append(_PinEvent(v, category, why))

    def pin_inputs(self, category: str, why: str) -> None:
        for a in self.node.all_input_nodes:
            self.pin(self.w.space_of(a), category, why)

    def positive(self, S: Any, why: str) -> None:
        for t in _tensors(S):
            v = torch.unique(t)
            v = v[v != 0]
            if v.numel():
                self.state.positives.append((v, why))

    def merge(self, Sa: Tensor, Sb: Tensor) -> Tensor:
        """Unite the variables of two spaces element by element (broadcasting); returns the common space."""
        shape = rules.broadcast_shape(Sa.shape, Sb.shape)
        a, b = Sa.expand(shape).reshape(-1), Sb.expand(shape).reshape(-1)
        pairs = torch.unique(torch.stack([a, b], dim=1), dim=0)
        const = (pairs == 0).any(dim=1)
        if bool(const.any()):
            self.pin(pairs[const].reshape(-1), "constant", f"{self.op_name}: added to a constant (pinned) tensor")
        pairs = pairs[~const & (pairs[:, 0] != pairs[:, 1])]
        if pairs.numel():
            self.state.merges.append(pairs)
        out = Sa.expand(shape) if Sa.dim() >= Sb.dim() else Sb.expand(shape)
        return rules.compress(out)

    def register_param(self, attr: str, out_idx: Tensor, in_idx: Tensor | None) -> None:
        """Declare ``module.<attr>`` scales as ``t[out_idx] / t[in_idx]`` (a shared parameter merges spaces)."""
        assert self.module is not None
        p = getattr(self.module, attr)
        name = f"{self.path}.{attr}" if self.path else attr
        prev = self.state.params.get(id(p))
        if prev is None:
            self.state.params[id(p)] = (name, out_idx, in_idx)
            return
        _, o0, i0 = prev
        for new, old in ((out_idx, o0), (in_idx, i0)):
            z = torch.zeros((), dtype=torch.long)
            new = new if new is not None else z
            old = old if old is not None else z
            shape = rules.broadcast_shape(new.shape, old.shape)
            pairs = torch.unique(torch.stack([new.expand(shape).reshape(-1), old.expand(shape).reshape(-1)], 1), dim=0)
            const = (pairs == 0).any(dim=1)
            if bool(const.any()):
                self.pin(pairs[const].reshape(-1), "shared", f"{self.op_name}: parameter {name!r} used twice")
            pairs = pairs[~const & (pairs[:, 0] != pairs[:, 1])]
            if pairs.numel():
                self.state.merges.append(pairs)

    def functional_site(self, S: Tensor, kind: Kind) -> bool:
        """In ``functional="graph"`` mode, record a functional activation call as a wrapper site (its other
        arguments must be constants); returns whether it was recorded."""
        n = self.node
        if not self.w.graph_mode or n.all_input_nodes != [n.args[0]]:
            return False
        S = rules.compress(S)
        if kind is Kind.GENERAL:
            self.state.general_vars.append(S.reshape(-1))
        self.state.fsites[n.name] = _Site(n.name, S, kind)
        return True

    def activation_site(self, S: Tensor, kind: Kind) -> None:
        """This node applies an element-/channel-wise ``f`` that may need ``tau * f(x / tau)``."""
        S = rules.compress(S)
        path = self.path
        if path is None or self.w.calls[path] > 1:
            if kind is Kind.POSITIVE:
                self.positive(S, f"{self.op_name}: module used at several places, so tau > 0")
                return
            if path is None:
                self.pin(S, "functional", f"{self.op_name}: cannot hold a wrapper")
                return
        if kind is Kind.GENERAL:
            self.state.general_vars.append(S.reshape(-1))
        prev = self.state.sites.get(path)
        if prev is None:
            self.state.sites[path] = _Site(path, S, kind)
            return
        if prev.S.shape == S.shape:
            pairs = torch.stack([prev.S.reshape(-1), S.reshape(-1)], 1)
            const = (pairs == 0).any(dim=1)
            if bool(const.any()):
                self.pin(pairs[const].reshape(-1), "shared", f"{self.op_name}: module used at several places")
            pairs = pairs[~const & (pairs[:, 0] != pairs[:, 1])]
            if pairs.numel():
                self.state.merges.append(pairs)
        else:
            self.pin(prev.S, "shared", f"{self.op_name}: module used at places of different shapes")
            self.pin(S, "shared", f"{self.op_name}: module used at places of different shapes")


def _tensors(S: Any) -> Iterable[Tensor]:
    if isinstance(S, Tensor):
        yield S
    elif isinstance(S, (tuple, list)):
        for s in S:
            yield from _tensors(s)
    elif isinstance(S, dict):
        for s in S.values():
            yield from _tensors(s)


class _Walker(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, state: _State, graph_mode: bool = False) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.state = state
        self.graph_mode = graph_mode
        self.spaces: dict[fx.Node, Any] = {}
        self.submodules = dict(gm.named_modules())
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[n.target] = self.calls.get(n.target, 0) + 1

    def value_of(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a]
        return map_arg(a, lambda n: self.env[n]) if isinstance(a, (tuple, list, dict, slice)) else a

    def space_of(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.spaces.get(a)
        return None

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.spaces[n] = self._space(n, out)
        return out

    def _space(self, n: fx.Node, out: Any) -> Any:
        if n.op in ("placeholder", "get_attr"):
            return zeros_like_space(out)
        if n.op == "output":
            ctx = RuleContext(self, n, out)
            ctx.pin(map_arg(n.args[0], lambda a: self.spaces.get(a)), "output", "model output")
            return None
        ctx = RuleContext(self, n, out)
        if n.op == "call_function" and n.target is operator.getitem:
            container = self.value_of(n.args[0])
            if not isinstance(container, Tensor):
                S = self.space_of(n.args[0])
                try:
                    return S[self.value_of(n.args[1])] if S is not None else None
                except Exception:
                    return zeros_like_space(out)
        if n.op == "call_module":
            rule = rules.module_rule_for(ctx.module)
        elif n.op == "call_function":
            try:
                rule = rules.FUNCTION_RULES.get(n.target)
            except TypeError:  # unhashable target
                rule = None
        else:
            rule = rules.METHOD_RULES.get(n.target)
        if rule is None:
            if not any(isinstance(t, Tensor) for t in _flat_values(out)) and not _touches_hidden(self, n):
                return None  # pure bookkeeping on sizes and numbers
            return rules.fallback(ctx)
        return rule(ctx)


def _flat_values(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _flat_values(e)]
    if isinstance(v, dict):
        return [x for e in v.values() for x in _flat_values(e)]
    return [v]


def _touches_hidden(w: _Walker, n: fx.Node) -> bool:
    return any(any(bool(t.any()) for t in _tensors(w.space_of(a))) for a in n.all_input_nodes)


# ---------------------------------------------------------------------------------------------- union-find
class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))
        self.size = [1] * n

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return root

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if ra == 0 or (rb != 0 and self.size[ra] >= self.size[rb]):
            self.parent[rb] = ra
            self.size[ra] += self.size[rb]
            return ra
        self.parent[ra] = rb
        self.size[rb] += self.size[ra]
        return rb


_PIN_PRIORITY = {"output": 0, "normalization": 1}


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class TeleportPlan:
    """The analysis of one model for one input signature; apply it with :func:`nnteleport.teleport`.

    ``param_scale_indices[name] = (out_idx, in_idx)``: int64 index tensors into ``t = cat([1, flat_tau])``,
    broadcastable to the parameter, so that the teleported parameter is ``p * t[out_idx] / t[in_idx]``
    (``in_idx`` is ``None`` for biases and normalisation/embedding parameters). Only parameters that can move are
    listed.
    """

    groups: dict[str, GroupInfo]
    num_free: int
    param_scale_indices: dict[str, tuple[Tensor, Tensor | None]]
    sites: list[ActivationSite]
    positive_mask: Tensor  # (num_free,) bool
    report: Any = None
    functional_sites: list[ActivationSite] = field(default_factory=list)  # functional="graph": node names
    graph: fx.Graph | None = None  # functional="graph": the traced graph the wrappers are inserted into
    _device_cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def ones(self) -> Any:
        from nnteleport.cob import CoB

        return CoB({g.name: torch.ones(g.size, dtype=torch.float64) for g in self.groups.values()})

    def cob_from_flat(self, flat: Tensor) -> Any:
        """Split a flat vector of ``num_free`` factors into a :class:`~nnteleport.cob.CoB`."""
        from nnteleport.cob import CoB

        flat = torch.as_tensor(flat)
        if flat.shape != (self.num_free,):
            raise ValueError(f"flat CoB must have shape ({self.num_free},), got {tuple(flat.shape)}")
        return CoB({g.name: flat[g.offset : g.offset + g.size] for g in self.groups.values()})

    def flat(self, cob: Any) -> Tensor:
        """Validate a CoB (mapping group -> factors; missing groups are 1) and return its flat float64 vector."""
        from nnteleport.cob import _validate_against_plan

        return _validate_against_plan(self, cob)


def _finalize(state: _State, model: nn.Module) -> TeleportPlan:
    from nnteleport.report import build_report

    uf = _UnionFind(state.n_vars)
    for pairs in state.merges:
        for a, b in pairs.tolist():
            uf.union(a, b)
    # pins in priority order, so the report attributes each pinned neuron to the most fundamental reason
    pinned_by: list[tuple[str, str, int]] = []
    order = sorted(range(len(state.pins)), key=lambda i: _PIN_PRIORITY.get(state.pins[i].category, 2))
    for i in order:
        ev = state.pins[i]
        newly = 0
        for v in ev.vars.tolist():
            r = uf.find(v)
            if r != uf.find(0):
                newly += 1  # one neuron (a set of merged variables) more pinned
                uf.union(0, r)
        if newly:
            pinned_by.append((ev.category, ev.why, newly))
    root0 = uf.find(0)
    roots = [uf.find(v) for v in range(state.n_vars)]
    positive_roots = set()
    pos_reasons: list[tuple[str, int]] = []
    for vars_, why in state.positives:
        rs = {roots[v] for v in vars_.tolist()} - {root0}
        new = rs - positive_roots
        if new:
            pos_reasons.append((why, len(new)))
        positive_roots |= rs
    general_roots = set()
    for t in state.general_vars:
        general_roots |= {roots[v] for v in t.tolist()}

    flat_pos: dict[int, int] = {}
    members: dict[str, list[int]] = {}
    aliases: dict[str, list[str]] = {}
    owner: dict[int, str] = {}
    for name, first, count in state.spaces:
        for v in range(first, first + count):
            r = roots[v]
            if r == root0:
                continue
            if r not in flat_pos:
                flat_pos[r] = len(flat_pos)
                owner[r] = name
                members.setdefault(name, []).append(r)
            elif owner[r] != name and name not in aliases.setdefault(owner[r], []):
                aliases[owner[r]].append(name)
    mapping = torch.tensor([0 if r == root0 else flat_pos[r] + 1 for r in roots], dtype=torch.long)
    num_free = len(flat_pos)
    positive_mask = torch.zeros(num_free, dtype=torch.bool)
    for r in positive_roots:
        positive_mask[flat_pos[r]] = True
    groups: dict[str, GroupInfo] = {}
    offset = 0
    for name, rs in members.items():
        gname = name or type(model).__name__
        groups[gname] = GroupInfo(
            name=gname,
            size=len(rs),
            offset=offset,
            positive_mask=positive_mask[offset : offset + len(rs)].clone(),
            homogeneous=not any(r in general_roots for r in rs),
            aliases=tuple(aliases.get(name, ())),
        )
        offset += len(rs)

    param_scale_indices: dict[str, tuple[Tensor, Tensor | None]] = {}
    for name, out_idx, in_idx in state.params.values():
        o = mapping[out_idx]
        i = mapping[in_idx] if in_idx is not None else None
        if i is not None and not bool(i.any()):
            i = None
        if bool(o.any()) or i is not None:
            param_scale_indices[name] = (o, i)

    def resolve(raw: dict[str, _Site]) -> list[ActivationSite]:
        out = []
        for s in raw.values():
            idx = mapping[s.S]
            if not bool(idx.any()):
                continue
            if idx.dim() >= 2 and idx.shape[0] == 1:
                idx = idx.squeeze(0)
            out.append(ActivationSite(s.path, idx, s.kind))
        return out

    plan = TeleportPlan(
        groups, num_free, param_scale_indices, resolve(state.sites), positive_mask,
        functional_sites=resolve(state.fsites),
    )  # fmt: skip
    plan.report = build_report(model, state, plan, pinned_by, pos_reasons, root0, roots)
    return plan


# ---------------------------------------------------------------------------------------------- entry point
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, TeleportPlan]] = weakref.WeakKeyDictionary()


def _as_inputs(x: Any) -> tuple[Tensor, ...]:
    if isinstance(x, Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, Tensor) for t in x):
        return tuple(x)
    raise TypeError(
        f"x must be an example input batch: a tensor or a tuple of tensors passed to forward(), got {type(x).__name__}"
    )


def _fingerprint(model: nn.Module) -> tuple:
    """Module structure and parameter shapes, in one walk over the modules (checked on every cached call)."""
    return tuple(
        (name, type(m), tuple((k, None if p is None else tuple(p.shape)) for k, p in m._parameters.items()))
        for name, m in model.named_modules()
    )


def _cache_key(model: nn.Module, inputs: Sequence[Tensor], leaf_modules: tuple) -> tuple:
    sig = tuple((tuple(t.shape[1:]), t.dtype) for t in inputs)
    return (sig, leaf_modules, _fingerprint(model))


@contextlib.contextmanager
def _preserved(model: nn.Module, devices: list[torch.device]) -> Any:
    """Run the model for analysis without side effects: buffers (BN statistics), RNG and modes restored."""
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    cuda = [d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda, enabled=True), torch.no_grad():
        try:
            yield
        finally:
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
            for m, t in modes.items():
                m.training = t


def analyze(
    model: nn.Module, x: Any, *, leaf_modules: Sequence[type | str] = (), functional: str | Functional = "constrain"
) -> TeleportPlan:
    """Analyse ``model`` for teleportation (cached: a second call with the same input shapes does not re-trace).

    Parameters
    ----------
    model:
        Any ``nn.Module`` traceable by ``torch.fx``.
    x:
        An example input batch (a tensor, or a tuple of tensors passed positionally to ``forward``). Only its
        shapes matter (the batch axis is ignored in the cache key); a batch of 2 is enough and fastest.
    leaf_modules:
        Submodule types or qualified names to treat as black boxes (e.g. code ``torch.fx`` cannot trace); their
        inputs and outputs stay at ``tau = 1``.
    functional:
        ``"constrain"`` or ``"graph"``: how activations called as functions are treated (see :class:`Functional`).

    Returns
    -------
    TeleportPlan
        Groups, per-parameter scale indices, activation sites and the report (``print(plan.report)``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    bad = [t for t in leaf_modules if not isinstance(t, (type, str))]
    if bad:
        raise TypeError(f"leaf_modules must hold module types or qualified names, got {bad!r}")
    mode = Functional.parse(functional)
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names)), mode)
    per_model = _CACHE.setdefault(model, {})
    plan = per_model.get(key)
    if plan is not None:
        return plan

    state = _State()
    devices = list({t.device for t in inputs})
    graphs: list[fx.Graph] = []
    codes: set[str] = set()
    was_training = model.training
    with _preserved(model, devices):
        for training in (was_training, not was_training):
            model.train(training)
            graph = _trace(model, leaf_types, leaf_names)
            gm = fx.GraphModule(model, graph)
            code = gm.code
            if code in codes:
                continue
            if codes and mode is Functional.GRAPH:
                raise ValueError(
                    f"functional='graph' rewrites forward() as one traced graph, but {type(model).__name__} traces "
                    "to different graphs in train and eval mode (e.g. `if self.training:` in forward); use "
                    "functional='constrain' (the default), which keeps the model's own forward"
                )
            codes.add(code)
            graphs.append(graph)
            walker = _Walker(gm, state, graph_mode=mode is Functional.GRAPH)
            try:
                walker.run(*inputs)
            except Exception as exc:
                raise ValueError(
                    f"running {type(model).__name__} on the example input failed during analysis: "
                    f"{type(exc).__name__}: {exc}. Pass an input batch that forward() accepts."
                ) from exc
    plan = _finalize(state, model)
    if mode is Functional.GRAPH:
        plan.graph = graphs[0]
    per_model[key] = plan
    return plan


def _register(
    model: nn.Module, x: Any, plan: TeleportPlan, leaf_modules: Sequence[type | str] = (), functional: Any = "constrain"
) -> None:
    """Record ``plan`` for ``model`` (e.g. after in-place wrapping changed its module structure)."""
    inputs = _as_inputs(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names)), Functional.parse(functional))
    _CACHE.setdefault(model, {})[key] = plan
