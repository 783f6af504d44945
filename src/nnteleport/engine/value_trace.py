"""Value-carrying tracing: ``torch.fx`` proxies that also hold the value computed on the example input.

Plain symbolic tracing (:mod:`nnteleport.engine.trace`) fails on forwards that read a shape, a dtype or the contents
of an integer input in Python (``if pixel_values.dtype != expected:``, ``position_ids[:, :seq_length]``,
``if q_length == 1 and mask is None:``): Hugging Face transformers models do all of this. When it fails, the engine
traces again with :class:`_ValueTracer`: every proxy carries the value its node computes on the example input, so
``bool(proxy)``, ``int(proxy)``, ``proxy.__index__()``, ``len(proxy)`` and iteration resolve to concrete Python
values and tracing takes the branch the example takes. ``.dtype`` and ``.device`` are concrete; ``.shape`` and
``.size()`` stay nodes of the graph (their values are concrete).

The graph is then *specialised*: it computes what the forward computes for inputs that take the same branches. Two
guards keep the analysis sound:

* control flow or a Python number read from the **values of a floating-point tensor** (a hidden activation, a
  parameter, a float input: ``if h.abs().max() > 1:``) is refused (:class:`TraceError`): another input, or the
  teleported parameters themselves, could take the other branch;
* every other specialisation (on shapes, dtypes, integer inputs such as token ids and attention masks) is recorded
  (:func:`specializations`: file, line, what was read), and :mod:`nnteleport.engine.analysis` also analyses the
  model at other sequence lengths (:func:`sequence_variants`) and combines the constraints of every graph, so that
  the plan holds for branches taken at lengths ``1`` and ``L - 1`` as well.
"""

from __future__ import annotations

import builtins
import inspect
import operator
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.proxy import Attribute, TraceError

__all__ = ["TraceError", "sequence_variants"]

# tensor attributes read concretely (equal for every input of one dtype and device): no node, no specialisation
_CONCRETE_ATTRS = frozenset({
    "dtype", "device", "layout", "is_cuda", "is_sparse", "is_quantized", "is_meta", "is_nested", "is_mkldnn",
    "is_xpu", "is_mps", "requires_grad", "is_leaf",
})  # fmt: skip
# attribute / method reads whose result depends on shapes only, not on tensor values
_SHAPE_ATTRS = frozenset({"shape", "ndim"})
_SHAPE_METHODS = frozenset({"size", "dim", "numel", "ndimension", "nelement", "get_device", "is_floating_point",
                            "is_complex", "is_contiguous", "element_size", "stride"})  # fmt: skip
_SHAPE_FUNCTIONS = (builtins.len, torch.numel)

_MISSING = object()


class _ValueProxy(fx.Proxy):
    """A proxy with ``value`` (what its node computes on the example input) and ``data`` (whether that value
    depends on the values of a floating-point tensor, not only on shapes, dtypes and integer inputs: it is or holds
    a floating-point tensor, or one of its arguments does, unless the op reads shapes only)."""

    value: Any = _MISSING
    data: bool = False

    def __getattr__(self, k: str) -> Any:
        if k.startswith("__") and k.endswith("__"):
            raise AttributeError(k)
        value = self.value
        if value is _MISSING:
            return super().__getattr__(k)
        attr = getattr(value, k)  # AttributeError when the value has no such attribute (hasattr works)
        if isinstance(value, Tensor):
            if k in _CONCRETE_ATTRS:
                return attr
            if k in _SHAPE_ATTRS and _specializable(self, f".{k}"):
                return attr
        return _ValueAttribute(self, k)

    def __len__(self) -> int:
        return len(_concrete_read(self, "len()", structural=True))

    def __index__(self) -> int:
        return operator.index(_concrete_read(self, "an index"))

    def __int__(self) -> int:
        return int(_concrete_read(self, "int()"))

    def __float__(self) -> float:
        return float(_concrete_read(self, "float()"))


class _ValueAttribute(Attribute, _ValueProxy):
    """``proxy.attr``: a method to call (``call_method`` node) or an attribute read (``getattr`` node, created on
    first use), with its value."""

    @property
    def value(self) -> Any:  # type: ignore[override]
        return getattr(self.root.value, self.attr)

    @property
    def data(self) -> bool:  # type: ignore[override]
        return self.attr not in _SHAPE_ATTRS and self.root.data

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        root = self.root.value
        if self.attr in _SHAPE_METHODS and isinstance(root, Tensor) and _specializable(self.root, f".{self.attr}()"):
            return getattr(root, self.attr)(*_concrete(args), **_concrete(kwargs))
        return super().__call__(*args, **kwargs)


def _specializable(p: _ValueProxy, how: str) -> bool:
    """Whether the code reading ``p``'s shape is in one of :data:`SPECIALIZABLE` (then the read is recorded and
    the shape is concrete: ``x.expand(batch, length)`` needs Python ints); elsewhere shapes stay graph nodes, as
    in plain ``torch.fx`` tracing."""
    tracer = p.tracer
    if not isinstance(tracer, _ValueTracer):
        return False
    module, where = _user_frame()
    if module.split(".")[0] not in SPECIALIZABLE:
        return False
    tracer.specialized.setdefault(where, how)
    return True


