"""The rule registry of the engine: per-op rules looked up by module type, function or tensor-method name.

Rules are entered with :func:`register_module`, :func:`register_function` and :func:`register_method` (in
:mod:`nnteleport.engine.rules` and :mod:`nnteleport.engine.norm_rules`); :func:`module_rule_for` finds the rule of a
module's closest registered base class. A rule that meets a call it does not handle raises :class:`_Unsupported`
(or returns :func:`fallback`): the engine then pins, never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nnteleport.engine.spaces import zeros_like_space

__all__ = [
    "FUNCTION_RULES",
    "METHOD_RULES",
    "MODULE_RULES",
    "NAMED_MODULE_RULES",
    "Rule",
    "class_name",
    "fallback",
    "module_rule_for",
    "register_function",
    "register_method",
    "register_module",
    "register_named_module",
]

Rule = Callable[[Any], Any]

MODULE_RULES: dict[type[nn.Module], Rule] = {}
#: module classes of optional libraries, keyed by ``"module.QualName"`` (registered without importing the library)
NAMED_MODULE_RULES: dict[str, Rule] = {}
FUNCTION_RULES: dict[Any, Rule] = {}
METHOD_RULES: dict[str, Rule] = {}


def _callable_name(fn: Any) -> str:
    mod = getattr(fn, "__module__", None) or ""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    if name.startswith("_VariableFunctionsClass."):
        name = name.split(".", 1)[1]
    if mod.startswith("torch.nn.functional"):
        mod = "torch.nn.functional"
    elif mod in ("_operator", "operator"):
        mod = "operator"
    elif mod.startswith("torch") and not mod.startswith("torch.nn"):
        mod = "torch"
    return f"{mod}.{name}" if mod else name


def _registrar(table: dict[Any, Rule]) -> Callable[..., Callable[[Rule], Rule]]:
    """A decorator factory: ``@register(key1, key2, ...)`` enters the rule under each key of ``table``."""

    def register(*keys: Any) -> Callable[[Rule], Rule]:
        def deco(rule: Rule) -> Rule:
            for k in keys:
                table[k] = rule
            return rule

        return deco

    return register


register_module = _registrar(MODULE_RULES)  # keys: module types (the closest registered base class applies)
register_function = _registrar(FUNCTION_RULES)  # keys: functions such as torch.cat, F.relu, operator.add
register_method = _registrar(METHOD_RULES)  # keys: tensor method names such as "view", "relu"
register_named_module = _registrar(NAMED_MODULE_RULES)  # keys: "transformers.pytorch_utils.Conv1D", ...


def class_name(cls: type) -> str:
    """``"module.QualName"`` of a class: the key of :data:`NAMED_MODULE_RULES`."""
    return f"{cls.__module__}.{cls.__qualname__}"


def module_rule_for(module: nn.Module) -> Rule | None:
    """The rule of the closest registered base class, if the module provably computes what that class computes
    (a subclass overriding any method -- ``forward``, ``_conv_forward``, a ``weight`` property -- or an instance
    with a replaced method gets none: it is traced through like user code; see
    :func:`nnteleport.engine.inspection.provably_base`)."""
    from nnteleport.engine.inspection import provably_base

    for cls in type(module).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is None and NAMED_MODULE_RULES:
            rule = NAMED_MODULE_RULES.get(class_name(cls))
        if rule is not None:
            return rule if provably_base(module, cls) else None
    return None


# --------------------------------------------------------------------------------------------------- fallback
class _Unsupported(Exception):
    """Raised by a rule for a call it does not handle; the engine then pins (:func:`fallback`) with this reason."""


def fallback(ctx: Any, why: str | None = None) -> Any:
    """Unknown op: pin every space of its tensor inputs to 1; its output is a constant space."""
    ctx.pin_inputs("unsupported", why or f"{ctx.op_name} is not understood by the engine")
    return zeros_like_space(ctx.out)
