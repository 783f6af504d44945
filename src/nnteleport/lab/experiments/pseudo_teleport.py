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
from nnteleport.lab.experiments.training import CHOICES as TRAINING_CHOICES
from nnteleport.lab.experiments.training import (
    DEFAULTS as TRAINING_DEFAULTS,
)
from nnteleport.lab.experiments.training import (
    aggregate,
    arm,
    gap_table,
    grid_tasks,
    overall,
    paired_gaps,
    plot_curves,
    run_grid,
)
from nnteleport.lab.plotting import COLORS, write_csv, write_json

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
