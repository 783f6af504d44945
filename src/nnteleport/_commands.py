"""What the commands of ``nnteleport`` do; :mod:`nnteleport.cli` parses the command line and calls these.

* ``experiment``: :func:`experiment_names`, :func:`experiment_list`, :func:`experiment_help` (texts),
  :func:`load_experiment` (checks a name), :func:`run_experiment` (config, output folder, lock, run),
  :func:`sweep_backend` (``--backend``, ``--ray-address``, ``--gpus-per-run``);
  :func:`dry_run_experiment` (``--dry-run``: what would run, and the estimate of its device time);
* ``demo``: :func:`run_demo`;
* ``teleport``: :func:`teleport_check` (build a zoo model, teleport it in float64, measure) and
  :func:`format_teleport_check` (what the command prints);
* every command: :func:`exit_status` maps an exception to the exit status and the one line printed on stderr
  (user errors 2, failed runs 1, interrupts ``128 + signal``; anything else is a bug and is re-raised);
  :func:`default_sigpipe` lets ``nnteleport ... | head`` end quietly.

Everything from :mod:`nnteleport.lab` is imported inside the functions, so the parser (and ``--help``) works
without the ``lab`` extra.
"""

from __future__ import annotations

import re
import signal
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnteleport.errors import NNTeleportError, RunsFailedError, UsageError

__all__ = [
    "FILE_ERRORS",
    "UsageError",
    "default_sigpipe",
    "dry_run_experiment",
    "exit_status",
    "experiment_help",
    "experiment_list",
    "experiment_names",
    "format_teleport_check",
    "load_experiment",
    "one_line",
    "run_demo",
    "run_experiment",
    "sweep_backend",
    "teleport_check",
]

# files the user named that are missing or unusable are user errors as well
FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


# --------------------------------------------------------------------------------------------------
# experiment


def experiment_names() -> list[str]:
    """The experiment names of the registry, in its order (imports no experiment module)."""
    from nnteleport.lab.experiments import EXPERIMENTS

    return list(EXPERIMENTS)


def _first_line(text: str | None) -> str:
    """The first line of a description; of a one-paragraph description, its first sentence."""
    for line in (text or "").strip().splitlines():
        if line.strip():
            line = line.strip()
            m = re.search(r"(?<=[a-z0-9)\]])\.\s+(?=[A-Z(])", line)
            return line[: m.start() + 1] if m else line
    return ""


def experiment_list() -> str:
    """One line per experiment: name and the first line of its DESCRIPTION (imports each module)."""
    from nnteleport.lab.experiments import get_experiment

    names = experiment_names()
    width = max(len(n) for n in names)
    lines = []
    for name in names:
        try:
            desc = _first_line(getattr(get_experiment(name), "DESCRIPTION", ""))
        except ModuleNotFoundError as e:  # not written yet / not installed: must not hide the others
            desc = f"(not available: module {e.name} is missing)"
        except Exception as e:  # a broken module must not hide the others either
            desc = f"(not available: {type(e).__name__}: {e})"
        lines.append(
            textwrap.fill(desc, 110, initial_indent=f"  {name:<{width}}  ", subsequent_indent=" " * (width + 4))
        )
    return "\n".join(lines)


def load_experiment(name: str) -> Any:
    """The module of experiment ``name``; an unknown name or a module that is not there is an input error."""
    from nnteleport.lab.experiments import EXPERIMENTS, get_experiment

    names = experiment_names()
    if name not in names:
        raise UsageError(f"unknown experiment {name!r}; choose one of: {', '.join(names)} (or `list`)")
    try:
        return get_experiment(name)
    except ModuleNotFoundError as e:
        if e.name == EXPERIMENTS[name]:
            raise UsageError(
                f"experiment {name!r} is not available in this version (module {e.name} is missing)"
            ) from None
        raise


