"""nnteleport: symmetries of neural-network weight space.

Neural teleportation (Armenta et al., 2023), scale-invariant parameter spaces for ReLU networks
(G-space and weight fixing; Jestädt 2025 after Meng et al. 2019) and checkpoint-distance
regularisation (von Bachmann 2020), for any traceable ``nn.Module``.

The public API is re-exported here and resolved lazily, so ``import nnteleport`` stays cheap
(the CLI starts fast) and optional parts never import what they do not need.

>>> import nnteleport
>>> teleported = nnteleport.teleport(model, x, cob_range=0.9, sampling="inter")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (one module per concept)
_EXPORTS: dict[str, str] = {
    # teleportation engine (graph analysis -> CoB -> teleport)
    "analyze": "nnteleport.engine.analysis",
    "TeleportPlan": "nnteleport.engine.analysis",
    "GroupInfo": "nnteleport.engine.analysis",
    "CoB": "nnteleport.engine.cob",
    "Sampling": "nnteleport.engine.cob",
    "sample_cob": "nnteleport.engine.apply",
    "teleport": "nnteleport.engine.apply",
    "micro_teleport": "nnteleport.engine.apply",
    "TeleportedActivation": "nnteleport.engine.apply",
    "TeleportReport": "nnteleport.engine.report",
    "optimize_cob": "nnteleport.engine.optimize",
    "transform_optimizer_state": "nnteleport.engine.optim_state",
    "parameter_factors": "nnteleport.engine.optim_state",
    "select_cob": "nnteleport.engine.optimize",
    "balanced_cob": "nnteleport.engine.optimize",
    "pathcond_cob": "nnteleport.engine.pathcond",
    "OptimizedCoB": "nnteleport.engine.optimize",
    "CoBFunction": "nnteleport.engine.optimize",
    "Objective": "nnteleport.engine.optimize",
    "NNTeleportError": "nnteleport.errors",
    "UnsupportedModelError": "nnteleport.errors",
    "UntraceableModelError": "nnteleport.errors",
    # scale-invariant parameter spaces
    "GSpace": "nnteleport.gspace.chart",
    "GSpaceOptimizer": "nnteleport.gspace.optimizer",
    "fix_weights": "nnteleport.gspace.fixing",
    "FixedWeights": "nnteleport.gspace.fixing",
    # checkpoint distance
    "CheckpointDistance": "nnteleport.distance",
    "canonicalize": "nnteleport.distance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nnteleport' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    # ruff: noqa: F401
    from nnteleport.distance import CheckpointDistance, canonicalize
    from nnteleport.engine.analysis import GroupInfo, TeleportPlan, analyze
    from nnteleport.engine.apply import TeleportedActivation, micro_teleport, sample_cob, teleport
    from nnteleport.engine.cob import CoB, Sampling
    from nnteleport.engine.optim_state import parameter_factors, transform_optimizer_state
    from nnteleport.engine.optimize import (
        CoBFunction,
        Objective,
        OptimizedCoB,
        balanced_cob,
        optimize_cob,
        select_cob,
    )
    from nnteleport.engine.pathcond import pathcond_cob
    from nnteleport.engine.report import TeleportReport
    from nnteleport.errors import NNTeleportError, UnsupportedModelError, UntraceableModelError
    from nnteleport.gspace.chart import GSpace
    from nnteleport.gspace.fixing import FixedWeights, fix_weights
    from nnteleport.gspace.optimizer import GSpaceOptimizer
