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
import inspect
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

from nnteleport._choice import Choice
from nnteleport.engine import inspection, rules
from nnteleport.engine.activation import TeleportedActivation, call_is_inplace
from nnteleport.engine.rules import Kind, _callable_name, zeros_like_space
from nnteleport.errors import InvalidArgumentError, InvalidValueError, UnsupportedModelError, UntraceableModelError

__all__ = ["Functional", "GroupInfo", "TeleportPlan", "UntraceableModelError", "analyze"]


class Functional(Choice, what="functional mode"):
    """What to do with activations called as functions (``F.gelu(x)``) in a user's ``forward``.

    * ``"constrain"`` (default): the model keeps its class and ``forward``; positively homogeneous functions
      (``F.relu``, ``F.max_pool2d``) restrict their neurons to ``tau > 0``, other functions pin them to 1.
    * ``"graph"``: the teleported model is a ``torch.fx.GraphModule`` whose forward calls
      ``tau * f(x / tau)`` at each such call (same parameter names); refused when the model's traced graph differs
      between train and eval mode (``if self.training:`` in ``forward``).
    """

    CONSTRAIN = "constrain"
    GRAPH = "graph"


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
    def __init__(self, leaf_types: tuple[type, ...], leaf_names: frozenset[str], n_inputs: int | None = None) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self._param_names: dict[int, str] | None = None
        self._buffer_names: dict[int, str] | None = None
        self.leaf_types = leaf_types
        self.leaf_names = leaf_names
        self.stack: list[str] = []
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, TeleportedActivation) or qualname in self.leaf_names:
            return True
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if inspection.black_box_reason(m) is not None:
            return True  # hooks / parametrizations: run as the user's module, analysed as a black box
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

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        """As ``torch.fx.Tracer.getattr``, with parameters found by a dictionary: fx searches
        ``root.named_parameters()`` on every attribute access (a quarter of the analysis time of ConvNeXt, whose
        layer scales are read in forward)."""
        if isinstance(attr_val, nn.Parameter) and not self.param_shapes_constant:
            if self._param_names is None:
                self._param_names = {id(p): n for n, p in self.root.named_parameters()}
            name = self._param_names.get(id(attr_val))
            if name is not None:
                if name not in parameter_proxy_cache:
                    parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
                return parameter_proxy_cache[name]
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def create_arg(self, a: Any) -> Any:
        """As ``torch.fx.Tracer.create_arg``, with parameters and buffers found by dictionaries: fx searches
        ``root.named_buffers()`` for every tensor argument (60% of the analysis time of MobileOne)."""
        if isinstance(a, Tensor) and not isinstance(a, fx.Proxy):
            if self._buffer_names is None:
                self._buffer_names = {}
                for n, b in self.root.named_buffers():
                    self._buffer_names.setdefault(id(b), n)
            if self._param_names is None:
                self._param_names = {id(p): n for n, p in self.root.named_parameters()}
            table = self._param_names if isinstance(a, nn.Parameter) else self._buffer_names
            name = table.get(id(a))
            if name is not None:
                return self.create_node("get_attr", name, (), {})
        return super().create_arg(a)

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        """Trace ``forward`` as called with the example inputs only: parameters after them keep their defaults
        (``if mask is not None:`` takes the branch of the call) and ``*args``/``**kwargs`` are empty."""
        if self.n_inputs is not None and concrete_args is None:
            root_fn = _called_with(root_fn, self.n_inputs + int(is_module))
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def trace(self, root: Any, concrete_args: dict[str, Any] | None = None) -> fx.Graph:
        """Trace with custom ``torch.autograd.Function`` calls kept as opaque calls: ``torch.fx`` would otherwise
        inline their forward and lose their backward (straight-through estimators, custom gradients)."""
        function_cls = torch.autograd.Function
        original = function_cls.__dict__["apply"]
        tracer = self

        def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
            if any(isinstance(a, fx.Proxy) for a in _flat_values([*args, *kwargs.values()])):
                target = _autograd_call(cls, original)
                return tracer.create_proxy("call_function", target, args, kwargs)
            return original.__get__(None, cls)(*args, **kwargs)

        function_cls.apply = classmethod(apply)
        try:
            return super().trace(root, concrete_args)
        finally:
            function_cls.apply = original


