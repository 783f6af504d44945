"""Paper scale (issue 17): time per CIFAR-10 epoch of the paper's networks, baseline and teleported, on a device.

The networks of ``training --config paper`` at full width: VGG-11, ResNet-18, DenseNet-121 (and the 5x500
MLP), on CIFAR-size random data (3x32x32, 10 classes), float32, momentum SGD. One training iteration (forward,
backward, optimizer step) of the model and of its teleported copy (``sampling="inter"``, ``cob_range=0.9``: the
copy carries the activation wrappers ``tau * f(x / tau)`` that the paper's teleported arm trains with) is timed
in interleaved repetitions (medians; the device synchronised around each timing). Printed per network: seconds
per iteration of each arm at the timed batch, and the seconds per epoch of CIFAR-10 (50 000 images) at the
paper config's batch size 64, scaled linearly from the timed batch when it is smaller, and the teleported /
baseline ratio. The timed batch is 64 on a GPU and 8 on a CPU (where one DenseNet-121 iteration at 64 takes
~10 s), unless ``--batch`` says otherwise; ``--quick`` times tiny versions (width 1/8, 16x16 inputs), a smoke test
whose numbers mean nothing.

    python -m benchmarks.bench_epoch --device cuda      # on a GPU: batch 64, the paper's networks
    python -m benchmarks.bench_epoch --threads 1        # on a CPU: batch 8, scaled to batch 64
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import nnteleport
from benchmarks._results import Recorder, add_json_option
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.models import build_model

#: name -> (build_model name, keyword arguments): the paper config's networks (configs/paper/training.yaml)
NETWORKS: dict[str, tuple[str, dict]] = {
    "mlp-5x500": ("mlp", {"hidden": [500] * 5}),
    "vgg11": ("vgg", {"config": "vgg11", "width": 1.0}),
    "resnet18": ("resnet18", {"width": 1.0}),
    "densenet121": ("densenet", {"blocks": [6, 12, 24, 16], "growth_rate": 32}),
}
SHAPE, CLASSES, TRAIN_IMAGES, PAPER_BATCH = (3, 32, 32), 10, 50_000, 64


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)

    def step() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def bench(
    networks=tuple(NETWORKS),
    *,
    device: str = "cpu",
    batch: int = PAPER_BATCH,
    iters: int = 3,
    reps: int = 3,
    shape: tuple[int, ...] = SHAPE,
    width: float | None = None,
) -> list[dict]:
    """Per network: median seconds per iteration of the baseline and of the teleported copy (interleaved), their
    seconds per CIFAR-10 epoch at batch 64 and the ratio. ``width`` (tests) overrides the networks' width."""
    dev = resolve_device(device, what="bench_epoch: --device")
    rows = []
    for name in networks:
        kind, kwargs = NETWORKS[name]
        if width is not None and "width" in kwargs:
            kwargs = {**kwargs, "width": width}
        if width is not None and kind == "densenet":
            kwargs = {"blocks": [1, 1, 1, 1], "growth_rate": 4}
        torch.manual_seed(0)
        base = build_model(kind, in_shape=shape, num_classes=CLASSES, **kwargs).to(dev).train()
        x = torch.randn(batch, *shape, device=dev)
        y = torch.randint(0, CLASSES, (batch,), device=dev)
        moved = nnteleport.teleport(base, x, cob_range=0.9, sampling="inter",
                                    generator=torch.Generator().manual_seed(0)).train()  # fmt: skip
        wrappers = sum(isinstance(m, nnteleport.TeleportedActivation) for m in moved.modules())
        steps = {"baseline": _stepper(base, x, y), "teleported": _stepper(moved, x, y)}
        for step in steps.values():  # warm-up (cuDNN's algorithm choice, allocator)
            step()
        times: dict[str, list[float]] = {arm: [] for arm in steps}
        for _ in range(reps):
            for arm, step in steps.items():
                _sync(dev)
                t = time.perf_counter()
                for _ in range(iters):
                    step()
                _sync(dev)
                times[arm].append((time.perf_counter() - t) / iters)
        per_epoch = math.ceil(TRAIN_IMAGES / PAPER_BATCH) * PAPER_BATCH / batch  # iterations at the timed batch
        med = {arm: statistics.median(v) for arm, v in times.items()}
        rows.append({
            "network": name, "parameters": sum(p.numel() for p in base.parameters()), "wrappers": wrappers,
            "batch": batch, "baseline_s_per_iter": med["baseline"], "teleported_s_per_iter": med["teleported"],
            "baseline_s_per_epoch": med["baseline"] * per_epoch,
            "teleported_s_per_epoch": med["teleported"] * per_epoch,
            "ratio": statistics.median(t / b for t, b in zip(times["teleported"], times["baseline"])),
        })  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=list(NETWORKS))
    parser.add_argument("--batch", type=int, default=None, help="timed batch (default: 64 on a GPU, 8 on a CPU)")
    parser.add_argument("--iters", type=int, default=3, help="iterations per timing (default 3)")
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="tiny networks (a smoke test, not the paper's)")
    add_json_option(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device, what="bench_epoch: --device")
    batch = args.batch or (PAPER_BATCH if dev.type != "cpu" else 8)
    config = {k: v for k, v in vars(args).items() if k != "json"} | {"resolved_device": str(dev), "batch": batch}
    rec = Recorder("bench_epoch", argv, config)
    tiny = {"shape": (3, 16, 16), "width": 0.125} if args.quick else {}
    rows = bench(args.networks, device=str(dev), batch=batch, iters=args.iters, reps=args.reps, **tiny)
    rec.write(args.json, rows)
    print(f"{dev}, float32, timed at batch {batch}, epoch = 50 000 images at batch 64, "
          f"median of {args.reps} interleaved repetitions of {args.iters} iterations")  # fmt: skip
    print(f"  {'network':12s} {'params':>10s} {'s/iter base':>12s} {'s/iter tele':>12s} {'s/epoch base':>13s} "
          f"{'s/epoch tele':>13s} {'ratio':>7s}")  # fmt: skip
    for r in rows:
        print(f"  {r['network']:12s} {r['parameters']:10d} {r['baseline_s_per_iter']:12.4f} "
              f"{r['teleported_s_per_iter']:12.4f} {r['baseline_s_per_epoch']:13.1f} "
              f"{r['teleported_s_per_epoch']:13.1f} {r['ratio']:6.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
