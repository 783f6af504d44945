"""``--dry-run``: what an experiment's configuration would run, and an estimate of its device time.

:func:`plan` counts, from the configuration alone (nothing is trained, no dataset is read): the runs (the
networks trained, or measured for the experiments that train nothing), their epochs, and per distinct network
(model, its options, input shape, batch size, dtype) the training iterations, the examples evaluated and the
teleports. :func:`dry_run` adds whether the dataset files are there and, unless ``timing=False``, the estimate:

* every distinct network is built on the device and trained for ``iters`` timed iterations (forward, backward,
  SGD step, after one untimed warm-up; the device is synchronised before each clock reading) on random data of
  the dataset's input shape, at the config's batch size (or at ``batch`` when given: the time is then scaled
  linearly to the config's batch size, which over-estimates a GPU, whose time per example falls with the
  batch); a network that teleports is also teleported twice, the second call timed, with its CoB choice (random,
  or best-of-n / optimized / balanced / pathcond: the choice's search is part of the teleport's time);
* device-seconds = sum over networks of runs x (iterations x s/iteration + examples evaluated x s/iteration /
  (3 x batch) + teleports x s/teleport): an evaluation forward pass is taken as a third of a training
  iteration per example. Not counted: data loading (resident on a GPU), checkpoints and logs, the distance
  penalty of ``distance-training`` and the chart updates of the G-space optimizers (both add per-step work:
  the estimate is a lower bound there), and the early stop of interpolation's network B (counted at its step
  cap ``max_steps``).

The total is in device-hours of *one* device running one run at a time; ``workers`` parallel processes on one
GPU share it. Environment variables of the CLI: ``NNTELEPORT_DRY_RUN_ITERS`` (timed iterations, default 3),
``NNTELEPORT_DRY_RUN_BATCH`` (time at this batch size and scale), ``NNTELEPORT_DRY_RUN_TIMING=0`` (counts only).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nnteleport.errors import InvalidValueError, MissingFileError

__all__ = ["DATASETS", "Network", "Plan", "dry_run", "format_dry_run", "plan"]

#: input shape, classes, train and validation examples of every dataset (without ``train_size``/``val_size``)
DATASETS: dict[str, tuple[tuple[int, ...], int, int, int]] = {
    "digits": ((1, 8, 8), 10, 1438, 359),
    "mnist1d": ((1, 40), 10, 4000, 1000),
    "random": ((1, 8, 8), 10, 512, 128),
    "mnist": ((1, 28, 28), 10, 60000, 10000),
    "fashion-mnist": ((1, 28, 28), 10, 60000, 10000),
    "cifar10": ((3, 32, 32), 10, 50000, 10000),
    "cifar100": ((3, 32, 32), 100, 50000, 10000),
}


@dataclass
class Network:
    """A group of ``runs`` identical runs of one network: per run ``iterations`` training steps at
    ``batch_size``, ``examples_evaluated`` forward passes and ``teleports`` teleports."""

    model: str
    model_kwargs: dict[str, Any]
    dataset: str
    batch_size: int
    dtype: str = "float32"
    runs: int = 0
    iterations: int = 0
    examples_evaluated: int = 0
    teleports: int = 0
    teleport_cob: str = "random"
    teleport_options: dict[str, Any] = field(default_factory=dict)
    teleport_batch: int | None = None
    seconds_per_iteration: float = math.nan
    seconds_per_teleport: float = math.nan

    def key(self) -> tuple:
        return (self.model, repr(sorted(self.model_kwargs.items())), self.dataset, self.batch_size, self.dtype)

    def teleport_key(self) -> tuple:
        """What a teleport's time depends on besides the network: the CoB choice, its options, its batch."""
        return (self.teleport_cob, repr(sorted(self.teleport_options.items())), self.teleport_batch)

    def device_seconds(self) -> float:
        it = self.seconds_per_iteration
        tp = self.seconds_per_teleport if self.teleports else 0.0
        per_run = self.iterations * it + self.examples_evaluated * it / (3 * self.batch_size) + self.teleports * tp
        return self.runs * per_run


@dataclass
class Plan:
    """What a configuration runs: ``runs``, ``epochs`` per run, the networks, the datasets and notes."""

    experiment: str
    runs: int
    epochs: int
    networks: list[Network] = field(default_factory=list)
    datasets: dict[str, str | None] = field(default_factory=dict)  # name -> None (present) or what is missing
    notes: list[str] = field(default_factory=list)
    device: str = ""
    timed: str = ""

    @property
    def device_hours(self) -> float:
        return sum(n.device_seconds() for n in self.networks) / 3600.0