def _called_with(fn: Any, n: int) -> Any:
    """``fn`` restricted to its first ``n`` positional parameters (the rest must have defaults or be ``*args`` /
    ``**kwargs``); ``fn`` itself when it has no others."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = params[len(positional[:n]) :]
    if len(positional) < n or not rest:
        return fn
    if any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in rest):
        return fn
    names = [p.name for p in positional[:n]]
    if not all(name.isidentifier() for name in names):
        return fn
    namespace: dict[str, Any] = {"_fn": fn}
    exec(f"def forward({', '.join(names)}):\n    return _fn({', '.join(names)})\n", namespace)
    wrapper = namespace["forward"]
    wrapper.__module__ = getattr(fn, "__module__", __name__)
    return wrapper


_AUTOGRAD_CALLS: dict[type, Any] = {}


def _autograd_call(cls: type, original: Any) -> Any:
    """A plain function calling ``cls.apply`` (one per Function class, so traced graphs can name it)."""
    fn = _AUTOGRAD_CALLS.get(cls)
    if fn is None:
        bound = original.__get__(None, cls)

        def fn(*args: Any, **kwargs: Any) -> Any:
            return bound(*args, **kwargs)

        fn.__name__ = fn.__qualname__ = f"{cls.__name__}_apply"
        fn.__module__ = __name__
        fn.autograd_function = cls  # type: ignore[attr-defined]
        _AUTOGRAD_CALLS[cls] = fn
    return fn


def _trace(model: nn.Module, leaf_types: tuple[type, ...], leaf_names: frozenset[str], n_inputs: int = 1) -> fx.Graph:
    tracer = _Tracer(leaf_types, leaf_names, n_inputs)
    try:
        return tracer.trace(model)
    except Exception as exc:
        where = tracer.failed_in or ""
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if "/torch/" not in f.filename and "/nnteleport/" not in f.filename.replace("\\", "/")
        ]
        call = f" at {frames[-1].filename}:{frames[-1].lineno} `{(frames[-1].line or '').strip()}`" if frames else ""
        inside = f" inside submodule {where!r} ({type(model.get_submodule(where)).__name__})" if where else ""
        origin = type(model).__module__.split(".")[0]
        hint = (
            f" Pass leaf_modules=[{where!r}] to treat that submodule as a black box (its spaces stay at tau = 1)"
            if where
            else " Pass leaf_modules=[...] naming the submodules (paths or types) that hold such code"
        )
        if "register_hook" in call:
            hint = (
                " A tensor hook registered inside forward() changes gradients where the engine cannot see it: "
                "move that code into a submodule and pass leaf_modules=[its path]"
            )
        hooked = [p for p, m in model.named_modules() if p and inspection.hooks_of(m)]
        if hooked:
            hint += (
                f". Modules with hooks ({', '.join(hooked[:4])}) are analysed as black boxes and their hooks do not "
                "run while tracing: a forward() that reads what a hook stored cannot be traced"
            )
        hint += ", or make the control flow independent of tensor values."
        if origin == "transformers":
            hint = (
                " Hugging Face transformers models trace only with transformers' own torch.fx tracer "
                "(transformers.utils.fx), which nnteleport does not use yet: such a model cannot be teleported "
                "today (leaf_modules=[...] naming its attention modules makes a block traceable, at tau = 1 there)."
            )
        raise UntraceableModelError(
            f"torch.fx could not trace {type(model).__name__} (from {type(model).__module__}){inside}{call}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}.{hint}"
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
        self.param_names: dict[int, str] = {}  # id(parameter) -> name, for every parameter of the model
        self.unaccounted: dict[int, str] = {}  # id(parameter) -> a use that no rule accounted for

    def new(self, n: int, name: str) -> Tensor:
        ids = torch.arange(self.n_vars, self.n_vars + n, dtype=torch.long)
        self.spaces.append((name, self.n_vars, n))
        self.n_vars += n
        return ids


class RuleContext:
    """What a rule sees of the node it handles (see :mod:`nnteleport.engine.rules`)."""

    def __init__(self, walker: _Walker, node: fx.Node, out: Any) -> None:
        self.w = walker
        self.state = walker.state
        self.node = node
        self.out = out
        self.module: nn.Module | None = walker.submodules.get(node.target) if node.op == "call_module" else None
        self.path = node.target if node.op == "call_module" else None
        self.args, self.kwargs = _normalized_arguments(node, self.module)
        self.read: set[fx.Node] = set()  # input nodes the rule looked at (the others are pinned after it)
        self.registered: set[int] = set()  # ids of the parameters the rule accounted for

    # --- inputs
    @property
    def op_name(self) -> str:
        n = self.node
        if n.op == "call_module":
            return f"{n.target!r} ({type(self.module).__name__})"
        if n.op == "call_method":
            return f"Tensor.{n.target} (node {n.name!r})"
        return f"{_callable_name(n.target)} (node {n.name!r})"

    def _mark(self, a: Any) -> Any:
        for node in _nodes_in(a):
            self.read.add(node)
        return a

    def _arg(self, i: int) -> Any:
        return self._mark(self.args[i] if i < len(self.args) else None)

    def in_value(self, i: int) -> Any:
        a = self._arg(i)
        return self.w.value_of(a)

    def in_space(self, i: int) -> Any:
        a = self._arg(i)
        return self.w.space_of(a)

    def kwarg(self, name: str, pos: int, default: Any) -> Any:
        if name in self.kwargs:
            return self.w.value_of(self._mark(self.kwargs[name]))
        if pos < len(self.args):
            return self.w.value_of(self._mark(self.args[pos]))
        return default

    def extra_kwargs(self, allowed: Sequence[str]) -> list[str]:
        """Keyword arguments of the call that the rule does not know (it should fall back when there are any)."""
        return [k for k in self.kwargs if k not in allowed]

    def apply_to_spaces(self) -> Any:
        """Run this node's op on the spaces of its tensor arguments (expanded to the arguments' shapes). The
        expanded spaces are broadcast views first (no copy; a ``(1, C, 1, 1)`` space of a large feature map stays
        small); an op that needs contiguous memory (``view``) gets materialised copies."""
        w = self.w

        def sub(contiguous: bool) -> Any:
            def one(S: Any, v: Tensor) -> Tensor:
                S = S if isinstance(S, Tensor) else zeros_like_space(v)
                S = S.expand(v.shape)
                return S.contiguous() if contiguous else S

            def f(a: fx.Node) -> Any:
                v = w.value_of(a)
                if isinstance(v, Tensor):
                    return one(w.space_of(a), v) if v.is_floating_point() or v.is_complex() else v.cpu()
                if isinstance(v, (tuple, list)) and v and all(isinstance(t, Tensor) for t in v):
                    return type(v)(one(s, t) for s, t in zip(w.space_of(a), v))
                return v

            return f

        self.read.update(self.node.all_input_nodes)
        n = self.node
        for contiguous in (False, True):
            args = map_arg(n.args, sub(contiguous))
            kwargs = map_arg(n.kwargs, sub(contiguous))
            try:
                if n.op == "call_function":
                    return n.target(*args, **kwargs)
                if n.op == "call_method":
                    return getattr(args[0], n.target)(*args[1:], **kwargs)
                return self.module(*args, **kwargs)
            except RuntimeError:
                if contiguous:
                    raise
        raise AssertionError("unreachable")

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
        self.read.update(self.node.all_input_nodes)
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
        pairs = _unique_pairs(a, b)
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
        p = self.module._parameters.get(attr)
        if p is None or getattr(self.module, attr) is not p:
            raise rules._Unsupported(f"{self.op_name}: {attr!r} is not a plain parameter of the module")
        name = f"{self.path}.{attr}" if self.path else attr
        self.registered.add(id(p))
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
            if new.shape == old.shape and torch.equal(new, old):
                continue  # the same use again (another trace or walk): nothing new
            pairs = _unique_pairs(new.expand(shape).reshape(-1), old.expand(shape).reshape(-1))
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


def _unique_pairs(a: Tensor, b: Tensor) -> Tensor:
    """The distinct rows of ``stack([a, b], 1)`` (``(k, 2)``), via one 1-D ``unique`` of ``a * 2^32 + b`` (variable
    ids are far below ``2^31``): several times faster than ``torch.unique(..., dim=0)``."""
    code = torch.unique(a.to(torch.int64) * (1 << 32) + b.to(torch.int64))
    return torch.stack([code >> 32, code & 0xFFFFFFFF], dim=1)


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
        self.axis0_varies = False  # some space has different factors along its first axis (the batch axis?)
        self.batch: int | None = None  # the example's batch size, when all inputs share one
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
        try:
            out = super().run_node(n)
        except Exception as exc:
            raise _NodeFailed(n, exc) from exc
        S = self.spaces[n] = self._space(n, out)
        if not self.axis0_varies and S is not None:
            self.axis0_varies = self._batch_dependent(out, S)
        return out

    def _batch_dependent(self, out: Any, S: Any) -> bool:
        """Whether a space has different factors along a first axis that can hold the batch (its length a multiple
        of the example's batch size: ``torch.cat([h, g])`` has ``2 B`` rows; the ``3`` of a ``(3, B, H, N, D)``
        query-key-value stack cannot)."""
        if isinstance(out, Tensor):
            if not isinstance(S, Tensor) or not S.dim() or S.shape[0] == 1:
                return False
            if self.batch and out.dim() and out.shape[0] % self.batch:
                return False
            return bool((S != S[:1]).any())
        if isinstance(out, (tuple, list)) and isinstance(S, (tuple, list)):
            return any(self._batch_dependent(o, s) for o, s in zip(out, S))
        return False

    def _space(self, n: fx.Node, out: Any) -> Any:
        if n.op == "placeholder":
            return zeros_like_space(out)
        if n.op == "get_attr":
            if id(out) in self.state.param_names:  # a parameter read by the user's code, not by its module
                self.state.unaccounted.setdefault(id(out), f"read directly in forward() (node {n.name!r})")
            return zeros_like_space(out)
        ctx = RuleContext(self, n, out)
        if n.op == "output":
            ctx.pin(map_arg(n.args[0], lambda a: self.spaces.get(a)), "output", "model output")
            return None
        if n.op == "call_function" and n.target is operator.getitem:
            container = self.value_of(n.args[0])
            if not isinstance(container, Tensor):
                S = self.space_of(n.args[0])
                try:
                    return S[self.value_of(n.args[1])] if S is not None else zeros_like_space(out)
                except Exception:
                    ctx.pin_inputs("unsupported", f"{ctx.op_name}: indexing a container could not be followed")
                    return zeros_like_space(out)
        black_box = None
        if n.op == "call_module":
            black_box = inspection.black_box_reason(ctx.module)
            rule = None if black_box else rules.module_rule_for(ctx.module)
        elif n.op == "call_function":
            try:
                rule = rules.FUNCTION_RULES.get(n.target)
            except TypeError:  # unhashable target
                rule = None
        else:
            rule = rules.METHOD_RULES.get(n.target)
        if black_box is not None:
            ctx.pin_inputs("hook", f"{ctx.op_name} {black_box}: analysed as a black box at tau = 1")
            S = zeros_like_space(out)
        elif rule is None:
            if not any(isinstance(t, Tensor) for t in _flat_values(out)) and not _touches_hidden(self, n):
                return None  # pure bookkeeping on sizes and numbers
            S = rules.fallback(ctx)
        else:
            try:
                S = rule(ctx)
            except rules._Unsupported as exc:
                S = rules.fallback(ctx, str(exc))
            except Exception as exc:  # a rule that cannot follow an unforeseen call pins, it never guesses
                S = rules.fallback(ctx, f"{ctx.op_name} could not be followed ({type(exc).__name__}: {exc})")
        return self._checked(ctx, S)

    def _checked(self, ctx: RuleContext, S: Any) -> Any:
        """Safety net around every rule: what it did not account for is pinned, never guessed.

        * a hidden input the rule did not read (a keyword argument, an extra tensor) is pinned;
        * a parameter of the called module that the rule did not register is an unaccounted use (pinned later);
        * a space that does not match the output (rank, shape, a factor on an integer tensor) is pinned;
        * an in-place op writes its result into its first argument, so both must carry the same factors.
        """
        n, out = ctx.node, ctx.out
        if any(isinstance(t, Tensor) for t in _flat_values(out)):
            for a in n.all_input_nodes:
                if a not in ctx.read:
                    ctx.pin(self.space_of(a), "unsupported", f"{ctx.op_name}: argument {a.name!r} not read by its rule")
        if ctx.module is not None:
            for pname, p in ctx.module.named_parameters():
                if id(p) not in ctx.registered:
                    self.state.unaccounted.setdefault(id(p), f"used by {ctx.op_name} as {pname!r}")
        if not _space_matches(out, S):
            ctx.pin(S, "unsupported", f"{ctx.op_name}: the rule's space does not fit the output (engine check)")
            ctx.pin_inputs("unsupported", f"{ctx.op_name}: the rule's space does not fit the output (engine check)")
            return zeros_like_space(out)
        if _is_inplace(n, ctx.module) and n.args and isinstance(n.args[0], fx.Node):
            S0 = self.space_of(n.args[0])
            if isinstance(S0, Tensor) and isinstance(S, Tensor) and isinstance(out, Tensor):
                try:
                    S = ctx.merge(S0, S)
                except ValueError:
                    ctx.pin(S0, "unsupported", f"{ctx.op_name}: in-place result of another shape")
                    ctx.pin(S, "unsupported", f"{ctx.op_name}: in-place result of another shape")
                    S = zeros_like_space(out)
        return S


class _NodeFailed(Exception):
    """Running one node of the traced graph failed (the op itself, not a rule)."""

    def __init__(self, node: fx.Node, exc: Exception) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.node, self.exc = node, exc


_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.ipow, operator.imod, operator.iand, operator.ior, operator.ixor}  # fmt: skip


def _is_inplace(n: fx.Node, module: nn.Module | None) -> bool:
    """Whether the node overwrites its first argument (``x.relu_()``, ``x += y``, ``F.relu(x, inplace=True)``,
    ``nn.SiLU(inplace=True)``)."""
    if module is not None:
        return bool(getattr(module, "inplace", False))
    if n.op == "call_method":
        return call_is_inplace(n.target)
    if n.op == "call_function":
        if _hashable(n.target) and n.target in _INPLACE_FUNCTIONS:
            return True
        return call_is_inplace(n.target, tuple(n.args[1:]), dict(n.kwargs))
    return False


def _hashable(v: Any) -> bool:
    try:
        hash(v)
    except TypeError:
        return False
    return True


def _space_matches(out: Any, S: Any) -> bool:
    """A space fits a value: same structure; for a tensor the same rank, broadcastable to its shape, and no
    factor on a tensor that is not floating point (an integer tensor cannot carry ``tau``)."""
    if isinstance(out, Tensor):
        if not isinstance(S, Tensor) or S.dim() != out.dim():
            return False
        if any(s not in (1, o) for s, o in zip(S.shape, out.shape)):
            return False
        return out.is_floating_point() or out.is_complex() or not bool(S.any())
    if isinstance(out, (tuple, list)):
        if S is None:
            return not any(isinstance(t, Tensor) for t in _flat_values(out))
        return isinstance(S, (tuple, list)) and len(S) == len(out) and all(map(_space_matches, out, S))
    if isinstance(out, dict):
        if S is None:
            return not any(isinstance(t, Tensor) for t in _flat_values(out))
        return isinstance(S, dict) and S.keys() == out.keys() and all(_space_matches(out[k], S[k]) for k in out)
    return S is None or not isinstance(S, Tensor) or not bool(S.any())


def _nodes_in(a: Any) -> list[fx.Node]:
    out: list[fx.Node] = []
    map_arg(a, lambda n: out.append(n) or n)
    return out


# positional names of the tensor arguments of functions and methods, for calls written with keywords
_POSITIONAL_KEYWORDS = ("input", "self", "other", "tensor", "x")


def _normalized_arguments(node: fx.Node, module: nn.Module | None) -> tuple[tuple, dict]:
    """The node's arguments with keyword-passed inputs moved to their positions: a module call is bound to its
    ``forward`` signature (``self.fc(input=h)``), a function or method call moves ``input=``/``other=`` (the
    names ATen uses) to the front (``torch.mul(input=h, other=2.0)``)."""
    args, kwargs = tuple(node.args), dict(node.kwargs)
    if not kwargs:
        return args, kwargs
    if module is not None:
        try:
            bound = inspect.signature(module.forward).bind(*args, **kwargs)
        except (TypeError, ValueError):
            return args, kwargs
        pos, rest = [], {}
        for name, value in bound.arguments.items():
            param = bound.signature.parameters[name]
            if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD) and len(rest) == 0:
                pos.append(value)
            elif param.kind is param.VAR_POSITIONAL:
                pos.extend(value)
            elif param.kind is param.VAR_KEYWORD:
                rest.update(value)
            else:
                rest[name] = value
        return tuple(pos), rest
    args = list(args)
    for name in ("input", "self", "other"):
        if name in kwargs and (name == "other" or not args) and (name != "other" or len(args) == 1):
            args.append(kwargs.pop(name))
    return tuple(args), kwargs


def _flat_values(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _flat_values(e)]
    if isinstance(v, dict):
        return [x for e in v.values() for x in _flat_values(e)]
    return [v]


def _touches_hidden(w: _Walker, n: fx.Node) -> bool:
    return any(any(bool(t.any()) for t in _tensors(w.space_of(a))) for a in n.all_input_nodes)


# ---------------------------------------------------------------------------------------------- union-find
def _components(n: int, merges: list[Tensor]) -> Tensor:
    """Connected components of the variables ``0..n-1`` under the merged pairs: for each variable the smallest
    variable of its component (label propagation with pointer jumping, whole-tensor operations)."""
    label = torch.arange(n, dtype=torch.long)
    if not merges:
        return label
    pairs = torch.cat(merges)
    a, b = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    while True:
        m = torch.minimum(label[a], label[b])
        new = label.scatter_reduce(0, a, m, "amin").scatter_reduce(0, b, m, "amin")
        while True:  # pointer jumping: every label points at a root
            jumped = new[new]
            if torch.equal(jumped, new):
                break
            new = jumped
        if torch.equal(new, label):
            return label
        label = new


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
    constants: dict[str, Tensor] = field(default_factory=dict)  # functional="graph": the graph's tensor constants
    _device_cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def ones(self) -> Any:
        from nnteleport.engine.cob import CoB

        return CoB({g.name: torch.ones(g.size, dtype=torch.float64) for g in self.groups.values()})

    def cob_from_flat(self, flat: Tensor) -> Any:
        """Split a flat vector of ``num_free`` factors into a :class:`~nnteleport.engine.cob.CoB`."""
        from nnteleport.engine.cob import CoB

        flat = torch.as_tensor(flat)
        if flat.shape != (self.num_free,):
            raise InvalidValueError(f"flat CoB must have shape ({self.num_free},), got {tuple(flat.shape)}")
        return CoB({g.name: flat[g.offset : g.offset + g.size] for g in self.groups.values()})

    def flat(self, cob: Any) -> Tensor:
        """Validate a CoB (mapping group -> factors; missing groups are 1) and return its flat float64 vector."""
        from nnteleport.engine.cob import _validate_against_plan

        return _validate_against_plan(self, cob)


def _finalize(state: _State, model: nn.Module) -> TeleportPlan:
    from nnteleport.engine.report import build_report

    for pid, use in state.unaccounted.items():
        entry = state.params.get(pid)
        if entry is None:
            continue  # a parameter no rule rescales: any use of it is exact
        name, out_idx, in_idx = entry
        why = f"parameter {name!r} is {use}, which its module's rule does not account for"
        for idx in (out_idx, in_idx):
            if idx is not None:
                state.pins.append(_PinEvent(torch.unique(idx), "shared", why))
    label = _components(state.n_vars, state.merges)
    # pins in priority order, so the report attributes each pinned neuron to the most fundamental reason
    pinned = torch.zeros(state.n_vars, dtype=torch.bool)
    pinned[label[0]] = True
    pinned_by: list[tuple[str, str, int]] = []
    order = sorted(range(len(state.pins)), key=lambda i: _PIN_PRIORITY.get(state.pins[i].category, 2))
    for i in order:
        ev = state.pins[i]
        comps = torch.unique(label[ev.vars])
        new = comps[~pinned[comps]]
        if new.numel():  # neurons (sets of merged variables) newly pinned
            pinned[new] = True
            pinned_by.append((ev.category, ev.why, int(new.numel())))
    root0 = 0
    roots = torch.where(pinned[label], 0, label).tolist()
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
    raise InvalidArgumentError(
        f"x must be an example input batch: a tensor or a tuple of tensors passed to forward(), got {type(x).__name__}"
    )


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


def _cache_key(model: nn.Module, inputs: Sequence[Tensor], leaf_modules: tuple) -> tuple:
    sig = tuple((tuple(t.shape[1:]), t.dtype) for t in inputs)
    return (sig, leaf_modules, _fingerprint(model))


def _changed(live: Any, saved: Any) -> bool:
    """Whether a container's contents differ from a shallow copy (by identity, so tensors are never compared)."""
    if isinstance(live, dict):
        return live.keys() != saved.keys() or any(live[k] is not saved[k] for k in live)
    return len(live) != len(saved) or any(a is not b for a, b in zip(live, saved))


