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
* ``gap_final``: baseline minus teleported final training loss;
* ``speedup``: the baseline's number of epochs divided by the (interpolated) epoch at which the teleported run
  first reaches the baseline's final training loss, only for pairs in which both runs made progress
  (``speedup_outcomes`` counts every seed: measured, not reached (x0), diverged, no progress);
* ``final_train_loss`` / ``final_val_acc``: per arm;

each as the median over all seeds (a diverged run loses its seed's comparison), wins / losses across seeds, and
mean and standard deviation over the finite pairs (see :mod:`nnteleport.lab.experiments.paired`); plus, over
all settings, how many have a positive median gap. Every arm resets its optimizer at the teleport epochs of the
comparison (:func:`grid_tasks`).

The grid runs in ``workers`` processes; each run keeps its own folder (``runs/<id>/``: checkpoint, history,
TensorBoard events), so an interrupted experiment resumes and finished runs are skipped. With
``vectorize: true`` all seeds and both arms of a setting are trained side by side in one process
(:mod:`nnteleport.lab.experiments.stacked_grid`: equal to the sequential runs to round-off, not bit-identical;
their own run identities ``runs/<id>_vec/``; models that cannot be stacked, such as dropout, refused before any
run). The same machinery
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

from nnteleport.errors import InvalidValueError
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.paired import (
    GROUP_KEYS,
    aggregate,
    as_float,
    epochs_to_reach,
    overall,
    paired_gaps,
)
from nnteleport.lab.models import MODELS, Activation, default_kwargs
from nnteleport.lab.plotting import (
    COLORS,
    band,
    new_figure,
    save_figure,
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
    "augment": True,  # CIFAR train-split augmentation (crop + flip); no effect on the other datasets
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
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices); not part of a run's identity
    # all seeds and arms of a setting in one process (train_stacked): equal to round-off, not bit-identical, so
    # off by default; its runs have their own identities (runs/<id>_vec/); see stacked_grid
    "vectorize": False,
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
    """All runs of ``cfg``'s grid (model x dataset x activation x optimizer x lr x seed) times ``arms``.

    Every arm re-creates its optimizer at the start of each epoch at which any arm of the comparison teleports
    (``reset_optimizer_at``): a teleported arm resets its optimizer state (momentum buffers and Adam moments
    live in the old coordinates), and the baseline does the same at the same epoch, so the arms differ only
    by the teleport.
    """
    resets = sorted({int(a["teleport_at"]) for a in arms if a.get("teleport_at") is not None})
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
            "augment": bool(cfg.get("augment", True)),
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
            "reset_optimizer_at": resets,
            "device": cfg.get("device", "auto"),
            **a,
        }
        if cfg.get("vectorize"):  # only when set: the identities of the sequential runs stay as they were
            task["vectorize"] = True
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
        *(["vec"] if task.get("vectorize") else []),
    ]
    return re.sub(r"[^A-Za-z0-9_.,=+\-]", "-", "_".join(str(p) for p in parts))


