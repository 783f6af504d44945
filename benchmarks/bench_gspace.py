"""Step overhead of :class:`nnteleport.GSpaceOptimizer` against the plain optimizer (issue 4).

The thesis' MNIST network (784-64-64-64-64-10, bias-free, ReLU), batch 64, float32, CPU. For SGD, SGD + momentum
and Adam the plain and the G-space variant are timed side by side in one run, in interleaved blocks (the median
over blocks of the per-block ratio is robust to the load of a shared machine): the optimizer step alone
(gradients already computed) and a whole training iteration (zero_grad + forward + loss + backward + step).
Targets (issue 4): step <= 1.5x, iteration <= 1.15x. Also printed: the number of top-level ATen operations
per step (profiler) and the cost of one tiny operation in this run (per-call dispatch cost), which bound what an
eager implementation can reach.

Run: ``python -m benchmarks.bench_gspace [--blocks 30] [--reps 20] [--threads 1] [--clock cpu|wall]``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from nnteleport import GSpaceOptimizer

OPTIMIZERS = {
    "SGD": (torch.optim.SGD, {"lr": 0.01}),
    "SGD+momentum": (torch.optim.SGD, {"lr": 0.01, "momentum": 0.9}),
    "Adam": (torch.optim.Adam, {"lr": 1e-3}),
}


def thesis_mlp(widths: tuple[int, ...] = (784, 64, 64, 64, 64, 10)) -> nn.Sequential:
    """Bias-free ReLU MLP of the thesis (Jestädt 2025, Sec. 4.1)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=False))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


#: clock of the measurements: "cpu" (time.process_time: CPU time of this process, robust on a loaded shared
#: machine; with one torch thread it is the work done) or "wall" (time.perf_counter)
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
_clock = CLOCK["cpu"]


def per_call(fn: Callable[[], object], reps: int) -> float:
    t0 = _clock()
    for _ in range(reps):
        fn()
    return (_clock() - t0) / reps


def set_clock(name: str) -> None:
    global _clock
    _clock = CLOCK[name]


def compare(fns: dict[str, Callable[[], object]], blocks: int, reps: int) -> dict[str, float]:
    """Median seconds per call of each function and median per-block ratio of each to the first."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(blocks):
        for k in names:
            times[k].append(per_call(fns[k], reps))
    out = {f"{k}_us": 1e6 * statistics.median(v) for k, v in times.items()}
    for k in names[1:]:
        out[f"{k}_ratio"] = statistics.median(a / b for a, b in zip(times[k], times[names[0]]))
    return out


def top_level_ops(fn: Callable[[], object]) -> int:
    """Number of ATen operations ``fn`` dispatches from Python (nested ATen calls not counted)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def tiny_op_us(reps: int = 2000) -> float:
    """Median cost of one tiny out-of-place product (64 floats, ``out=``): the per-call dispatch cost."""
    a, b, c = torch.randn(64), torch.randn(64), torch.empty(64)
    return 1e6 * statistics.median(per_call(lambda: torch.mul(a, b, out=c), reps) for _ in range(7))


def bench(blocks: int, reps: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()
    results = {}
    for name, (cls, kw) in OPTIMIZERS.items():
        plain_model = thesis_mlp()
        g_model = thesis_mlp()
        g_model.load_state_dict(plain_model.state_dict())
        plain_opt = cls(plain_model.parameters(), **kw)
        g_opt = GSpaceOptimizer(g_model, cls, **kw)

        def iteration(model: nn.Module, opt: torch.optim.Optimizer) -> None:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

        for _ in range(20):  # warm-up: optimizer state, allocator
            iteration(plain_model, plain_opt)
            iteration(g_model, g_opt)
        ops = (top_level_ops(plain_opt.step), top_level_ops(g_opt.step))
        step = compare({"plain": plain_opt.step, "gspace": g_opt.step}, blocks, reps)
        it = compare(
            {
                "plain": lambda m=plain_model, o=plain_opt: iteration(m, o),
                "gspace": lambda m=g_model, o=g_opt: iteration(m, o),
            },
            blocks,
            reps,
        )
        results[name] = {
            "step_plain_us": step["plain_us"],
            "step_gspace_us": step["gspace_us"],
            "step_ratio": step["gspace_ratio"],
            "iter_plain_us": it["plain_us"],
            "iter_gspace_us": it["gspace_us"],
            "iter_ratio": it["gspace_ratio"],
            "ops_plain": ops[0],
            "ops_gspace": ops[1],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description="GSpaceOptimizer step overhead")
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    args = parser.parse_args()
    set_clock(args.clock)
    torch.set_num_threads(args.threads)
    res = bench(args.blocks, args.reps)
    print(
        f"GSpaceOptimizer vs plain, MLP 784-64-64-64-64-10 bias-free, batch 64, float32, {args.threads} thread(s), "
        f"{args.clock} clock"
    )
    print(
        f"{'optimizer':14s} {'step plain':>11s} {'step G':>10s} {'ratio':>6s}   {'iter plain':>11s} "
        f"{'iter G':>10s} {'ratio':>6s}   {'ATen ops/step plain, G':>22s}"
    )
    for name, r in res.items():
        print(
            f"{name:14s} {r['step_plain_us']:9.1f}us {r['step_gspace_us']:8.1f}us {r['step_ratio']:6.2f}   "
            f"{r['iter_plain_us']:9.1f}us {r['iter_gspace_us']:8.1f}us {r['iter_ratio']:6.2f}   "
            f"{r['ops_plain']:>14d}, {r['ops_gspace']:d}"
        )
    print("targets (issue 4): step <= 1.5x, iteration <= 1.15x")
    print(f"one tiny ATen op (dispatch cost) in this run: {tiny_op_us():.2f}us")


if __name__ == "__main__":
    main()