@contextlib.contextmanager
def _preserved(model: nn.Module, devices: list[torch.device]) -> Any:
    """Run the model for analysis without side effects: parameters and buffers that the forward overwrites
    (``nn.Embedding(max_norm=...)`` renormalises rows, in-place updates of statistics), module attributes set while
    tracing (tracing objects stored by user code or hooks), RNG and train/eval modes are restored."""
    params = {k: (p, p._version, p.detach().clone()) for k, p in model.named_parameters(remove_duplicate=False)}
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    modes = {m: m.training for m in model.modules()}
    attrs = {m: dict(vars(m)) for m in model.modules()}
    # containers the forward or its hooks fill (``self.feats[name] = out``): their contents are restored too
    containers = [
        (v, copy.copy(v)) for before in attrs.values() for k, v in before.items()
        if not k.startswith("_") and type(v) in (dict, list)
    ]  # fmt: skip
    cuda = [d.index if d.index is not None else torch.cuda.current_device() for d in devices if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda, enabled=True), torch.no_grad():
        try:
            yield
        finally:
            for p, version, saved in params.values():
                if p._version != version:
                    p.copy_(saved)
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
            for m, t in modes.items():
                m.training = t
            for live, saved in containers:
                if _changed(live, saved):
                    live.clear()
                    live.update(saved) if isinstance(live, dict) else live.extend(saved)
            for m, before in attrs.items():
                now = vars(m)
                for k in [k for k in now if k not in before]:
                    del now[k]
                for k, v in before.items():
                    if now.get(k, v) is not v or k not in now:
                        now[k] = v


