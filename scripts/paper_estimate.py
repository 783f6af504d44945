"""The dry-run estimate of the paper's full study: ``--dry-run --config paper`` of every experiment, summed.

Usage (from the repository root)::

    python scripts/paper_estimate.py [--iters N] [--batch B] [--device DEV] [--json FILE]
    python scripts/paper_estimate.py --docs     # the "Paper configurations" tables of docs/experiments.md
    python scripts/paper_estimate.py --only NAME [NAME ...] --json FILE   # re-estimate some, merge into FILE

prints a Markdown table (experiment, runs, epochs, device-hours) and the total, the same numbers as
``nnteleport experiment NAME --config paper --dry-run`` for each experiment (see
:mod:`nnteleport.lab.experiments.dry_run` for how the estimate is made); ``--json`` also writes them to a file.
The datasets need not be present: their absence is reported, not an error, and work an experiment skips
without an optional dataset (teleport-schedule's ResNet-18 on CIFAR-10) is counted as if it were there.
``--only`` estimates the named experiments alone; with ``--json`` it replaces (or adds) their rows in an existing
file and recomputes the total, recording in ``meta["separate"]`` when and how each such row was measured (the
rows then come from different measurements: compare the settings there).
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
            elif isinstance(value, dict):  # e.g. lrs: {sgd: ...}, one --set per entry
                rows += [(f"{key}.{o}", _fmt(v), notes[key]) for o, v in value.items()]
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


def _merge(path: Path, rows: list[dict], meta: dict) -> tuple[list[dict], dict]:
    """The rows of ``path`` with ``rows`` replacing (or added to) theirs, in registry order; its meta with
    ``meta`` recorded under ``separate`` for each re-estimated experiment."""
    old = json.loads(path.read_text()) if path.is_file() else {"meta": {}, "rows": []}
    by = {r["experiment"]: r for r in old["rows"]}
    by.update({r["experiment"]: r for r in rows})
    merged = [by[n] for n in EXPERIMENTS if n in by]
    out_meta = dict(old["meta"]) or dict(meta)
    if old["rows"]:
        separate = dict(out_meta.get("separate", {}))
        separate.update({r["experiment"]: meta for r in rows})
        out_meta["separate"] = separate
    return merged, out_meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per network (default 3)")
    ap.add_argument("--batch", type=int, default=None, help="time at this batch size and scale (default: the config's)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="NAME",
        help="estimate only these experiments (with --json: merged into the file's other rows)",
    )
    ap.add_argument("--docs", action="store_true", help="print the paper-configuration tables and stop")
    args = ap.parse_args(argv)
    if args.docs:
        print(docs())
        return 0
    names = list(EXPERIMENTS) if args.only is None else args.only
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        ap.error(f"--only: unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    rows, t0 = [], time.perf_counter()
    for name in names:
        cfg = load_config(name, "paper", {"device": args.device}, check_files=False)
        p = dry_run(name, cfg, iters=args.iters, batch=args.batch, assume_data=True)
        rows.append({"experiment": name, "runs": p.runs, "epochs": p.epochs, "device_hours": p.device_hours,
                     "device": p.device})  # fmt: skip
        print(f"{name}: {p.runs} runs, {p.device_hours:.4g} device-hours", file=sys.stderr, flush=True)
    device = rows[0]["device"]
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    meta = {"device": device, "gpu": gpu, "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "iters": args.iters,
            "batch": args.batch, "seconds_to_estimate": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d")}  # fmt: skip
    if args.only is not None and args.json is not None:
        rows, meta = _merge(args.json, rows, meta)
    total = sum(r["device_hours"] for r in rows)
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
