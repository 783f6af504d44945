"""Which CoB, how often: teleport schedules against a tuned learning rate.

Arms per (model, optimizer, seed), all from the same initialisation and batch order:

* ``none`` -- no teleport at the base learning rate; ``lr-x<m>`` -- no teleport at ``lr * m`` (``lr_multipliers``):
  the learning-rate control. The best-tuned baseline is the grid point (``none`` included) with the lowest mean
  final training loss, a grid point with a diverged seed ranked last (as in ``lr-confound``);
* ``<cob>-once`` -- one teleport at the start of epoch ``teleport_epoch`` (0: at initialisation) and
  ``<cob>-every`` -- a teleport after every ``every_steps``-th step, for each CoB choice of ``cobs``:
  ``random`` (the paper's), ``best-of-n`` (the best of ``best_of_n`` random CoBs by squared gradient norm),
  ``optimized`` (gradient ascent on the squared gradient norm inside the range, Zhao et al. 2022), ``balanced``
  (ENorm: minimum weight norm over the orbit) and ``pathcond`` (the PathCond-style conditioning,
  :mod:`nnteleport.engine.pathcond`). The CoB objectives see the first ``teleport_batches`` mini-batches of
  the training split.

The optimizer state across a teleport follows ``optimizer_state`` in every arm: ``"transform"`` (momentum buffers
and Adam moments transformed like the gradients; nothing to do in the no-teleport arms) or ``"reset"`` (the
no-teleport baseline of the every-``K`` arms, ``none-reset-every``, resets at the same steps; a reset at
initialisation is a no-op).

Measured, paired by seed (:mod:`nnteleport.lab.experiments.paired`, a diverged run loses its seed's
comparison and is counted): the final training loss (the fixed step budget) against the same-lr baseline and
against the best-tuned one; the loss at a fixed wall-clock budget (the median training time of the same-lr
baseline; a run's loss there is the mean of its last ``smooth`` mini-batch losses before that time, teleport time
included, or its first mini-batch loss when a teleport at the start outlasts the budget); the share of the training
time spent teleporting; the squared gradient norm right before and after the first teleport. Curves: mean and std
over seeds of the mini-batch loss against steps and against wall-clock time. Wall-clock numbers come from a shared
machine: they are noisy, the step counts are not.

Models: an MLP and a small CNN (VGG-style, ``cnn`` in ``model_kwargs``) on ``dataset``; with
``resnet_if_cifar`` and CIFAR-10 under ``data_root``, also a narrow ResNet-18 on a subset of CIFAR-10 (skipped and
recorded as such when the files are absent).

Device: ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``, :mod:`nnteleport.lab.devices`) is where every run
trains: the model (built from the CPU generator, then moved), its data, the teleport batch and the CoBs. It is not
part of a run's identity (finished runs are reused on another device). On CUDA the step and teleport timers
synchronise the device, so the wall-clock numbers are compute times, not kernel-launch times.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.lr_confound import arm_summary, run_stats
from nnteleport.lab.plotting import COLORS, new_figure, save_figure, summary, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "arms",
    "model_groups",
    "model_spec",
    "report_section",
    "run",
    "tasks",
    "wall_clock",
]

DESCRIPTION = (
    "Teleport schedules: no teleport (and a learning-rate grid) vs random, best-of-n, optimized (gradient norm), "
    "balanced and PathCond-style CoBs, once at initialisation or every K steps; MLP and small CNN (ResNet-18 on "
    "CIFAR-10 when present), SGD / momentum / Adam, several seeds; loss at a fixed step and wall-clock budget, "
    "paired by seed, and the time spent teleporting."
)

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": None,
    "models": ["mlp", "cnn"],
    "model_kwargs": {
        "mlp": {"hidden": [64, 64], "activation": "relu"},
        "cnn": {"channels": [16, 32], "batchnorm": False, "activation": "relu"},
        "resnet18": {"width": 0.125},
    },
    "resnet_if_cifar": True,
    "cifar_train_size": 2048,
    "optimizers": ["sgd", "momentum", "adam"],
    "lrs": {"sgd": 0.05, "momentum": 0.01, "adam": 0.001},
    "lr_multipliers": [0.5, 2.0, 4.0, 8.0, 16.0],
    "cobs": ["random", "best-of-n", "optimized", "balanced", "pathcond"],
    "schedules": ["once", "every"],
    "teleport_epoch": 0,
    "every_steps": 20,
    "teleport_batches": 1,
    "cob_range": 0.9,
    "sampling": "inter",
    "best_of_n": 10,
    "optimize_steps": 20,
    "optimize_lr": 0.15,
    "optimizer_state": "transform",
    "seeds": 3,
    "epochs": 3,
    "batch_size": 64,
    "init": "kaiming",
    "dtype": "float32",
    "max_iters_per_epoch": None,
    "smooth": 5,
    "workers": 2,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices); not part of a run's identity
}

CHOICES: dict[str, list] = {
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist"],
    "models": ["mlp", "cnn"],
    "optimizers": ["sgd", "momentum", "adam"],
    "cobs": ["random", "best-of-n", "optimized", "balanced", "pathcond"],
    "schedules": ["once", "every"],
    "sampling": ["intra", "inter"],
    "optimizer_state": ["transform", "reset"],
    "init": ["kaiming", "xavier", "normal", "default"],
    "dtype": ["float32", "float64"],
}


def validate(cfg: dict[str, Any]) -> None:
    """The keys this experiment adds (called by :func:`~nnteleport.lab.experiments.config.validate_config`)."""
    from nnteleport.errors import InvalidValueError

    for key in ("every_steps", "teleport_batches", "best_of_n", "optimize_steps", "smooth", "cifar_train_size"):
        v = cfg[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InvalidValueError(f"teleport-schedule: {key}={v!r} must be a positive integer")
    missing = [o for o in cfg["optimizers"] if o not in cfg["lrs"]]
    if missing:
        raise InvalidValueError(f"teleport-schedule: lrs has no learning rate for {missing} (lrs={cfg['lrs']!r})")
    if not 0 <= int(cfg["teleport_epoch"]) < int(cfg["epochs"]):
        last = int(cfg["epochs"]) - 1
        raise InvalidValueError(f"teleport-schedule: teleport_epoch={cfg['teleport_epoch']!r} must be in [0, {last}]")
    if not (isinstance(cfg["optimize_lr"], (int, float)) and cfg["optimize_lr"] > 0):
        raise InvalidValueError(f"teleport-schedule: optimize_lr={cfg['optimize_lr']!r} must be > 0")


# --------------------------------------------------------------------------------------------------
# arms and runs


def arms(cfg: dict[str, Any], optimizer: str) -> list[dict[str, Any]]:
    """The arms of one optimizer: ``arm``, ``cob`` (None: no teleport), ``schedule``, ``lr``, ``mult``."""
    lr = float(cfg["lrs"][optimizer])
    out = [{"arm": "none", "cob": None, "schedule": None, "lr": lr, "mult": 1.0}]
    out += [{"arm": f"lr-x{m:g}", "cob": None, "schedule": None, "lr": lr * m, "mult": float(m)}
            for m in cfg["lr_multipliers"] if m != 1.0]  # fmt: skip
    if cfg["optimizer_state"] == "reset" and "every" in cfg["schedules"]:
        out.append({"arm": "none-reset-every", "cob": None, "schedule": "reset-every", "lr": lr, "mult": None})
    for cob in cfg["cobs"]:
        for sched in cfg["schedules"]:
            out.append({"arm": f"{cob}-{sched}", "cob": cob, "schedule": sched, "lr": lr, "mult": None})
    return out


def model_groups(cfg: dict[str, Any], *, assume_cifar: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
    """``(model, dataset)`` pairs to run, and notes on what was skipped; ``assume_cifar`` counts the ResNet-18
    group as if the CIFAR-10 files were there (for estimates of the whole protocol: ``--dry-run``)."""
    groups = [(m, cfg["dataset"]) for m in cfg["models"]]
    notes = []
    if cfg["resnet_if_cifar"] and assume_cifar:
        groups.append(("resnet18", "cifar10"))
    elif cfg["resnet_if_cifar"]:
        from nnteleport.errors import MissingFileError
        from nnteleport.lab.data import check_available

        try:
            check_available("cifar10", cfg["data_root"])
            groups.append(("resnet18", "cifar10"))
        except MissingFileError:
            notes.append(
                f"resnet18 on cifar10 skipped: the CIFAR-10 files are not under data_root={cfg['data_root']!r}"
            )
    return groups, notes


def tasks(cfg: dict[str, Any], *, assume_cifar: bool = False) -> list[dict[str, Any]]:
    """One run per (model, optimizer, arm, seed) of :func:`model_groups`."""
    keys = ("data_root", "epochs", "batch_size", "cob_range", "sampling", "dtype", "max_iters_per_epoch", "init",
            "teleport_epoch", "every_steps", "teleport_batches", "best_of_n", "optimize_steps", "optimize_lr",
            "optimizer_state", "cifar_train_size", "device")  # fmt: skip
    out = []
    for model, dataset in model_groups(cfg, assume_cifar=assume_cifar)[0]:
        mkw = dict(cfg["model_kwargs"].get(model, {}))
        for opt in cfg["optimizers"]:
            for a in arms(cfg, opt):
                for seed in range(int(cfg["seeds"])):
                    t = {**{k: cfg[k] for k in keys}, **a, "model": model, "dataset": dataset, "model_kw": mkw,
                         "activation": mkw.get("activation", "relu"), "optimizer": opt, "seed": seed}  # fmt: skip
                    t["id"] = f"{model}_{opt}_{a['arm']}_seed{seed}"
                    out.append(t)
    return out


@functools.lru_cache(maxsize=4)
def _data(name: str, root: str | None, train_size: int | None):
    from nnteleport.lab.data import load_dataset

    return load_dataset(name, root, seed=0, train_size=train_size, augment=False)


def model_spec(model: str, model_kw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The :func:`~nnteleport.lab.models.build_model` name and options of ``model`` with its ``model_kwargs``:
    ``cnn`` is VGG-style, a 3x3 conv (+ BN) + activation + 2x2 max-pool per entry of ``channels``."""
    kw = dict(model_kw)
    if model == "cnn":
        config = [item for c in kw.pop("channels") for item in (int(c), "M")]
        return "vgg", {"config": config, "width": 1.0, **kw}
    return model, kw