@functools.lru_cache(maxsize=8)
def _data(name: str, root: str | None, augment: bool = True):
    from nnteleport.lab.data import load_dataset

    return load_dataset(name, root, seed=0, augment=augment)


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
    data = _data(task["dataset"], task["data_root"], task.get("augment", True))
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
        optimizer_state_on_teleport="reset",
        reset_optimizer_at=task.get("reset_optimizer_at", ()),
        seed=task["seed"],
        device=resolve_device(task.get("device", "auto")),
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
    ``workers`` processes (finished runs are read back, not re-trained); returns ``[{"task", "history"}]``.

    Runs with ``"vectorize": True`` (all or none) go to
    :func:`~nnteleport.lab.experiments.stacked_grid.run_stacked_grid` instead: one task per setting, all its
    seeds and arms trained side by side by ``train_stacked``."""
    from nnteleport.lab.experiments.sweep import run_sweep

    modes = {bool(t.get("vectorize")) for t in tasks}
    if len(modes) > 1:
        raise InvalidValueError("run_grid: some tasks have vectorize true and others not; run them separately")
    if modes == {True}:
        from nnteleport.lab.experiments.stacked_grid import run_stacked_grid

        return run_stacked_grid(tasks, out, workers=workers, progress_bar=progress_bar, desc=desc)

    # TensorBoard files do not change the numbers, nor (beyond round-off) the device: switching them reuses the
    # finished runs
    results = run_sweep(train_one, tasks, out, workers=max(1, int(workers)), progress=progress_bar, desc=desc,
                        ignore_keys=("tensorboard", "device"))  # fmt: skip
    return [{"task": t, "history": results[t["id"]]["history"]} for t in tasks]


# --------------------------------------------------------------------------------------------------
# aggregation: nnteleport.lab.experiments.paired (divergence, progress, medians over all seeds)


def gap_table(gaps: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten :func:`paired_gaps` rows for a CSV (medians over all seeds, wins/losses, diverged counts)."""
    rows = []
    for g in gaps:
        row = {k: g[k] for k in (*GROUP_KEYS, "arm", "baseline", "n_seeds")}
        row.update({f"diverged_{a}": n for a, n in g["diverged"].items()})
        for name in ("gap_first_epoch", "gap_early", "gap_iter_early", "gap_final", "speedup"):
            for stat in ("median", "mean", "std", "n", "wins", "losses"):
                if name in g and stat in g[name]:
                    row[f"{name}_{stat}"] = g[name][stat]
        for outcome, n in g.get("speedup_outcomes", {}).items():
            row[f"speedup_{outcome}"] = n
        for a, s in g["final_train_loss"].items():
            row[f"final_train_loss_{a}_median"] = s.get("median", s["mean"])
        for a, s in g["final_val_acc"].items():
            row[f"final_val_acc_{a}_mean"] = s["mean"]
            row[f"final_val_acc_{a}_std"] = s["std"]
        rows.append(row)
    return rows


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
                    _draw_arm(ax, cur, a, metric, color=color, k=k)
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
                ax.legend(fontsize=7)  # in every panel: it carries the seed counts and the divergence
        fig.suptitle(f"{model} ({act}) on {dataset}: mean ± {k:g} std across seeds", fontsize=10)
        paths.append(save_figure(fig, out / f"{filename_prefix}_{model}_{dataset}_{act}_{metric}.png"))
    return paths


