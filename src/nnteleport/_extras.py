"""Optional dependencies: which extra of ``pip install nnteleport[...]`` provides which module, and one check.

``pip install nnteleport`` installs the library core (``engine``, ``gspace``, ``distance``, ``ensembles``) with
torch, numpy and scipy only. The application layer (:mod:`nnteleport.lab`: experiments, demo, data sets, plots,
progress bars, YAML configs) needs the ``lab`` extra. :func:`require` turns a missing one into a single line that
names the packages and the command that installs them:

>>> require("yaml", extra="lab", feature="`nnteleport experiment`")  # doctest: +SKIP
MissingExtraError: `nnteleport experiment` needs the optional package(s) pyyaml, which are not installed; install
them with: pip install 'nnteleport[lab]'

:data:`EXTRAS` mirrors ``[project.optional-dependencies]`` of ``pyproject.toml`` (``tests/test_packaging.py`` keeps
the two equal).
"""

from __future__ import annotations

import importlib.util

from nnteleport.errors import MissingExtraError

__all__ = ["EXTRAS", "MissingExtraError", "missing", "require", "require_extra"]

#: extra -> {top-level module name: distribution name on PyPI}; the extras the library checks for.
EXTRAS: dict[str, dict[str, str]] = {
    "lab": {
        "matplotlib": "matplotlib",  # plots of the experiments (lab.plotting, experiments/*)
        "sklearn": "scikit-learn",  # the embedded digits data set (lab.data)
        "mnist1d": "mnist1d",  # the MNIST-1D data set (lab.data)
        "tqdm": "tqdm",  # progress bars (lab.training, lab.demo, experiments.sweep, experiments.workers)
        "yaml": "pyyaml",  # --config FILE.yaml and --set values (lab.experiments.config)
    },
    "ray": {
        "ray": "ray",  # sweeps on a Ray cluster, --backend ray (lab.experiments.ray_backend)
    },
    # Hugging Face models (tests/test_transformers.py); the engine recognises their classes by name, without it
    "transformers": {"transformers": "transformers"},
}


def _importable(module: str) -> bool:
    """Whether ``import module`` would find it (without importing it; an import hook that refuses it counts)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder refused it / a module in sys.modules without a spec
        return False


def missing(*modules: str) -> list[str]:
    """The top-level ``modules`` that cannot be imported, in the given order."""
    return [m for m in modules if not _importable(m)]


def require(*modules: str, extra: str, feature: str | None = None) -> None:
    """Raise :class:`MissingExtraError` unless every top-level module in ``modules`` is importable.

    ``extra`` names the ``pip install 'nnteleport[EXTRA]'`` that provides them (a key of :data:`EXTRAS`);
    ``feature`` says what needs them (default: ``nnteleport.lab``).
    """
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}; known: {', '.join(EXTRAS)}")
    absent = missing(*modules)
    if not absent:
        return
    dists = [EXTRAS[extra].get(m, m) for m in absent]
    raise MissingExtraError(
        f"{feature or 'nnteleport.lab'} needs the optional package(s) {', '.join(dists)}, which "
        f"{'is' if len(dists) == 1 else 'are'} not installed; install them with: pip install 'nnteleport[{extra}]'"
    )


def require_extra(extra: str, feature: str | None = None) -> None:
    """:func:`require` every module of ``extra`` (e.g. ``require_extra("lab", "`nnteleport demo`")``)."""
    require(*EXTRAS.get(extra, {}), extra=extra, feature=feature)
