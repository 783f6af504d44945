"""The walker: an ``fx.Interpreter`` that runs the model once and propagates a neuron *space* per tensor.

Each node is handled by its rule from :mod:`nnteleport.engine.rules` through a :class:`RuleContext`; every rule's
result is checked (:meth:`_Walker._checked`): hidden inputs it did not read are pinned, module parameters it did not
register are unaccounted uses, a space that does not fit the output is pinned, an in-place op keeps its input's
factors, an exception inside a rule pins (never crashes, never guesses).
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from nnteleport.engine import inspection, rules
from nnteleport.engine.activation import call_is_inplace
from nnteleport.engine.plan import _PinEvent, _Site, _State
from nnteleport.engine.rules import _callable_name
from nnteleport.engine.spaces import Kind, broadcast_shape, compress, zeros_like_space
from nnteleport.engine.trace import _flat_values

# ---------------------------------------------------------------------------------------------- the walk


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
    def new_space(self, n: int, owner: str | None = None) -> Tensor:
        """Fresh variables for this node's output; a module called again (or in another trace) reuses them,
        so a shared layer has one set of factors. ``owner`` names the module a function call acts for (the owner
        of the parameters passed to ``F.batch_norm``): the space is named and reused as that module's."""
        path = owner if owner is not None else self.path
        if path is not None:
            prev = self.state.module_out.get(path)
            if prev is not None and prev.numel() == n:
                return prev
        ids = self.state.new(n, path if path is not None else self.node.name)
        if path is not None:
            self.state.module_out[path] = ids
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
        shape = broadcast_shape(Sa.shape, Sb.shape)
        self._unite(
            Sa.expand(shape), Sb.expand(shape), "constant", f"{self.op_name}: added to a constant (pinned) tensor"
        )
        out = Sa.expand(shape) if Sa.dim() >= Sb.dim() else Sb.expand(shape)
        return compress(out)

    def register_param(self, attr: str, out_idx: Tensor, in_idx: Tensor | None) -> None:
        """Declare ``module.<attr>`` scales as ``t[out_idx] / t[in_idx]`` (a shared parameter merges spaces)."""
        assert self.module is not None
        p = self.module._parameters.get(attr)
        if p is None or getattr(self.module, attr) is not p:
            raise rules._Unsupported(f"{self.op_name}: {attr!r} is not a plain parameter of the module")
        self._register(p, f"{self.path}.{attr}" if self.path else attr, out_idx, in_idx)

    def parameter_arg(self, name: str, pos: int) -> nn.Parameter | None:
        """The argument ``name`` (or position ``pos``) of a function call when it is a parameter of the model read
        as it is (``F.batch_norm(x, ..., self.weight, self.bias)``), else ``None``. Marks it read."""
        a = self.kwargs.get(name, self.args[pos] if pos < len(self.args) else None)
        self._mark(a)
        if isinstance(a, fx.Node) and a.op == "get_attr":
            v = self.w.value_of(a)
            if isinstance(v, nn.Parameter) and id(v) in self.state.param_names:
                return v
        return None

    def register_tensor(self, p: nn.Parameter, out_idx: Tensor, in_idx: Tensor | None) -> None:
        """Declare a parameter passed to a function (see :meth:`parameter_arg`) scales as ``t[out_idx] / t[in_idx]``."""
        self._register(p, self.state.param_names[id(p)], out_idx, in_idx)

    def _register(self, p: nn.Parameter, name: str, out_idx: Tensor, in_idx: Tensor | None) -> None:
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
            shape = broadcast_shape(new.shape, old.shape)
            if new.shape == old.shape and torch.equal(new, old):
                continue  # the same use again (another trace or walk): nothing new
            self._unite(
                new.expand(shape), old.expand(shape), "shared", f"{self.op_name}: parameter {name!r} used twice"
            )

    def _unite(self, Sa: Tensor, Sb: Tensor, category: str, why: str) -> None:
        """Unite the variables of two spaces of one shape element by element; a variable united with the constant
        (0) is pinned with ``category`` and ``why``."""
        pairs = _unique_pairs(Sa.reshape(-1), Sb.reshape(-1))
        const = (pairs == 0).any(dim=1)
        if bool(const.any()):
            self.pin(pairs[const].reshape(-1), category, why)
        pairs = pairs[~const & (pairs[:, 0] != pairs[:, 1])]
        if pairs.numel():
            self.state.merges.append(pairs)

    def functional_site(self, S: Tensor, kind: Kind) -> bool:
        """In ``functional="graph"`` mode, record a functional activation call as a wrapper site (its other
        arguments must be constants); returns whether it was recorded."""
        n = self.node
        if not self.w.graph_mode or n.all_input_nodes != [n.args[0]]:
            return False
        S = compress(S)
        if kind is Kind.GENERAL:
            self.state.general_vars.append(S.reshape(-1))
        self.state.fsites[n.name] = _Site(n.name, S, kind)
        return True

    def activation_site(self, S: Tensor, kind: Kind) -> None:
        """This node applies an element-/channel-wise ``f`` that may need ``tau * f(x / tau)``."""
        S = compress(S)
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
    def __init__(
        self, module: nn.Module, graph: fx.Graph, state: _State, graph_mode: bool = False, guard: Any = None
    ) -> None:
        # the model itself with the traced graph: no GraphModule (copying the module tree and compiling Python code
        # for every graph was a quarter of the analysis of models with thousands of modules)
        super().__init__(module, garbage_collect_values=False, graph=graph)
        self.guard = guard if guard is not None else contextlib.nullcontext()  # around the model's code only
        self.state = state
        self.graph_mode = graph_mode
        self.spaces: dict[fx.Node, Any] = {}
        self.param_reads: dict[fx.Node, nn.Parameter] = {}  # get_attr nodes that read a parameter
        self.registered_by: dict[fx.Node, set[int]] = {}  # parameters the rule of a node registered
        self.axis0_varies = False  # some space has different factors along its first axis (the batch axis?)
        self.batch: int | None = None  # the example's batch size, when all inputs share one
        self.submodules = dict(module.named_modules())
        self.calls: dict[str, int] = {}
        for n in graph.nodes:
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
            with self.guard:
                out = super().run_node(n)
        except Exception as exc:
            raise _NodeFailed(n, exc) from exc
        S = self.spaces[n] = self._space(n, out)
        self._account(n)
        if not self.axis0_varies and S is not None:
            self.axis0_varies = self._batch_dependent(out, S)
        return out

    def _account(self, n: fx.Node) -> None:
        """A parameter read directly in ``forward()`` (a ``get_attr`` node) is accounted for only where the rule of
        the node that uses it registered it (``F.batch_norm(x, ..., self.weight)``); any other use (``h @
        self.emb.weight.t()``, ``self.fc.weight.norm()``, returning it) is unaccounted, so its factors are pinned."""
        registered = self.registered_by.pop(n, set())
        for a in n.all_input_nodes:
            p = self.param_reads.get(a)
            if p is not None and id(p) not in registered:
                self.state.unaccounted.setdefault(
                    id(p), f"read directly in forward() (node {a.name!r}, used by {n.name!r})"
                )

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
            if id(out) in self.state.param_names:  # a parameter read by the user's code: see _account
                self.param_reads[n] = out
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
            if rule is None and rules.is_record_type(n.target):
                rule = rules.record_rule
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
                ctx.registered.clear()  # what the rule registered before giving up is not trusted: pinned
                S = rules.fallback(ctx, str(exc))
            except Exception as exc:  # a rule that cannot follow an unforeseen call pins, it never guesses
                ctx.registered.clear()
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
        self.registered_by[n] = ctx.registered
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
            same = (
                isinstance(S0, Tensor)
                and isinstance(S, Tensor)
                and (S is S0 or (S0.shape == S.shape and torch.equal(S0, S)))
            )
            if not same and isinstance(S0, Tensor) and isinstance(S, Tensor) and isinstance(out, Tensor):
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


def _touches_hidden(w: _Walker, n: fx.Node) -> bool:
    return any(any(bool(t.any()) for t in _tensors(w.space_of(a))) for a in n.all_input_nodes)
