"""G-space: the positively scale-invariant coordinates of a ReLU-family network, and any optimizer on them.

After Jestädt (2025, Ch. 2-3) and Meng et al. (G-SGD, ICLR 2019), generalised to unequal widths, biases and
convolutions. The package, in the order the pieces build on each other:

* :mod:`~nnteleport.gspace.chains` -- chain discovery with ``torch.fx`` (:func:`trace_chain`), using the
  engine's one table of positively homogeneous operations; :func:`rescale_chain`.
* :mod:`~nnteleport.gspace.chart` -- the coordinate map :class:`GSpace` (weights <-> path values, gradients by
  the inverse chain rule in closed form); the maths is in its module docstring.
* :mod:`~nnteleport.gspace._hotpath` -- the per-step work on an explicit :class:`~._hotpath.Layout` (eager
  whole-tensor operations, or the verified C kernels of :mod:`~nnteleport.gspace._native`).
* :mod:`~nnteleport.gspace.optimizer` -- :class:`GSpaceOptimizer`, any ``torch.optim`` optimizer on the
  coordinates of any :class:`Chart`.
* :mod:`~nnteleport.gspace.fixing` -- weight fixing (:func:`fix_weights`), the other way to remove the symmetry.
"""

from __future__ import annotations

from nnteleport.gspace.chains import ChainLayer, rescale_chain, trace_chain
from nnteleport.gspace.chart import GSpace, Skeleton
from nnteleport.gspace.fixing import FixedWeights, Selection, fix_weights
from nnteleport.gspace.optimizer import Chart, GSpaceOptimizer, StepPlan

__all__ = [
    "ChainLayer",
    "Chart",
    "FixedWeights",
    "GSpace",
    "GSpaceOptimizer",
    "Selection",
    "Skeleton",
    "StepPlan",
    "fix_weights",
    "rescale_chain",
    "trace_chain",
]