def experiment_help(name: str, usage: str, options_help: str) -> str:
    """``nnteleport experiment NAME --help``: usage, description, defaults and the options of the command.

    ``usage`` and ``options_help`` are the experiment parser's ``format_usage()`` and ``format_help()``.
    """
    from nnteleport.lab.experiments.config import format_defaults

    module = load_experiment(name)
    desc = (getattr(module, "DESCRIPTION", "") or "").strip()
    body = "\n\n".join(textwrap.fill(p, 100) for p in desc.split("\n\n") if p.strip())
    defaults = textwrap.indent(format_defaults(name), "  ")
    i = options_help.find("options:")
    return (
        f"{usage.replace('NAME', name, 1)}\n{name}: {body}\n\n"
        f"defaults (change with --set key=value, dotted keys for nested values, or --config FILE.yaml):\n"
        f"{defaults}\n\n{options_help[i:] if i >= 0 else ''}"
    )


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder; give a folder (it is created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None


def _experiment_config(
    name: str,
    config_file: Path | None,
    overrides: Sequence[str],
    workers: int | None,
    device: str | None,
    *,
    check_files: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The module and the checked configuration of experiment ``name`` (``--workers`` and ``--device`` set their
    keys, refused for an experiment without the key)."""
    from nnteleport.lab.experiments.config import load_config

    module = load_experiment(name)
    overrides = list(overrides)
    if workers is not None:
        if workers < 1:
            raise UsageError(f"--workers must be >= 1, got {workers}")
        if "workers" not in getattr(module, "DEFAULTS", {}):
            raise UsageError(f"experiment {name!r} has no parallel runs (no `workers` key); drop --workers")
        overrides.append(f"workers={workers}")
    if device is not None:
        if "device" not in getattr(module, "DEFAULTS", {}):
            raise UsageError(f"experiment {name!r} has no `device` key; drop --device")
        overrides.append(f"device={device!s}")
    return module, load_config(name, config_file, overrides, check_files=check_files)


def dry_run_experiment(
    name: str,
    *,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    device: str | None = None,
) -> str:
    """``--dry-run``: the runs, epochs, datasets (present or not) and the estimated device-hours of experiment
    ``name`` with this configuration (:mod:`nnteleport.lab.experiments.dry_run`); nothing is trained or written.
    Every input error but missing dataset files is raised as for a run."""
    from nnteleport.lab.experiments.dry_run import dry_run, format_dry_run, options_from_env

    _, config = _experiment_config(name, config_file, overrides, workers, device, check_files=False)
    return format_dry_run(dry_run(name, config, **options_from_env()))


def run_experiment(
    name: str,
    *,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    workers: int | None = None,
    out: Path | None = None,
    progress: bool = True,
    device: str | None = None,
    backend: str | None = None,
    ray_address: str | None = None,
    gpus_per_run: float | None = None,
) -> Path:
    """Run experiment ``name`` with its defaults changed by ``config_file`` and ``overrides`` (``KEY=VALUE``).

    ``workers`` and ``device`` set the keys ``workers`` and ``device`` (refused for experiments without them);
    ``config_file="paper"`` is the packaged paper configuration; ``backend``, ``ray_address`` and ``gpus_per_run``
    choose where its sweeps run (:func:`sweep_backend`). Every input error is raised before the run starts. The
    results go to ``out`` (default ``results/NAME``), locked against a second process. Returns the output folder.
    """
    from nnteleport.lab.experiments.backends import use_backend
    from nnteleport.lab.experiments.workers import out_lock

    chosen = sweep_backend(name, load_experiment(name), backend, ray_address, gpus_per_run)
    module, config = _experiment_config(name, config_file, overrides, workers, device)
    out = out if out is not None else Path("results") / name
    _check_out(out)
    with out_lock(out), use_backend(chosen):
        module.run(config, out, progress=progress)
    return out


def sweep_backend(
    name: str, module: Any, backend: str | None, ray_address: str | None, gpus_per_run: float | None
) -> Any:
    """The :class:`~nnteleport.lab.experiments.backends.SweepBackend` of ``--backend``, ``--ray-address`` and
    ``--gpus-per-run``; Ray is refused for experiments without a sweep (no ``workers`` key) and when not installed."""
    from nnteleport.lab.experiments.backends import SweepBackend

    if backend != "ray":
        for flag, value in (("--ray-address", ray_address), ("--gpus-per-run", gpus_per_run)):
            if value is not None:
                raise UsageError(f"{flag} needs --backend ray")
        return SweepBackend()
    if "workers" not in getattr(module, "DEFAULTS", {}):
        raise UsageError(f"experiment {name!r} runs no sweep of independent runs (no `workers` key); drop --backend")
    from nnteleport.lab.experiments.ray_backend import require_ray

    require_ray()
    return SweepBackend("ray", address=ray_address, gpus_per_run=0.0 if gpus_per_run is None else gpus_per_run)


# --------------------------------------------------------------------------------------------------
# demo


def run_demo(out: Path, *, progress: bool = True) -> Path:
    """Run :func:`nnteleport.lab.demo.run_demo` into ``out`` (locked); returns the report's path."""
    try:
        from nnteleport.lab.demo import run_demo as _run_demo
    except ModuleNotFoundError as e:
        if e.name in ("nnteleport.lab.demo",):
            raise UsageError("the demo is not available in this version (module nnteleport.lab.demo is missing)") from e
        raise
    _check_out(out)
    from nnteleport.lab.experiments.workers import out_lock

    with out_lock(out):
        result = _run_demo(out, progress=progress)
    return Path(result) if isinstance(result, (str, Path)) else out / "report.html"


# --------------------------------------------------------------------------------------------------
# teleport


def teleport_check(
    model_name: str = "mlp",
    *,
    cob_range: float = 0.9,
    sampling: str = "inter",
    input_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    activation: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Teleport a zoo model in float64 and measure ``max |f(x) - g(x)|`` (what ``nnteleport teleport`` prints).

    The model gets ``torch.manual_seed(seed)``; the input ``x`` of shape ``(batch_size, *input_shape)`` and the
    CoB come from one generator seeded with ``seed``. Returns ``{"report": TeleportReport, "max_abs_error":
    max |f(x) - g(x)|, "max_abs_output": max |f(x)|, "weight_distance": |W - V|, "weight_norm": |W|}`` (``W``,
    ``V``: all parameters before and after, flattened).
    """
    import torch

    import nnteleport  # the public names (a direct submodule import would shadow nnteleport.teleport)
    from nnteleport.lab.models import build_model

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}")
    if not 0 < cob_range < 1:
        raise UsageError(f"--cob-range must be in (0, 1) (the CoB factors must stay positive), got {cob_range:g}")
    if num_classes < 1:
        raise UsageError(f"--num-classes must be >= 1, got {num_classes}")
    torch.manual_seed(seed)
    kwargs = {} if activation is None else {"activation": activation}
    model = build_model(model_name, in_shape=tuple(input_shape), num_classes=num_classes, **kwargs).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch_size, *input_shape), generator=g, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
    plan = nnteleport.analyze(model, x)
    w0 = torch.cat([p.detach().flatten() for p in model.parameters()])
    teleported = nnteleport.teleport(model, x, cob_range=cob_range, sampling=sampling, generator=g)
    with torch.no_grad():
        after = teleported(x)
    w1 = torch.cat([p.detach().flatten() for p in teleported.parameters()])
    return {
        "report": plan.report,
        "max_abs_error": float((after - before).abs().max()),
        "max_abs_output": float(before.abs().max()),
        "weight_distance": float((w1 - w0).norm()),
        "weight_norm": float(w0.norm()),
    }


def format_teleport_check(
    result: dict[str, Any], *, model_name: str, cob_range: float, sampling: str, batch_size: int, shape: tuple[int, ...]
) -> str:
    """The text ``nnteleport teleport`` prints for a :func:`teleport_check` result: report, distance, error."""
    return (
        f"{result['report']}\n\n"
        f"teleported {model_name} with cob_range={cob_range:g}, sampling={sampling} (float64)\n"
        f"  weight distance |W - V| / |W|: {result['weight_distance'] / result['weight_norm']:.4g}\n"
        f"  function preservation max |f(x) - g(x)|: {result['max_abs_error']:.3e} "
        f"(outputs up to {result['max_abs_output']:.3g}; batch of {batch_size} random inputs {shape})"
    )


# --------------------------------------------------------------------------------------------------
# every command: signals and exit status


def default_sigpipe() -> None:
    """Restore the default SIGPIPE action (in the main thread), so ``nnteleport ... | head`` ends quietly."""
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def one_line(e: BaseException | str) -> str:
    """An exception's message (a ``KeyError``'s key without quotes) or a text, on one line."""
    msg = e if isinstance(e, str) else (e.args[0] if isinstance(e, KeyError) and e.args else str(e))
    return " ".join(str(msg).split())


def exit_status(e: BaseException, *, debug: bool = False) -> tuple[int, str] | None:
    """``(exit status, line for stderr)`` for an exception that ends a command, or ``None`` to re-raise it.

    User errors (:class:`~nnteleport.errors.NNTeleportError`, unusable files) give 2 and ``error: ...``; failed
    runs (:class:`~nnteleport.errors.RunsFailedError`) 1; an interrupt ``128 + signal`` with a hint to resume.
    Anything else is a bug (``None``); with ``debug`` user errors and failed runs are re-raised too.
    """
    if isinstance(e, (NNTeleportError, *FILE_ERRORS)):
        return None if debug else (2, f"error: {one_line(e)}")
    if isinstance(e, RunsFailedError):
        return None if debug else (1, one_line(e))
    if isinstance(e, KeyboardInterrupt):
        signum = getattr(e, "signum", signal.SIGINT)
        text = str(e) if str(e) else "interrupted"
        if "run the same command again" not in text:
            text += " (finished results are kept; run the same command again to resume)"
        return 128 + int(signum), one_line(text)
    return None