def _graph_key(graph: fx.Graph, root: nn.Module) -> tuple:
    """What a traced graph computes, as a hashable value (ops, targets, arguments with nodes by position), without
    generating its Python code. Tensor constants (``_tensor_constantN``, numbered anew by every trace) count by
    the tensor they hold."""
    index: dict[fx.Node, int] = {}
    key = []
    for n in graph.nodes:
        index[n] = len(index)
        args = map_arg((n.args, n.kwargs), lambda a: _NodeRef(index[a]))
        target: Any = n.target if isinstance(n.target, str) else id(n.target)
        if n.op == "get_attr" and str(n.target).startswith("_tensor_constant"):
            target = ("tensor", _tensor_identity(getattr(root, n.target, None)))
        key.append((n.op, target, repr(args)))
    return tuple(key)


def _tensor_identity(t: Any) -> Any:
    """A tensor constant by its contents (computed anew by every trace: ``buffer.view(-1)``), by identity when
    large."""
    if not isinstance(t, Tensor) or t.numel() > 1 << 20:
        return id(t)
    data = t.detach().reshape(-1).contiguous().cpu().view(torch.uint8)
    return tuple(t.shape), t.dtype, hash(data.numpy().tobytes())


class _NodeRef(int):
    def __repr__(self) -> str:
        return f"%{int(self)}"