# --------------------------------------------------------------------------------------------------
# counting


def _split_sizes(cfg: Mapping[str, Any], dataset: str) -> tuple[int, int]:
    _, _, n_train, n_val = DATASETS[dataset]
    if cfg.get("train_size"):
        n_train = min(n_train, int(cfg["train_size"]))
    if cfg.get("val_size"):
        n_val = min(n_val, int(cfg["val_size"]))
    return n_train, n_val


def _iters_per_epoch(n_train: int, batch_size: int, cap: Any) -> int:
    it = math.ceil(n_train / batch_size)
    return min(it, int(cap)) if cap else it


def _add(nets: dict[tuple, Network], net: Network, runs: int, iterations: int, evaluated: int, teleports: int) -> None:
    """Add ``runs`` runs of ``net`` (merged with an identical network and workload already there)."""
    net.iterations, net.examples_evaluated, net.teleports = iterations, evaluated, teleports
    key = (*net.key(), *(net.teleport_key() if teleports else ()), iterations, evaluated, teleports)
    if key in nets:
        nets[key].runs += runs
    else:
        net.runs = runs
        nets[key] = net


def _grid_plan(name: str, cfg: Mapping[str, Any]) -> tuple[int, int, list[Network]]:
    """training, pseudo-teleport, mid-training: the tasks of ``training.grid_tasks`` with the experiment's arms."""
    from nnteleport.lab.experiments.training import arm, grid_tasks

    if name == "mid-training":
        arms = [arm("none")] + [arm(f"s={s:g}", teleport_at=int(cfg["teleport_at"])) for s in cfg["cob_ranges"]]
    elif name == "pseudo-teleport":
        arms = [arm("none"), arm("pseudo", teleport_at=0, pseudo=True)]
        arms += [arm("teleport", teleport_at=0)] if cfg["include_teleport"] else []
    else:
        arms = [arm("none"), arm("teleport", teleport_at=0)]
    tasks = grid_tasks(dict(cfg), arms)
    nets: dict[tuple, Network] = {}
    for t in tasks:
        n_train, n_val = _split_sizes(cfg, t["dataset"])
        kwargs = {**t["model_kwargs"], "activation": t["activation"]}
        ipe = _iters_per_epoch(n_train, t["batch_size"], t["max_iters_per_epoch"])
        net = Network(t["model"], kwargs, t["dataset"], t["batch_size"])
        _add(nets, net, 1, t["epochs"] * ipe, (t["epochs"] + 1) * n_val, int(t["teleport_at"] is not None))
    return len(tasks), int(cfg["epochs"]), list(nets.values())


def _kw(cfg: Mapping[str, Any], model: str) -> dict[str, Any]:
    return dict(cfg.get("model_kwargs", {}).get(model, {}))


def _measure_plan(name: str, cfg: Mapping[str, Any]) -> tuple[int, int, list[Network]]:
    """The experiments that train nothing: networks measured, with their forward/backward passes and teleports."""
    nets: dict[tuple, Network] = {}
    runs = 0
    if name == "level-curves":
        n = int(cfg["num_examples"])
        for m in cfg["models"]:
            for dt in cfg["dtypes"]:
                net = Network(m, _kw(cfg, m), cfg["dataset"], n, dt)
                t = int(cfg["num_teleports"])
                _add(nets, net, 1, 0, 3 * n + t * n + int(cfg["train_mode_teleports"]) * n, t)
                runs += 1
    elif name == "micro-teleport":
        real = [d for d in cfg["datasets"] if d != "random"]
        for m in cfg["models"]:
            for d in cfg["datasets"]:
                d = real[0] if d == "random" and real else d  # random data takes the first dataset's shape
                for bs in cfg["batch_sizes"]:
                    s = int(cfg["num_samples"])
                    _add(nets, Network(m, _kw(cfg, m), d, int(bs), cfg["dtype"]), 1, s, 0, s)
                    runs += 1
    elif name == "gradient-scale":
        bs = int(cfg["batch_size"])
        for m in cfg["models"]:
            t = len(cfg["cob_ranges"]) * int(cfg["num_teleports"])
            _add(nets, Network(m, _kw(cfg, m), cfg["dataset"], bs, cfg["dtype"]), 1, t + 1, 0, t)
            runs += 1
    elif name == "weight-histograms":
        _add(nets, Network(cfg["model"], _kw(cfg, cfg["model"]), cfg["dataset"], 16), 1, 0, 0, 1)
        runs = 1
    return runs, 0, list(nets.values())