def _concrete_read(p: _ValueProxy, how: str, structural: bool = False) -> Any:
    """The concrete value of ``p`` read by Python (control flow, a number, an index; with ``structural`` its
    length or keys only, which depend on shapes, not on values): refused when it depends on the values of a
    floating-point tensor, else recorded as a specialisation of the graph."""
    tracer = p.tracer
    if not isinstance(tracer, _ValueTracer) or p.value is _MISSING:
        raise TraceError(f"symbolically traced value read as {how}")
    tracer.read_concretely(p, how, structural)
    return p.value


def _concrete(a: Any) -> Any:
    """``a`` with every proxy replaced by its value (through tuples, lists, dicts and slices)."""
    if isinstance(a, fx.Proxy):
        v = getattr(a, "value", _MISSING)
        if v is _MISSING:
            raise TraceError(f"no value for {a!r}")
        return v
    if isinstance(a, tuple):
        items = [_concrete(e) for e in a]
        return type(a)(*items) if hasattr(a, "_fields") else type(a)(items)
    if isinstance(a, list):
        return [_concrete(e) for e in a]
    if isinstance(a, dict):
        return {k: _concrete(v) for k, v in a.items()}
    if isinstance(a, slice):
        return slice(_concrete(a.start), _concrete(a.stop), _concrete(a.step))
    return a


def _any_data(a: Any) -> bool:
    if isinstance(a, fx.Proxy):
        return bool(getattr(a, "data", False))
    if isinstance(a, (tuple, list)):
        return any(_any_data(e) for e in a)
    if isinstance(a, dict):
        return any(_any_data(e) for e in a.values())
    if isinstance(a, slice):
        return _any_data((a.start, a.stop, a.step))
    return False


def _floating(v: Any) -> bool:
    return isinstance(v, Tensor) and (v.is_floating_point() or v.is_complex())


def _any_floating(v: Any, depth: int = 0) -> bool:
    """Whether ``v`` is or holds a floating-point tensor (a module's output computed with its parameters)."""
    if _floating(v):
        return True
    if depth < 4 and isinstance(v, (tuple, list)):
        return any(_any_floating(e, depth + 1) for e in v)
    if depth < 4 and isinstance(v, dict):
        return any(_any_floating(e, depth + 1) for e in v.values())
    return False


#: packages whose forwards may be specialised: their Python reads of shapes, dtypes and integer inputs were audited
#: to choose masks, position ids, caches and casts (no factor flows through those), never what is computed on
#: hidden tensors. A read in any other code (a user's ``if x.shape[1] > 8: h = h + 1``) is refused, as plain
#: ``torch.fx`` tracing refuses it.
SPECIALIZABLE = ("transformers",)


def _user_frame() -> tuple[str, str]:
    """(module name, ``file:line `code```) of the innermost frame outside torch and nnteleport (the model's code)."""
    frame = inspect.currentframe()
    while frame is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if name.split(".")[0] not in ("torch", "nnteleport"):
            info = inspect.getframeinfo(frame, context=1)
            line = (info.code_context or [""])[0].strip()
            return name, f"{info.filename}:{info.lineno} `{line}`"
        frame = frame.f_back
    return "", "?"


def make_value_tracer(base: type[fx.Tracer]) -> type[fx.Tracer]:
    """The value-carrying version of the engine's tracer class ``base`` (same leaf modules and opaque calls)."""

    class ValueTracer(_ValueTracer, base):  # type: ignore[misc, valid-type]
        pass

    ValueTracer.__name__ = ValueTracer.__qualname__ = f"Value{base.__name__}"
    return ValueTracer


