"""Step overhead of :class:`nnteleport.GSpaceOptimizer` against the plain optimizer (issue 4).

The thesis' MNIST network (784-64-64-64-64-10, bias-free, ReLU), batch 64, float32, CPU. For SGD, SGD + momentum
and Adam the plain and the G-space variant are timed side by side in one run, in interleaved blocks (the median
over blocks of the per-block ratio is robust to the load of a shared machine): the optimizer step alone
(gradients already computed) and a whole training iteration (zero_grad + forward + loss + backward + step).
Targets (issue 4): step <= 1.5x, iteration <= 1.15x. Also printed: the number of top-level ATen operations
per step (profiler) and the cost of one tiny operation in this run (per-call dispatch cost), which bound what an
eager implementation can reach.

Run: ``python -m benchmarks.bench_gspace [--blocks 30] [--reps 20] [--threads 1] [--clock cpu|wall] [--json PATH]``
(``--json``: also write the results, with the command, machine and date, for ``scripts/make_doc_tables.py``).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from benchmarks._results import Recorder, add_json_option
from nnteleport import GSpaceOptimizer
from nnteleport.gspace import _native

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


def timing_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Command line of the interleaved-timing benchmarks (``--blocks --reps --threads --clock --json``); sets the
    clock and the number of torch threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--blocks", type=int, default=30)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=sorted(CLOCK), default="cpu")
    add_json_option(parser)
    args = parser.parse_args(argv)
    set_clock(args.clock)
    torch.set_num_threads(args.threads)
    return args


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


def kernel_load_ms(reps: int = 15) -> float:
    """Median wall time of loading the cached kernel library, verification included (owner / mode checks,
    SHA-256 of the file, private copy, ``dlopen``, layout self-check): paid once per process."""
    if _native.load() is None:
        return float("nan")
    times = []
    for _ in range(reps):
        _native.reset()
        t0 = time.perf_counter()
        _native.load()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


#: G-space configurations timed against the plain optimizer: label -> GSpaceOptimizer keyword arguments
CONFIGS = {
    "unit skeleton": {"reparametrize": True},  # Meng et al.'s chart: direct first layer, fused kernels
    "thesis chart": {"reparametrize": False},  # skeleton weights keep their values (dense coordinates)
    "unit, eager": {"reparametrize": True, "native": False},  # no C compiler / CUDA: whole-tensor ops
    "thesis, eager": {"reparametrize": False, "native": False},
}


def bench(blocks: int, reps: int, configs: dict[str, dict] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Per optimizer and G-space configuration: step and iteration times and their ratios to the plain
    optimizer, all timed in one interleaved comparison per optimizer."""
    configs = CONFIGS if configs is None else configs
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    loss_fn = nn.CrossEntropyLoss()
    results: dict[str, dict[str, dict[str, float]]] = {}

    def iteration(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()

    for name, (cls, kw) in OPTIMIZERS.items():
        plain_model = thesis_mlp()
        runs = {"plain": (plain_model, cls(plain_model.parameters(), **kw))}
        for label, extra in configs.items():
            model = thesis_mlp()
            model.load_state_dict(plain_model.state_dict())
            runs[label] = (model, GSpaceOptimizer(model, cls, **extra, **kw))
        for _ in range(20):  # warm-up: optimizer state, allocator
            for model, opt in runs.values():
                iteration(model, opt)
        results[name] = {}
        plain = runs["plain"]
        for label, (model, opt) in runs.items():
            if label == "plain":
                continue
            # pairwise, interleaved: the plain optimizer and this configuration only (the same cache pressure)
            step = compare({"plain": plain[1].step, label: opt.step}, blocks, reps)
            it = compare(
                {"plain": lambda p=plain: iteration(*p), label: lambda m=model, o=opt: iteration(m, o)}, blocks, reps
            )
            results[name][label] = {
                "step_plain_us": step["plain_us"],
                "step_gspace_us": step[f"{label}_us"],
                "step_ratio": step[f"{label}_ratio"],
                "iter_plain_us": it["plain_us"],
                "iter_gspace_us": it[f"{label}_us"],
                "iter_ratio": it[f"{label}_ratio"],
                "ops_plain": top_level_ops(runs["plain"][1].step),
                "ops_gspace": top_level_ops(opt.step),
                "native": float(opt.native),
                "direct": float(opt.direct),
            }
    return results


def main(argv: list[str] | None = None) -> None:
    args = timing_args("GSpaceOptimizer step overhead", argv)
    rec = Recorder("bench_gspace", argv, {k: v for k, v in vars(args).items() if k != "json"})
    res = bench(args.blocks, args.reps)
    print(
        f"GSpaceOptimizer vs plain, MLP 784-64-64-64-64-10 bias-free, batch 64, float32, {args.threads} thread(s), "
        f"{args.clock} clock; native kernels: {_native.status()}"
    )
    print(
        f"{'optimizer':13s} {'G-space chart':14s} {'step plain':>11s} {'step G':>9s} {'ratio':>6s}   "
        f"{'iter plain':>11s} {'iter G':>9s} {'ratio':>6s}   {'ATen ops/step plain, G':>22s}"
    )
    for name, per in res.items():
        for label, r in per.items():
            print(
                f"{name:13s} {label:14s} {r['step_plain_us']:9.1f}us {r['step_gspace_us']:7.1f}us "
                f"{r['step_ratio']:6.2f}   {r['iter_plain_us']:9.1f}us {r['iter_gspace_us']:7.1f}us "
                f"{r['iter_ratio']:6.2f}   {r['ops_plain']:>14.0f}, {r['ops_gspace']:.0f}"
            )
    print("targets (issue 4): step <= 1.5x, iteration <= 1.15x")
    tiny, load = tiny_op_us(), kernel_load_ms()
    print(f"one tiny ATen op (dispatch cost) in this run: {tiny:.2f}us")
    print(f"kernel library load, verification included (once per process): {load:.2f}ms")
    rec.write(
        args.json,
        {"optimizers": res, "tiny_op_us": tiny, "kernel_load_ms": load, "native": _native.status(),
         "targets": {"step_ratio": 1.5, "iter_ratio": 1.15}},
    )  # fmt: skip


if __name__ == "__main__":
    main()