def _draw_arm(ax: Any, cur: Sequence[dict[str, Any]], arm_name: str, metric: str, *, color: str, k: float) -> None:
    """One arm's curve in one panel: the mean +- k std over the seeds finite at each epoch (what exists), and,
    where seeds diverged, a dashed vertical line at the first epoch with fewer finite seeds and the count
    ("2/3 diverged from epoch 4") in the legend."""
    if not cur:
        return
    n = int(cur[0]["n_seeds"])
    count = f"{metric}_n"
    # epoch 0 has no training loss by construction; fewer finite seeds later means some diverged
    lost = [r for r in cur if r["epoch"] > 0 and count in r and int(r[count]) < n]
    if count not in cur[0]:  # an older curves.csv: no per-epoch counts, a NaN mean marks divergence
        lost = [r for r in cur if r["epoch"] > 0 and not math.isfinite(r[f"{metric}_mean"])]
    fin = [r for r in cur if math.isfinite(r[f"{metric}_mean"])]
    label = f"{arm_name} (n={n})"
    if lost:
        worst = min(int(r.get(count, 0)) for r in lost)
        label += f": {n - worst}/{n} diverged from epoch {lost[0]['epoch']}"
        ax.axvline(lost[0]["epoch"], color=color, linestyle="--", linewidth=1.0)
    if not fin:
        ax.plot([], [], color=color, linestyle="--", label=label)
        return
    band(ax, [r["epoch"] for r in fin], [r[f"{metric}_mean"] for r in fin], [r[f"{metric}_std"] for r in fin],
         k=k, color=color, label=label)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# the experiment


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, CSVs, PNGs and ``runs/``."""
    cfg = merge_config(DEFAULTS, config or {}, source="training")
    validate_config("training", cfg)
    resolve_device(cfg["device"])  # the runs resolve it in their processes
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


def num_text(x: Any, digits: int = 3, *, signed: bool = True) -> str:
    """A number of a results file for a report (``"+inf"`` / ``"-inf"`` / ``"n/a"`` included)."""
    v = as_float(x)
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return ("+inf" if v > 0 else "-inf") if signed else ("inf" if v > 0 else "-inf")
    return f"{v:+.{digits}g}" if signed else f"{v:.{digits}g}"


def gap_text(s: dict[str, Any]) -> str:
    """``"median +0.52 over 3 seeds (3 ahead / 0 behind; finite pairs 0.52 ± 0.04, n = 3)"``; infinite
    medians come from diverged runs (``-inf``: the arm's)."""
    if "median" not in s:  # results of an older version: mean +- std of the finite pairs only
        return f"{pm(s)} (n = {s['n']})"
    return (
        f"median {num_text(s['median'])} over {s['n_all']} seeds ({s['wins']} ahead / {s['losses']} behind; "
        f"finite pairs {pm(s)}, n = {s['n']})"
    )


def diverged_text(g: dict[str, Any]) -> str:
    """``"diverged: none 0/3, teleport 2/3"`` (every arm, zeros included)."""
    n = g["n_seeds"]
    return "diverged: " + ", ".join(f"{a} {k}/{n}" for a, k in g.get("diverged", {}).items())


def gap_rows(gaps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Rows of the report table: per setting, the paired gaps, the speed-up, final losses and accuracies and
    how many runs of each arm diverged."""
    rows = []
    for g in gaps:
        label = f"{g['model']} / {g['activation']} / {g['optimizer']} / lr {g['lr']:g} — {g['arm']} vs {g['baseline']}"
        final = g.get("final_train_loss", {})
        rows.append(
            (
                label,
                f"gap epoch 1 {gap_text(g['gap_first_epoch'])}; first {g['early_epochs']} epochs "
                f"{gap_text(g['gap_early'])}; "
                + speedup_text(g)
                + "; final train loss "
                + ", ".join(
                    f"{a} median {num_text(v.get('median', v['mean']), signed=False)}" for a, v in final.items()
                )
                + "; final val acc "
                + ", ".join(_acc_text(a, v) for a, v in g["final_val_acc"].items())
                + f"; {diverged_text(g)}",
            )
        )
    return rows


def _acc_text(arm_name: str, v: dict[str, Any]) -> str:
    return f"{arm_name} {pm(v, 3)} [{v['min']:.3f}, {v['max']:.3f}]" if v.get("n") else f"{arm_name} n/a"


def speedup_text(g: dict) -> str:
    """The speed-up of one setting with what happened to every seed (no progress, not reached, diverged)."""
    s = g.get("speedup")
    outcomes = g.get("speedup_outcomes")
    if not s:
        return "speed-up n/a"
    if outcomes is None:  # results of an older version
        missed = g.get("speedup_not_reached", 0)
        text = f"speed-up ×{pm(s, 3)}" if s.get("n") else "speed-up n/a"
        return text + (f" ({missed} seed(s) never reached the baseline's final loss)" if missed else "")
    n = g["n_seeds"]
    if not s.get("n_all"):
        text = "no speed-up (no progress)" if outcomes["no_progress"] else "no speed-up measured"
    else:
        text = f"speed-up median ×{num_text(s['median'], signed=False)} over {s['n_all']} of {n} seeds"
        if s.get("n"):
            text += f" (finite ×{pm(s, 3)})"
    notes = {
        "no_progress": "no progress (loss fell < {:.0%})".format(g.get("progress_fraction", 0.1)),
        "not_reached": "never reached the baseline's final loss (×0)",
        "arm_diverged": f"{g['arm']} diverged (×0)",
        "baseline_diverged": f"{g['baseline']} diverged (×inf)",
        "both_diverged": "both diverged",
    }
    extra = [f"{outcomes[k]}/{n} {v}" for k, v in notes.items() if outcomes.get(k)]
    return text + (" — " + ", ".join(extra) if extra else "")


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    paired early-loss gaps and speed-ups per setting; headlines: the median gap and the speed-up range."""
    cfg = res["config"]
    ov = res["overall"]["gap_early"]
    ov1 = res["overall"]["gap_first_epoch"]
    good = ov["clearly_positive"] > ov["groups"] / 2
    bad = ov["clearly_negative"] > 0 or ov["positive"] < ov["groups"] / 2
    figs = [
        Figure(
            d / p,
            ("Training loss" if "train_loss" in p else "Validation accuracy")
            + " per epoch, mean ± 2 std across the seeds that are finite at that epoch (the paper's shading; "
            "the legend gives n and how many diverged, a dashed line where they did); rows: learning rates, "
            "columns: optimizers. Orange: no teleport; blue: one teleport right after initialisation "
            f"(s = {cfg['cob_range']}, {cfg['sampling']}); both runs of a seed share the initialisation "
            "and batch order.",
        )
        for p in res["files"].get("plots", [])
    ]
    div = ov.get("diverged_runs", {})
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Sec. 5.2, Figs. 6-8): one teleportation right after initialisation (s = 0.9, inter) "
            "accelerates gradient descent, with and without momentum. Here: "
            f"{', '.join(cfg['models'])} on {', '.join(cfg['datasets'])}, init {cfg['init']}, optimizers "
            f"{cfg['optimizers']}, learning rates {cfg['lrs']}, {cfg['seeds']} seeds, {cfg['epochs']} epochs, "
            f"L2 {cfg['weight_decay']}. Gap = baseline loss − teleported loss (positive: teleport ahead), "
            "paired by seed; a diverged run loses its seed's comparison (median over all seeds)."
        ),
        numbers=gap_rows(res["gaps"]),
        figures=figs,
        verdict=(
            f"teleported ahead early (median gap > 0) in {ov['positive']} of {ov['groups']} settings "
            f"({ov['clearly_positive']} clearly: every seed ahead and mean > 2 std; {ov['clearly_negative']} "
            "clearly behind)" + (f"; diverged runs {div}" if any(div.values()) else "; no run diverged")
        ),
        status="good" if good and not bad else ("bad" if bad else "neutral"),
    )
    med = as_float(ov.get("median_of_medians", ov.get("mean_of_means")))
    medians = [as_float(g["gap_early"].get("median", g["gap_early"]["mean"])) for g in res["gaps"]]
    medians = [m for m in medians if not math.isnan(m)]
    spread = [g["gap_early"]["std"] for g in res["gaps"] if g["gap_early"].get("n")]
    head = Headline(
        "teleported training: early-loss gap",
        num_text(med),
        (
            f"median over {ov['groups']} settings of the per-setting median (over seeds) of (baseline − "
            f"teleported) train loss, first {res['gaps'][0]['early_epochs']} epochs; per-setting medians "
            f"{num_text(min(medians))}…{num_text(max(medians))}, seed std up to {max(spread or [math.nan]):.3f}; "
            f"epoch-1 gap {num_text(ov1.get('median_of_medians', ov1.get('mean_of_means')))}"
        )
        if medians
        else "no data",
        "good" if good and not bad else ("bad" if bad else "neutral"),
    )
    return sec, [head, *_speedup_headline(res["gaps"])]


