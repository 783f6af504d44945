"""The code a ``functional="rewrite"`` teleport did not rewrite refuses to run the calls it wrapped.

:mod:`nnteleport.engine.rewrite` replaces the model's ``forward`` by its traced graph(s) with the activation calls
that need it wrapped as ``tau * f(x / tau)``; the parameters are rescaled for those wrappers. Every other piece of
the user's code that makes such a call would compute, on the rescaled parameters, without the wrapper: neither the
original function nor the teleported one. Two guards make that loud (:class:`~nnteleport.errors.UnsupportedModelError`):

* a submodule whose code the graph inlined and holds a functional call site (its path is in the ``nn_module_stack``
  that ``torch.fx`` records on the site's node: ``block1``, ``stages``, ``stages.0``) gets the class
  :func:`guard_class` -- a generated subclass ``Teleported<Name>`` of its class whose ``forward`` raises, naming the
  module; the root's rewritten forward inlines that code, so it never calls that ``forward``;
* the methods defined in the user's classes (the root's and those of guarded submodules; not ``forward``, not
  dunders, not names of ``nn.Module``'s API) run under :class:`_Refuse`, a ``TorchFunctionMode`` that refuses a
  wrapped call target (``F.gelu``; ``torch.tanh``, ``Tensor.tanh``, ``F.tanh`` for a wrapped ``tanh``...) when the
  Python frame that runs it belongs to one of those classes' methods, directly or through plain functions, and not
  to a module's ``forward`` (a leaf submodule, a wrapper, the rewritten forward). ``model.forward`` itself is not
  wrapped: calling the model costs nothing more; a method costs one Python call per torch op while it runs.

Both classes pickle and ``deepcopy`` through ``__reduce_ex__`` (rebuilt from the user's class and the
:class:`Refusal`), as the root's generated class does.

Limits: a non-``forward`` method of a submodule that the root's forward called (``self.block.helper(x)``) is not
recorded in the module stack: calling ``model.block.helper(x)`` directly is not refused (calling it from a root
method is). The refusal is by function, not by call site: a method calling ``F.gelu`` on tensors no teleport
touched is refused too.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from nnteleport.errors import UnsupportedModelError

__all__ = [
    "Refusal",
    "check_module_stacks",
    "generated_subclass",
    "guard_class",
    "guarded_methods",
    "site_modules",
    "target_name",
]

_NAMESPACES = (torch, torch.Tensor, F, torch.special)


def target_name(op: str, target: Any) -> str | None:
    """The name of a functional call's target (``"gelu"`` for ``F.gelu``, ``"tanh"`` for ``h.tanh()``)."""
    if op == "call_method":
        return str(target)
    return getattr(target, "__name__", None)


def check_module_stacks(nodes: list[Any]) -> None:
    """The guards read which submodules' code holds a call from ``node.meta["nn_module_stack"]``, which
    ``torch.fx`` records on every node traced inside a module call (``call_module`` nodes included): if a torch
    release stops recording it, fail loudly instead of guarding nothing."""
    bare = [n.name for n in nodes if n.op == "call_module" and "nn_module_stack" not in n.meta]
    if bare:
        raise UnsupportedModelError(
            f"functional='rewrite': torch.fx recorded no nn_module_stack on node {bare[0]!r} (torch "
            f"{torch.__version__}), which the rewritten model's guards need; use functional='constrain'"
        )


def site_modules(nodes: list[Any]) -> list[str]:
    """The paths of the submodules whose code holds the call of each fx node (their ``nn_module_stack``), in order."""
    out: dict[str, None] = {}
    for n in nodes:
        for v in (n.meta.get("nn_module_stack") or {}).values():
            path = v[0] if isinstance(v, tuple) else v
            if isinstance(path, str) and path:
                out[path] = None
    return list(out)


def _user_classes(cls: type) -> list[type]:
    """The classes of ``cls``'s MRO that are the user's (not torch's, not builtins)."""
    return [
        k
        for k in cls.__mro__
        if k is not object and not k.__module__.startswith(("torch.", "builtins", "typing", "abc"))
        and "_nnteleport_base" not in vars(k)
    ]  # fmt: skip


def _codes(code: types.CodeType) -> list[types.CodeType]:
    return [code, *(c for k in code.co_consts if isinstance(k, types.CodeType) for c in _codes(k))]


class Refusal:
    """What the guards refuse: the wrapped call targets by name, and the user's classes (root first, then the
    guarded submodules' classes) whose methods may not run them. Immutable; part of the generated classes' keys."""

    def __init__(self, names: tuple[str, ...], classes: tuple[type, ...]) -> None:
        self.names = tuple(sorted(set(names)))
        self.classes = tuple(dict.fromkeys(classes))
        self.key = (self.names, self.classes)
        self._funcs: frozenset[Any] | None = None
        self._codes: frozenset[types.CodeType] | None = None

    def __reduce__(self) -> Any:
        return Refusal, (self.names, self.classes)

    def __deepcopy__(self, memo: dict) -> Refusal:
        return self

    @property
    def funcs(self) -> frozenset[Any]:
        """Every torch callable of a refused name (``torch.X``, ``Tensor.X``, ``F.X``, ``torch.special.X``, and the
        in-place ``X_``)."""
        if self._funcs is None:
            found = set()
            for n in self.names:
                for v in (n, n + "_"):
                    for ns in _NAMESPACES:
                        f = getattr(ns, v, None)
                        if callable(f):
                            found.add(f)
            self._funcs = frozenset(found)
        return self._funcs

    @property
    def codes(self) -> frozenset[types.CodeType]:
        """The code of every function defined in the user's classes (nested functions included); for guarded
        submodules' classes, ``forward`` excepted (theirs raise; a non-guarded instance of the class runs its own)."""
        if self._codes is None:
            found: set[types.CodeType] = set()
            for i, cls in enumerate(self.classes):
                for k in _user_classes(cls):
                    for name, raw in vars(k).items():
                        if name == "forward" and i:
                            continue
                        for f in (raw, getattr(raw, "__func__", None), getattr(raw, "fget", None)):
                            if isinstance(f, types.FunctionType):
                                found.update(_codes(f.__code__))
            self._codes = frozenset(found)
        return self._codes


