"""Benchmark: cost of a teleport relative to the physical floor, one pass over the parameters.

Run: ``python -m benchmarks.bench_teleport`` (``--quick`` for a smaller run, ``--device cuda`` on a GPU,
``--json PATH`` to also write the results with the command, machine and date).

For each model it prints, measured side by side in one run (interleaved repetitions, medians):

* the analysis time (first call: fx trace + one interpreted forward, train and eval graphs);
* ``teleport(model, x, cob, inplace=True)`` with the cached analysis;
* one ``torch._foreach_mul_`` over all parameters (the floor);
* their ratio (target: at most 3x), and ``teleport(..., inplace=False)`` (adds a deep copy) for reference;
* the number of traces during the repeated teleports (must be 0: the analysis is reused).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import nnteleport as nt
from benchmarks._results import Recorder, add_json_option
from nnteleport.engine.trace import _Tracer
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    t = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t


def bench(name: str, model: nn.Module, x: torch.Tensor, reps: int, device: torch.device) -> dict:
    model = model.to(device)
    x = x.to(device)
    params = [p for p in model.parameters()]
    n_params = sum(p.numel() for p in params)
    t0 = time.perf_counter()
    plan = nt.analyze(model, x)
    analysis = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    cobs = [nt.sample_cob(model, x, 0.5, "intra", gen) for _ in range(2)]
    inverse = [c.inverse() for c in cobs]

    traces = {"n": 0}
    original = _Tracer.trace

    def counting(self, *a, **k):
        traces["n"] += 1
        return original(self, *a, **k)

    _Tracer.trace = counting
    try:
        with torch.no_grad():
            tele, floor, copy_t = [], [], []
            for r in range(reps + 2):  # interleaved; the first two are warm-up
                i = r % 2
                t_tel = _time(lambda c=cobs[i]: nt.teleport(model, x, c, inplace=True), device)
                nt.teleport(model, x, inverse[i], inplace=True)  # keep weights bounded
                t_floor = _time(lambda: torch._foreach_mul_(params, 1.0), device)
                t_copy = _time(lambda c=cobs[i]: nt.teleport(model, x, c), device) if r % 4 == 0 else None
                if r >= 2:
                    tele.append(t_tel)
                    floor.append(t_floor)
                    if t_copy is not None:
                        copy_t.append(t_copy)
    finally:
        _Tracer.trace = original
    res = {
        "model": name,
        "params": n_params,
        "analysis_s": analysis,
        "teleport_ms": 1e3 * statistics.median(tele),
        "foreach_mul_ms": 1e3 * statistics.median(floor),
        "copy_teleport_ms": 1e3 * statistics.median(copy_t) if copy_t else float("nan"),
        "retraces": traces["n"],
        "coverage": plan.report.coverage,
    }
    res["ratio"] = res["teleport_ms"] / res["foreach_mul_ms"]
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller models and fewer repetitions")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads (default: torch's); use 1 on a loaded machine, where waking a descheduled worker "
        "thread costs milliseconds per op",
    )
    add_json_option(ap)
    args = ap.parse_args(argv)
    rec = Recorder("bench_teleport", argv, {k: v for k, v in vars(args).items() if k != "json"})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device, what="bench_teleport: --device")
    torch.manual_seed(0)
    reps = args.reps or (5 if args.quick else 15)
    width = 0.5 if args.quick else 1.0
    hidden = 1024 if args.quick else 4096
    cases = [
        ("resnet18 CIFAR (3x32x32)", build_model("resnet18", in_shape=(3, 32, 32), num_classes=10, width=width),
         torch.randn(2, 3, 32, 32)),
        (f"MLP 3072-{hidden}x3-10", build_model("mlp", in_shape=(3072,), num_classes=10, hidden=(hidden,) * 3),
         torch.randn(2, 3072)),
    ]  # fmt: skip
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, reps {reps}")
    header = f"{'model':28s} {'params':>10s} {'analysis':>9s} {'teleport':>10s} {'foreach':>10s} {'ratio':>6s}"
    print(header + f" {'w/ copy':>10s} {'retraces':>8s}")
    rows = []
    for name, model, x in cases:
        r = bench(name, model, x, reps, device)
        rows.append(r)
        print(
            f"{r['model']:28s} {r['params']:>10,d} {r['analysis_s']:>8.2f}s {r['teleport_ms']:>8.2f}ms "
            f"{r['foreach_mul_ms']:>8.2f}ms {r['ratio']:>5.2f}x {r['copy_teleport_ms']:>8.2f}ms {r['retraces']:>8d}"
        )
    rec.config.update(reps=reps, threads=torch.get_num_threads(), device=str(device))
    rec.write(args.json, {"models": rows, "target_ratio": 3.0})


if __name__ == "__main__":
    main()