def _build(task: dict[str, Any], data: Any) -> Any:
    from nnteleport.lab.models import build_model

    name, kw = model_spec(task["model"], task["model_kw"])
    return build_model(name, in_shape=data.input_shape, num_classes=data.num_classes, **kw)


def train_one(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one arm for one seed; ``{"history": ...}`` (with ``timing`` and the teleport records)."""
    import torch

    from nnteleport.lab.training import StepTimer, train

    cifar = task["dataset"].startswith("cifar")
    data = _data(task["dataset"], task["data_root"], task["cifar_train_size"] if cifar else None)
    device = resolve_device(task.get("device", "auto"))
    torch.manual_seed(task["seed"])  # built on the CPU from the CPU generator, then moved: the same weights anywhere
    model = _build(task, data).to(device, getattr(torch, task["dtype"]))
    cob, sched, k = task["cob"], task["schedule"], int(task["every_steps"])
    tele: dict[str, Any] = {}
    if cob is not None:
        tele = {
            "teleport_cob": cob,
            "teleport_at": task["teleport_epoch"] if sched == "once" else None,
            "teleport_every": k if sched == "every" else None,
            "teleport_batch_size": task["batch_size"] * task["teleport_batches"],
            "teleport_options": {"n": task["best_of_n"], "steps": task["optimize_steps"], "lr": task["optimize_lr"]},
        }
    history = train(
        model, data, epochs=task["epochs"], batch_size=task["batch_size"], optimizer=task["optimizer"],
        lr=task["lr"], momentum=0.9, lr_decay_epochs=(), init=None if task["init"] == "default" else task["init"],
        cob_range=task["cob_range"], sampling=task["sampling"], optimizer_state_on_teleport=task["optimizer_state"],
        reset_optimizer_every=k if sched == "reset-every" else None, seed=task["seed"], progress=False,
        eval_every=task["epochs"], max_iters_per_epoch=task["max_iters_per_epoch"], callbacks=[StepTimer()],
        device=device, **tele,
    )  # fmt: skip
    return {"history": history.to_dict()}


# --------------------------------------------------------------------------------------------------
# statistics


def wall_clock(history: dict[str, Any]) -> np.ndarray:
    """Training wall-clock after each step (seconds): the steps' own time plus every teleport before it
    (teleport ``j`` with ``step = s`` counts from step index ``s`` on); evaluation is not counted."""
    steps = np.array([math.nan if v is None else v for v in history["timing"].get("step_seconds", [])], float)
    wall = np.cumsum(steps)
    for rec, sec in zip(history.get("teleports", []), history["timing"].get("teleport_seconds", [])):
        wall[int(rec["step"]) :] += float(sec)
    return wall


def _iter_loss(h: dict[str, Any]) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in h["iter_loss"]], float)


def loss_at_time(h: dict[str, Any], budget: float, smooth: int) -> float:
    """Mean of the last ``smooth`` mini-batch losses at or before ``budget`` seconds of training; a run that has
    not finished a step by then (a long teleport at the start) is still at its first mini-batch's loss, the loss
    of its initial function. NaN if diverged."""
    loss, wall = _iter_loss(h), wall_clock(h)
    if not len(loss) or not np.isfinite(loss).all():
        return math.nan
    n = max(1, int(np.searchsorted(wall, budget, side="right")))
    return float(np.mean(loss[max(0, n - smooth) : n]))


def _time_share(h: dict[str, Any]) -> float:
    tel = float(sum(h["timing"].get("teleport_seconds", [])))
    steps = float(sum(v for v in h["timing"].get("step_seconds", []) if v is not None))
    return tel / (tel + steps) if tel + steps > 0 else math.nan


def _first_teleport(h: dict[str, Any]) -> dict[str, float]:
    if not h.get("teleports"):
        return {}
    r = h["teleports"][0]
    return {k: r.get(k) for k in ("loss_before", "loss_after", "grad_norm_sq_before", "grad_norm_sq_after")}


def _max_loss_change(hs: list[dict[str, Any]]) -> float:
    """Largest ``|loss_after - loss_before|`` over the teleports of ``hs`` (0 up to round-off: the function is
    kept); NaN without teleports."""
    changes = [abs(r["loss_after"] - r["loss_before"]) for h in hs for r in h.get("teleports", [])
               if r.get("loss_before") is not None and r.get("loss_after") is not None]  # fmt: skip
    return max(changes, default=math.nan)


def _wall_gaps(base: list[dict], arm: list[dict], budget: float, smooth: int) -> dict[str, Any]:
    """Baseline minus arm of the loss at the wall-clock ``budget``, paired by seed (divergence: -inf / +inf)."""
    from nnteleport.lab.experiments.paired import diverged, paired_summary

    vals = []
    for hb, ha in zip(base, arm):
        db, da = diverged(hb), diverged(ha)
        if db or da:
            vals.append(0.0 if (db and da) else (-math.inf if da else math.inf))
            continue
        lb, la = loss_at_time(hb, budget, smooth), loss_at_time(ha, budget, smooth)
        vals.append(
            lb - la if math.isfinite(lb) and math.isfinite(la) else (math.inf if math.isfinite(la) else -math.inf)
        )
    return paired_summary(vals)


def group_results(cfg: dict[str, Any], key: tuple, by_arm: dict[str, list[dict]], tasks_of: dict) -> dict[str, Any]:
    """Everything measured for one (model, dataset, optimizer) group; ``by_arm[arm]`` the histories by seed."""
    from nnteleport.lab.experiments.paired import paired_gaps

    model, dataset, opt = key
    grid = [a for a in arms(cfg, opt) if a["cob"] is None and a["schedule"] is None]
    summ = {a["arm"]: arm_summary([run_stats(h) for h in by_arm[a["arm"]]]) for a in arms(cfg, opt)}
    rank = {a["arm"]: math.inf if summ[a["arm"]]["diverged"] or not summ[a["arm"]]["final"]["n"]
            else summ[a["arm"]]["final"]["mean"] for a in grid}  # fmt: skip
    best = min(grid, key=lambda a: (rank[a["arm"]], a["lr"]))
    lrs = sorted(a["lr"] for a in grid)
    base_wall = [float(wall_clock(h)[-1]) for h in by_arm["none"] if len(h["timing"].get("step_seconds", []))]
    budget = float(np.median(base_wall)) if base_wall else math.nan
    tele_arms = [a for a in arms(cfg, opt) if a["cob"] is not None]
    lr0 = float(cfg["lrs"][opt])

    def records(arm: str, label: str) -> list[dict[str, Any]]:
        return [{"task": {**tasks_of[(key, arm, s)], "arm": label, "lr": lr0}, "history": h}
                for s, h in enumerate(by_arm[arm])]  # fmt: skip

    comparisons = {}
    for a in tele_arms:
        base = "none-reset-every" if a["schedule"] == "every" and "none-reset-every" in by_arm else "none"
        recs = records(a["arm"], a["arm"]) + records(base, "baseline") + records(best["arm"], "tuned")
        kw = dict(arm_name=a["arm"], early_epochs=1, early_iters=int(cfg["smooth"]) * 4)
        same = paired_gaps(recs, baseline="baseline", **kw)[0]
        tuned = paired_gaps(recs, baseline="tuned", **kw)[0]
        hs = by_arm[a["arm"]]
        firsts = [_first_teleport(h) for h in hs]
        comparisons[a["arm"]] = {
            "cob": a["cob"],
            "schedule": a["schedule"],
            "baseline": base,
            "vs_same_lr": {k: same[k] for k in ("gap_final", "gap_early", "diverged", "speedup")},
            "vs_tuned": {k: tuned[k] for k in ("gap_final", "gap_early", "diverged")},
            "wall_vs_same_lr": _wall_gaps(by_arm[base], hs, budget, int(cfg["smooth"])),
            "wall_vs_tuned": _wall_gaps(by_arm[best["arm"]], hs, budget, int(cfg["smooth"])),
            "time_share": summary(_time_share(h) for h in hs),
            "teleports_per_run": summary(len(h.get("teleports", [])) for h in hs),
            "max_abs_loss_change_at_teleport": _max_loss_change(hs),
            "first_grad_norm_sq_before": summary(f.get("grad_norm_sq_before", math.nan) for f in firsts),
            "first_grad_norm_sq_after": summary(f.get("grad_norm_sq_after", math.nan) for f in firsts),
        }
    return {
        "model": model,
        "dataset": dataset,
        "optimizer": opt,
        "lr": lr0,
        "arms": summ,
        "grid": [{"arm": a["arm"], "lr": a["lr"], **summ[a["arm"]]} for a in grid],
        "best_tuned": {"arm": best["arm"], "lr": best["lr"], "at_grid_edge": best["lr"] in (lrs[0], lrs[-1])},
        "wall_budget_seconds": budget,
        "comparisons": comparisons,
    }


def _curve_rows(key: tuple, arm: str, hs: list[dict], smooth: int, points: int = 60) -> tuple[list, list]:
    """Mean / std over seeds of the (moving-average) mini-batch loss against steps and against wall-clock."""
    losses = [_iter_loss(h) for h in hs]
    n = min(len(v) for v in losses)
    kernel = np.ones(smooth) / smooth
    sm = np.array([np.convolve(v[:n], kernel, mode="full")[:n] / np.minimum(np.arange(1, n + 1), smooth) * smooth
                   for v in losses])  # fmt: skip
    head = dict(zip(("model", "dataset", "optimizer"), key), arm=arm)
    steps = []
    for i in range(n):
        col = sm[:, i][np.isfinite(sm[:, i])]
        steps.append({**head, "step": i + 1, "mean": float(col.mean()) if col.size else math.nan,
                      "std": float(col.std(ddof=1)) if col.size > 1 else 0.0, "n": int(col.size)})  # fmt: skip
    walls = [wall_clock(h)[:n] for h in hs]
    t_end = float(np.median([w[-1] for w in walls])) if walls and n else 0.0
    grid = np.linspace(0.0, t_end, points + 1)[1:]
    wall_rows = []
    for t in grid:
        vals = [sm[j, int(np.searchsorted(w, t, side="right")) - 1] for j, w in enumerate(walls)
                if np.searchsorted(w, t, side="right") > 0]  # fmt: skip
        col = np.array([v for v in vals if np.isfinite(v)])
        wall_rows.append({**head, "seconds": float(t), "mean": float(col.mean()) if col.size else math.nan,
                          "std": float(col.std(ddof=1)) if col.size > 1 else 0.0, "n": int(col.size)})  # fmt: skip
    return steps, wall_rows


# --------------------------------------------------------------------------------------------------
# the experiment


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (module docstring); writes ``results.json``, ``comparisons.csv``, ``curves_steps.csv``,
    ``curves_wall.csv`` and one plot per model."""
    from nnteleport.lab.experiments.sweep import run_sweep

    cfg = merge_config(DEFAULTS, config or {}, source="teleport-schedule")
    validate_config("teleport-schedule", cfg)
    resolve_device(cfg["device"])  # the runs resolve it in their processes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ts = tasks(cfg)
    res = run_sweep(train_one, ts, out, workers=max(1, int(cfg["workers"])), progress=progress,
                    desc="teleport-schedule", ignore_keys=("device",))  # fmt: skip
    by: dict[tuple, dict[str, list[dict]]] = {}
    tasks_of: dict[tuple, dict] = {}
    for t in ts:
        key = (t["model"], t["dataset"], t["optimizer"])
        by.setdefault(key, {}).setdefault(t["arm"], []).append(res[t["id"]]["history"])
        tasks_of[(key, t["arm"], t["seed"])] = t
    groups = [group_results(cfg, key, arms_, tasks_of) for key, arms_ in by.items()]
    step_rows, wall_rows, cmp_rows = [], [], []
    for key, arms_ in by.items():
        for arm, hs in arms_.items():
            s_rows, w_rows = _curve_rows(key, arm, hs, int(cfg["smooth"]))
            step_rows += s_rows
            wall_rows += w_rows
    for g in groups:
        for arm, c in g["comparisons"].items():
            cmp_rows.append({"model": g["model"], "dataset": g["dataset"], "optimizer": g["optimizer"], "arm": arm,
                             "gap_final_vs_same_lr_median": c["vs_same_lr"]["gap_final"]["median"],
                             "gap_final_vs_tuned_median": c["vs_tuned"]["gap_final"]["median"],
                             "gap_wall_vs_tuned_median": c["wall_vs_tuned"]["median"],
                             "wins_vs_tuned": c["vs_tuned"]["gap_final"]["wins"],
                             "n": c["vs_tuned"]["gap_final"]["n_all"],
                             "diverged": c["vs_same_lr"]["diverged"].get(arm, 0),
                             "time_share_mean": c["time_share"]["mean"]})  # fmt: skip
    write_csv(out / "curves_steps.csv", step_rows)
    write_csv(out / "curves_wall.csv", wall_rows)
    write_csv(out / "comparisons.csv", cmp_rows)
    results = {
        "experiment": "teleport-schedule",
        "config": cfg,
        "num_runs": len(ts),
        "skipped": model_groups(cfg)[1],
        "groups": groups,
        "files": {"csv": ["comparisons.csv", "curves_steps.csv", "curves_wall.csv"], "runs": "runs/"},
    }
    results["overall"] = overall(groups)
    results["verdict"] = verdict_lines(results)
    results["files"]["plots"] = [p.name for p in _plots(out, cfg, step_rows, wall_rows, groups)]
    write_json(out / "results.json", results)
    return results


def _clear(s: dict[str, Any], sign: int) -> bool:
    from nnteleport.lab.experiments.paired import clearly

    return clearly(s, sign)


def overall(groups: list[dict[str, Any]]) -> dict[str, Any]:
    """Per CoB choice and schedule, over the groups: how many clearly beat / clearly lose to the same-lr and the
    best-tuned baseline (final loss; loss at the wall-clock budget), diverged runs, the mean time share."""
    out: dict[str, Any] = {}
    for g in groups:
        for arm, c in g["comparisons"].items():
            o = out.setdefault(arm, {"groups": 0, "diverged_runs": 0, "time_share": [],
                                     **{f"{k}_{w}": 0 for k in ("same_lr", "tuned", "wall_tuned")
                                        for w in ("better", "worse")}})  # fmt: skip
            o["groups"] += 1
            o["diverged_runs"] += int(c["vs_same_lr"]["diverged"].get(arm, 0))
            o["time_share"].append(c["time_share"]["mean"])
            for k, s in (("same_lr", c["vs_same_lr"]["gap_final"]), ("tuned", c["vs_tuned"]["gap_final"]),
                         ("wall_tuned", c["wall_vs_tuned"])):  # fmt: skip
                o[f"{k}_better"] += _clear(s, +1)
                o[f"{k}_worse"] += _clear(s, -1)
    for o in out.values():
        shares = [v for v in o.pop("time_share") if v is not None and math.isfinite(v)]
        o["time_share_mean"] = float(np.mean(shares)) if shares else math.nan
    return out


def verdict_lines(res: dict[str, Any]) -> list[str]:
    """The answer per arm, with the counts it rests on ("clearly": every seed on that side and the mean gap more
    than 2 std from 0)."""
    lines = []
    for arm, o in res["overall"].items():
        n = o["groups"]
        lines.append(
            f"{arm}: clearly better than the same-lr baseline in {o['same_lr_better']}/{n} groups (worse in "
            f"{o['same_lr_worse']}); than the best-tuned baseline in {o['tuned_better']}/{n} (worse in "
            f"{o['tuned_worse']}); at the wall-clock budget vs tuned: better {o['wall_tuned_better']}/{n}, worse "
            f"{o['wall_tuned_worse']}; {o['diverged_runs']} diverged runs; teleporting took "
            f"{100 * o['time_share_mean']:.1f}% of the training time"
        )
    return lines


def _status(res: dict[str, Any]) -> str:
    ov = res["overall"]
    if not ov:
        return "neutral"
    best = max(min(o["tuned_better"], o["wall_tuned_better"]) / o["groups"] for o in ov.values())
    if best >= 0.5:
        return "good"
    return "bad" if all(o["tuned_better"] == 0 for o in ov.values()) else "neutral"


_COB_COLORS = dict(
    zip(["random", "best-of-n", "optimized", "balanced", "pathcond"], [COLORS["grid"][i] for i in (0, 6, 2, 3, 4)])
)  # not the baseline's orange


def _plots(out: Path, cfg: dict[str, Any], step_rows: list, wall_rows: list, groups: list) -> list[Path]:
    """Per model: rows = optimizers, columns = loss vs steps / vs wall-clock; mean +- std over seeds."""
    paths = []
    tuned = {(g["model"], g["optimizer"]): g["best_tuned"]["arm"] for g in groups}
    for model in dict.fromkeys(r["model"] for r in step_rows):
        opts = list(dict.fromkeys(r["optimizer"] for r in step_rows if r["model"] == model))
        fig, axes = new_figure(len(opts), 2, size=(4.6, 3.0))
        for row, opt in enumerate(opts):
            for col, (rows, xkey) in enumerate(((step_rows, "step"), (wall_rows, "seconds"))):
                ax = axes[row][col]
                sel = [r for r in rows if r["model"] == model and r["optimizer"] == opt]
                for arm in dict.fromkeys(r["arm"] for r in sel):
                    if (arm.startswith("lr-x") and arm != tuned[(model, opt)]) or arm == "none-reset-every":
                        continue
                    pts = [r for r in sel if r["arm"] == arm]
                    x = np.array([r[xkey] for r in pts])
                    m, s = np.array([r["mean"] for r in pts]), np.array([r["std"] for r in pts])
                    cob = arm.rsplit("-", 1)[0]
                    color = _COB_COLORS.get(cob, COLORS["baseline"] if arm == "none" else "#444444")
                    ls = "--" if arm.endswith("-every") else "-"
                    label = "none (same lr)" if arm == "none" else (f"tuned: {arm}" if arm.startswith("lr-x") else arm)
                    ax.plot(x, m, color=color, ls=ls, lw=1.3, label=label)
                    lower = np.where(m - s > 0, m - s, np.nan)  # log axis: no band where mean - std <= 0
                    ax.fill_between(x, lower, m + s, color=color, alpha=0.12, lw=0)
                ax.set_yscale("log")
                ax.set_xlabel("step" if xkey == "step" else "training wall-clock (s)")
                ax.set_ylabel("mini-batch loss (moving avg.)")
                ax.set_title(f"{model}, {opt}")
        axes[0][1].legend(fontsize=6, ncol=2)
        paths.append(save_figure(fig, out / f"teleport_schedule_{model}.png"))
    return paths


# --------------------------------------------------------------------------------------------------
# the demo

#: Title of this experiment's section in the demo report.
TITLE = "Teleport schedules: random, best-of-n, optimized, balanced, PathCond vs a tuned learning rate"

#: The demo's configuration: changes to :data:`DEFAULTS`.
DEMO: dict[str, Any] = {
    "models": ["mlp"],
    "model_kwargs": {"mlp": {"hidden": [32, 32]}},
    "optimizers": ["sgd", "adam"],
    "lr_multipliers": [0.5, 2.0, 4.0],
    "epochs": 2,
    "max_iters_per_epoch": 15,
    "every_steps": 10,
    "resnet_if_cifar": False,
    "workers": 1,
}

#: About how long :data:`DEMO` takes on one core, in seconds.
DEMO_SECONDS = 45


def _fmt(s: dict[str, Any]) -> str:
    from nnteleport.lab.experiments.paired import as_float

    med = as_float(s.get("median"))
    mean, std = as_float(s["mean"]), as_float(s["std"])
    txt = f"median {med:+.4f}" if math.isfinite(med) else f"median {s.get('median')}"
    if s["n"]:
        txt += f", mean {mean:+.4f} ± {std:.4f}"
    return f"{txt} (arm lower in {s['wins']}/{s['n_all']} seeds)"


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section: per group and arm the paired gaps, the time share; the verdict."""
    cfg = res["config"]
    numbers = []
    for g in res["groups"]:
        tag = f"{g['model']}/{g['optimizer']}"
        numbers.append((f"{tag}: best-tuned baseline", f"{g['best_tuned']['arm']} (lr {g['best_tuned']['lr']:g})"
                        + (" [at the grid edge]" if g["best_tuned"]["at_grid_edge"] else "")))  # fmt: skip
        for arm, c in g["comparisons"].items():
            numbers.append((f"{tag} {arm}: tuned − arm, final loss", _fmt(c["vs_tuned"]["gap_final"])))
            share = f"; time share {100 * c['time_share']['mean']:.1f}%"
            numbers.append((f"{tag} {arm}: tuned − arm, loss at {g['wall_budget_seconds']:.2f} s",
                            _fmt(c["wall_vs_tuned"]) + share))  # fmt: skip
    caption = ("Mini-batch training loss (moving average; mean ± std over seeds, no band where mean − std ≤ 0) "
               "against steps (left) and training wall-clock (right); solid: once, dashed: every K steps; orange: no "
               "teleport at the base lr, grey: the best-tuned no-teleport lr.")  # fmt: skip
    figs = [Figure(d / p, caption) for p in res["files"].get("plots", [])]
    lines = list(res.get("verdict") or verdict_lines(res)) + list(res.get("skipped", []))
    status = _status(res)
    sec = Section(
        title=TITLE,
        claim=(
            "Optimized teleportation (Zhao et al. 2022/2024: maximise the gradient norm over the symmetry group), "
            "weight balancing (ENorm) and path conditioning (PathCond, 2026) are said to speed up training. Here "
            f"all of them are CoB choices of one engine, compared with no teleport and a learning-rate grid: "
            f"{', '.join(cfg['models'])} on {cfg['dataset']}, {', '.join(cfg['optimizers'])}, {cfg['seeds']} seeds, "
            f"{cfg['epochs']} epochs, once at epoch {cfg['teleport_epoch']} or every {cfg['every_steps']} steps, "
            f"optimizer state: {cfg['optimizer_state']}. Gaps are tuned baseline minus arm (positive: the arm is "
            "lower)."
        ),
        numbers=numbers,
        figures=figs,
        notes=lines,
        verdict="; ".join(res.get("verdict") or verdict_lines(res)),
        status=status,
    )
    ov = res["overall"]
    n_better = sum(o["tuned_better"] for o in ov.values())
    n_all = sum(o["groups"] for o in ov.values())
    head = Headline("teleport schedules clearly beating a tuned lr", f"{n_better}/{n_all}",
                    "(arm, group) pairs, final train loss", status)  # fmt: skip
    return sec, [head]