_STATE = threading.local()  # .on: a guarded method is running in this thread


class _Refuse(TorchFunctionMode):
    """Refuses :attr:`Refusal.funcs` called from the code of :attr:`Refusal.codes` (see the module docstring)."""

    def __init__(self, refusal: Refusal, where: str) -> None:
        super().__init__()
        self.funcs, self.codes, self.where = refusal.funcs, refusal.codes, where

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        try:
            refused = func in self.funcs
        except TypeError:  # an unhashable callable is none of them
            refused = False
        if refused:
            self._check(func)
        return func(*args, **(kwargs or {}))

    def _check(self, func: Any) -> None:
        frame = inspect.currentframe()
        for _ in range(64):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return
            code = frame.f_code
            if code in self.codes:
                name = getattr(func, "__name__", repr(func))
                raise UnsupportedModelError(
                    f"{self.where} runs {name}() at {code.co_filename}:{frame.f_lineno} ({code.co_name}), a call "
                    f"that functional='rewrite' wrapped as tau * f(x / tau) in the teleported model's forward only: "
                    "here it would run unwrapped on the rescaled parameters; call the model, or teleport with "
                    "functional='constrain' to keep every method of the model exact"
                )
            if code in _STOP or code.co_name == "forward":
                return  # inside a module's forward (a leaf, a wrapper, the rewritten forward): its own code


def _guarded(fn: Any, where: str) -> Any:
    @functools.wraps(fn)
    def method(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if getattr(_STATE, "on", False):
            return fn(self, *args, **kwargs)
        refusal = type(self)._nnteleport_refusal
        _STATE.on = True
        try:
            with _Refuse(refusal, f"{where}.{fn.__name__}"):
                return fn(self, *args, **kwargs)
        finally:
            _STATE.on = False

    return method


_STOP = frozenset({_guarded(lambda self: None, "").__code__})  # the guarded method's own frame: nothing found


def guarded_methods(base: type, where: str) -> dict[str, Any]:
    """The methods of the generated subclass of ``base`` that run ``base``'s own under :class:`_Refuse`: every plain
    function of the user's classes of ``base`` but ``forward``, dunders and names of ``nn.Module``'s API."""
    out: dict[str, Any] = {}
    seen: set[str] = set()
    for k in _user_classes(base):
        for name, raw in vars(k).items():
            if name in seen:
                continue
            seen.add(name)
            if name == "forward" or (name.startswith("__") and name.endswith("__")) or hasattr(nn.Module, name):
                continue
            if not isinstance(raw, types.FunctionType):
                continue  # properties, static and class methods keep the user's
            if inspect.isgeneratorfunction(raw) or inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw):
                continue
            out[name] = _guarded(raw, where)
    return out


_CLASSES: dict[tuple, type] = {}


def guard_class(base: type, refusal: Refusal) -> type:
    """The generated subclass ``Teleported<Name>`` of a guarded submodule's class ``base`` (cached): its ``forward``
    raises, naming the module (``vars(module)["_nnteleport_part"] = (root class name, path)``)."""
    key = (base, refusal.key)
    cls = _CLASSES.get(key)
    if cls is not None:
        return cls

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        root, path = vars(self).get("_nnteleport_part", ("the model", "?"))
        raise UnsupportedModelError(
            f"submodule {path!r} ({base.__name__}) of the teleported {root} cannot run on its own: the activation "
            f"calls in its code were rewritten into the forward of {root} as tau * f(x / tau), its own forward "
            "would run them unwrapped on the rescaled parameters; call the model, or teleport with "
            "functional='constrain' to keep every module's own forward"
        )

    ns: dict[str, Any] = {
        **guarded_methods(base, f"Teleported{base.__name__}"),
        "forward": forward,
        "__reduce_ex__": _reduce_ex,
        "__module__": base.__module__,
        "__qualname__": f"Teleported{base.__qualname__}",
        "__doc__": f"{base.__name__} inside a model teleported by nnteleport: its code runs inlined in the model's "
        "rewritten forward, its own forward refuses to run (see nnteleport.engine.rewrite_guards).",
        "_nnteleport_base": base,
        "_nnteleport_refusal": refusal,
    }
    return generated_subclass(base, ns, _CLASSES, key)


def generated_subclass(base: type, ns: dict[str, Any], cache: dict[tuple, type], key: tuple) -> type:
    """``Teleported<Base>(base)`` with namespace ``ns``, kept in ``cache[key]`` (up to 1024 classes); a class that
    cannot be subclassed is an :class:`~nnteleport.errors.UnsupportedModelError`."""
    try:
        cls = type(base)(f"Teleported{base.__name__}", (base,), ns)
    except Exception as exc:
        raise UnsupportedModelError(
            f"cannot subclass {base.__name__} for the teleported model ({type(exc).__name__}: {exc}); use "
            "functional='constrain'"
        ) from exc
    if len(cache) < 1024:
        cache[key] = cls
    return cls


def _rebuild(base: type, refusal: Refusal) -> nn.Module:
    cls = guard_class(base, refusal)
    return cls.__new__(cls)


def _reduce_ex(self: nn.Module, protocol: int) -> Any:
    cls = type(self)
    return _rebuild, (cls._nnteleport_base, cls._nnteleport_refusal), dict(vars(self))
