"""Training with vs without one teleportation at initialisation (Armenta et al. 2023, Sec. 5.2, Figs. 6-8).

For every combination of model x dataset x activation x optimizer x learning rate and every seed we train two
runs that share the initialisation (``init``, paper: Kaiming for ReLU nets, PyTorch's default for the activation
study) and the order of the mini-batches: the baseline, and the same network teleported once right after
initialisation (``cob_range=0.9``, inter-landscape sampling). The figures show the mean training loss per epoch
with a band of +- 2 standard deviations across seeds (the paper's shading), one row per learning rate and one
column per optimizer.

Numbers reported (paired by seed, teleported minus baseline is negative when teleportation helps):

* ``gap_first_epoch``: baseline minus teleported mean training loss of the first epoch;
* ``gap_early``: the same averaged over the first ``early_epochs`` epochs (default: a quarter of the run);
* ``gap_iter_early``: baseline minus teleported loss averaged over the first ``early_iters`` iterations;
* ``speedup``: the baseline's number of epochs divided by the (interpolated) epoch at which the teleported run
  first reaches the baseline's final training loss (> 1: teleportation gets there sooner; runs that never get
  there are counted in ``speedup_not_reached``);
* ``final_val_acc``: validation accuracy at the end, per arm;

each as mean and standard deviation across seeds; plus how many configurations have a positive mean gap.

The grid runs in ``workers`` processes; each run keeps its own folder (``runs/<id>/``: checkpoint, history,
TensorBoard events), so an interrupted experiment resumes and finished runs are skipped. The same machinery
(:func:`run_grid`, :func:`aggregate`, :func:`paired_gaps`, :func:`plot_curves`) drives the pseudo-teleport and
mid-training experiments.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.models import MODELS, Activation, default_kwargs
from nnteleport.lab.plotting import (
    COLORS,
    band,
    new_figure,
    save_figure,
    summary,
    write_csv,
    write_json,
)
from nnteleport.lab.report_html import Figure, Headline, Section, pm

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "aggregate",
    "arm",
    "epochs_to_reach",
    "gap_rows",
    "gap_table",
    "grid_tasks",
    "overall",
    "paired_gaps",
    "plot_curves",
    "report_section",
    "run",
    "run_grid",
]

DESCRIPTION = (
    "Train each model with and without one teleportation right after initialisation (CoB range 0.9, inter) "
    "over optimizers x learning rates x seeds; mean training-loss curves with +-2 std bands and the early-loss "
    "gap across seeds (Armenta et al. 2023, Sec. 5.2, Figs. 6-8)."
)

DEFAULTS: dict[str, Any] = {
    "models": ["mlp"],
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},  # "activation" comes from activations
    "datasets": ["digits"],
    "data_root": None,
    "activations": ["relu"],  # paper, Fig. 7: also leaky_relu, tanh, elu (MLP, default init)
    "init": "kaiming",  # kaiming | xavier | normal | default
    "optimizers": ["sgd", "momentum"],
    "lrs": [0.01, 0.001],  # paper: 0.01, 0.001, 0.0001
    "seeds": 3,  # paper: 5
    "epochs": 12,  # paper: 100
    "batch_size": 64,
    "weight_decay": 0.0005,  # the paper trains with L2 regularisation (value not given)
    "lr_decay_epochs": [80],
    "cob_range": 0.9,
    "sampling": "inter",
    "early_epochs": None,  # default: max(1, epochs // 4)
    "early_iters": 20,
    "max_iters_per_epoch": None,
    "workers": 2,
    "tensorboard": True,
}
DEFAULTS["model_kwargs"]["mlp"]["hidden"] = [128, 128, 128, 128, 128]  # paper: 5 x 500

CHOICES: dict[str, list] = {
    "models": list(MODELS),
    "datasets": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "activations": [a.value for a in Activation],
    "init": ["kaiming", "xavier", "normal", "default"],
    "optimizers": ["sgd", "momentum", "adam"],
    "sampling": ["intra", "inter"],
}


# --------------------------------------------------------------------------------------------------
# the grid of runs


def arm(
    name: str, *, teleport_at: int | None = None, cob_range: float = 0.9, sampling: str = "inter", pseudo: bool = False
) -> dict[str, Any]:
    """One arm of a comparison: ``"none"`` (no teleport), a teleport or a pseudo-teleport at ``teleport_at``."""
    return {"arm": name, "teleport_at": teleport_at, "cob_range": cob_range, "sampling": sampling, "pseudo": pseudo}


def grid_tasks(cfg: dict[str, Any], arms: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """All runs of ``cfg``'s grid (model x dataset x activation x optimizer x lr x seed) times ``arms``."""
    tasks = []
    for model, dataset, act, opt, lr, seed, a in itertools.product(
        cfg["models"],
        cfg["datasets"],
        cfg["activations"],
        cfg["optimizers"],
        cfg["lrs"],
        range(int(cfg["seeds"])),
        arms,
    ):
        task = {
            "model": model,
            "model_kwargs": dict(cfg["model_kwargs"].get(model, {})),
            "dataset": dataset,
            "data_root": cfg["data_root"],
            "activation": act,
            "init": cfg["init"],
            "optimizer": opt,
            "lr": float(lr),
            "seed": seed,
            "epochs": int(cfg["epochs"]),
            "batch_size": int(cfg["batch_size"]),
            "weight_decay": float(cfg["weight_decay"]),
            "lr_decay_epochs": list(cfg["lr_decay_epochs"]),
            "max_iters_per_epoch": cfg["max_iters_per_epoch"],
            "tensorboard": bool(cfg["tensorboard"]),
            **a,
        }
        task["id"] = run_id(task)
        tasks.append(task)
    return tasks


