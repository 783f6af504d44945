"""Run every benchmark in turn: ``python -m benchmarks`` (what ``make bench`` calls).

Each prints ratios measured side by side in one run; see the module docstrings for options
(``python -m benchmarks.bench_teleport --help`` etc.). Run them on a quiet machine: on a loaded one, pass
``--threads 1`` to the individual benchmarks.

``python -m benchmarks --json-dir DIR`` also writes each benchmark's results to ``DIR/bench-<name>.json``
(``bench_gspace`` -> ``bench-gspace.json``; with the command, the machine and the date), the files
``scripts/make_doc_tables.py`` generates the documented benchmark tables from; ``--only gspace,fixing`` runs a
subset.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS = [
    "bench_teleport",
    "bench_gspace",
    "bench_fixing",
    "bench_distance",
    "bench_canonicalize",
    "bench_training",
    "bench_analysis",
    "bench_vmap",
    "bench_training_vectorize",
    "bench_epoch",
]


def json_name(benchmark: str) -> str:
    """``bench_gspace`` -> ``bench-gspace.json``."""
    return benchmark.replace("_", "-") + ".json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json-dir", default=None, help="write DIR/bench-<name>.json for every benchmark")
    ap.add_argument("--only", default=None, help="comma-separated names (gspace,fixing,...): run these only")
    args = ap.parse_args(argv)
    names = BENCHMARKS
    if args.only:
        wanted = {n.strip().removeprefix("bench_") for n in args.only.split(",") if n.strip()}
        unknown = wanted - {n.removeprefix("bench_") for n in BENCHMARKS}
        if unknown:
            ap.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
        names = [n for n in BENCHMARKS if n.removeprefix("bench_") in wanted]
    for name in names:
        print(f"\n=== benchmarks.{name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        module.main(["--json", f"{args.json_dir}/{json_name(name)}"] if args.json_dir else [])


if __name__ == "__main__":
    main()
