"""Many seeds in one process: ``train_stacked`` (k members vmapped in one process) against k sequential ``train``
runs, measured side by side (interleaved repetitions, medians).

Members are half baselines, half their teleported arms (teleport at initialisation, CoB range 0.9, inter), as in
the ``training`` experiment, whose settings are used: momentum SGD, lr 0.01, L2 5e-4, batch 64, Kaiming init,
the optimizer reset at epoch 0 in both arms, digits (1438 training images, 23 iterations per epoch). Models: the
experiment's default MLP (64-128x5-10, ReLU), a narrow one (64-32x5-10) and a small CNN (conv 16 - BN - ReLU -
pool - conv 32 - ReLU - global pool - linear). Printed per model and k: runs per minute of each and the median
per-repetition speed-up.

The arithmetic floor, measured in the same repetitions: the time of the stacked run's forward and backward passes
alone (``vmap`` of ``functional_call`` and one backward per step, as many steps as the runs take, on batches of
the same shape; no optimizer, loop, evaluation or teleport). Every stacked run does at least these passes, so
``ceiling = sequential time / floor`` bounds the speed-up that any vectorisation doing the same arithmetic could
reach on this machine (the floor of the sequential runs' own passes is printed too).

    python -m benchmarks.bench_vmap                    # 1 thread, k in 4 8 16
    python -m benchmarks.bench_vmap --threads 2        # 2 intra-op threads
    python -m benchmarks.bench_vmap --ks 4 --reps 1 --epochs 1
    python -m benchmarks.bench_vmap --device cuda      # on a GPU (timings synchronise the device)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from benchmarks._results import Recorder, add_json_option
from nnteleport.lab.data import load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.models import build_model
from nnteleport.lab.training import train, train_stacked

MODELS = ("mlp", "mlp-narrow", "cnn")
KS = (4, 8, 16)
SETTINGS = dict(batch_size=64, optimizer="momentum", lr=0.01, weight_decay=5e-4, init="kaiming", reset_optimizer_at=[0])


def make_model(name: str, seed: int) -> nn.Module:
    """The benchmark's models for digits ``(1, 8, 8)`` -> 10 classes, initialised from ``seed``."""
    torch.manual_seed(seed)
    if name == "mlp":
        return build_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=[128] * 5)
    if name == "mlp-narrow":
        return build_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=[32] * 5)
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
        )  # fmt: skip
    raise ValueError(f"bench_vmap: unknown model {name!r}; choose from {MODELS}")