def _other_plan(name: str, cfg: Mapping[str, Any], assume_data: bool = False) -> tuple[int, int, list[Network]]:
    nets: dict[tuple, Network] = {}
    if name == "interpolation":
        from nnteleport.lab.experiments.interpolation import seed_list

        seeds = len(seed_list(dict(cfg)))
        n_train, n_val = _split_sizes(cfg, cfg["dataset"])
        bs_a, bs_b = (int(b) for b in cfg["batch_sizes"])
        kw = _kw(cfg, cfg["model"])
        ev = min(n_train, int(cfg["eval_examples"] or n_train)) + min(n_val, int(cfg["eval_examples"] or n_val))
        points = (1 + len(cfg["cob_ranges"])) * (int(cfg["num_alphas"]) + 2)
        it_a = int(cfg["epochs"]) * math.ceil(n_train / bs_a)
        ipe_b = math.ceil(n_train / bs_b)
        it_b = (math.ceil(int(cfg["max_steps"]) / ipe_b) if cfg["match_train_loss"] else int(cfg["epochs"])) * ipe_b
        _add(nets, Network(cfg["model"], kw, cfg["dataset"], bs_a), seeds, it_a, points * ev, len(cfg["cob_ranges"]))
        _add(nets, Network(cfg["model"], kw, cfg["dataset"], bs_b), seeds, it_b, ev * it_b // ipe_b,
             len(cfg["cob_ranges"]))  # fmt: skip
        return 2 * seeds, int(cfg["epochs"]), list(nets.values())
    if name == "feature-maps":
        n_train, n_val = _split_sizes(cfg, cfg["dataset"])
        ipe = _iters_per_epoch(n_train, int(cfg["batch_size"]), cfg["max_iters_per_epoch"])
        for act in cfg["activations"]:
            net = Network(cfg["model"], {**_kw(cfg, cfg["model"]), "activation": act}, cfg["dataset"],
                          int(cfg["batch_size"]))  # fmt: skip
            _add(nets, net, 1, int(cfg["epochs"]) * ipe, (int(cfg["epochs"]) + 2) * n_val, 1)
        return len(cfg["activations"]), int(cfg["epochs"]), list(nets.values())
    if name == "lr-confound":
        from nnteleport.lab.experiments.lr_confound import tasks

        ts = tasks(dict(cfg))
        for t in ts:
            n_train, n_val = _split_sizes(cfg, t["dataset"])
            ipe = _iters_per_epoch(n_train, int(t["batch_size"]), t["max_iters_per_epoch"])
            kw = {"hidden": list(t["hidden"]), "activation": t["activation"]}
            net = Network("mlp", kw, t["dataset"], int(t["batch_size"]), t["dtype"])
            _add(nets, net, 1, int(t["epochs"]) * ipe, (int(t["epochs"]) + 1) * n_val, int(t["kind"] == "teleport"))
        return len(ts), int(cfg["epochs"]), list(nets.values())
    if name == "distance-training":
        n_train, n_val = _split_sizes(cfg, cfg["dataset"])
        ipe = _iters_per_epoch(n_train, int(cfg["batch_size"]), cfg["max_iters_per_epoch"])
        per_model = len(cfg["seeds"]) * len(cfg["variants"])
        for m in cfg["models"]:
            kw = {"width": float(cfg["width"])} if m in ("vgg", "resnet18", "mobilenetv2") else {}
            net = Network(m, kw, cfg["dataset"], int(cfg["batch_size"]))
            _add(nets, net, per_model, int(cfg["epochs"]) * ipe, (int(cfg["epochs"]) + 8) * n_val, 0)
        return per_model * len(cfg["models"]), int(cfg["epochs"]), list(nets.values())
    if name in ("gspace-lr-grid", "fixed-value-grid"):
        grid = cfg["methods"] if name == "gspace-lr-grid" else cfg["values"]
        runs = len(grid) * len(cfg["lrs"]) * int(cfg["seeds"])
        n_train, n_val = _split_sizes(cfg, cfg["dataset"])
        ipe = math.ceil(n_train / int(cfg["batch_size"]))
        kw = {"hidden": list(cfg["hidden"]), "bias": bool(cfg["bias"])}
        net = Network("thesis-mlp", kw, cfg["dataset"], int(cfg["batch_size"]))
        _add(nets, net, runs, int(cfg["epochs"]) * ipe, (int(cfg["epochs"]) + 1) * n_val, 0)
        return runs, int(cfg["epochs"]), list(nets.values())
    if name == "teleport-schedule":
        return _schedule_plan(cfg, assume_data)
    if name == "toy-surfaces":
        return 0, 0, []
    raise InvalidValueError(f"--dry-run: experiment {name!r} has no work plan (add one to {__name__})")


