"""Command line: ``nnteleport experiment | demo | teleport``. The CLI only parses and calls the library.

``nnteleport experiment NAME [--config FILE.yaml] [--set key=value ...] [--out DIR] [--workers N]
[--no-progress]`` runs one experiment of :data:`nnteleport.lab.experiments.EXPERIMENTS`;
``nnteleport experiment list`` lists them; ``nnteleport experiment NAME --help`` shows its description and
defaults. ``nnteleport demo [--out DIR]`` writes the demo report. ``nnteleport teleport`` teleports a model of the
zoo on an example input and prints the engine's report and the function-preservation error.

Errors caused by the input (unknown names, bad config keys or values, missing files, an output folder in use,
stored results of another config) print one line ``nnteleport: error: ...`` and exit with status 2, before any
run starts; they are the :class:`~nnteleport.errors.NNTeleportError` exceptions. Any other exception is a bug
and shows its traceback. Set ``NNTELEPORT_DEBUG=1`` to see the traceback of user errors too. Runs that fail
(``runs/<id>/error.txt``) give one line and status 1. Ctrl-C or SIGTERM stops a run within seconds (status 130 /
143; finished results are kept, run the same command again to resume); a second one exits at once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import textwrap
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnteleport.errors import NNTeleportError

__all__ = ["build_parser", "main"]

PROG = "nnteleport"
# files the user named that are missing or unusable are user errors as well
_FILE_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
)


class UsageError(NNTeleportError):
    """A problem with the command line itself (exit status 2)."""


def _experiment_names() -> list[str]:
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


def _experiment_list() -> str:
    """One line per experiment: name and the first line of its DESCRIPTION (imports each module)."""
    from nnteleport.lab.experiments import get_experiment

    names = _experiment_names()
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


def _load_experiment(name: str) -> Any:
    """The experiment's module; a module that is not there is an input error, not a crash."""
    from nnteleport.lab.experiments import EXPERIMENTS, get_experiment

    try:
        return get_experiment(name)
    except ModuleNotFoundError as e:
        if e.name == EXPERIMENTS[name]:
            raise UsageError(
                f"experiment {name!r} is not available in this version (module {e.name} is missing)"
            ) from None
        raise


def _experiment_help(parser: argparse.ArgumentParser, name: str) -> str:
    from nnteleport.lab.experiments import get_experiment
    from nnteleport.lab.experiments.config import format_defaults

    module = get_experiment(name)
    desc = (getattr(module, "DESCRIPTION", "") or "").strip()
    usage = parser.format_usage().replace("NAME", name, 1)
    body = "\n\n".join(textwrap.fill(p, 100) for p in desc.split("\n\n") if p.strip())
    defaults = textwrap.indent(format_defaults(name), "  ")
    return (
        f"{usage}\n{name}: {body}\n\n"
        f"defaults (change with --set key=value, dotted keys for nested values, or --config FILE.yaml):\n"
        f"{defaults}\n\n{_experiment_options_help(parser)}"
    )


