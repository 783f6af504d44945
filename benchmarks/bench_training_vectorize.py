"""The ``training`` experiment with ``vectorize: false`` (one ``train`` per run) against ``vectorize: true``
(all seeds and arms of a setting stacked by ``train_stacked``), measured side by side: the wall time of the whole
``nnteleport experiment training`` (fresh output folders, so nothing is reused) in interleaved repetitions,
the median of the per-repetition ratio, and the largest relative difference of the runs' final training losses
between the modes (the models in torch's default dtype, float32).

    python -m benchmarks.bench_training_vectorize                 # the DEMO config, 1 thread, 3 repetitions
    python -m benchmarks.bench_training_vectorize --config defaults --reps 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._results import Recorder, add_json_option
from nnteleport.lab.experiments import training


def _run(cfg: dict, out: Path) -> tuple[float, dict[str, float]]:
    t = time.perf_counter()
    training.run(cfg, out, progress=False)
    seconds = time.perf_counter() - t
    from nnteleport.lab.experiments.sweep import read_result

    finals = {}
    for p in sorted((out / "runs").iterdir()):
        loss = read_result(out, p.name)["result"]["history"]["train_loss"][-1]
        finals[p.name.removesuffix("_vec")] = float("nan") if loss is None else loss
    return seconds, finals


def bench(config: str = "demo", reps: int = 3, overrides: dict | None = None) -> dict:
    """Median seconds of each mode, the median per-repetition ratio sequential / vectorized, the largest
    relative difference of the final training losses."""
    cfg = {**(training.DEMO if config == "demo" else {}), **(overrides or {}), "tensorboard": False}
    seq, vec, diff = [], [], 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(reps):
            s, a = _run({**cfg, "vectorize": False}, Path(tmp) / f"seq{r}")
            v, b = _run({**cfg, "vectorize": True}, Path(tmp) / f"vec{r}")
            seq.append(s)
            vec.append(v)
            diff = max([diff, *(abs(a[k] - b[k]) / abs(a[k]) for k in a)])
    return {"config": config, "runs": len(a), "workers": cfg.get("workers", training.DEFAULTS["workers"]),
            "seq_s": statistics.median(seq), "vec_s": statistics.median(vec),
            "speedup": statistics.median(x / y for x, y in zip(seq, vec)), "max_rel_diff_final_loss": diff,
            "seq_all": seq, "vec_all": vec}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["demo", "defaults"], default="demo")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    rec = Recorder("bench_training_vectorize", argv, {k: v for k, v in vars(args).items() if k != "json"})
    torch.set_num_threads(args.threads)
    row = bench(args.config, args.reps)
    rec.write(args.json, [row])
    print(f"training experiment, {args.config} config ({row['runs']} runs, workers {row['workers']}), "
          f"{args.threads} thread(s), median of {args.reps} interleaved repetitions")  # fmt: skip
    print(f"  sequential {row['seq_s']:.1f} s, vectorized {row['vec_s']:.1f} s, speed-up {row['speedup']:.2f}x; "
          f"largest relative difference of the final train losses {row['max_rel_diff_final_loss']:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