def _schedule_plan(cfg: Mapping[str, Any], assume_data: bool = False) -> tuple[int, int, list[Network]]:
    """teleport-schedule: the tasks of ``teleport_schedule.tasks`` (the ResNet-18 when CIFAR-10 is there, or with
    ``assume_data``);
    a run evaluates at the start and the end (``eval_every = epochs``); ``once`` teleports once, ``every`` after
    every ``every_steps``-th step but the last; each CoB choice is timed as itself."""
    from nnteleport.lab.experiments.teleport_schedule import model_spec, tasks

    ts = tasks(dict(cfg), assume_cifar=assume_data)
    nets: dict[tuple, Network] = {}
    for t in ts:
        n_train, n_val = DATASETS[t["dataset"]][2:]
        if t["dataset"].startswith("cifar"):
            n_train = min(n_train, int(t["cifar_train_size"]))
        steps = int(t["epochs"]) * _iters_per_epoch(n_train, int(t["batch_size"]), t["max_iters_per_epoch"])
        teleports = {"once": 1, "every": (steps - 1) // int(t["every_steps"])}.get(t["schedule"], 0)
        model, kw = model_spec(t["model"], t["model_kw"])
        net = Network(model, kw, t["dataset"], int(t["batch_size"]), t["dtype"], teleport_cob=t["cob"] or "random",
                      teleport_options={"n": t["best_of_n"], "steps": t["optimize_steps"], "lr": t["optimize_lr"]}
                      if t["cob"] in ("best-of-n", "optimized") else {},
                      teleport_batch=int(t["batch_size"]) * int(t["teleport_batches"]))  # fmt: skip
        _add(nets, net, 1, steps, 2 * n_val, teleports if t["cob"] else 0)
    return len(ts), int(cfg["epochs"]), list(nets.values())


_NOTES = {
    "distance-training": "the distance penalty's cost per step is not in the estimate (a lower bound)",
    "gspace-lr-grid": "the G-space optimizers' chart updates are not in the estimate (a lower bound)",
    "interpolation": "network B is counted at its step cap (max_steps); it stops earlier when it reaches A's loss",
    "toy-surfaces": "NumPy surfaces only: nothing runs on the device (seconds)",
    "teleport-schedule": "not in the estimate: the loss and gradient norm measured around each teleport and the "
    "optimizer-state transform (both small next to a CoB search)",
}


def plan(name: str, cfg: Mapping[str, Any], *, assume_data: bool = False) -> Plan:
    """The work of experiment ``name`` with the merged configuration ``cfg`` (counts only; see the module).

    Work that an experiment skips when an optional dataset is absent (teleport-schedule's ResNet-18 on CIFAR-10)
    is counted only when the files are there, or with ``assume_data`` (the estimate of a whole protocol)."""
    from nnteleport.lab.experiments.config import dataset_names

    if name in ("training", "pseudo-teleport", "mid-training"):
        runs, epochs, nets = _grid_plan(name, cfg)
    elif name in ("level-curves", "micro-teleport", "gradient-scale", "weight-histograms"):
        runs, epochs, nets = _measure_plan(name, cfg)
    else:
        runs, epochs, nets = _other_plan(name, cfg, assume_data)
    p = Plan(name, runs, epochs, nets, notes=[_NOTES[name]] if name in _NOTES else [])
    for ds in dataset_names(cfg):
        p.datasets[ds] = _missing(ds, cfg.get("data_root"))
    if name == "teleport-schedule" and cfg["resnet_if_cifar"]:  # optional: runs only when its files are there
        from nnteleport.lab.experiments.teleport_schedule import model_groups

        p.datasets["cifar10"] = missing = _missing("cifar10", cfg.get("data_root"))
        if missing is None or not assume_data:
            p.notes += model_groups(dict(cfg))[1]
        else:
            p.notes.append("resnet18 on cifar10 counted as if its files were there (a run without them skips it)")
    return p


def _missing(dataset: str, root: Any) -> str | None:
    from nnteleport.lab.data import check_available

    try:
        check_available(dataset, root)
    except MissingFileError as e:
        return str(e)
    return None


# --------------------------------------------------------------------------------------------------
# timing


def _build(net: Network, device: torch.device) -> tuple[torch.nn.Module, tuple[int, ...], int]:
    shape, classes, _, _ = DATASETS[net.dataset]
    dtype = getattr(torch, net.dtype)
    if net.model == "thesis-mlp":
        from nnteleport.lab.experiments.gspace_lr_grid import thesis_mlp

        model = thesis_mlp(math.prod(shape), list(net.model_kwargs["hidden"]), classes, net.model_kwargs["bias"])
        shape = (math.prod(shape),)
    else:
        from nnteleport.lab.models import build_model

        model = build_model(net.model, in_shape=shape, num_classes=classes, **net.model_kwargs)
    return model.to(device=device, dtype=dtype).train(), shape, classes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_network(
    net: Network,
    device: torch.device,
    *,
    iters: int = 3,
    batch: int | None = None,
    iteration: bool = True,
    teleport: bool = True,
) -> None:
    """Fill ``net.seconds_per_iteration`` (with ``iteration``) and, if it teleports, ``seconds_per_teleport``
    (with ``teleport``) by timing it on ``device`` (see the module docstring); ``batch`` times at that batch
    size and scales linearly. A teleport is the CoB choice ``net.teleport_cob`` (:func:`~nnteleport.lab.training.
    teleport.choose_cob`) and the move, on ``net.teleport_batch`` examples (default ``min(batch size, 64)``; the
    objectives of best-of-n and optimized are timed at ``<= batch`` examples and scaled linearly)."""
    torch.manual_seed(0)
    model, shape, classes = _build(net, device)
    bs = net.batch_size if batch is None else min(batch, net.batch_size)
    dtype = getattr(torch, net.dtype)
    x = torch.randn((bs, *shape), dtype=dtype, device=device)
    y = torch.randint(0, classes, (bs,), device=device)
    if iteration and (net.iterations or net.examples_evaluated):
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)

        def step() -> None:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            step()
        _sync(device)
        net.seconds_per_iteration = (time.perf_counter() - t0) / iters * (net.batch_size / bs)
    elif iteration:
        net.seconds_per_iteration = 0.0
    if teleport and net.teleports:
        net.seconds_per_teleport = _time_teleport(net, model, shape, classes, device, batch)


