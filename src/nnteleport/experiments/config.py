"""Experiment configuration: an experiment's ``DEFAULTS``, a YAML file, and ``--set key=value`` overrides.

``load_config(name, config_file, overrides)`` returns a fresh dict: a deep copy of the experiment's
``DEFAULTS``, updated by the YAML mapping in ``config_file`` and then by the overrides (later wins). Only keys
that exist in ``DEFAULTS`` may be set (dotted keys ``a.b.c`` reach into nested dicts), and values must have
the default's type:

* ``bool`` defaults take booleans only; ``int`` defaults take integers; ``float`` defaults take integers or
  floats (also strings such as ``1e-3``, which YAML 1.1 reads as text); ``str`` defaults take strings;
* ``list``/``tuple`` defaults take lists (each element checked against the type of the default's elements,
  when the default is not empty); a tuple default gives a tuple;
* ``dict`` defaults take mappings, merged key by key with the same rules;
* ``None`` defaults take anything.

An experiment module may also define ``CHOICES: dict[str, list]`` (dotted key -> allowed values; for a list
key, allowed elements), checked after merging.

Errors are ``ValueError`` naming the key, the bad value, and the allowed keys or values.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["format_defaults", "load_config", "merge_config", "parse_overrides"]


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, (list, tuple)):
        return "list"
    if isinstance(v, Mapping):
        return "mapping"
    if v is None:
        return "null"
    return type(v).__name__


def _coerce(key: str, default: Any, value: Any, source: str) -> Any:
    """``value`` checked against (and converted to) the type of ``default``."""

    def bad(expected: str) -> ValueError:
        return ValueError(
            f"{source}: {key}={value!r} has type {_type_name(value)}, expected {expected} (the default is {default!r})"
        )

    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("bool (true/false)")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("int")
        return value
    if isinstance(default, float):
        if isinstance(value, bool):
            raise bad("float")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad("float") from None
        raise bad("float")
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("str")
        return value
    if isinstance(default, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            raise bad("list (e.g. [1, 2])")
        out = list(value)
        if default:
            proto = default[0]
            out = [_coerce(f"{key}[{i}]", proto, v, source) for i, v in enumerate(out)]
        return tuple(out) if isinstance(default, tuple) else out
    if isinstance(default, Mapping):
        if not isinstance(value, Mapping):
            raise bad("mapping (key: value)")
        return merge_config(default, value, source=source, prefix=key + ".")
    return value  # unknown default type: accept as given


def merge_config(
    defaults: Mapping[str, Any], updates: Mapping[str, Any], *, source: str = "config", prefix: str = ""
) -> dict[str, Any]:
    """``defaults`` updated by ``updates`` (nested mappings merged), with key and type checks.

    Parameters
    ----------
    defaults : mapping
        The reference configuration (its keys and value types are the allowed ones).
    updates : mapping
        New values; nested mappings update nested defaults key by key.
    source : str
        Where the updates come from (file name, ``--set``), for error messages.
    prefix : str
        Dotted path of ``defaults`` inside the full configuration (error messages).

    Raises
    ------
    ValueError
        Unknown key (lists the allowed keys) or value of the wrong type.
    """
    out = copy.deepcopy(dict(defaults))
    for k, v in updates.items():
        if not isinstance(k, str) or k not in out:
            allowed = ", ".join(prefix + str(a) for a in out) or "(none)"
            raise ValueError(f"{source}: unknown key {prefix + str(k)!r}; allowed keys: {allowed}")
        out[k] = _coerce(prefix + k, out[k], v, source)
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed with ``yaml.safe_load``).

    Raises
    ------
    ValueError
        An item without ``=``, an empty key, or a value YAML cannot parse.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ValueError(f"--set {item!r}: expected KEY=VALUE (dotted keys for nested values, e.g. a.b=1)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: cannot parse the value as YAML ({e.__class__.__name__})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ValueError(f"--set {item!r}: {p!r} was already set to a value, not a mapping")
            node = nxt
        node[parts[-1]] = value
    return out


def _check_choices(config: Mapping[str, Any], choices: Mapping[str, Sequence[Any]], source: str) -> None:
    for dotted, allowed in choices.items():
        node: Any = config
        for p in dotted.split("."):
            if not isinstance(node, Mapping) or p not in node:
                node = None
                break
            node = node[p]
        values = node if isinstance(node, (list, tuple)) else [node]
        for v in values:
            if v not in allowed:
                raise ValueError(
                    f"{source}: {dotted}={node!r}: {v!r} is not allowed; choose from: " + ", ".join(map(str, allowed))
                )


def load_config(
    name: str,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
) -> dict[str, Any]:
    """The configuration of experiment ``name``: ``DEFAULTS`` <- YAML file <- overrides.

    Parameters
    ----------
    name : str
        Experiment name (see ``nnteleport.experiments.EXPERIMENTS``).
    config_file : path, optional
        YAML file holding a mapping of keys to change.
    overrides : sequence of "KEY=VALUE" or mapping
        ``--set`` items (dotted keys, YAML values) or an already nested mapping.

    Raises
    ------
    ValueError
        Unknown experiment, unknown key, wrong type, value outside ``CHOICES``, unreadable YAML.
    FileNotFoundError
        ``config_file`` does not exist.
    """
    from nnteleport.experiments import get_experiment

    module = get_experiment(name)
    defaults = getattr(module, "DEFAULTS", None)
    if not isinstance(defaults, Mapping):
        raise ValueError(f"experiment {name!r} ({module.__name__}) defines no DEFAULTS dict")
    config = copy.deepcopy(dict(defaults))
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} not found")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: the file must hold a mapping (key: value lines), got {_type_name(loaded)}")
        config = merge_config(config, loaded, source=str(path))
    if isinstance(overrides, Mapping):
        upd = dict(overrides)
    else:
        upd = parse_overrides(list(overrides))
    config = merge_config(config, upd, source="--set")
    choices = getattr(module, "CHOICES", None)
    if choices:
        _check_choices(config, choices, source=f"experiment {name!r}")
    return config


def format_defaults(name: str) -> str:
    """The ``DEFAULTS`` of experiment ``name`` as YAML (for ``nnteleport experiment NAME --help``)."""
    from nnteleport.experiments import get_experiment

    module = get_experiment(name)
    defaults = getattr(module, "DEFAULTS", {})
    return yaml.safe_dump(_plain(defaults), sort_keys=False, default_flow_style=None, width=100).rstrip()


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v
