"""The teleportation engine: trace a model, find its change-of-basis (CoB) symmetries, apply them exactly.

Pipeline (Armenta et al., "Neural Teleportation", 2023)::

    inspection  refuse what cannot be analysed (hooks, wrappers, parametrizations) or mark it a black box
    analysis    trace with torch.fx, propagate neuron "spaces" through the graph with the per-op rules,
                merge and pin them -> TeleportPlan (one group of free neurons per hidden space)
    rules       the per-op registry: how each op maps neuron spaces, and the only list of positively
                homogeneous activations (shared with nnteleport.gspace)
    cob         a CoB: one non-zero factor tau per free neuron; sampling ("intra", "inter")
    optimize    V(tau) differentiable in log|tau|; optimize_cob, select_cob, balanced_cob
    pathcond    path-kernel diagonal and the PathCond-style conditioning rescaling pathcond_cob
    optim_state optimizer state across a teleport (momentum / moments transformed like the gradients)
    apply       teleport / micro_teleport: W_ab <- tau_b / tau_a * W_ab, activations g(x) = tau * f(x / tau)
    activation  the activation wrapper TeleportedActivation
    report      TeleportReport: what moved, what was pinned and why

Only torch and numpy are imported.
"""

from __future__ import annotations

from nnteleport.engine.activation import TeleportedActivation
from nnteleport.engine.analysis import GroupInfo, TeleportPlan, analyze
from nnteleport.engine.apply import micro_teleport, sample_cob, teleport
from nnteleport.engine.cob import CoB, Sampling
from nnteleport.engine.optim_state import parameter_factors, transform_optimizer_state
from nnteleport.engine.optimize import CoBFunction, Objective, OptimizedCoB, balanced_cob, optimize_cob, select_cob
from nnteleport.engine.pathcond import path_kernel_diagonal, pathcond_cob, pathcond_criterion
from nnteleport.engine.report import TeleportReport

__all__ = [
    "CoB",
    "CoBFunction",
    "GroupInfo",
    "Objective",
    "OptimizedCoB",
    "Sampling",
    "TeleportPlan",
    "TeleportReport",
    "TeleportedActivation",
    "analyze",
    "balanced_cob",
    "micro_teleport",
    "optimize_cob",
    "parameter_factors",
    "path_kernel_diagonal",
    "pathcond_cob",
    "pathcond_criterion",
    "sample_cob",
    "select_cob",
    "teleport",
    "transform_optimizer_state",
]
