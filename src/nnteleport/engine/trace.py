"""Tracing a model with ``torch.fx`` for the analysis: leaf modules, opaque autograd functions, keyword calls.

:func:`_trace` returns the graph the walker interprets; :func:`_graph_key` identifies two graphs that compute the same
(train/eval and grad/no-grad traces are walked once when they agree).
"""

from __future__ import annotations

import inspect
import traceback
import weakref
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.node import map_arg

from nnteleport.engine import inspection, rules
from nnteleport.engine.activation import TeleportedActivation
from nnteleport.engine.value_trace import make_value_tracer
from nnteleport.errors import UntraceableModelError

_AUTOGRAD_CALLS: dict[type, Any] = {}  # Function class -> the plain function that calls its apply


# ---------------------------------------------------------------------------------------------- tracing
class _Tracer(fx.Tracer):
    def __init__(
        self,
        leaf_types: tuple[type, ...],
        leaf_names: frozenset[str],
        n_inputs: int | None = None,
        names: Keywords | None = None,
    ) -> None:
        super().__init__()
        self.n_inputs = n_inputs
        self.names = names  # keyword inputs (``model(**inputs)``), in the order of the placeholders
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
        (``if mask is not None:`` takes the branch of the call) and ``*args``/``**kwargs`` are empty. With keyword
        inputs, ``forward`` is called with exactly those keywords (one placeholder each, in their order)."""
        if self.names is not None and concrete_args is None:
            root_fn = _called_with_keywords(root_fn, self.names, is_module)
        elif self.n_inputs is not None and concrete_args is None:
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


Keywords = tuple[Any, ...]  # per entry of a dict input: its name (a tensor placeholder) or (name, constant)


def keyword_arguments(names: Keywords, inputs: Sequence[Tensor]) -> dict[str, Any]:
    """``model(**x)``'s keyword arguments from the tensors ``inputs`` (one per name) and the constants of
    ``names``."""
    tensors = iter(inputs)
    out: dict[str, Any] = {}
    for e in names:
        if isinstance(e, tuple):
            out[e[0]] = e[1]
        else:
            out[e] = next(tensors)
    return out


def _called_with_keywords(fn: Any, names: Keywords, is_module: bool) -> Any:
    """``fn`` called as ``fn(self, **x)`` for a dict input: its tensors are the wrapper's parameters (the graph's
    placeholders, in order), its constants (``use_cache=False``) are passed as they are. Names are identifiers
    (checked by :func:`nnteleport.engine.analysis.analyze`)."""
    params = ["self"] if is_module else []
    call = ["self"] if is_module else []
    namespace: dict[str, Any] = {"_fn": fn}
    for i, e in enumerate(names):
        if isinstance(e, tuple):
            namespace[f"_c{i}"] = e[1]
            call.append(f"{e[0]}=_c{i}")
        else:
            params.append(e)
            call.append(f"{e}={e}")
    exec(f"def forward({', '.join(params)}):\n    return _fn({', '.join(call)})\n", namespace)
    wrapper = namespace["forward"]
    wrapper.__module__ = getattr(fn, "__module__", __name__)
    return wrapper


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


_SPECIALIZED: weakref.WeakKeyDictionary[fx.Graph, tuple[tuple[str, str], ...]] = weakref.WeakKeyDictionary()


def specializations(graph: fx.Graph) -> tuple[tuple[str, str], ...]:
    """Where tracing read a shape, dtype or integer input as a Python value (``(file:line code, what)``): the graph
    holds for inputs that take the same branches there (see :mod:`nnteleport.engine.value_trace`). Empty for a
    graph that plain symbolic tracing produced (valid for every input)."""
    return _SPECIALIZED.get(graph, ())


def _trace(
    model: nn.Module,
    leaf_types: tuple[type, ...],
    leaf_names: frozenset[str],
    inputs: tuple[Tensor, ...] | int = 1,
    names: Keywords | None = None,
    plain: bool = True,
) -> fx.Graph:
    """The model's graph for the example ``inputs`` (keyword inputs when ``names`` is given). Plain symbolic
    tracing first (unless ``plain`` is false: it failed on this model already); when it fails, value-carrying
    tracing (:mod:`nnteleport.engine.value_trace`), whose graph may be specialised to the example
    (:func:`specializations`)."""
    n_inputs = inputs if isinstance(inputs, int) else len(inputs)
    first: Exception | None = None
    if plain or isinstance(inputs, int):
        tracer = _Tracer(leaf_types, leaf_names, n_inputs, names)
        try:
            return tracer.trace(model)
        except Exception as exc:
            if isinstance(inputs, int):
                raise _untraceable(model, tracer, exc) from exc
            first = exc
    vtracer = make_value_tracer(_Tracer)(leaf_types, leaf_names, n_inputs, names)
    vtracer.examples = [t.clone() for t in inputs]  # a forward that writes into its input must not change x
    try:
        graph = vtracer.trace(model)
    except Exception as exc:
        raise _untraceable(model, vtracer, exc) from (first or exc)
    _SPECIALIZED[graph] = tuple(vtracer.specialized.items())
    return graph


def _untraceable(model: nn.Module, tracer: _Tracer, exc: Exception) -> UntraceableModelError:
    """The error for a model that cannot be traced: the submodule, file, line and code, and the way out."""
    where = tracer.failed_in or ""
    frames = [
        f
        for f in traceback.extract_tb(exc.__traceback__)
        if "/torch/" not in f.filename and "/nnteleport/" not in f.filename.replace("\\", "/")
    ]
    call = f" at {frames[-1].filename}:{frames[-1].lineno} `{(frames[-1].line or '').strip()}`" if frames else ""
    inside = f" inside submodule {where!r} ({type(model.get_submodule(where)).__name__})" if where else ""
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
    return UntraceableModelError(
        f"torch.fx could not trace {type(model).__name__} (from {type(model).__module__}){inside}{call}: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}.{hint}"
    )


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


def _flat_values(v: Any) -> list[Any]:
    if isinstance(v, (tuple, list)):
        return [x for e in v for x in _flat_values(e)]
    if isinstance(v, dict):
        return [x for e in v.values() for x in _flat_values(e)]
    return [v]
