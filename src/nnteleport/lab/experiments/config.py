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

Values are then checked by :func:`validate_config` (also called by every experiment's ``run`` before it starts
any work): the ranges of the keys the experiments share (``epochs >= 1``, ``0 < cob_range < 1``, learning rates
finite and ``> 0``, non-empty lists, ...; see :data:`RULES`), every number finite, the module's own
``validate(config)`` if it has one, and that the files of a dataset read from disk are there.

Every experiment has the key ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, default ``auto``:
:mod:`nnteleport.lab.devices`), checked here like any other value: a CUDA device on a machine without one is
refused before anything runs.

``config_file="paper"`` (``--config paper``) is the configuration packaged with nnteleport that reproduces the
paper's (or thesis') protocol of the experiment (``configs/paper/NAME.yaml`` beside this module; values the
source leaves open are marked ``# our choice`` there and listed in docs/experiments.md); it goes through the
same checks as any YAML file. :func:`paper_config_path` gives its path.

Errors are :class:`~nnteleport.errors.InvalidValueError` (a ``ValueError``) naming the key, the bad value,
and the allowed keys or values, in one line; YAML errors name the file, line and column; a key given twice in a
YAML mapping is an error (not "the last one wins").
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from nnteleport.errors import InvalidValueError, MissingFileError

__all__ = [
    "PAPER",
    "RULES",
    "dataset_names",
    "format_defaults",
    "load_config",
    "merge_config",
    "paper_config_path",
    "parse_overrides",
    "validate_config",
]

#: The name of the packaged paper configuration (``--config paper``).
PAPER = "paper"
_PAPER_DIR = Path(__file__).resolve().parent / "configs" / "paper"


def paper_config_path(name: str) -> Path:
    """The packaged YAML file of experiment ``name`` that reproduces its paper's protocol (``--config paper``).

    Raises
    ------
    InvalidValueError
        Unknown experiment, or an experiment without a packaged paper configuration.
    """
    from nnteleport.lab.experiments import get_experiment

    get_experiment(name)  # unknown names: the registry's error
    path = _PAPER_DIR / f"{name}.yaml"
    if not path.is_file():
        raise InvalidValueError(f"experiment {name!r} has no packaged paper configuration ({path.name} is missing)")
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first given on line {seen[key].line + 1})", mark
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: plain data only


