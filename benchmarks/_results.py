"""Results files of the benchmarks: ``--json PATH`` writes what a benchmark printed, with the command, the
machine and the date, so that the tables in ``docs/`` are generated from them (``scripts/make_doc_tables.py``)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch


def add_json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        metavar="PATH",
        default=None,
        help="also write the results (with the command, the machine and the date) to this JSON file",
    )


def _load() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, load average, threads, versions."""
    return {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average": _load(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    return v


class Recorder:
    """Created when a benchmark starts (records the machine's load then), written when it ends."""

    def __init__(self, benchmark: str, argv: list[str] | None, config: dict[str, Any]) -> None:
        self.benchmark = benchmark
        args = sys.argv[1:] if argv is None else list(argv)
        self.command = " ".join(["python", "-m", f"benchmarks.{benchmark}", *map(shlex.quote, args)])
        self.config = config
        self.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.load_start = _load()

    def write(self, path: str | os.PathLike | None, results: Any) -> None:
        if path is None:
            return
        info = machine()
        info["load_average_start"], info["load_average_end"] = self.load_start, info.pop("load_average")
        doc = {
            "benchmark": self.benchmark,
            "command": self.command,
            "date": self.started,
            "machine": info,
            "config": self.config,
            "results": results,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
        print(f"wrote {path}")