class _ValueTracer(fx.Tracer):
    """Mixin over the engine's tracer: evaluates every node on the example values while recording it. Set
    ``examples`` (the placeholders' values, in order) before :meth:`trace`."""

    examples: Sequence[Any] = ()
    _computing: int = 0

    def _init_values(self) -> None:
        if "_placeholders" not in vars(self):
            self._placeholders: list[Any] = list(self.examples)
            self.specialized: dict[str, str] = {}  # location -> what was read there

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ValueProxy(node, self)

    def read_concretely(self, p: _ValueProxy, how: str, structural: bool = False) -> None:
        module, where = _user_frame()
        if p.data and not structural:
            raise TraceError(
                f"the forward reads the values of a floating-point tensor as {how} at {where} (control flow on "
                "activations or parameters): another input, or the teleported parameters, could take another branch"
            )
        if module.split(".")[0] not in SPECIALIZABLE:
            raise TraceError(
                f"symbolically traced variables cannot be used as inputs to control flow ({how} at {where}; only "
                f"the code of {', '.join(SPECIALIZABLE)} is traced specialised to the example's shapes)"
            )
        self.specialized.setdefault(where, how)

    # --- proxies with values
    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, *rest: Any, **kw: Any) -> fx.Proxy:
        self._init_values()
        proxy = super().create_proxy(kind, target, args, kwargs, *rest, **kw)
        if kind == "output":
            return proxy
        value, data = self._evaluate(kind, target, args, kwargs)
        vars(proxy)["value"] = value
        vars(proxy)["data"] = data
        return proxy

    def _evaluate(self, kind: str, target: Any, args: Any, kwargs: Any) -> tuple[Any, bool]:
        if kind == "placeholder":
            if not self._placeholders:
                raise TraceError(f"forward has more inputs than the example ({target!r})")
            v = self._placeholders.pop(0)
            return v, _floating(v)
        if kind == "get_attr":
            v: Any = self.root
            self._computing += 1  # module attribute reads below are the real ones, not proxies
            try:
                for part in str(target).split("."):
                    v = getattr(v, part)
            finally:
                self._computing -= 1
            return v, _floating(v)
        cargs, ckwargs = _concrete(args), _concrete(kwargs)
        self._computing += 1
        try:
            if kind == "call_function":
                v = target(*cargs, **ckwargs)
            elif kind == "call_method":
                v = getattr(cargs[0], target)(*cargs[1:], **ckwargs)
            elif kind == "call_module":
                v = self.root.get_submodule(target)(*cargs, **ckwargs)
            else:
                raise TraceError(f"unexpected node kind {kind!r}")
        finally:
            self._computing -= 1
        if kind == "call_function" and target is builtins.getattr and len(args) == 2 and args[1] in _SHAPE_ATTRS:
            return v, False
        if (kind == "call_method" and target in _SHAPE_METHODS) or (kind == "call_function" and target in
                                                                        _SHAPE_FUNCTIONS):  # fmt: skip
            return v, False
        return v, _any_floating(v) or _any_data((args, kwargs))

    # --- Python reads of proxies
    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(_concrete_read(obj, "a condition"))  # type: ignore[arg-type]

    def iter(self, obj: fx.Proxy) -> Iterator[Any]:
        """Iteration other than unpacking (``a, b = h.chunk(2)``, which ``torch.fx`` handles by the code's arity):
        the length is read concretely."""
        v = _concrete_read(obj, "an iteration", structural=True)  # type: ignore[arg-type]
        if isinstance(v, dict):
            return iter(list(v))
        return iter([obj[i] for i in range(len(v))])

    def keys(self, obj: fx.Proxy) -> Any:
        v = _concrete_read(obj, "keys()", structural=True)  # type: ignore[arg-type]
        return list(v.keys())

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        """As the base tracer, with the forward's result made recordable: objects ``torch.fx`` cannot store
        (a Hugging Face ``DynamicCache`` of keys and values) become tuples of the tensors they hold, so that these
        outputs are pinned like every other output."""
        fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)

        def forward(*a: Any, **kw: Any) -> Any:
            return _recordable(fn(*a, **kw))

        return forward, args

    # --- the model's own code runs normally while a value is computed
    def call_module(self, m: nn.Module, forward: Any, args: Any, kwargs: Any) -> Any:
        if self._computing:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if self._computing:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def _recordable(v: Any, depth: int = 0) -> Any:
    """``v`` with containers made plain (dicts, lists, tuples) and any other object replaced by the tuple of the
    proxies it holds (in its attributes, recursively), or ``None`` when it holds none."""
    if isinstance(v, fx.Proxy) or v is None or isinstance(v, (bool, int, float, str, torch.dtype, torch.device)):
        return v
    if depth > 8:
        return None
    if isinstance(v, dict):
        return {k: _recordable(e, depth + 1) for k, e in v.items()}
    if isinstance(v, (tuple, list)):
        items = [_recordable(e, depth + 1) for e in v]
        return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
    if isinstance(v, Tensor):
        return v
    found = [_recordable(e, depth + 1) for e in vars(v).values()] if hasattr(v, "__dict__") else []
    found = [e for e in found if e is not None]
    return tuple(found) if found else None


def sequence_variants(inputs: Sequence[Tensor]) -> list[tuple[Tensor, ...]]:
    """The example inputs at other sequence lengths, for models traced with specialisations: integer inputs of rank
    >= 2 (token ids, attention masks, token types) that share the length ``L`` of axis 1 are cut to ``1`` and to
    ``L - 1`` tokens together (``L >= 3``); other inputs are kept. Empty when no input is such a sequence."""
    seq = [i for i, t in enumerate(inputs) if t.dim() >= 2 and not (t.is_floating_point() or t.is_complex())]
    lengths = {inputs[i].shape[1] for i in seq}
    if len(lengths) != 1:
        return []
    (L,) = lengths
    cuts = sorted({n for n in (1, L - 1) if 0 < n < L})
    return [tuple(t[:, :n] if i in seq else t for i, t in enumerate(inputs)) for n in cuts]
