"""Run every benchmark in turn: ``python -m benchmarks`` (what ``make bench`` calls).

Each prints ratios measured side by side in one run; see the module docstrings for options
(``python -m benchmarks.bench_teleport --help`` etc.). Run them on a quiet machine: on a loaded one, pass
``--threads 1`` to the individual benchmarks.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "bench_teleport",
    "bench_gspace",
    "bench_fixing",
    "bench_distance",
    "bench_canonicalize",
    "bench_training",
    "bench_analysis",
    "bench_vmap",
]


def main() -> None:
    for name in BENCHMARKS:
        print(f"\n=== benchmarks.{name}", flush=True)
        module = importlib.import_module(f"benchmarks.{name}")
        argv, sys.argv = sys.argv, [f"benchmarks.{name}"]
        try:
            module.main()
        finally:
            sys.argv = argv


if __name__ == "__main__":
    main()
