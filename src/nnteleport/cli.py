"""Command line: ``nnteleport experiment | demo | teleport``. The CLI only parses and calls the library.

``nnteleport experiment NAME [--config FILE.yaml|paper] [--set key=value ...] [--out DIR] [--workers N]
[--device auto|cpu|cuda|cuda:N] [--dry-run] [--no-progress]`` runs one experiment of
:data:`nnteleport.lab.experiments.EXPERIMENTS` (``--config paper``: its packaged paper configuration;
``--dry-run``: print what would run and its estimated device-hours, run nothing);
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
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from nnteleport import _commands as commands
from nnteleport._extras import require_extra
from nnteleport.errors import UsageError

__all__ = ["build_parser", "main"]

PROG = "nnteleport"
# the commands that run the application layer, nnteleport.lab, and so need `pip install 'nnteleport[lab]'`
LAB_COMMANDS = ("experiment", "demo")


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
                ", ".join(commands.experiment_names()),
                100,
                initial_indent="  ",
                break_on_hyphens=False,
                subsequent_indent="  ",
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
        usage=f"{PROG} experiment NAME [--config FILE.yaml|paper] [--set KEY=VALUE ...] [--out DIR] [--workers N] "
        "[--device DEV] [--dry-run] [--no-progress]\n       " + f"{PROG} experiment list",
        add_help=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exp.add_argument("name", nargs="?", metavar="NAME", help="experiment name, or `list`")
    exp.add_argument("-h", "--help", action="store_true", help="show this help (with NAME: its defaults)")
    exp.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        help="YAML mapping of keys to change; `paper`: the "
        "packaged configuration of the paper's protocol (full-size models and data)",
    )
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
    exp.add_argument(
        "--device", metavar="DEV", help="auto (CUDA when present, the default), cpu, cuda or cuda:N (sets key `device`)"
    )
    exp.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs, epochs, datasets (present?) and an "
        "estimate of the device-hours from a few timed iterations; run nothing",
    )
    exp.add_argument("--no-progress", action="store_true", help="no progress bars")
    # where the runs of a sweep execute (nnteleport.lab.experiments.backends)
    exp.add_argument("--backend", choices=["local", "ray"], help="where the runs of a sweep execute: local worker "
                     "processes (default) or Ray tasks (pip install 'nnteleport[ray]'; same results)")  # fmt: skip
    exp.add_argument("--ray-address", metavar="ADDR", help="with --backend ray: the cluster (`auto`: the one "
                     "started on this machine, HOST:6379: its head node); default: a local Ray instance")  # fmt: skip
    exp.add_argument("--gpus-per-run", type=float, metavar="G", help="with --backend ray: GPUs each run "
                     "reserves (1: one run per GPU, 0.5: two per GPU; default 0)")  # fmt: skip

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
# commands: parse, call, print


def _cmd_experiment(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    exp_parser = parser._subparsers._group_actions[0].choices["experiment"]  # type: ignore[union-attr]
    if args.name is None and not args.help:
        print(exp_parser.format_usage(), end="", file=sys.stderr)
        print(f"{PROG} experiment: error: give an experiment NAME, or `list`; experiments:", file=sys.stderr)
        print(commands.experiment_list(), file=sys.stderr)
        return 2
    if args.name is None or args.name == "list":
        if args.help:
            print(exp_parser.format_help().rstrip())
            print("\nexperiments:")
        print(commands.experiment_list())
        return 0
    commands.load_experiment(args.name)
    if args.help:
        print(commands.experiment_help(args.name, exp_parser.format_usage(), exp_parser.format_help()))
        return 0
    common = {"config_file": args.config, "overrides": args.overrides, "workers": args.workers, "device": args.device}
    if args.dry_run:
        print(commands.dry_run_experiment(args.name, **common))
        return 0
    out = commands.run_experiment(
        args.name,
        out=args.out,
        progress=not args.no_progress,
        backend=args.backend,
        ray_address=args.ray_address,
        gpus_per_run=args.gpus_per_run,
        **common,
    )
    print(f"{args.name}: results in {out}/ (results.json, CSVs, PNGs)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    report = commands.run_demo(args.out, progress=not args.no_progress)
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


def _cmd_teleport(args: argparse.Namespace) -> int:
    shape = _parse_shape(args.input_shape)
    result = commands.teleport_check(
        args.model,
        cob_range=args.cob_range,
        sampling=args.sampling,
        input_shape=shape,
        num_classes=args.num_classes,
        activation=args.activation,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    print(
        commands.format_teleport_check(
            result,
            model_name=args.model,
            cob_range=args.cob_range,
            sampling=args.sampling,
            batch_size=args.batch_size,
            shape=shape,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nnteleport`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands.default_sigpipe()
    parser = build_parser()
    args = parser.parse_args(argv)
    from nnteleport.lab.experiments.workers import interruptible  # torch and the standard library only

    try:
        with interruptible():
            if args.command in LAB_COMMANDS:  # before anything runs: one line naming the extra to install
                require_extra("lab", feature=f"`{PROG} {args.command}`")
            if args.command == "experiment":
                return _cmd_experiment(parser, args)
            if args.command == "demo":
                return _cmd_demo(args)
            if args.command == "teleport":
                return _cmd_teleport(args)
            raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover - argparse catches it
    except BaseException as e:
        handled = commands.exit_status(e, debug=bool(os.environ.get("NNTELEPORT_DEBUG")))
        if handled is None:
            raise
        status, line = handled
        print(f"{PROG}: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