def _time_teleport(
    net: Network, model: torch.nn.Module, shape: tuple[int, ...], classes: int, device: torch.device, batch: int | None
) -> float:
    """Seconds of one teleport of ``net`` (the second of two calls; see :func:`time_network`)."""
    import nnteleport
    from nnteleport.lab.training.teleport import choose_cob

    full = net.teleport_batch or min(net.batch_size, 64)
    n = full if batch is None else min(full, batch)
    dtype = getattr(torch, net.dtype)
    g = torch.Generator().manual_seed(0)
    xt = torch.randn((n, *shape), generator=g, dtype=dtype).to(device)
    yt = torch.randint(0, classes, (n,), generator=g).to(device)
    seconds = math.nan
    for _ in range(2):
        _sync(device)
        t0 = time.perf_counter()
        if net.teleport_cob == "random":
            nnteleport.teleport(model, xt, cob_range=0.5)
        else:
            cob, _ = choose_cob(net.teleport_cob, model, xt, yt, torch.nn.functional.cross_entropy, cob_range=0.5,
                                sampling="inter", generator=g, options=net.teleport_options)  # fmt: skip
            nnteleport.teleport(model, xt, cob=cob, inplace=True)
        _sync(device)
        seconds = time.perf_counter() - t0
    scale = full / n if net.teleport_cob in ("best-of-n", "optimized") else 1.0  # objectives: forward/backward on n
    return seconds * scale