def members(k: int) -> list[tuple[int, int | None]]:
    """``k`` runs: seeds ``0 .. k/2 - 1``, each as baseline and teleported at initialisation."""
    return [(s, at) for s in range((k + 1) // 2) for at in (None, 0)][:k]


def sequential(name: str, k: int, data, **kw) -> None:
    for seed, at in members(k):
        train(make_model(name, seed), data, seed=seed, teleport_at=at, progress=False, **kw)


def stacked(name: str, k: int, data, **kw) -> None:
    runs = members(k)
    train_stacked([make_model(name, s) for s, _ in runs], data, seeds=[s for s, _ in runs],
                  teleport_at=[at for _, at in runs], **kw)  # fmt: skip


def _batch(k: int | None, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (64,) if k is None else (k, 64)
    return torch.randn(*shape, 1, 8, 8).to(device), torch.randint(0, 10, shape).to(device)


def floor_stacked(name: str, k: int, steps: int, device: str = "cpu") -> None:
    """``steps`` forward + backward passes of the ``k`` stacked members (vmap), nothing else."""
    models = [make_model(name, s).to(device) for s, _ in members(k)]
    params, buffers = stack_module_state(models)
    base = models[0]

    def loss(p, b, x, y):
        return F.cross_entropy(functional_call(base, (p, b), (x,)), y)

    batched = vmap(loss, randomness="error")
    x, y = _batch(k, device)
    for _ in range(steps):
        batched(params, buffers, x, y).sum().backward()


def floor_sequential(name: str, k: int, steps: int, device: str = "cpu") -> None:
    """``steps`` forward + backward passes of each of ``k`` models, one after the other, nothing else."""
    x, y = _batch(None, device)
    for seed, _ in members(k):
        model = make_model(name, seed).to(device)
        for _ in range(steps):
            F.cross_entropy(model(x), y).backward()


def _time(fn, device: str = "cpu") -> float:
    """Wall seconds of ``fn()``; on an accelerator the device is synchronised before and after."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def bench(
    models=MODELS,
    ks=KS,
    *,
    epochs: int = 4,
    reps: int = 3,
    max_iters_per_epoch: int | None = None,
    warmup: bool = True,
    device: str = "cpu",
) -> list[dict]:
    """Per model and k: median seconds of k sequential and of one stacked run of k members, their runs per
    minute, and the median over repetitions of the per-repetition ratio (interleaved: seq, vec, seq, vec, ...);
    the floors (forward + backward passes alone, stacked and sequential) and ``ceiling = seq / stacked floor``
    (median of the per-repetition ratios)."""
    data = load_dataset("digits")
    device = str(resolve_device(device, what="bench_vmap: --device"))
    kw = dict(SETTINGS, epochs=epochs, max_iters_per_epoch=max_iters_per_epoch, device=device)
    for name in models if warmup else ():  # warm-up (imports, the engine's first analysis)
        sequential(name, 2, data, **{**kw, "epochs": 1, "max_iters_per_epoch": 2})
        stacked(name, 2, data, **{**kw, "epochs": 1, "max_iters_per_epoch": 2})
    iters = math.ceil(len(data.train) / SETTINGS["batch_size"])
    steps = epochs * (iters if max_iters_per_epoch is None else min(iters, max_iters_per_epoch))
    rows = []
    for name in models:
        for k in ks:
            seq, vec, fvec, fseq = [], [], [], []
            for _ in range(reps):
                seq.append(_time(lambda n=name, kk=k: sequential(n, kk, data, **kw), device))
                vec.append(_time(lambda n=name, kk=k: stacked(n, kk, data, **kw), device))
                fvec.append(_time(lambda n=name, kk=k: floor_stacked(n, kk, steps, device), device))
                fseq.append(_time(lambda n=name, kk=k: floor_sequential(n, kk, steps, device), device))
            t_seq, t_vec = statistics.median(seq), statistics.median(vec)
            rows.append({
                "model": name, "k": k, "epochs": epochs, "steps": steps, "seq_s": t_seq, "vec_s": t_vec,
                "seq_runs_per_min": 60 * k / t_seq, "vec_runs_per_min": 60 * k / t_vec,
                "speedup": statistics.median(a / b for a, b in zip(seq, vec)),
                "floor_vec_s": statistics.median(fvec), "floor_seq_s": statistics.median(fseq),
                "ceiling": statistics.median(a / b for a, b in zip(seq, fvec)),
            })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(KS), help="stack sizes (default 4 8 16)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    add_json_option(parser)
    args = parser.parse_args(argv)
    rec = Recorder("bench_vmap", argv, {k: v for k, v in vars(args).items() if k != "json"})
    torch.set_num_threads(args.threads)
    rows = bench(args.models, args.ks, epochs=args.epochs, reps=args.reps, device=args.device)
    rec.write(args.json, rows)
    print(f"digits, {args.epochs} epochs per run, half baselines / half teleported at init, momentum SGD, "
          f"device {args.device}, {args.threads} thread(s), median of {args.reps} interleaved repetitions")  # fmt: skip
    print(f"  {'model':10s} {'k':>3s} {'sequential runs/min':>20s} {'stacked runs/min':>17s} {'speed-up':>9s} "
          f"{'floor s (stacked / seq)':>24s} {'ceiling':>8s}")  # fmt: skip
    for r in rows:
        floors = f"{r['floor_vec_s']:11.3f} / {r['floor_seq_s']:9.3f}"
        print(f"  {r['model']:10s} {r['k']:3d} {r['seq_runs_per_min']:20.1f} {r['vec_runs_per_min']:17.1f} "
              f"{r['speedup']:8.2f}x {floors} {r['ceiling']:7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
