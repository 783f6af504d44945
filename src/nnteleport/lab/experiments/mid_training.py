"""One teleportation in the middle of training (Armenta et al. 2023, Sec. 5.2, Figs. 11-12).

The paper trains VGG, ResNet and DenseNet on CIFAR-10 with SGD at learning rate 1e-4 and teleports once at
epoch 30 with CoB range 0.7, 0.8 or 0.9, reporting a jump in validation accuracy right after the teleport that
grows with the CoB range. The default here is scaled down to the embedded digits: 12 epochs with the teleport
after epoch 6 and learning rate 1e-3 (the paper's ``lr x epochs`` budget of 1e-4 x 100 is of the same order as
1e-3 x 12), on the MLP and VGG, 3 seeds. Every arm, the baseline included, re-creates its optimizer at the start
of the teleport epoch (momentum buffers live in the old coordinates; see
:func:`nnteleport.lab.experiments.training.grid_tasks`), so the arms differ only by the teleport.

Arms: ``none`` and ``s=<cob_range>`` for each CoB range; all share the initialisation and batch order per seed.
Reported per arm (paired by seed, against ``none``): the validation-accuracy change one epoch after the teleport
(``jump``), the mean change over the remaining epochs, and the final accuracies. A run whose training loss
became NaN/inf is counted in ``diverged`` and loses its seed's comparison (``-inf`` / ``+inf``, see
:mod:`nnteleport.lab.experiments.paired`); ``jump`` and ``mean_diff_after`` carry the median over all seeds,
wins / losses and min / max beside the mean +- std of the finite pairs.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.errors import InvalidValueError
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.paired import diverged, paired_summary
from nnteleport.lab.experiments.training import CHOICES as TRAINING_CHOICES
from nnteleport.lab.experiments.training import (
    DEFAULTS as TRAINING_DEFAULTS,
)
from nnteleport.lab.experiments.training import aggregate, arm, grid_tasks, num_text, plot_curves, run_grid
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
    "seeds": 3,
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


def _effect_row(e: dict[str, Any]) -> dict[str, Any]:
    """One row of ``effects.csv``: the scalars, the statistics of each summary and the diverged counts."""
    row = {k: v for k, v in e.items() if not isinstance(v, dict)}
    for k, v in e.items():
        if k == "diverged":
            row.update({f"diverged_{a}": n for a, n in v.items()})
        elif isinstance(v, dict):
            row.update({f"{k}_{s}": v[s] for s in ("mean", "std", "median", "min", "max", "wins", "losses") if s in v})
    return row


def _acc(v: Any) -> float:
    """An accuracy of a results file; a missing one (``None``/NaN) counts as 0, the worst."""
    return 0.0 if v is None or v != v else float(v)


def _mean(vs: list[Any]) -> float:
    return float(np.mean([_acc(v) for v in vs]))


def _diff(a: Any, b: Any, a_div: bool, b_div: bool) -> float:
    """Arm minus baseline accuracy; a diverged run loses (``-inf`` for the arm, ``+inf`` for the baseline,
    0 when both diverged)."""
    if a_div or b_div:
        return 0.0 if (a_div and b_div) else (-np.inf if a_div else np.inf)
    return _acc(a) - _acc(b)


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
            div = {s: (diverged(mine[s]), diverged(base[s])) for s in seeds}
            jump = [_diff(mine[s]["val_acc"][t], base[s]["val_acc"][t], *div[s]) for s in seeds]
            after = [_diff(_mean(mine[s]["val_acc"][t:]), _mean(base[s]["val_acc"][t:]), *div[s]) for s in seeds]
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
                    "diverged": {"none": sum(d[1] for d in div.values()), a["arm"]: sum(d[0] for d in div.values())},
                    "jump": paired_summary(jump),
                    "mean_diff_after": paired_summary(after),
                    "final_val_acc": summary(_acc(mine[s]["val_acc"][-1]) for s in seeds),
                    "final_val_acc_none": summary(_acc(base[s]["val_acc"][-1]) for s in seeds),
                    "val_acc_before_teleport": summary(_acc(mine[s]["val_acc"][t - 1]) for s in seeds),
                }
            )
    write_csv(out / "curves.csv", aggregate(records))
    write_csv(
        out / "effects.csv",
        [_effect_row(e) for e in effects],
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
            f"val-acc jump one epoch after the teleport {_paired_text(e['jump'])}, mean difference afterwards "
            f"{_paired_text(e['mean_diff_after'])}, final val acc {_range(e['final_val_acc'])} vs "
            f"{_range(e['final_val_acc_none'])} without (n = {e['n_seeds']})"
            + (f"; diverged {e['diverged']}" if any(e.get("diverged", {}).values()) else ""),
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
    jumps = [e["jump"].get("median", e["jump"]["mean"]) for e in res["effects"]]
    jumps = [-np.inf if j == "-inf" else (np.inf if j == "+inf" else j) for j in jumps]
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Figs. 11-12): a single teleport at epoch 30 (s = 0.7, 0.8, 0.9; lr 1e-4, CIFAR-10) makes "
            "the validation accuracy jump, more for larger s. Here (scaled down): teleport after epoch "
            f"{cfg['teleport_at']} of {cfg['epochs']}, {', '.join(cfg['models'])} on "
            f"{', '.join(cfg['datasets'])}, {cfg['optimizers']} lr {cfg['lrs']}, {cfg['seeds']} seeds; the "
            "optimizer state of every arm, the baseline's included, is reset at the teleport epoch."
        ),
        numbers=nums,
        figures=figs,
        verdict=(
            "accuracy jump after the teleport (median over seeds, seeds ahead): "
            + ", ".join(
                f"{e['model']} {e['arm']} {num_text(e['jump'].get('median', e['jump']['mean']))} "
                f"({e['jump'].get('wins', '?')}/{e['n_seeds']})"
                for e in res["effects"]
            )
        ),
        status="good" if jumps and all(j > 0 for j in jumps) else "neutral",
    )
    return sec, []


def _paired_text(s: dict[str, Any]) -> str:
    if "median" not in s:  # results of an older version
        return pm(s)
    return (
        f"median {num_text(s['median'])} ({s['wins']}/{s['n_all']} seeds up; finite {pm(s)}, "
        f"range {num_text(s['min'])}…{num_text(s['max'])})"
    )


def _range(s: dict[str, Any]) -> str:
    return f"{pm(s)} [{s['min']:.3f}, {s['max']:.3f}]" if s.get("n") else "n/a"