def dry_run(
    name: str,
    cfg: Mapping[str, Any],
    *,
    timing: bool = True,
    iters: int = 3,
    batch: int | None = None,
    assume_data: bool = False,
) -> Plan:
    """:func:`plan` (``assume_data`` as there) with the dataset files checked and, with ``timing``, every network
    timed on the config's device (``cfg["device"]``; see the module docstring for the estimate)."""
    from nnteleport.lab.devices import resolve_device

    if iters < 1:
        raise InvalidValueError(f"--dry-run: timed iterations must be >= 1, got {iters}")
    if batch is not None and batch < 1:
        raise InvalidValueError(f"--dry-run: timing batch must be >= 1, got {batch}")
    p = plan(name, cfg, assume_data=assume_data)
    device = resolve_device(cfg.get("device", "auto"), what=f"experiment {name!r}: device")
    p.device = str(device)
    if timing:  # the arms of a comparison share their network (and a CoB choice its teleports): timed once
        per_iteration: dict[tuple, float] = {}
        per_teleport: dict[tuple, float] = {}
        for net in p.networks:
            works = bool(net.iterations or net.examples_evaluated)
            need_it = works and net.key() not in per_iteration
            tkey = (net.key(), net.teleport_key())
            need_tp = bool(net.teleports) and tkey not in per_teleport
            if need_it or need_tp:
                time_network(net, device, iters=iters, batch=batch, iteration=need_it, teleport=need_tp)
            if need_it:
                per_iteration[net.key()] = net.seconds_per_iteration
            net.seconds_per_iteration = per_iteration[net.key()] if works else 0.0
            if need_tp:
                per_teleport[tkey] = net.seconds_per_teleport
            net.seconds_per_teleport = per_teleport[tkey] if net.teleports else math.nan
        p.timed = f"{iters} timed iteration(s) per network" + (f" at batch <= {batch}, scaled" if batch else "")
    return p


def options_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``timing``, ``iters``, ``batch`` of :func:`dry_run` from ``NNTELEPORT_DRY_RUN_*`` (see the module)."""
    env = os.environ if env is None else env

    def integer(key: str) -> int | None:
        raw = env.get(key, "").strip()
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise InvalidValueError(f"{key}={raw!r} must be an integer") from None

    return {
        "timing": env.get("NNTELEPORT_DRY_RUN_TIMING", "1").strip() not in ("0", "false", "no"),
        "iters": integer("NNTELEPORT_DRY_RUN_ITERS") or 3,
        "batch": integer("NNTELEPORT_DRY_RUN_BATCH"),
    }


def _fmt_seconds(s: float) -> str:
    if math.isnan(s):
        return "-"
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def format_dry_run(p: Plan) -> str:
    """The text ``--dry-run`` prints for a :class:`Plan`."""
    lines = [f"{p.experiment}: dry run, nothing is trained or written"]
    lines.append(f"  runs: {p.runs}" + (f", {p.epochs} epochs each" if p.epochs else " (measurements, no training)"))
    for ds, missing in p.datasets.items():
        lines.append(f"  dataset {ds}: " + ("present" if missing is None else f"MISSING ({missing})"))
    if p.networks:
        cobs = any(n.teleports and n.teleport_cob != "random" for n in p.networks)  # a column for the CoB choice
        lines.append("  model         dataset        batch  dtype     runs  iters/run  evals/run  teleports  "
                     + ("cob         " if cobs else "") + "s/iter     s/teleport  device-h")  # fmt: skip
        for n in p.networks:
            hours = n.device_seconds() / 3600.0
            cob = f"{n.teleport_cob if n.teleports else '-':<10}  " if cobs else ""
            lines.append(
                f"  {n.model:<13} {n.dataset:<14} {n.batch_size:>5}  {n.dtype:<8} {n.runs:>5}  {n.iterations:>9}  "
                f"{n.examples_evaluated:>9}  {n.teleports:>9}  {cob}{_fmt_seconds(n.seconds_per_iteration):<9}  "
                f"{_fmt_seconds(n.seconds_per_teleport) if n.teleports else '-':<10}  "
                + ("-" if math.isnan(hours) else f"{hours:.3g}")
            )
    if p.timed:
        lines.append(f"  estimate: {p.device_hours:.4g} device-hours on {p.device} ({p.timed}; one run at a time)")
    else:
        lines.append(f"  estimate: not timed (NNTELEPORT_DRY_RUN_TIMING=0); device {p.device}")
    lines += [f"  note: {n}" for n in p.notes]
    return "\n".join(lines)
