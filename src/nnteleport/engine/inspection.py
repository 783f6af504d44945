"""What a model holds that changes its computation behind a rule's back, checked before and during analysis.

A per-op rule (:mod:`nnteleport.engine.rules`) describes what a module's *class* computes. Several things make an
``nn.Module`` compute something else, and the engine must see them, or it would teleport a function it does not
know:

* **hooks** (forward, pre-forward, backward, per module or global) change inputs, outputs or gradients;
* **parametrizations** (``torch.nn.utils.parametrize``: weight norm, spectral norm, orthogonal ...) replace a
  parameter by a function of other parameters;
* **subclasses** of a registered layer that override any method (``_conv_forward`` for weight standardisation, a
  ``weight`` property), or an instance whose ``forward`` attribute was replaced;
* **wrappers** that are not the model (``nn.DataParallel``, ``torch.compile``, TorchScript) and **lazy modules**
  whose parameters do not exist yet.

Modules with hooks or parametrizations are analysed as black boxes (inputs, outputs and parameters at
``tau = 1``: exact whatever the hook does); subclasses that are not provably the base class are traced through
like user code; wrappers, lazy modules and global hooks are refused with a message saying what to pass instead.
Hooks are read from ``torch.nn.Module``'s private hook dictionaries: if a PyTorch release renames them, the check
fails loudly (:func:`_hook_dicts`) instead of silently seeing no hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nnteleport.errors import UnsupportedModelError

__all__ = ["black_box_reason", "check_model", "provably_base", "state_fingerprint"]

_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")  # fmt: skip

# class attributes a subclass may define without changing what the base class's forward computes
_SAFE_CLASS_KEYS = frozenset({
    "__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__", "__init__",
    "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__", "__slots__", "__constants__",
    "__annotate__", "__annotate_func__", "__annotations_cache__", "__classcell__", "_version", "extra_repr",
    "reset_parameters", "_reset_parameters", "__setstate__", "__getstate__", "__repr__", "__abstractmethods__",
    "_abc_impl", "__jit_unused_properties__", "_is_full_backward_hook", "cls_to_become",
})  # fmt: skip


def _hook_dicts(module: nn.Module) -> list[dict]:
    try:
        return [getattr(module, name) for name in _MODULE_HOOKS]
    except AttributeError as exc:  # pragma: no cover - only when PyTorch renames its internals
        raise RuntimeError(
            f"nnteleport reads torch.nn.Module's hook dictionaries {_MODULE_HOOKS}, which this PyTorch "
            f"({torch.__version__}) does not have ({exc}); nnteleport must be updated for it"
        ) from exc


def _global_hooks() -> dict[str, dict]:
    import torch.nn.modules.module as mm

    try:
        return {name: getattr(mm, name) for name in _GLOBAL_HOOKS}
    except AttributeError as exc:  # pragma: no cover - only when PyTorch renames its internals
        raise RuntimeError(
            f"nnteleport reads torch.nn.modules.module{_GLOBAL_HOOKS}, which this PyTorch ({torch.__version__}) "
            f"does not have ({exc}); nnteleport must be updated for it"
        ) from exc


def hooks_of(module: nn.Module) -> tuple[int, ...]:
    """Ids of the hooks registered on ``module`` itself (empty when none)."""
    return tuple(k for d in _hook_dicts(module) for k in d)


def _is_parametrized(module: nn.Module) -> bool:
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(module)


def black_box_reason(module: nn.Module) -> str | None:
    """Why ``module`` must be analysed as a black box (hooks, parametrizations), or ``None``."""
    kinds = [name.strip("_").replace("_", " ") for name, d in zip(_MODULE_HOOKS, _hook_dicts(module)) if d]
    if kinds:
        return f"has {', '.join(kinds)} (the hooks may change inputs, outputs or gradients)"
    if _is_parametrized(module):
        names = ", ".join(module.parametrizations.keys())
        return f"has parametrized parameters ({names}: torch.nn.utils.parametrize)"
    return None


def _instance_overrides(module: nn.Module) -> list[str]:
    """Names of methods replaced on the instance (``model.fc.forward = ...``)."""
    return [
        k
        for k, v in vars(module).items()
        if callable(v) and not isinstance(v, (nn.Module, torch.Tensor, type)) and hasattr(type(module), k)
    ]


def provably_base(module: nn.Module, base: type) -> bool:
    """True when ``module`` computes what ``base`` computes: every class between ``type(module)`` and ``base`` in
    the MRO defines nothing but construction and display (no method, property or descriptor that the base class's
    ``forward`` could reach), and no method is replaced on the instance."""
    for cls in type(module).__mro__:
        if cls is base:
            return not _instance_overrides(module)
        for key, value in vars(cls).items():
            if key in _SAFE_CLASS_KEYS:
                continue
            if callable(value) or hasattr(value, "__get__") or isinstance(value, (staticmethod, classmethod)):
                return False
    return False


def check_model(model: nn.Module) -> None:
    """Refuse, before any work, what the engine cannot analyse; the message says what to pass instead."""
    name = type(model).__name__
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        inner = type(model.module).__name__
        raise UnsupportedModelError(
            f"{name} is a data-parallel wrapper, not the model: teleport model.module (the wrapped {inner}) and "
            f"wrap the teleported model again"
        )
    if hasattr(model, "_orig_mod") and name == "OptimizedModule":
        inner = type(model._orig_mod).__name__
        raise UnsupportedModelError(
            f"{name} is a torch.compile wrapper: teleport the module you compiled (model._orig_mod, a {inner}) "
            "and compile the teleported model"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"{name} is a TorchScript module (torch.jit.script/trace), which torch.fx cannot trace: teleport the "
            "Python nn.Module before scripting it, and script the teleported model"
        )
    for gname, hooks in _global_hooks().items():
        if hooks:
            raise UnsupportedModelError(
                f"global module hooks are registered (torch.nn.modules.module.{gname}: {len(hooks)}); they run on "
                "every module and may change any input or output, so no neuron could be teleported safely: remove "
                "them (handle.remove()) while analysing and teleporting"
            )
    lazy = torch.nn.parameter.UninitializedParameter
    for path, m in model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            if isinstance(p, lazy):
                where = f"{path}.{pname}" if path else pname
                raise UnsupportedModelError(
                    f"parameter {where!r} of {type(m).__name__} is not initialised yet (a lazy module): run the "
                    "model once on an input before teleporting it"
                )


_PLAIN = (bool, int, float, str, type(None), torch.dtype)


def _plain(v: Any) -> bool:
    if isinstance(v, _PLAIN):
        return True
    return isinstance(v, tuple) and len(v) <= 16 and all(_plain(e) for e in v)


def state_fingerprint(module: nn.Module) -> tuple:
    """What of a module, besides its structure, can switch its forward: plain Python attributes (flags such as
    ``self.use_skip``, ``self.p``), hooks and replaced methods. Part of the analysis cache key, so that a plan is
    never reused after such a change (see :func:`nnteleport.analyze`). One pass over the instance dictionary."""
    out = []
    cls = type(module)
    for k, v in vars(module).items():
        t = type(v)
        if t in _PLAIN or (t is tuple and _plain(v)):
            if k != "training":
                out.append((k, v))
        elif k in _MODULE_HOOKS:
            if v:
                out.append((k, tuple(v)))
        elif callable(v) and not isinstance(v, (nn.Module, torch.Tensor, type)) and hasattr(cls, k):
            out.append((k, id(v)))
    return tuple(out)