def _yaml_error(e: yaml.YAMLError) -> str:
    """``line L, column C: problem (context)`` -- one line, from PyYAML's marked error."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


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
        return InvalidValueError(
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
            raise InvalidValueError(f"{source}: unknown key {prefix + str(k)!r}; allowed keys: {allowed}")
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
            raise InvalidValueError(f"--set {item!r}: expected KEY=VALUE (dotted keys for nested values, e.g. a.b=1)")
        try:
            value = _yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise InvalidValueError(f"--set {item!r}: cannot parse the value as YAML ({_yaml_error(e)})") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise InvalidValueError(f"--set {item!r}: {p!r} was already set to a value, not a mapping")
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
                raise InvalidValueError(
                    f"{source}: {dotted}={node!r}: {v!r} is not allowed; choose from: " + ", ".join(map(str, allowed))
                )


def load_config(
    name: str,
    config_file: str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    check_files: bool = True,
) -> dict[str, Any]:
    """The configuration of experiment ``name``: ``DEFAULTS`` <- YAML file <- overrides.

    Parameters
    ----------
    name : str
        Experiment name (see ``nnteleport.lab.experiments.EXPERIMENTS``).
    config_file : path, optional
        YAML file holding a mapping of keys to change; ``"paper"``: the packaged paper configuration
        (:func:`paper_config_path`).
    overrides : sequence of "KEY=VALUE" or mapping
        ``--set`` items (dotted keys, YAML values) or an already nested mapping.
    check_files : bool
        Check that the files of the datasets read from disk are there (``False``: every other check only;
        what ``--dry-run`` uses, which reports missing data instead of failing).

    Raises
    ------
    ValueError
        Unknown experiment, unknown key, wrong type, value outside ``CHOICES``, unreadable YAML.
    FileNotFoundError
        ``config_file`` does not exist.
    """
    from nnteleport.lab.experiments import get_experiment

    module = get_experiment(name)
    defaults = getattr(module, "DEFAULTS", None)
    if not isinstance(defaults, Mapping):
        raise InvalidValueError(f"experiment {name!r} ({module.__name__}) defines no DEFAULTS dict")
    config = copy.deepcopy(dict(defaults))
    if config_file is not None:
        path = paper_config_path(name) if str(config_file) == PAPER else Path(config_file)
        if not path.is_file():
            raise MissingFileError(f"config file {str(path)!r} not found")
        try:
            loaded = _yaml_load(path.read_text())
        except UnicodeDecodeError as e:
            raise InvalidValueError(f"{path}: not a text file ({e})") from None
        except yaml.YAMLError as e:
            raise InvalidValueError(f"{path}: not valid YAML: {_yaml_error(e)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise InvalidValueError(
                f"{path}: the file must hold a mapping (key: value lines), got {_type_name(loaded)}"
            )
        config = merge_config(config, loaded, source=str(path))
    if isinstance(overrides, Mapping):
        upd = dict(overrides)
    else:
        upd = parse_overrides(list(overrides))
    config = merge_config(config, upd, source="--set")
    validate_config(name, config, check_files=check_files)
    return config


# --------------------------------------------------------------------------------------------------
# value checks


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rule(test: Callable[[Any], bool], text: str) -> tuple[Callable[[Any], bool], str]:
    return test, text


_POS_INT = _rule(lambda v: _is_int(v) and v >= 1, "an integer >= 1")
_NONNEG_INT = _rule(lambda v: _is_int(v) and v >= 0, "an integer >= 0")
_POS_INT_OR_NONE = _rule(lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1")
_POS = _rule(lambda v: _is_num(v) and math.isfinite(v) and v > 0, "a finite number > 0")
_NONNEG = _rule(lambda v: _is_num(v) and math.isfinite(v) and v >= 0, "a finite number >= 0")
_UNIT_OPEN = _rule(lambda v: _is_num(v) and 0 < v < 1, "a number in (0, 1) (the CoB factors must stay positive)")
_MOMENTUM = _rule(lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)")
_AT_LEAST_1 = _rule(lambda v: _is_num(v) and math.isfinite(v) and v >= 1, "a finite number >= 1")
_SEEDS = _rule(
    lambda v: (_is_int(v) and v >= 1) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(_is_int(s) for s in v)),
    "an integer >= 1 (the number of seeds) or a non-empty list of integer seeds",
)

#: Checks of the keys the experiments share: key -> (rule for the value, rule for each element of a list).
RULES: dict[str, tuple[tuple[Callable[[Any], bool], str] | None, tuple[Callable[[Any], bool], str] | None]] = {
    "epochs": (_POS_INT, None),
    "max_steps": (_POS_INT, None),
    "augment": (_rule(lambda v: isinstance(v, bool), "true or false"), None),
    "match_train_loss": (_rule(lambda v: isinstance(v, bool), "true or false"), None),
    "batch_size": (_POS_INT, None),
    "batch_sizes": (None, _POS_INT),
    "num_samples": (_POS_INT, None),
    "num_teleports": (_POS_INT, None),
    "num_examples": (_POS_INT, None),
    "num_alphas": (_rule(lambda v: _is_int(v) and v >= 2, "an integer >= 2"), None),
    "num_images": (_POS_INT, None),
    "num_channels": (_POS_INT, None),
    "bins": (_POS_INT, None),
    "points": (_rule(lambda v: _is_int(v) and v >= 2, "an integer >= 2"), None),
    "arrows": (_POS_INT, None),
    "early_iters": (_POS_INT, None),
    "early_epochs": (_POS_INT_OR_NONE, None),
    "eval_examples": (_POS_INT_OR_NONE, None),
    "checkpoint_every": (_POS_INT, None),
    "warmup_epochs": (_NONNEG_INT, None),
    "sgdr_cycle": (_POS_INT, None),
    "sgdr_mult": (_POS_INT, None),
    "overhead_reps": (_POS_INT, None),
    "workers": (_POS_INT, None),
    "threads": (_POS_INT, None),
    "train_size": (_NONNEG_INT, None),
    "val_size": (_NONNEG_INT, None),
    "train_mode_teleports": (_NONNEG_INT, None),
    "seed": (_NONNEG_INT, None),
    "seeds": (_SEEDS, _NONNEG_INT),
    "lr": (_POS, None),
    "lrs": (None, _POS),
    "weight_decay": (_NONNEG, None),
    "momentum": (_MOMENTUM, None),
    "cob_range": (_UNIT_OPEN, None),
    "cob_ranges": (None, _UNIT_OPEN),
    "lr_decay_epochs": (None, _NONNEG_INT),
    "sigma": (_POS, None),
    "strength": (_NONNEG, None),
    "width": (_POS, None),
    "good_factor": (_AT_LEAST_1, None),
    "values": (None, _POS),
}
#: List-valued keys that must not be empty (an empty grid would "succeed" with no result).
NON_EMPTY = (
    "models", "datasets", "activations", "optimizers", "lrs", "batch_sizes", "cob_ranges", "dtypes", "methods",
    "variants", "values", "fixed_w1", "invariant_levels",
)  # fmt: skip


def _non_finite(v: Any, path: str) -> str | None:
    if isinstance(v, float) and not math.isfinite(v):
        return path
    if isinstance(v, Mapping):
        for k, u in v.items():
            hit = _non_finite(u, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    if isinstance(v, (list, tuple)):
        for i, u in enumerate(v):
            hit = _non_finite(u, f"{path}[{i}]")
            if hit:
                return hit
    return None


def validate_config(name: str, config: Mapping[str, Any], *, check_files: bool = True) -> None:
    """Check the values of experiment ``name``'s merged ``config`` before anything runs.

    ``check_files=False`` skips only the check that the dataset files are there (see :func:`load_config`).

    Raises
    ------
    InvalidValueError
        A value out of range (names the key, the value and the rule), an empty list, a NaN or infinity.
    MissingFileError
        A dataset read from disk whose files are not in ``data_root`` (names the file and where to get it).
    """
    source = f"experiment {name!r}"
    bad = _non_finite(dict(config), "")
    if bad:
        raise InvalidValueError(f"{source}: {bad} is not a finite number (NaN and infinities are not allowed)")
    for key, (whole, each) in RULES.items():
        if key not in config:
            continue
        v = config[key]
        if whole is not None and not whole[0](v):
            raise InvalidValueError(f"{source}: {key}={v!r} must be {whole[1]}")
        if each is not None and isinstance(v, (list, tuple)):
            for i, u in enumerate(v):
                if not each[0](u):
                    raise InvalidValueError(f"{source}: {key}[{i}]={u!r} (in {key}={list(v)!r}) must be {each[1]}")
    for key in NON_EMPTY:
        if key in config and isinstance(config[key], (list, tuple)) and len(config[key]) == 0:
            raise InvalidValueError(f"{source}: {key}=[] is empty; give at least one value")
    if "device" in config:
        from nnteleport.lab.devices import resolve_device

        resolve_device(config["device"], what=f"{source}: device")
    from nnteleport.lab.experiments import EXPERIMENTS, get_experiment

    if name in EXPERIMENTS:
        choices = getattr(get_experiment(name), "CHOICES", None)
        if choices:
            _check_choices(config, choices, source=source)
        hook = getattr(get_experiment(name), "validate", None)
        if callable(hook):
            hook(config)
    if check_files:
        from nnteleport.lab.data import check_available

        for ds in dataset_names(config):
            check_available(ds, config.get("data_root"))


def dataset_names(config: Mapping[str, Any]) -> list[str]:
    """The datasets a configuration reads (its ``dataset`` and ``datasets`` keys), each once, in order."""
    names = [config["dataset"]] if isinstance(config.get("dataset"), str) else []
    names += [d for d in config.get("datasets", []) or [] if isinstance(d, str)]
    return list(dict.fromkeys(names))


def format_defaults(name: str) -> str:
    """The ``DEFAULTS`` of experiment ``name`` as YAML (for ``nnteleport experiment NAME --help``)."""
    from nnteleport.lab.experiments import get_experiment

    module = get_experiment(name)
    defaults = getattr(module, "DEFAULTS", {})
    return yaml.safe_dump(_plain(defaults), sort_keys=False, default_flow_style=None, width=100).rstrip()


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _plain(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(u) for u in v]
    return v
