"""The dry-run estimate of the paper's full study: ``--dry-run --config paper`` of every experiment, summed.

Usage (from the repository root)::

    python scripts/paper_estimate.py [--iters N] [--batch B] [--device DEV] [--json FILE]
    python scripts/paper_estimate.py --docs     # the "Paper configurations" tables of docs/experiments.md

prints a Markdown table (experiment, runs, epochs, device-hours) and the total, the same numbers as
``nnteleport experiment NAME --config paper --dry-run`` for each experiment (see
:mod:`nnteleport.lab.experiments.dry_run` for how the estimate is made); ``--json`` also writes them to a file.
The datasets need not be present: their absence is reported, not an error.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from nnteleport.lab.experiments import EXPERIMENTS
from nnteleport.lab.experiments.config import load_config
from nnteleport.lab.experiments.dry_run import dry_run


def _fmt(v: object) -> str:
    """A value as ``--set`` takes it (YAML flow style without spaces)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(u) for u in v) + "]"
    return str(v)


def docs() -> str:
    """Per experiment: the ``--set`` line equivalent to ``--config paper`` and the table key / value / source
    (the comment of each line of the packaged YAML: "paper", "thesis" or "our choice", with its note)."""
    import yaml

    from nnteleport.lab.experiments.config import paper_config_path

    out = []
    for name in EXPERIMENTS:
        text = paper_config_path(name).read_text()
        data = yaml.safe_load(text)
        notes = {}
        for line in text.splitlines():
            if line.strip() and not line.lstrip().startswith("#") and "#" in line:
                notes[line.split(":")[0].strip()] = line.split("#", 1)[1].strip()
        rows = []
        for key, value in data.items():
            if key == "model_kwargs":
                for model, opts in value.items():
                    rows += [(f"model_kwargs.{model}.{o}", _fmt(v), notes[model]) for o, v in opts.items()]
            else:
                rows.append((key, _fmt(value), notes[key]))
        sets = " \\\n    ".join(f"--set {k}={v}" for k, v, _ in rows)
        out.append(
            f"### `{name}`\n\n`nnteleport experiment {name} --config paper` is\n\n```bash\n"
            f"nnteleport experiment {name} \\\n    {sets}\n```\n\n| key | value | source |\n|---|---|---|"
        )
        out += [f"| `{k}` | `{v}` | {n.replace('|', '/')} |" for k, v, n in rows]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per network (default 3)")
    ap.add_argument("--batch", type=int, default=None, help="time at this batch size and scale (default: the config's)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    ap.add_argument("--docs", action="store_true", help="print the paper-configuration tables and stop")
    args = ap.parse_args(argv)
    if args.docs:
        print(docs())
        return 0
    rows, t0 = [], time.perf_counter()
    for name in EXPERIMENTS:
        cfg = load_config(name, "paper", {"device": args.device}, check_files=False)
        p = dry_run(name, cfg, iters=args.iters, batch=args.batch)
        rows.append({"experiment": name, "runs": p.runs, "epochs": p.epochs, "device_hours": p.device_hours,
                     "device": p.device})  # fmt: skip
        print(f"{name}: {p.runs} runs, {p.device_hours:.4g} device-hours", file=sys.stderr, flush=True)
    total = sum(r["device_hours"] for r in rows)
    device = rows[0]["device"]
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    meta = {"device": device, "gpu": gpu, "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "iters": args.iters,
            "batch": args.batch, "seconds_to_estimate": round(time.perf_counter() - t0, 1)}  # fmt: skip
    print(f"| experiment | runs | epochs | device-hours ({gpu or device}, {meta['torch_threads']} threads) |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| `{r['experiment']}` | {r['runs']} | {r['epochs'] or '-'} | {r['device_hours']:.4g} |")
    print(f"| **total** | {sum(r['runs'] for r in rows)} | | **{total:.4g}** |")
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows, "total_device_hours": total}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
