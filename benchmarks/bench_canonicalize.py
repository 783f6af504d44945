"""How ``nnteleport.canonicalize`` scales with depth: plain ReLU MLPs (width 16, float64) of growing depth.

A chain without BatchNorm is the hard case of the balancing: its Gauss-Seidel sweeps pass a change on one layer
per sweep, so a cold start needs ``O(L^2)`` sweeps of ``O(L)`` work each (the issue measured canonicalize at 0.67 s
for 20 layers, 21 s for 80, 303 s for 300). The cold solve is now a damped Newton method whose steps solve one
sparse (block tridiagonal) system each -- ``O(L)`` work per step, and a number of steps that grows only slowly
with depth (5 at 20 layers, 11 at 1000).

Prints, per depth: the time of ``canonicalize`` (median of ``--reps``; the engine's analysis, cached after the
first call, is timed separately), the Newton steps and the time per layer, and the Gauss-Seidel sweeps for
comparison (and the time of that solve) up to ``--gs-max-depth`` layers. The per-layer time should stay roughly flat.

    python -m benchmarks.bench_canonicalize                 # depths 20, 80, 300, 1000 (about half a minute)
    python -m benchmarks.bench_canonicalize --depths 20,80 --gs-max-depth 80
    python -m benchmarks.bench_canonicalize --json docs/data/bench-canonicalize.json   # the documented table
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import nnteleport
from benchmarks._results import Recorder, add_json_option
from nnteleport.distance.canonical import balancer_of


def chain(depth: int, width: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 2)).double()


def bench(depths: list[int], *, reps: int = 3, gs_max_depth: int = 40, width: int = 16) -> list[dict]:
    """One row per depth: seconds of canonicalize, Newton steps, Gauss-Seidel sweeps and seconds of that solve (or
    None beyond ``gs_max_depth``), imbalance."""
    rows = []
    for depth in depths:
        model = chain(depth, width)
        x = torch.randn(4, width, dtype=torch.float64)
        t0 = time.perf_counter()
        nnteleport.analyze(model, x)
        analysis_s = time.perf_counter() - t0
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            nnteleport.canonicalize(model, x)
            times.append(time.perf_counter() - t0)
        bal, _ = balancer_of(model, x)
        masses = bal.masses(list(model.parameters()), torch.float64)
        _, steps, imbalance = bal.solve(masses, tol=1e-10, max_iter=10_000, method="newton")
        sweeps = gs_s = None
        if depth <= gs_max_depth:
            t0 = time.perf_counter()
            _, sweeps, _ = bal.solve(masses, tol=1e-10, max_iter=1_000_000, method="gauss-seidel")
            gs_s = time.perf_counter() - t0
        sec = statistics.median(times)
        rows.append(
            {"depth": depth, "seconds": sec, "per_layer_ms": 1e3 * sec / depth, "analysis_s": analysis_s,
             "newton_steps": steps, "gs_sweeps": sweeps, "gs_seconds": gs_s, "imbalance": imbalance}
        )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depths", default="20,80,300,1000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gs-max-depth", type=int, default=40, help="also count Gauss-Seidel sweeps up to this depth")
    ap.add_argument("--threads", type=int, default=1)
    add_json_option(ap)
    args = ap.parse_args(argv)
    rec = Recorder("bench_canonicalize", argv, {k: v for k, v in vars(args).items() if k != "json"})
    torch.set_num_threads(args.threads)
    rows = bench([int(d) for d in args.depths.split(",")], reps=args.reps, gs_max_depth=args.gs_max_depth)
    print(f"{'depth':>6} {'canonicalize s':>15} {'ms/layer':>9} {'newton steps':>13} {'GS sweeps':>10} "
          f"{'first analysis s':>17}")  # fmt: skip
    for r in rows:
        gs = "-" if r["gs_sweeps"] is None else str(r["gs_sweeps"])
        print(f"{r['depth']:>6} {r['seconds']:>15.3f} {r['per_layer_ms']:>9.2f} {r['newton_steps']:>13} {gs:>10} "
              f"{r['analysis_s']:>17.2f}")  # fmt: skip
    rec.write(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