def _speedup_headline(gaps: list[dict[str, Any]]) -> list[Headline]:
    """The range of the per-setting median speed-ups, with the seeds without one counted."""
    if gaps and "speedup_outcomes" not in gaps[0]:  # results of an older version: means over reached seeds
        old = [as_float(g["speedup"].get("mean")) for g in gaps if g["speedup"].get("n")]
        old = [m for m in old if not math.isnan(m)]
        return [Headline("speed-up of teleported training (older results: flat pairs and misses not counted)",
                         f"×{min(old):.2f} … ×{max(old):.2f}" if old else "n/a", "mean over the seeds that reached "
                         "the target", "neutral")]  # fmt: skip
    meds = [as_float(g["speedup"].get("median")) for g in gaps if g["speedup"].get("n_all")]
    meds = [m for m in meds if not math.isnan(m)]
    flat = sum(g.get("speedup_outcomes", {}).get("no_progress", 0) for g in gaps)
    missed = sum(g.get("speedup_not_reached", 0) for g in gaps)
    runs = sum(g["n_seeds"] for g in gaps)
    if not meds:
        return [Headline("speed-up of teleported training", "none", f"no pair made progress ({flat}/{runs})",
                         "neutral")]  # fmt: skip
    notes = []
    if flat:
        notes.append(f"{flat}/{runs} seed pairs without progress (no speed-up)")
    if missed:
        notes.append(f"{missed}/{runs} never reached the baseline's final loss or diverged (×0)")
    return [
        Headline(
            "speed-up of teleported training",
            f"×{min(meds):.2f} … ×{max(meds):.2f}",
            "baseline epochs ÷ epochs the teleported run needs to reach the baseline's final train loss, "
            "median over seeds per setting, measured only where both runs made progress"
            + ("; " + "; ".join(notes) if notes else ""),
            "good" if min(meds) > 1 and not missed else ("bad" if max(meds) < 1 else "neutral"),
        )
    ]
