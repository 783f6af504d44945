"""One teleportation in the middle of training (Armenta et al. 2023, Sec. 5.2, Figs. 11-12).

The paper trains VGG, ResNet and DenseNet on CIFAR-10 with SGD at learning rate 1e-4 and teleports once at
epoch 30 with CoB range 0.7, 0.8 or 0.9, reporting a jump in validation accuracy right after the teleport that
grows with the CoB range. The default here is scaled down to the embedded digits: 12 epochs with the teleport
after epoch 6 and learning rate 1e-3 (the paper's ``lr x epochs`` budget of 1e-4 x 100 is of the same order as
1e-3 x 12), on the MLP and VGG. The optimizer is re-created at the teleport (momentum buffers live in the old
coordinates; see :mod:`nnteleport.lab.training`).

Arms: ``none`` and ``s=<cob_range>`` for each CoB range; all share the initialisation and batch order per seed.
Reported per arm (paired by seed, against ``none``): the validation-accuracy change one epoch after the teleport
(``jump``), the mean change over the remaining epochs, and the final accuracies.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.errors import InvalidValueError
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.training import CHOICES as TRAINING_CHOICES
from nnteleport.lab.experiments.training import (
    DEFAULTS as TRAINING_DEFAULTS,
)
from nnteleport.lab.experiments.training import aggregate, arm, grid_tasks, plot_curves, run_grid
from nnteleport.lab.plotting import COLORS, summary, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, pm

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "report_section",
    "run",
    "validate",
]

DESCRIPTION = (
    "Teleport once in the middle of training (paper: epoch 30, CoB range 0.7/0.8/0.9) vs no teleport; "
    "validation accuracy curves (mean +- 2 std across seeds) and the accuracy jump after the teleport "
    "(Armenta et al. 2023, Figs. 11-12)."
)

DEFAULTS: dict[str, Any] = {
    **copy.deepcopy(TRAINING_DEFAULTS),
    "models": ["mlp", "vgg"],  # paper: VGG, ResNet-18, DenseNet
    "optimizers": ["sgd"],
    "lrs": [0.001],  # paper: 1e-4 for 100 epochs
    "seeds": 2,
    "epochs": 12,  # paper: 100
    "teleport_at": 6,  # paper: 30 (teleport after this many epochs)
    "cob_ranges": [0.7, 0.8, 0.9],
}
del DEFAULTS["cob_range"], DEFAULTS["early_epochs"], DEFAULTS["early_iters"]
CHOICES = TRAINING_CHOICES


def validate(cfg: dict[str, Any]) -> None:
    """``teleport_at`` must fall inside the training (called by ``validate_config``)."""
    t = cfg["teleport_at"]
    if not (isinstance(t, int) and 0 < t < int(cfg["epochs"])):
        raise InvalidValueError(
            f"experiment 'mid-training': teleport_at={t!r} must be in [1, epochs - 1] = [1, {cfg['epochs'] - 1}]"
        )


def _arm_name(s: float) -> str:
    return f"s={s:g}"


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, CSVs, PNGs and ``runs/``."""
    cfg = merge_config(DEFAULTS, config or {}, source="mid-training")
    validate_config("mid-training", cfg)
    t = int(cfg["teleport_at"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [arm("none")] + [
        arm(_arm_name(s), teleport_at=t, cob_range=float(s), sampling=cfg["sampling"]) for s in cfg["cob_ranges"]
    ]
    records = run_grid(
        grid_tasks(cfg, arms), out, workers=cfg["workers"], progress_bar=progress, desc="mid-training runs"
    )
    groups: dict[tuple, dict[str, dict[int, dict[str, Any]]]] = {}
    for r in records:
        task = r["task"]
        key = (task["model"], task["dataset"], task["activation"], task["optimizer"], task["lr"])
        groups.setdefault(key, {}).setdefault(task["arm"], {})[task["seed"]] = r["history"]
    effects = []
    for key, by_arm in groups.items():
        base = by_arm["none"]
        for a in arms[1:]:
            mine = by_arm[a["arm"]]
            seeds = sorted(set(base) & set(mine))
            # val_acc[e] is measured after epoch e; the teleport happens before epoch t is trained
            jump = [mine[s]["val_acc"][t] - base[s]["val_acc"][t] for s in seeds]
            after = [float(np.mean(np.array(mine[s]["val_acc"][t:]) - np.array(base[s]["val_acc"][t:]))) for s in seeds]
            effects.append(
                {
                    "model": key[0],
                    "dataset": key[1],
                    "activation": key[2],
                    "optimizer": key[3],
                    "lr": key[4],
                    "arm": a["arm"],
                    "cob_range": a["cob_range"],
                    "n_seeds": len(seeds),
                    "jump": summary(jump),
                    "mean_diff_after": summary(after),
                    "final_val_acc": summary(mine[s]["val_acc"][-1] for s in seeds),
                    "final_val_acc_none": summary(base[s]["val_acc"][-1] for s in seeds),
                    "val_acc_before_teleport": summary(mine[s]["val_acc"][t - 1] for s in seeds),
                }
            )
    write_csv(out / "curves.csv", aggregate(records))
    write_csv(
        out / "effects.csv",
        [
            {
                **{k: v for k, v in e.items() if not isinstance(v, dict)},
                **{f"{k}_{s}": v[s] for k, v in e.items() if isinstance(v, dict) for s in ("mean", "std")},
            }
            for e in effects
        ],
    )
    names = [a["arm"] for a in arms]
    palette = {"none": COLORS["baseline"]}
    palette.update({n: c for n, c in zip(names[1:], ["#9ecae1", "#4292c6", "#08519c", "#08306b"])})
    results = {
        "experiment": "mid-training",
        "config": cfg,
        "num_runs": len(records),
        "effects": effects,
        "files": {"csv": ["curves.csv", "effects.csv"], "runs": "runs/"},
    }
    plots = plot_curves(
        out,
        "curves.csv",
        arms=names,
        metric="val_acc",
        colors=palette,
        filename_prefix="mid_training",
        ylabel="validation accuracy",
        vlines={"teleport": t},
    )
    plots += plot_curves(
        out,
        "curves.csv",
        arms=names,
        metric="train_loss",
        colors=palette,
        filename_prefix="mid_training",
        vlines={"teleport": t},
    )
    results["files"]["plots"] = [p.name for p in plots]
    write_json(out / "results.json", results)
    return results


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Teleporting in the middle of training"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "models": ["mlp"],
    "seeds": 3,
    "epochs": 10,
    "teleport_at": 5,
    "workers": 1,
    "tensorboard": False,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 13


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    the validation-accuracy jump after the mid-training teleport per arm."""
    cfg = res["config"]
    nums = [
        (
            f"{e['model']} / {e['optimizer']} / lr {e['lr']:g} — {e['arm']}",
            f"val-acc jump one epoch after the teleport {pm(e['jump'])}, mean difference afterwards "
            f"{pm(e['mean_diff_after'])}, final val acc {pm(e['final_val_acc'])} vs {pm(e['final_val_acc_none'])} "
            f"without (n = {e['n_seeds']})",
        )
        for e in res["effects"]
    ]
    figs = [
        Figure(
            d / p,
            ("Validation accuracy" if "val_acc" in p else "Training loss")
            + f" per epoch, mean ± 2 std across seeds; the dotted line marks the teleport after epoch "
            f"{cfg['teleport_at']} (s = {cfg['cob_ranges']}, {cfg['sampling']}); orange: no teleport.",
        )
        for p in res["files"].get("plots", [])
    ]
    jumps = [e["jump"]["mean"] for e in res["effects"]]
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Figs. 11-12): a single teleport at epoch 30 (s = 0.7, 0.8, 0.9; lr 1e-4, CIFAR-10) makes "
            "the validation accuracy jump, more for larger s. Here (scaled down): teleport after epoch "
            f"{cfg['teleport_at']} of {cfg['epochs']}, {', '.join(cfg['models'])} on "
            f"{', '.join(cfg['datasets'])}, {cfg['optimizers']} lr {cfg['lrs']}, {cfg['seeds']} seeds; the "
            "optimizer state is reset at the teleport."
        ),
        numbers=nums,
        figures=figs,
        verdict=(
            "accuracy jump after the teleport: "
            + ", ".join(f"{e['arm']} {e['jump']['mean']:+.3f}" for e in res["effects"])
        ),
        status="good" if jumps and all(j > 0 for j in jumps) else "neutral",
    )
    return sec, []
