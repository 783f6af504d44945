"""Overhead of the checkpoint-distance penalty per training step (von Bachmann 2020, Sec. 2.1.2 "Computational
analysis": every checkpoint should add the same constant cost).

On ResNet-18 (CIFAR size, 11.2 M parameters) measures, side by side in one run:

* the plain training step (forward + backward + SGD-momentum step on a small batch),
* the penalty alone (forward + backward of ``CheckpointDistance``, fused foreach kernel sum) for 1, 4 and 16
  checkpoints, and the same with a naive per-parameter autograd loop (thesis Alg. 5 with the RBF kernel),
* the full step with the penalty,

and prints the ratios to the plain step: medians over ``--reps`` interleaved repetitions after a warm-up.

    python -m benchmarks.bench_distance    # default: batch 4, 3 repetitions, 1 thread (about 1 minute)
    python -m benchmarks.bench_distance --batch 128 --reps 10 --invariant --device cuda
    python -m benchmarks.bench_distance --invariant --json docs/data/bench-distance.json   # the documented table
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from benchmarks._results import Recorder, add_json_option
from nnteleport.distance import CheckpointDistance
from nnteleport.lab.models import build_model


def _interleaved_ms(fns: dict[str, object], reps: int, sync=lambda: None) -> dict[str, float]:
    """Median wall time (ms) of every callable; one warm-up each, then the callables take turns per repetition
    so that load from other processes hits all of them alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def _naive_penalty(model: nn.Module, checkpoints: list[list[torch.Tensor]], sigma: float) -> torch.Tensor:
    """Thesis Alg. 5 (loop over parameters, autograd) with the RBF kernel: reference implementation."""
    total = 0.0
    for ckpt in checkpoints:
        d = 0.0
        for p, c in zip(model.parameters(), ckpt):
            diff = p - c
            d = d + (diff * diff).sum()
        total = total + torch.exp(-d / (2 * sigma**2))
    return total


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared, oversubscribed machine 2 OpenMP threads wait on each "
        "other and time mostly the contention)",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0, help="ResNet-18 channel multiplier (1.0: 11.2 M params)")
    ap.add_argument("--checkpoints", default="1,4,16")
    ap.add_argument("--invariant", action="store_true", help="also time invariant=True (needs the engine)")
    add_json_option(ap)
    args = ap.parse_args(argv)
    rec = Recorder("bench_distance", argv, {k: v for k, v in vars(args).items() if k != "json"})
    out: dict = {"params": 0, "rows": [], "marginal_ms_per_checkpoint": None, "invariant": None}

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model = build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=args.width).to(device)
    n_params = out["params"] = sum(p.numel() for p in model.parameters())
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-3)
    loss_fn = nn.CrossEntropyLoss()

    def step(penalty=None) -> None:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        opt.step()

    def penalty_only(penalty) -> None:
        model.zero_grad()
        penalty().backward()

    print(
        f"ResNet-18 (width {args.width}, {n_params / 1e6:.2f} M parameters), batch {args.batch}, "
        f"{torch.get_num_threads()} threads, device {device}, median of {args.reps} (interleaved)"
    )
    print(f"{'ckpts':>5} {'step ms':>8} {'penalty ms':>11} {'/step':>6} {'naive ms':>9} {'naive/fused':>11} "
          f"{'step+pen ms':>12} {'/step':>6}")  # fmt: skip
    rows = []
    for c in [int(v) for v in args.checkpoints.split(",")]:
        dist = CheckpointDistance(model, sigma=10.0, strength=0.1)
        g = torch.Generator(device=device).manual_seed(c)
        with torch.no_grad():
            for _ in range(c):
                dist.add_checkpoint(
                    {
                        n: p + 0.01 * torch.randn(p.shape, generator=g, device=device)
                        for n, p in model.named_parameters()
                    }
                )
        ckpts = dist.checkpoints
        fns = {
            "plain": step,
            "fused": lambda d=dist: penalty_only(d),
            "naive": lambda ck=ckpts: penalty_only(lambda: _naive_penalty(model, ck, 10.0)),
            "full": lambda d=dist: step(d),
        }
        t = _interleaved_ms(fns, args.reps, sync)
        rows.append((c, t))
        out["rows"].append({"checkpoints": c, **{f"{k}_ms": v for k, v in t.items()}})
        print(f"{c:>5} {t['plain']:>8.1f} {t['fused']:>11.1f} {t['fused'] / t['plain']:>6.3f} {t['naive']:>9.1f} "
              f"{t['naive'] / t['fused']:>11.2f} {t['full']:>12.1f} {t['full'] / t['plain']:>6.3f}")  # fmt: skip
        del dist, ckpts, fns
    if len(rows) > 1:
        (c0, t0), (c1, t1) = rows[0], rows[-1]
        per = out["marginal_ms_per_checkpoint"] = (t1["fused"] - t0["fused"]) / (c1 - c0)
        print(f"marginal penalty cost per checkpoint: {per:.2f} ms ({per / t1['plain']:.4f} x plain step)")
    if args.invariant:
        try:
            dist = CheckpointDistance(model, sigma=10.0, strength=0.1, invariant=True, example_input=x)
        except Exception as exc:  # the engine may be missing or not support the model
            print(f"invariant: skipped ({type(exc).__name__}: {exc})")
            out["invariant"] = {"skipped": f"{type(exc).__name__}: {exc}"}
        else:
            dist.add_checkpoint()
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e-3 * torch.randn_like(p))
            t = _interleaved_ms({"plain": step, "inv": lambda: penalty_only(dist)}, args.reps, sync)
            print(
                f"invariant, 1 checkpoint: penalty {t['inv']:.1f} ms = {t['inv'] / t['plain']:.3f} x plain step "
                f"({t['plain']:.1f} ms); {dist.last_balance_sweeps} balancing sweeps in the last call"
            )
            out["invariant"] = {"plain_ms": t["plain"], "penalty_ms": t["inv"], "sweeps": dist.last_balance_sweeps}
    rec.write(args.json, out)


if __name__ == "__main__":
    main()
