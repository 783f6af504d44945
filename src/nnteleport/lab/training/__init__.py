"""The training loop shared by all experiments: a small :class:`Trainer` driven by callbacks, and :func:`train`,
the standard run that builds those callbacks from its arguments.

:func:`train` trains a classifier with SGD, SGD with momentum, Adam or any optimizer-like object (for example
a G-space optimizer), with L2 regularisation, step learning-rate decay, an optional re-initialisation, and
optional neural teleportation (or the paper's pseudo-teleportation control) at epoch boundaries, and records a
:class:`History` of per-epoch train/validation loss and accuracy and per-iteration train loss. It checkpoints
every epoch and resumes an interrupted run with bit-identical results on CPU.

Layout: :mod:`.loop` (:class:`Trainer`, the :class:`Callback` protocol, :class:`Step`), :mod:`.callbacks`
(history, evaluation, penalty, epoch time), :mod:`.optim` (built-in optimizers, :class:`StepDecay`,
:class:`WeightDecay`), :mod:`.teleport` (:class:`Teleport`, :class:`PseudoTeleport`), :mod:`.checkpoint`
(:class:`Checkpoint`, :func:`load_checkpoint`, fingerprints), :mod:`.logs` (:class:`TensorBoard`,
:class:`ProgressBar`), :mod:`.history`, :mod:`.batches` (:func:`evaluate`), :mod:`.rng`, :mod:`.standard`
(:func:`train`), :mod:`.vectorized` (:func:`train_stacked`: many seeds of one model in one process). A run of
your own::

    trainer = Trainer(model, data.train, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
                      callbacks=[RecordHistory(), Evaluation(data.val), MyCallback(), Checkpoint(path)])
    history = trainer.fit(10)                              # or fit(10, resume=load_checkpoint(path))

Paper settings (Armenta et al. 2023, Sec. 5): L2 regularisation and learning-rate decay at epoch 80 (the
default ``lr_decay_epochs=(80,)``, ``lr_decay_gamma=0.1``); teleportation once right after initialisation
(``teleport_at=0``) with ``cob_range=0.9``, ``sampling="inter"``; once at epoch 30 for the mid-training
experiment (``teleport_at=30``).

Epochs are numbered from 0. ``teleport_at=k`` teleports at the boundary *before* epoch ``k`` is trained, i.e.
after ``k`` epochs of training (``0`` = at initialisation). The entry ``i`` of every per-epoch list of the
history is measured at the end of epoch ``i``.

Teleporting during training and the optimizer state
---------------------------------------------------
A teleportation ``V = tau . W`` changes the coordinates of the weights: gradients transform as
``dV = dW / tau`` (Theorem 2 of the paper, per weight ``w_ij -> w_ij tau_i / tau_j`` and
``dw_ij -> dw_ij tau_j / tau_i``), so a momentum buffer or Adam moment accumulated before the teleport is
expressed in the old coordinates and would push the teleported weights along a direction that is not the
descent direction of the new point. By default (``optimizer_state_on_teleport="reset"``) the optimizer is
therefore re-created right after each teleport: momentum buffers and Adam moments (and Adam's step count)
start from zero, as they do at initialisation, which is exactly the paper's setting when teleporting at
epoch 0 and a clean "one teleport, then plain training" for the mid-training experiment. The current
learning rate (including decays) is carried over. ``"keep"`` leaves the optimizer state untouched (the
stale buffers act on the new coordinates).

Pseudo-teleportation (the paper's control, Sec. 5.2): the model is teleported on a copy (same CoB sample as a
real teleport would use), the step length ``r = ||W - tau W||`` over all parameters is measured, and the
weights are moved to ``V = W + r u`` with ``u`` uniform on the unit sphere of the whole parameter vector (a
normalised standard Gaussian), i.e. a random point of the sphere centred at ``W`` of radius ``||W - tau W||``.

Determinism: ``seed`` seeds python's, numpy's and torch's global generators at the start; the data order uses
a separate ``torch.Generator`` (seeded from ``seed``), each teleport its own generator seeded from
``(seed, epoch)`` -- so a teleported run and its non-teleported baseline with the same seed share the
initialisation and the order of the batches. Checkpoints hold the model, optimizer, schedule, all generator
states, the history, and the state of ``penalty`` and of callbacks that have ``state_dict``. Resumed runs are
bit-identical on CPU (tested); on CUDA they are as deterministic as the kernels (set
``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for bit-identity).
"""

from __future__ import annotations

from nnteleport.lab.training.batches import evaluate
from nnteleport.lab.training.callbacks import (
    EpochTimer,
    Evaluation,
    FunctionCallback,
    Penalty,
    RecordHistory,
    StepTimer,
)
from nnteleport.lab.training.checkpoint import CHECKPOINT_NAME, Checkpoint, load_checkpoint
from nnteleport.lab.training.history import History
from nnteleport.lab.training.logs import ProgressBar, TensorBoard
from nnteleport.lab.training.loop import Callback, Step, Trainer
from nnteleport.lab.training.optim import OptimizerName, StepDecay, WeightDecay, make_optimizer
from nnteleport.lab.training.standard import train
from nnteleport.lab.training.teleport import (
    OptimizerStateOnTeleport,
    PseudoTeleport,
    ResetOptimizer,
    Teleport,
    TeleportCoB,
)
from nnteleport.lab.training.vectorized import train_stacked

__all__ = [
    "CHECKPOINT_NAME",
    "Callback",
    "Checkpoint",
    "EpochTimer",
    "Evaluation",
    "FunctionCallback",
    "History",
    "OptimizerName",
    "OptimizerStateOnTeleport",
    "Penalty",
    "ProgressBar",
    "PseudoTeleport",
    "RecordHistory",
    "ResetOptimizer",
    "Step",
    "StepDecay",
    "StepTimer",
    "Teleport",
    "TeleportCoB",
    "TensorBoard",
    "Trainer",
    "WeightDecay",
    "evaluate",
    "load_checkpoint",
    "make_optimizer",
    "train",
    "train_stacked",
]