def _batch_variant(inputs: Sequence[Tensor]) -> tuple[Tensor, ...] | None:
    """The example inputs with one more sample (the first repeated), to check that the plan does not depend on the
    batch size (a model that mixes samples: ``torch.cat([h, g])[2:4]``)."""
    if not inputs or any(t.dim() == 0 for t in inputs) or len({t.shape[0] for t in inputs}) != 1:
        return None
    return tuple(torch.cat([t, t[:1]]) for t in inputs)


def analyze(
    model: nn.Module, x: Any, *, leaf_modules: Sequence[type | str] = (), functional: str | Functional = "constrain"
) -> TeleportPlan:
    """Analyse ``model`` for teleportation (cached: a second call with the same input shapes does not re-trace).

    Parameters
    ----------
    model:
        Any ``nn.Module`` traceable by ``torch.fx``.
    x:
        An example input batch (a tensor, or a tuple of tensors passed positionally to ``forward``; ``forward``'s
        further parameters keep their defaults). Only its shapes matter (the batch axis is ignored in the cache
        key); a batch of 2 is enough and fastest.
    leaf_modules:
        Submodule types or qualified names to treat as black boxes (e.g. code ``torch.fx`` cannot trace); their
        inputs and outputs stay at ``tau = 1``.
    functional:
        ``"constrain"`` or ``"graph"``: how activations called as functions are treated (see :class:`Functional`).

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
    inputs = _as_inputs(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    bad = [t for t in leaf_modules if not isinstance(t, (type, str))]
    if bad:
        raise InvalidArgumentError(f"leaf_modules must hold module types or qualified names, got {bad!r}")
    mode = Functional.parse(functional)
    inspection.check_model(model)
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names)), mode)
    per_model = _CACHE.setdefault(model, {})
    plan = per_model.get(key)
    if plan is not None:
        return plan

    state = _State()
    state.param_names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    devices = list({t.device for t in inputs})
    graphs: list[fx.Graph] = []
    codes: set[tuple] = set()
    was_training = model.training
    with _preserved(model, devices):
        for training in (was_training, not was_training):
            for grad in (True, False):
                model.train(training)
                with torch.set_grad_enabled(grad):
                    graph = _trace(model, leaf_types, leaf_names, len(inputs))
                code = _graph_key(graph, model)
                if code in codes:
                    continue
                if codes and mode is Functional.GRAPH:
                    raise UnsupportedModelError(
                        f"functional='graph' rewrites forward() as one traced graph, but {type(model).__name__} "
                        "traces to different graphs in train and eval mode or with and without gradients (e.g. "
                        "`if self.training:` in forward); use functional='constrain' (the default), which keeps the "
                        "model's own forward"
                    )
                codes.add(code)
                graphs.append(graph)
                gm = fx.GraphModule(model, graph)
                walker = _walk(model, gm, state, mode, inputs, training)
                variant = _batch_variant(inputs) if walker.axis0_varies else None
                if variant is not None:
                    try:
                        _Walker(gm, state, graph_mode=mode is Functional.GRAPH).run(*variant)
                    except _NodeFailed:
                        pass  # the model does not run at that batch size: only the example's holds
        constants = {  # tensor constants torch.fx stored on the model while tracing (removed again on exit)
            str(n.target): getattr(model, str(n.target))
            for n in graphs[0].nodes
            if n.op == "get_attr" and str(n.target).startswith("_tensor_constant") and hasattr(model, str(n.target))
        }
    plan = _finalize(state, model)
    if mode is Functional.GRAPH:
        plan.graph = graphs[0]
        plan.constants = constants
    per_model[key] = plan
    return plan


def _walk(
    model: nn.Module, gm: fx.GraphModule, state: _State, mode: Functional, inputs: tuple[Tensor, ...], training: bool
) -> _Walker:
    walker = _Walker(gm, state, graph_mode=mode is Functional.GRAPH)
    sizes = {t.shape[0] for t in inputs if t.dim()}
    walker.batch = sizes.pop() if len(sizes) == 1 and len(inputs) == sum(t.dim() > 0 for t in inputs) else None
    try:
        walker.run(*(t.clone() for t in inputs))  # a forward that writes into its input must not change x
        return walker
    except _NodeFailed as failed:
        exc, node = failed.exc, failed.node
        try:
            model(*inputs)
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
        if any(n.op == "get_attr" and str(n.target).startswith("_tensor_constant") for n in gm.graph.nodes) and hooked:
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


def _register(
    model: nn.Module, x: Any, plan: TeleportPlan, leaf_modules: Sequence[type | str] = (), functional: Any = "constrain"
) -> None:
    """Record ``plan`` for ``model`` (e.g. after in-place wrapping changed its module structure)."""
    inputs = _as_inputs(x)
    leaf_types = tuple(t for t in leaf_modules if isinstance(t, type))
    leaf_names = frozenset(t for t in leaf_modules if isinstance(t, str))
    key = (*_cache_key(model, inputs, (leaf_types, leaf_names)), Functional.parse(functional))
    _CACHE.setdefault(model, {})[key] = plan