def _experiment_options_help(parser: argparse.ArgumentParser) -> str:
    text = parser.format_help()
    i = text.find("options:")
    return text[i:] if i >= 0 else ""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``nnteleport`` (subcommands ``experiment``, ``demo``, ``teleport``)."""
    from nnteleport import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Symmetries of neural-network weight space: neural teleportation (Armenta et al. 2023), "
            "scale-invariant parameter spaces, checkpoint-distance regularisation."
        ),
        epilog=(
            "examples:\n"
            f"  {PROG} demo --out demo_out          small version of every experiment -> demo_out/report.html\n"
            f"  {PROG} experiment list              the experiments and what they show\n"
            f"  {PROG} experiment micro-teleport --set batch_sizes=[8] --out results/micro\n"
            f"  {PROG} teleport --model resnet18 --cob-range 0.9\n\n"
            f"`{PROG} COMMAND --help` explains a command; `{PROG} experiment NAME --help` shows an experiment's "
            "defaults.\n\nerrors: a wrong input gives one line `nnteleport: error: ...` and exit status 2, before "
            "anything runs;\nset NNTELEPORT_DEBUG=1 to see its traceback. Ctrl-C stops a run (status 130), keeping "
            "what finished;\nthe same command resumes it.\n\nexperiments:\n"
            + textwrap.fill(
                ", ".join(_experiment_names()), 100, initial_indent="  ", break_on_hyphens=False, subsequent_indent="  "
            )
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    exp = sub.add_parser(
        "experiment",
        help="run one experiment of the papers (`experiment list` lists them)",
        description="Run one experiment; it writes OUT/results.json, CSVs of its curves and PNG plots.",
        usage=f"{PROG} experiment NAME [--config FILE.yaml] [--set KEY=VALUE ...] [--out DIR] [--workers N] "
        "[--no-progress]\n       " + f"{PROG} experiment list",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("name", nargs="?", metavar="NAME", help="experiment name, or `list`")
    exp.add_argument("-h", "--help", action="store_true", help="show this help (with NAME: its defaults)")
    exp.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML mapping of keys to change")
    exp.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="change one key (YAML value; dotted keys for nested dicts, lists as [1, 2]); repeatable",
    )
    exp.add_argument("--out", type=Path, metavar="DIR", help="output folder (default: results/NAME)")
    exp.add_argument("--workers", type=int, metavar="N", help="parallel worker processes (sets key `workers`)")
    exp.add_argument("--no-progress", action="store_true", help="no progress bars")

    demo = sub.add_parser(
        "demo",
        help="run a small version of every experiment and write OUT/report.html (minutes on a laptop)",
        description="Run a small version of every experiment on the embedded data and write OUT/report.html.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo_out"), metavar="DIR", help="default: demo_out")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    tp = sub.add_parser(
        "teleport",
        help="teleport a model of the zoo and print the engine's report and the function-preservation error",
        description=(
            "Build a model of the zoo (nnteleport.lab.models), teleport it on a random example batch, print the "
            "engine's report (which neurons get a change of basis, what is pinned and why) and the measured "
            "function-preservation error max |f(x) - g(x)| in float64."
        ),
    )
    tp.add_argument("--model", default="mlp", metavar="NAME", help="zoo model (mlp, vgg, resnet18, ...; default mlp)")
    tp.add_argument("--cob-range", type=float, default=0.9, metavar="S", help="CoB range sigma (default 0.9)")
    tp.add_argument("--sampling", default="inter", choices=["intra", "inter"], help="CoB sampling (default inter)")
    tp.add_argument(
        "--input-shape",
        default="3,32,32",
        metavar="C,H,W",
        help="shape of one input without the batch axis (default 3,32,32; e.g. 1,8,8 or 40)",
    )
    tp.add_argument("--num-classes", type=int, default=10, metavar="K", help="outputs of the model (default 10)")
    tp.add_argument("--activation", default=None, metavar="ACT", help="activation of the zoo model (e.g. tanh)")
    tp.add_argument("--batch-size", type=int, default=8, metavar="B", help="example batch size (default 8)")
    tp.add_argument("--seed", type=int, default=0, help="seed of the model, the input and the CoB (default 0)")
    return parser


# --------------------------------------------------------------------------------------------------
# commands


def _cmd_experiment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    exp_parser = parser._subparsers._group_actions[0].choices["experiment"]  # type: ignore[union-attr]
    if args.name is None and not args.help:
        print(exp_parser.format_usage(), end="", file=sys.stderr)
        print(f"{PROG} experiment: error: give an experiment NAME, or `list`; experiments:", file=sys.stderr)
        print(_experiment_list(), file=sys.stderr)
        return 2
    if args.name is None or args.name == "list":
        if args.help:
            print(exp_parser.format_help().rstrip())
            print("\nexperiments:")
        print(_experiment_list())
        return 0
    names = _experiment_names()
    if args.name not in names:
        raise UsageError(f"unknown experiment {args.name!r}; choose one of: {', '.join(names)} (or `list`)")
    _load_experiment(args.name)
    if args.help:
        print(_experiment_help(exp_parser, args.name))
        return 0

    from nnteleport.lab.experiments import get_experiment
    from nnteleport.lab.experiments.config import load_config

    overrides = list(args.overrides)
    if args.workers is not None:
        if args.workers < 1:
            raise UsageError(f"--workers must be >= 1, got {args.workers}")
        if "workers" not in getattr(get_experiment(args.name), "DEFAULTS", {}):
            raise UsageError(f"experiment {args.name!r} has no parallel runs (no `workers` key); drop --workers")
        overrides.append(f"workers={args.workers}")
    config = load_config(args.name, args.config, overrides)
    out = args.out if args.out is not None else Path("results") / args.name
    _check_out(out)
    from nnteleport.lab.experiments.workers import out_lock

    module = get_experiment(args.name)
    with out_lock(out):
        module.run(config, out, progress=not args.no_progress)
    print(f"{args.name}: results in {out}/ (results.json, CSVs, PNGs)")
    return 0


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder; give a folder (it is created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from nnteleport.lab.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name in ("nnteleport.lab.demo",):
            raise UsageError("the demo is not available in this version (module nnteleport.lab.demo is missing)") from e
        raise
    _check_out(args.out)
    from nnteleport.lab.experiments.workers import out_lock

    with out_lock(args.out):
        result = run_demo(args.out, progress=not args.no_progress)
    report = result if isinstance(result, (str, Path)) else args.out / "report.html"
    print(f"demo: report written to {report}")
    return 0


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in re.split(r"[,x]", text.strip()))
    except ValueError:
        shape = ()
    if not shape or any(s < 1 for s in shape):
        raise UsageError(f"--input-shape {text!r}: expected positive integers separated by commas, e.g. 3,32,32")
    return shape


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

    Returns ``{"report": TeleportReport, "max_abs_error": float, "max_abs_output": float,
    "weight_distance": float, "weight_norm": float}``.
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


def _cmd_teleport(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.input_shape)
    res = teleport_check(
        args.model,
        cob_range=args.cob_range,
        sampling=args.sampling,
        input_shape=shape,
        num_classes=args.num_classes,
        activation=args.activation,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(res["report"])
    print()
    print(f"teleported {args.model} with cob_range={args.cob_range:g}, sampling={args.sampling} (float64)")
    print(f"  weight distance |W - V| / |W|: {res['weight_distance'] / res['weight_norm']:.4g}")
    print(
        f"  function preservation max |f(x) - g(x)|: {res['max_abs_error']:.3e} "
        f"(outputs up to {res['max_abs_output']:.3g}; batch of {args.batch_size} random inputs {shape})"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnteleport`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `nnteleport ... | head` ends quietly, like other tools
    parser = build_parser()
    args = parser.parse_args(argv)
    from nnteleport.errors import RunsFailedError
    from nnteleport.lab.experiments.workers import interruptible

    debug = bool(os.environ.get("NNTELEPORT_DEBUG"))
    try:
        with interruptible():
            if args.command == "experiment":
                return _cmd_experiment(parser, args)
            if args.command == "demo":
                return _cmd_demo(args)
            if args.command == "teleport":
                return _cmd_teleport(args)
            raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse catches it
    except (NNTeleportError, *_FILE_ERRORS) as e:
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except RunsFailedError as e:
        if debug:
            raise
        print(f"{PROG}: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        text = str(e) if str(e) else "interrupted"
        if "run the same command again" not in text:
            text += " (finished results are kept; run the same command again to resume)"
        print(f"{PROG}: {_one_line(text)}", file=sys.stderr)
        return 128 + int(signum)


def _one_line(e: BaseException | str) -> str:
    msg = e if isinstance(e, str) else (e.args[0] if isinstance(e, KeyError) and e.args else str(e))
    return " ".join(str(msg).split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
