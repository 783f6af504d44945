"""Pseudo-teleportation control: a random jump of the same length does not speed up training.

Armenta et al. 2023, Sec. 5.2, Fig. 9: "Given a neural network W, we produced another one, V, by first
teleporting W to tau W and then sampling V from the sphere with center W and radius vector W - tau W". The
weights move as far as a teleport would move them (``||V - W|| = ||tau W - W||``) but in a uniformly random
direction of the full parameter space, so the network function changes. The paper finds that this does not
improve gradient descent, unlike a real teleport.

Same grid and measurements as the ``training`` experiment (see :mod:`nnteleport.lab.experiments.training`), with the
arms ``none``, ``pseudo`` and (unless ``include_teleport`` is false) ``teleport``, all sharing the
initialisation and the batch order per seed; gaps are reported for each arm against ``none``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.paired import clearly
from nnteleport.lab.experiments.training import CHOICES as TRAINING_CHOICES
from nnteleport.lab.experiments.training import (
    DEFAULTS as TRAINING_DEFAULTS,
)
from nnteleport.lab.experiments.training import (
    aggregate,
    arm,
    gap_rows,
    gap_table,
    grid_tasks,
    num_text,
    overall,
    paired_gaps,
    plot_curves,
    run_grid,
)
from nnteleport.lab.plotting import COLORS, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Train with no teleport, with a pseudo-teleportation (a random jump on the sphere of radius ||W - tau W|| "
    "around W) and with a real teleport at initialisation; mean loss curves +-2 std across seeds and the "
    "early-loss gaps against no teleport (Armenta et al. 2023, Sec. 5.2, Fig. 9)."
)

DEFAULTS: dict[str, Any] = {**copy.deepcopy(TRAINING_DEFAULTS), "include_teleport": True}
CHOICES = TRAINING_CHOICES


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, CSVs, PNGs and ``runs/``."""
    cfg = merge_config(DEFAULTS, config or {}, source="pseudo-teleport")
    validate_config("pseudo-teleport", cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = [
        arm("none"),
        arm("pseudo", teleport_at=0, cob_range=cfg["cob_range"], sampling=cfg["sampling"], pseudo=True),
    ]
    if cfg["include_teleport"]:
        arms.append(arm("teleport", teleport_at=0, cob_range=cfg["cob_range"], sampling=cfg["sampling"]))
    records = run_grid(
        grid_tasks(cfg, arms), out, workers=cfg["workers"], progress_bar=progress, desc="pseudo-teleport runs"
    )
    early = cfg["early_epochs"] or max(1, int(cfg["epochs"]) // 4)
    gaps = []
    for a in arms[1:]:
        gaps += paired_gaps(
            records, baseline="none", arm_name=a["arm"], early_epochs=early, early_iters=cfg["early_iters"]
        )
    distances = [
        {"arm": r["task"]["arm"], "seed": r["task"]["seed"], **t} for r in records for t in r["history"]["teleports"]
    ]
    write_csv(out / "curves.csv", aggregate(records))
    write_csv(out / "gaps.csv", gap_table(gaps))
    if distances:
        write_csv(out / "jumps.csv", distances)
    names = [a["arm"] for a in arms]
    results = {
        "experiment": "pseudo-teleport",
        "config": cfg,
        "num_runs": len(records),
        "gaps": gaps,
        "overall": {
            a: {m: overall([g for g in gaps if g["arm"] == a], m) for m in ("gap_first_epoch", "gap_early")}
            for a in names[1:]
        },
        "files": {"csv": ["curves.csv", "gaps.csv", "jumps.csv"], "runs": "runs/"},
    }
    colors = {"none": COLORS["baseline"], "pseudo": COLORS["pseudo"], "teleport": COLORS["teleport"]}
    plots = plot_curves(
        out, "curves.csv", arms=names, metric="train_loss", colors=colors, filename_prefix="pseudo_teleport"
    )
    plots += plot_curves(
        out,
        "curves.csv",
        arms=names,
        metric="val_acc",
        colors=colors,
        filename_prefix="pseudo_teleport",
        ylabel="validation accuracy",
    )
    results["files"]["plots"] = [p.name for p in plots]
    write_json(out / "results.json", results)
    return results


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Pseudo-teleportation control"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "seeds": 3,
    "epochs": 6,
    "optimizers": ["sgd"],
    "lrs": [0.01, 0.001],  # every learning rate of the default, reported each
    "workers": 1,
    "tensorboard": False,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 16


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    paired gaps of the real and the pseudo-teleport against no teleport."""
    cfg = res["config"]
    figs = [
        Figure(
            d / p,
            ("Training loss" if "train_loss" in p else "Validation accuracy")
            + " per epoch, mean ± 2 std across seeds. Grey: pseudo-teleportation (a random jump of the "
            "same length as the teleport); blue: real teleport; orange: none.",
        )
        for p in res["files"].get("plots", [])
    ]
    verdict = pseudo_verdict(res["gaps"])
    pseudo_div = sum(g["diverged"].get("pseudo", 0) for g in res["gaps"] if g["arm"] == "pseudo")
    pseudo_runs = sum(g["n_seeds"] for g in res["gaps"] if g["arm"] == "pseudo")
    pseudo_helps = any(
        clearly(g[m], +1) for g in res["gaps"] if g["arm"] == "pseudo" for m in ("gap_early", "gap_final") if m in g
    )
    notes = [
        "Pseudo-teleportation (training.py): V = W + r·u with r = ‖W − τW‖ (the same CoB sample a real teleport "
        "would use) and u uniform on the unit sphere of the whole parameter vector; the function changes.",
        "Every learning rate run is reported; a diverged run loses its seed's comparison (median over all "
        "seeds, see nnteleport.lab.experiments.paired).",
    ]
    if pseudo_div:
        notes.append(
            f"{pseudo_div}/{pseudo_runs} pseudo-teleported run(s) diverged (NaN loss): a random jump of the "
            "teleport's length is far outside the initialisation scale at these learning rates."
        )
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Sec. 5.2, Fig. 9): moving the weights as far as a teleport would, but in a random "
            "direction, does not improve training. Here: "
            f"{', '.join(cfg['models'])} on {', '.join(cfg['datasets'])}, {cfg['optimizers']}, lr {cfg['lrs']}, "
            f"{cfg['seeds']} seeds, {cfg['epochs']} epochs."
        ),
        numbers=gap_rows(res["gaps"]),
        figures=figs,
        notes=notes,
        verdict=verdict,
        status="bad" if pseudo_helps else "good",
    )
    return sec, []


def pseudo_verdict(gaps: list[dict[str, Any]]) -> str:
    """What was measured, per setting (every learning rate): for each arm against ``none``, the median early
    gap over all seeds, how many seeds it was ahead, how many of its runs diverged, and the final losses."""
    parts = []
    settings = list(dict.fromkeys((g["model"], g["optimizer"], g["lr"]) for g in gaps))
    for model, opt, lr in settings:
        mine = [g for g in gaps if (g["model"], g["optimizer"], g["lr"]) == (model, opt, lr)]
        arms = []
        for g in mine:
            s, n = g["gap_early"], g["n_seeds"]
            final = g["final_train_loss"]
            med = num_text(s.get("median", s["mean"]))
            fa, fn = final[g["arm"]], final["none"]
            fin = " vs none ".join(num_text(v.get("median", v["mean"]), signed=False) for v in (fa, fn))
            end = g.get("gap_final")
            ahead_end = f", lower at the end in {end['wins']}/{n}" if end else ""
            arms.append(
                f"{g['arm']} median early gap {med} (ahead early in {s.get('wins', '?')}/{n}{ahead_end}, diverged "
                f"{g['diverged'].get(g['arm'], 0)}/{n}; final train loss median {fin})"
            )
        parts.append(f"{model} {opt} lr {lr:g}: " + "; ".join(arms))
    return " | ".join(parts) if parts else "no settings"
