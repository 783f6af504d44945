"""Experiments: one module per experiment, composing the core library.

Every experiment module defines

* ``DESCRIPTION: str`` -- one paragraph, shown by ``nnteleport experiment --help``;
* ``DEFAULTS: dict`` -- the default (small, 2-core-laptop) configuration; ``--config FILE.yaml`` and
  ``--set key=value`` may only change keys that exist here, with values of a compatible type;
* ``run(config: dict, out: pathlib.Path, *, progress: bool = True) -> dict`` -- runs the experiment, writes
  ``out/results.json`` (all numbers behind the plots; :func:`nnteleport.lab.plotting.write_json`), CSVs of
  curves and PNG plots, and returns the results;

and its part of the demo (:mod:`nnteleport.lab.demo`, which loops over this registry):

* ``TITLE: str`` -- the title of its section in the demo report;
* ``DEMO: dict`` -- the demo's configuration, changes to ``DEFAULTS`` (seconds on one core);
* ``DEMO_SECONDS: float`` -- about how long ``DEMO`` takes (the demo starts the longest first);
* ``report_section(results: dict, folder: pathlib.Path) -> (Section, list[Headline])`` -- the section of the
  report (:class:`nnteleport.lab.report_html.Section`: claim, measured numbers, figures from ``folder``,
  verdict) and the headline cards, from the results ``run`` returned.

The registry below is the single list of experiment names (the CLI names), in the report's order.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from nnteleport.errors import InvalidValueError

__all__ = ["DEMO_ATTRIBUTES", "EXPERIMENTS", "get_experiment"]

#: What every experiment module defines for the demo (see above).
DEMO_ATTRIBUTES = ("TITLE", "DEMO", "DEMO_SECONDS", "report_section")

EXPERIMENTS: dict[str, str] = {
    # Neural teleportation (Armenta et al. 2023)
    "level-curves": "nnteleport.lab.experiments.level_curves",
    "micro-teleport": "nnteleport.lab.experiments.micro_teleport",
    "interpolation": "nnteleport.lab.experiments.interpolation",
    "gradient-scale": "nnteleport.lab.experiments.gradient_scale",
    "training": "nnteleport.lab.experiments.training",
    "pseudo-teleport": "nnteleport.lab.experiments.pseudo_teleport",
    "mid-training": "nnteleport.lab.experiments.mid_training",
    "weight-histograms": "nnteleport.lab.experiments.weight_histograms",
    "feature-maps": "nnteleport.lab.experiments.feature_maps",
    "lr-confound": "nnteleport.lab.experiments.lr_confound",
    "teleport-schedule": "nnteleport.lab.experiments.teleport_schedule",
    # Scale-invariant parameter spaces (Jestädt 2025)
    "gspace-lr-grid": "nnteleport.lab.experiments.gspace_lr_grid",
    "fixed-value-grid": "nnteleport.lab.experiments.fixed_value_grid",
    "toy-surfaces": "nnteleport.lab.experiments.toy_surfaces",
    # Checkpoint-distance regularisation (von Bachmann 2020)
    "distance-training": "nnteleport.lab.experiments.distance_training",
}


def get_experiment(name: str) -> ModuleType:
    """Import and return the module of experiment ``name`` (a CLI name such as ``"level-curves"``)."""
    if name not in EXPERIMENTS:
        allowed = ", ".join(sorted(EXPERIMENTS))
        raise InvalidValueError(f"unknown experiment {name!r}; choose one of: {allowed}")
    return importlib.import_module(EXPERIMENTS[name])