def run_id(task: dict[str, Any]) -> str:
    """A readable, unique folder name for one run."""
    parts = [
        task["model"],
        task["dataset"],
        task["activation"],
        task["init"] or "noinit",
        task["optimizer"],
        f"lr{task['lr']:g}",
        f"seed{task['seed']}",
        task["arm"],
    ]
    return re.sub(r"[^A-Za-z0-9_.,=+\-]", "-", "_".join(str(p) for p in parts))


@functools.lru_cache(maxsize=8)
def _data(name: str, root: str | None):
    from nnteleport.lab.data import load_dataset

    return load_dataset(name, root, seed=0)


def train_one(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one run of the grid (in this process) and return ``{"history": History.to_dict()}``.

    Called by :func:`nnteleport.lab.experiments.sweep.run_sweep`, which stores the result in
    ``run_dir/result.json`` and skips the run next time; an interrupted run resumes from its checkpoint in
    ``run_dir`` (deleted once the run has finished, to keep the disk use small).
    """
    import torch

    from nnteleport.lab.models import build_model
    from nnteleport.lab.training import train

    run_dir = Path(run_dir)
    data = _data(task["dataset"], task["data_root"])
    kwargs = dict(task["model_kwargs"])
    if task["activation"] is not None:
        kwargs["activation"] = task["activation"]
    torch.manual_seed(task["seed"])
    model = build_model(task["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
    tb_dir = None
    if task["tensorboard"]:
        try:
            import tensorboard  # noqa: F401

            tb_dir = run_dir / "tensorboard"
        except ImportError:
            tb_dir = None
    history = train(
        model,
        data,
        epochs=task["epochs"],
        batch_size=task["batch_size"],
        optimizer=task["optimizer"],
        lr=task["lr"],
        weight_decay=task["weight_decay"],
        lr_decay_epochs=task["lr_decay_epochs"],
        init=None if task["init"] == "default" else task["init"],
        teleport_at=task["teleport_at"],
        cob_range=task["cob_range"],
        sampling=task["sampling"],
        pseudo_teleport=task["pseudo"],
        seed=task["seed"],
        checkpoint_dir=run_dir,
        tensorboard_dir=tb_dir,
        progress=False,
        max_iters_per_epoch=task["max_iters_per_epoch"],
    )
    from nnteleport.lab.training import CHECKPOINT_NAME

    (run_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
    return {"history": history.to_dict()}


def run_grid(
    tasks: Sequence[dict[str, Any]], out: Path, *, workers: int = 1, progress_bar: bool = True, desc: str = "runs"
) -> list[dict[str, Any]]:
    """Run ``tasks`` with :func:`train_one` through :func:`~nnteleport.lab.experiments.sweep.run_sweep` in
    ``workers`` processes (finished runs are read back, not re-trained); returns ``[{"task", "history"}]``."""
    from nnteleport.lab.experiments.sweep import run_sweep

    # TensorBoard files do not change the numbers: switching them on or off reuses the finished runs
    results = run_sweep(train_one, tasks, out, workers=max(1, int(workers)), progress=progress_bar, desc=desc,
                        ignore_keys=("tensorboard",))  # fmt: skip
    return [{"task": t, "history": results[t["id"]]["history"]} for t in tasks]


# --------------------------------------------------------------------------------------------------
# aggregation

GROUP_KEYS = ("model", "dataset", "activation", "optimizer", "lr")


def _key(task: dict[str, Any]) -> tuple:
    return tuple(task[k] for k in GROUP_KEYS)


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch mean and sample std across seeds of the curves, one row per (group, arm, epoch).

    Epoch 0 holds the validation loss/accuracy before training (after a teleport at 0), so the validation
    curves start at initialisation; ``train_loss`` is the mean over the mini-batches of epoch ``e - 1`` for
    ``e >= 1`` (NaN at 0).
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((*_key(r["task"]), r["task"]["arm"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        n_ep = min(len(r["history"]["train_loss"]) for r in recs)
        curves = {}
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            arr = np.array([[math.nan, *_floats(r["history"][name][:n_ep])] for r in recs], dtype=float)
            if name.startswith("val"):
                arr[:, 0] = [_float(r["history"]["initial"].get(name)) for r in recs]
            curves[name] = arr
        for e in range(n_ep + 1):
            row = dict(zip((*GROUP_KEYS, "arm"), key))
            row["epoch"] = e
            row["n_seeds"] = len(recs)
            for name, arr in curves.items():
                col = arr[:, e]
                row[f"{name}_mean"] = float(np.mean(col)) if np.isfinite(col).all() else math.nan
                row[f"{name}_std"] = _sample_std(col)
            rows.append(row)
    return rows


def _sample_std(col: np.ndarray) -> float:
    """Sample standard deviation (``ddof=1``; 0 for one value; NaN if any value is not finite)."""
    if not np.isfinite(col).all():
        return math.nan
    return float(np.std(col, ddof=1)) if col.size > 1 else 0.0


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def _floats(vs: Sequence[Any]) -> list[float]:
    return [_float(v) for v in vs]


def _finite(vs: Sequence[float]) -> list[float]:
    return [float(v) for v in vs if math.isfinite(v)]


def paired_gaps(
    records: Sequence[dict[str, Any]], *, baseline: str, arm_name: str, early_epochs: int, early_iters: int
) -> list[dict[str, Any]]:
    """Per group: baseline minus ``arm_name`` losses, paired by seed (positive = the arm trains faster)."""
    by: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in records:
        by.setdefault(_key(r["task"]), {}).setdefault(r["task"]["arm"], {})[r["task"]["seed"]] = r["history"]
    out = []
    for key, arms in by.items():
        if baseline not in arms or arm_name not in arms:
            continue
        seeds = sorted(set(arms[baseline]) & set(arms[arm_name]))
        first, early, it_early, acc_b, acc_a, loss_b, loss_a, speedup = [], [], [], [], [], [], [], []
        for s in seeds:
            hb, ha = arms[baseline][s], arms[arm_name][s]
            tb, ta = np.array(_floats(hb["train_loss"])), np.array(_floats(ha["train_loss"]))
            first.append(tb[0] - ta[0])
            k = min(early_epochs, len(tb), len(ta))
            early.append(float(np.mean(tb[:k] - ta[:k])))
            n = min(early_iters, len(hb["iter_loss"]), len(ha["iter_loss"]))
            it_early.append(float(np.mean(np.array(_floats(hb["iter_loss"][:n])) - _floats(ha["iter_loss"][:n]))))
            acc_b.append(_float(hb["val_acc"][-1]))
            acc_a.append(_float(ha["val_acc"][-1]))
            loss_b.append(tb[-1])
            loss_a.append(ta[-1])
            reach = epochs_to_reach(ta, tb[-1])
            speedup.append(len(tb) / reach if math.isfinite(reach) else math.nan)
        row = dict(zip(GROUP_KEYS, key))
        row.update(
            {
                "arm": arm_name,
                "baseline": baseline,
                "n_seeds": len(seeds),
                # runs whose loss became NaN/inf are "diverged" and left out of the statistics
                "diverged": {
                    baseline: sum(not math.isfinite(v) for v in loss_b),
                    arm_name: sum(not math.isfinite(v) for v in loss_a),
                },
                "gap_first_epoch": summary(_finite(first)),
                "gap_early": summary(_finite(early)),
                "gap_iter_early": summary(_finite(it_early)),
                "early_epochs": early_epochs,
                "early_iters": early_iters,
                # epochs of the baseline / epochs the arm needs to reach the baseline's final training loss
                "speedup": summary(_finite(speedup)),
                "speedup_not_reached": sum(not math.isfinite(v) for v in speedup),
                "final_train_loss": {baseline: summary(_finite(loss_b)), arm_name: summary(_finite(loss_a))},
                "final_val_acc": {baseline: summary(_finite(acc_b)), arm_name: summary(_finite(acc_a))},
            }
        )
        out.append(row)
    return out


def epochs_to_reach(losses: Sequence[float], target: float) -> float:
    """First (fractional, 1-based) epoch at which the per-epoch loss curve reaches ``target``.

    ``losses[i]`` is the loss of epoch ``i + 1``; between two epochs the curve is interpolated linearly. NaN if
    the target is never reached (or not finite).
    """
    if not math.isfinite(target):
        return math.nan
    prev = None
    for i, v in enumerate(losses):
        if math.isfinite(v) and v <= target:
            if i == 0 or prev is None or prev == v:
                return float(i + 1)
            return i + (prev - target) / (prev - v)
        prev = v if math.isfinite(v) else None
    return math.nan


def gap_table(gaps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten :func:`paired_gaps` rows for a CSV."""
    rows = []
    for g in gaps:
        row = {k: g[k] for k in (*GROUP_KEYS, "arm", "baseline", "n_seeds")}
        row.update({f"diverged_{a}": n for a, n in g["diverged"].items()})
        for name in ("gap_first_epoch", "gap_early", "gap_iter_early", "speedup"):
            row[f"{name}_mean"] = g[name]["mean"]
            row[f"{name}_std"] = g[name]["std"]
        for a, s in g["final_val_acc"].items():
            row[f"final_val_acc_{a}_mean"] = s["mean"]
            row[f"final_val_acc_{a}_std"] = s["std"]
        rows.append(row)
    return rows


def overall(gaps: Sequence[dict[str, Any]], name: str = "gap_early") -> dict[str, Any]:
    """Across groups: how many have a positive mean gap, and the spread of the per-group means."""
    gaps = [g for g in gaps if math.isfinite(g[name]["mean"])]
    means = [g[name]["mean"] for g in gaps]
    # a gap "clearly" positive/negative: its mean is more than 2 standard deviations (across seeds) from 0
    clear_pos = sum(g[name]["mean"] > 2 * g[name]["std"] for g in gaps)
    clear_neg = sum(g[name]["mean"] < -2 * g[name]["std"] for g in gaps)
    return {
        "metric": name,
        "groups": len(gaps),
        "positive": sum(m > 0 for m in means),
        "clearly_positive": clear_pos,
        "clearly_negative": clear_neg,
        "mean_of_means": float(np.mean(means)) if means else math.nan,
        "per_group": summary(means),
    }


# --------------------------------------------------------------------------------------------------
# plots


def plot_curves(
    out: Path,
    curves_csv: str,
    *,
    arms: Sequence[str],
    metric: str = "train_loss",
    filename_prefix: str = "training",
    ylabel: str | None = None,
    k: float = 2.0,
    log: bool = False,
    colors: dict[str, str] | None = None,
    vlines: dict[str, float] | None = None,
) -> list[Path]:
    """One PNG per (model, dataset, activation): rows = learning rates, columns = optimizers, ``mean +- k std``.

    Drawn from the CSV written by :func:`aggregate` (``out/curves_csv``).
    """
    from matplotlib.ticker import MaxNLocator

    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    rows = read_csv(out / curves_csv)
    paths = []
    palette = colors or {}
    figures = sorted({(r["model"], r["dataset"], r["activation"]) for r in rows})
    for model, dataset, act in figures:
        mine = [r for r in rows if (r["model"], r["dataset"], r["activation"]) == (model, dataset, act)]
        lrs = sorted({r["lr"] for r in mine})
        opts = list(dict.fromkeys(r["optimizer"] for r in mine))
        fig, axes = new_figure(len(lrs), len(opts), size=(3.6, 2.5), squeeze=False)
        for i, lr in enumerate(lrs):
            for j, opt in enumerate(opts):
                ax = axes[i, j]
                for c, a in enumerate(arms):
                    cur = sorted(
                        (r for r in mine if r["lr"] == lr and r["optimizer"] == opt and r["arm"] == a),
                        key=lambda r: r["epoch"],
                    )
                    color = palette.get(a, COLORS["grid"][c % len(COLORS["grid"])])
                    # epoch 0 has no training loss by construction; a NaN later means a seed diverged: say so
                    diverged = any(not math.isfinite(r[f"{metric}_mean"]) for r in cur if r["epoch"] > 0)
                    cur = [r for r in cur if math.isfinite(r[f"{metric}_mean"])]
                    if diverged:
                        ax.plot([], [], color=color, linestyle="--", label=f"{a}: diverged (NaN)")
                    if not cur:
                        continue
                    band(
                        ax,
                        [r["epoch"] for r in cur],
                        [r[f"{metric}_mean"] for r in cur],
                        [r[f"{metric}_std"] for r in cur],
                        k=k,
                        color=color,
                        label=f"{a} (n={cur[0]['n_seeds']})",
                    )
                for _label, x in (vlines or {}).items():
                    ax.axvline(x, color="k", linestyle=":", linewidth=0.8)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if log:
                    ax.set_yscale("log")
                ax.set_title(f"{opt}, lr={lr:g}", fontsize=9)
                if i == len(lrs) - 1:
                    ax.set_xlabel("epoch")
                if j == 0:
                    ax.set_ylabel(ylabel or metric.replace("_", " "))
                if i == 0 and j == 0:
                    ax.legend(fontsize=7)
        fig.suptitle(f"{model} ({act}) on {dataset}: mean ± {k:g} std across seeds", fontsize=10)
        paths.append(save_figure(fig, out / f"{filename_prefix}_{model}_{dataset}_{act}_{metric}.png"))
    return paths


# --------------------------------------------------------------------------------------------------
# the experiment


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, CSVs, PNGs and ``runs/``."""
    cfg = merge_config(DEFAULTS, config or {}, source="training")
    validate_config("training", cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [arm("none"), arm("teleport", teleport_at=0, cob_range=cfg["cob_range"], sampling=cfg["sampling"])]
    tasks = grid_tasks(cfg, arms)
    records = run_grid(tasks, out, workers=cfg["workers"], progress_bar=progress, desc="training runs")
    early = cfg["early_epochs"] or max(1, int(cfg["epochs"]) // 4)
    gaps = paired_gaps(
        records, baseline="none", arm_name="teleport", early_epochs=early, early_iters=cfg["early_iters"]
    )
    write_csv(out / "curves.csv", aggregate(records))
    write_csv(out / "gaps.csv", gap_table(gaps))
    results = {
        "experiment": "training",
        "config": cfg,
        "num_runs": len(records),
        "gaps": gaps,
        "overall": {name: overall(gaps, name) for name in ("gap_first_epoch", "gap_early", "gap_iter_early")},
        "files": {"csv": ["curves.csv", "gaps.csv"], "runs": "runs/"},
    }
    write_json(out / "results.json", results)
    colors = {"none": COLORS["baseline"], "teleport": COLORS["teleport"]}
    plots = plot_curves(out, "curves.csv", arms=["none", "teleport"], metric="train_loss", colors=colors)
    plots += plot_curves(
        out, "curves.csv", arms=["none", "teleport"], metric="val_acc", colors=colors, ylabel="validation accuracy"
    )
    results["files"]["plots"] = [p.name for p in plots]
    write_json(out / "results.json", results)
    return results


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Training with vs without teleportation"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "seeds": 4,
    "epochs": 8,
    "workers": 1,
    "tensorboard": False,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 32


def gap_rows(gaps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Rows of the report table: per setting, the paired gaps, the speed-up and the final accuracies."""
    rows = []
    for g in gaps:
        label = f"{g['model']} / {g['activation']} / {g['optimizer']} / lr {g['lr']:g} — {g['arm']} vs {g['baseline']}"
        div = {k: v for k, v in g.get("diverged", {}).items() if v}
        rows.append(
            (
                label,
                f"gap epoch 1 {pm(g['gap_first_epoch'])}, first {g['early_epochs']} epochs "
                f"{pm(g['gap_early'])} (n = {g['gap_early']['n']} seeds); "
                + _speedup_text(g)
                + "; final val acc "
                + ", ".join(f"{a} {pm(s, 3)}" for a, s in g["final_val_acc"].items())
                + (f"; diverged runs {div}" if div else ""),
            )
        )
    return rows


def _speedup_text(g: dict) -> str:
    s = g.get("speedup")
    if not s:
        return "speed-up n/a"
    missed = g.get("speedup_not_reached", 0)
    text = f"speed-up ×{pm(s, 3)}" if s.get("n") else "speed-up n/a"
    return text + (f" ({missed} seed(s) never reached the baseline's final loss)" if missed else "")


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    paired early-loss gaps and speed-ups per setting; headlines: the mean gap and the speed-up range."""
    cfg = res["config"]
    ov = res["overall"]["gap_early"]
    ov1 = res["overall"]["gap_first_epoch"]
    all_gaps = [g["gap_early"]["mean"] for g in res["gaps"] if g["gap_early"]["mean"] is not None]
    spread = [g["gap_early"]["std"] for g in res["gaps"] if g["gap_early"]["std"] is not None]
    good = ov["clearly_positive"] > ov["groups"] / 2
    bad = ov["clearly_negative"] > 0 or ov["positive"] < ov["groups"] / 2
    figs = [
        Figure(
            d / p,
            ("Training loss" if "train_loss" in p else "Validation accuracy")
            + " per epoch, mean ± 2 std across seeds (the paper's shading); rows: learning rates, columns: "
            "optimizers. Orange: no teleport; blue: one teleport right after initialisation "
            f"(s = {cfg['cob_range']}, {cfg['sampling']}); both runs of a seed share the initialisation "
            "and batch order.",
        )
        for p in res["files"].get("plots", [])
    ]
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Sec. 5.2, Figs. 6-8): one teleportation right after initialisation (s = 0.9, inter) "
            "accelerates gradient descent, with and without momentum. Here: "
            f"{', '.join(cfg['models'])} on {', '.join(cfg['datasets'])}, init {cfg['init']}, optimizers "
            f"{cfg['optimizers']}, learning rates {cfg['lrs']}, {cfg['seeds']} seeds, {cfg['epochs']} epochs, "
            f"L2 {cfg['weight_decay']}. Gap = baseline loss − teleported loss (positive: teleport ahead), "
            "paired by seed."
        ),
        numbers=gap_rows(res["gaps"]),
        figures=figs,
        verdict=(
            f"teleported ahead early in {ov['positive']} of {ov['groups']} settings "
            f"({ov['clearly_positive']} by more than 2 std across seeds, {ov['clearly_negative']} clearly "
            "behind)"
        ),
        status="good" if good and not bad else ("bad" if bad else "neutral"),
    )
    value = f"{ov['mean_of_means']:+.3f}" if ov.get("mean_of_means") is not None else "n/a"
    head = Headline(
        "teleported training: early-loss gap",
        value,
        (
            f"mean over {ov['groups']} settings of (baseline − teleported) train loss, first "
            f"{res['gaps'][0]['early_epochs']} epochs; per-setting gaps {min(all_gaps):+.3f}…{max(all_gaps):+.3f}, "
            f"seed std up to {max(spread):.3f}; epoch-1 gap {ov1['mean_of_means']:+.3f}"
        )
        if all_gaps
        else "no data",
        "good" if good and not bad else ("bad" if bad else "neutral"),
    )
    heads = [head]
    speed = [g["speedup"] for g in res["gaps"] if g.get("speedup") and g["speedup"].get("n")]
    if speed:
        means = [s["mean"] for s in speed]
        missed = sum(g.get("speedup_not_reached", 0) for g in res["gaps"])
        heads.append(
            Headline(
                "speed-up of teleported training",
                f"×{min(means):.2f} … ×{max(means):.2f}",
                "baseline epochs ÷ epochs the teleported run needs to reach the baseline's final train loss, "
                f"per setting (mean over seeds; seed std up to {max(s['std'] for s in speed):.2f})"
                + (f"; {missed} run(s) never reached it" if missed else ""),
                "good" if min(means) > 1 and not missed else ("bad" if max(means) < 1 else "neutral"),
            )
        )
    return sec, heads
