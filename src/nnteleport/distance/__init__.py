"""Checkpoint-distance regularisation and the balanced (canonical) representative of a rescaling orbit.

Von Bachmann (2020, Sec. 2.1) trains a network normally, stores *checkpoints* of its parameters and then
adds a penalty that places a "hill" on every checkpoint, so that the optimiser is pushed away from where the
network has already been (to escape cells of the loss landscape and to build diverse snapshot ensembles):

.. math::

    L(\\theta) = L_{CE}(\\theta) + s \\sum_c k(\\theta, \\theta_c), \\qquad
    k_{rbf}(\\theta, \\theta_c) = \\exp\\!\\Big(-\\frac{\\lVert\\theta - \\theta_c\\rVert^2}{2\\sigma^2}\\Big)
    \\quad \\text{(Eq. 2.3, 2.8, 2.9)}

with the gradient (Eq. 2.18) :math:`\\nabla_\\theta\\, s\\,k = s\\,(\\theta_c - \\theta)\\,k / \\sigma^2`.
The thesis' plain squared-L2 form (Eq. 2.2, Alg. 5) is offered as ``kernel="squared_l2"`` with
:math:`k = -\\lVert\\theta - \\theta_c\\rVert^2` (negative, so that *minimising* the loss increases the
distance; unbounded, hence only sensible with a small ``strength`` or few steps).

``invariant=True`` measures distances modulo the positive-rescaling symmetry of ReLU networks: both the
current parameters and the checkpoints are mapped to the *balanced representative* of their orbit
(:func:`canonicalize`, DESIGN.md Sec. 3), so the optimiser cannot "escape" a checkpoint by merely sliding
along the orbit without changing the function.
"""

from __future__ import annotations

from nnteleport.distance.canonical import canonicalize
from nnteleport.distance.kernels import Kernel
from nnteleport.distance.penalty import CheckpointDistance
from nnteleport.distance.schedules import CheckpointSchedule, StepSchedule

__all__ = [
    "CheckpointDistance",
    "CheckpointSchedule",
    "Kernel",
    "StepSchedule",
    "canonicalize",
]
