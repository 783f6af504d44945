"""Teleportation during training: :class:`Teleport` and the paper's control :class:`PseudoTeleport`, at the
start of given epochs.

A teleport ``V = tau . W`` (Armenta et al. 2023, Theorem 1) keeps the function and moves the weights; gradients
transform as ``dV = dW / tau`` (Theorem 2), so optimizer state accumulated before it is in the old coordinates:
by default the optimizer is re-created right after (:class:`OptimizerStateOnTeleport`).

Pseudo-teleportation (Sec. 5.2): the model is teleported on a copy with the same CoB sample, the step length
``r = ||W - tau W||`` over all parameters is measured, and the weights move to ``V = W + r u`` with ``u``
uniform on the unit sphere of the whole parameter vector (a normalised float64 standard Gaussian).

Each teleport at epoch ``e`` draws from its own generator seeded from ``(seed, e)``, so a teleported run and its
baseline share the initialisation and the order of the batches.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nnteleport._choice import Choice
from nnteleport.lab.training.loop import Callback
from nnteleport.lab.training.rng import derived_seed

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = ["OptimizerStateOnTeleport", "PseudoTeleport", "ResetOptimizer", "Teleport"]


class OptimizerStateOnTeleport(Choice, what="optimizer_state_on_teleport"):
    """What happens to the optimizer state when the model is teleported during training.

    ``"reset"``: a fresh optimizer (momentum buffers, Adam moments and step count from zero; the current
    learning rate, decays included, carried over by the schedule). ``"keep"``: the stale state acts on the new
    coordinates. ``"transform"``: the state is transformed like the gradients (momentum buffers and first moments
    ``/ T``, second moments ``/ T^2``; :func:`nnteleport.engine.optim_state.transform_optimizer_state`).
    """

    RESET = "reset"
    KEEP = "keep"
    TRANSFORM = "transform"


def _teleport_fn() -> Callable[..., Any]:
    """``nnteleport.engine.apply.teleport``, imported on first use (tests replace this function)."""
    from nnteleport.engine.apply import teleport

    return teleport


def _flat_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``||a - b||`` over all parameters, in float64."""
    if set(a) != set(b):
        raise RuntimeError(
            "teleportation changed the parameter names of the model "
            f"(only before: {sorted(set(a) - set(b))[:5]}, only after: {sorted(set(b) - set(a))[:5]})"
        )
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def _norm(a: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in a.values()))


class Teleport(Callback):
    """Teleports the model in place at the start of each epoch in ``epochs`` (before its first step; ``0`` =
    right after initialisation) and appends a record to ``history.teleports``: ``epoch``, ``kind``,
    ``cob_range``, ``sampling``, ``distance`` ``||W - V||`` and ``weight_norm`` ``||W||`` (before).

    Parameters
    ----------
    x : Tensor
        Example batch ``(B, *input_shape)`` given to the engine (on the model's device and dtype).
    epochs : iterable of int
        Epoch boundaries of the teleports.
    seed : int
        The teleport at epoch ``e`` samples its CoB from a generator seeded from ``(seed, e, 0x7E1E)``.
    cob_range, sampling
        CoB range ``sigma`` (factors in ``[1 - sigma, 1 + sigma]``) and ``"intra"``/``"inter"`` sampling.
    reset_optimizer : bool
        Re-create the optimizer right after each teleport (``"reset"`` of :class:`OptimizerStateOnTeleport`).

    On resume it replays its earlier teleports (same generators) before the weights are loaded, which rebuilds
    the structure they added (activation wrappers ``tau * act(x / tau)`` for non-homogeneous activations).
    """

    kind = "teleport"
    state_key = "teleport"

    def __init__(
        self,
        x: torch.Tensor,
        epochs: Iterable[int],
        *,
        seed: int,
        cob_range: float = 0.9,
        sampling: str = "inter",
        reset_optimizer: bool = True,
        transform_optimizer: bool = False,
    ) -> None:
        self.x = x
        self.epochs = sorted({int(e) for e in epochs})
        self.seed, self.cob_range, self.sampling = seed, cob_range, sampling
        self.reset_optimizer = reset_optimizer
        self.transform_optimizer = transform_optimizer
        self._factors: dict[str, torch.Tensor] | None = None  # of the last move, for the optimizer transform

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(derived_seed(self.seed, epoch, 0x7E1E))

    def _teleport(self, model: nn.Module, gen: torch.Generator) -> Any:
        if self.transform_optimizer:  # the same CoB draw as teleport's own, made explicit for the factors
            from nnteleport.engine.apply import sample_cob
            from nnteleport.engine.optim_state import parameter_factors

            cob = sample_cob(model, self.x, self.cob_range, self.sampling, generator=gen)
            self._factors = parameter_factors(model, self.x, cob)
            return _teleport_fn()(model, self.x, cob=cob, inplace=True)
        return _teleport_fn()(
            model, self.x, cob_range=self.cob_range, sampling=self.sampling, generator=gen, inplace=True
        )

    def move(self, model: nn.Module, epoch: int) -> tuple[float, float]:
        """Move ``model`` in place as the teleport at ``epoch`` does; return ``(||W - V||, ||W||)``."""
        before = _flat_params(model)
        out = self._teleport(model, self._generator(epoch))
        if isinstance(out, nn.Module) and out is not model:
            raise RuntimeError("nnteleport.teleport(..., inplace=True) returned a new module; train needs in-place")
        return _distance(before, _flat_params(model)), _norm(before)

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch not in self.epochs:
            return
        distance, weight_norm = self.move(trainer.model, trainer.epoch)
        trainer.history.teleports.append(
            {
                "epoch": trainer.epoch,
                "kind": self.kind,
                "cob_range": float(self.cob_range),
                "sampling": str(self.sampling),
                "distance": distance,
                "weight_norm": weight_norm,
            }
        )
        if self.reset_optimizer:
            trainer.reset_optimizer()
        elif self.transform_optimizer and self._factors is not None:
            from nnteleport.engine.optim_state import transform_optimizer_state

            transform_optimizer_state(trainer.optimizer, trainer.model, self._factors)

    def on_resume(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        for rec in state["history"]["teleports"]:
            if rec["kind"] == self.kind and rec["epoch"] in self.epochs:
                self.move(trainer.model, rec["epoch"])


class PseudoTeleport(Teleport):
    """The control of a :class:`Teleport`: at the same epochs the weights move by the same distance
    ``r = ||W - tau W||`` (``tau`` from the same generator, applied to a copy) in a uniformly random direction:
    ``V = W + r u``, ``u = g / ||g||``, ``g`` a float64 standard Gaussian over all parameters (same generator,
    after the CoB). Records have ``kind = "pseudo"``; nothing to replay on resume (no structure changes)."""

    kind = "pseudo"
    state_key = "pseudo_teleport"

    def move(self, model: nn.Module, epoch: int) -> tuple[float, float]:
        gen = self._generator(epoch)
        before = _flat_params(model)
        ref = copy.deepcopy(model)
        self._teleport(ref, gen)
        dist = _distance(before, _flat_params(ref))
        del ref
        dirs = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in before.items()}
        scale = dist / math.sqrt(sum(float(d.pow(2).sum()) for d in dirs.values()))
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.add_((dirs[k] * scale).to(device=p.device, dtype=p.dtype))
        return dist, _norm(before)

    def on_resume(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """Nothing to replay: a pseudo-teleport only moves the weights, which the checkpoint holds."""


class ResetOptimizer(Callback):
    """Re-creates the optimizer at the start of each epoch in ``epochs``, without moving the weights.

    The control arm of a comparison whose other arm teleports at those epochs (and resets its optimizer there,
    :class:`OptimizerStateOnTeleport` ``"reset"``): both arms then start the epoch with fresh optimizer state
    (zero momentum buffers, Adam moments and step count), so they differ only by the teleport. Runs after the
    teleport and before the learning-rate schedule, which sets the (decayed) learning rate of the new optimizer.
    Nothing to checkpoint: the optimizer state itself is in the checkpoint.
    """

    state_key = "reset_optimizer"

    def __init__(self, epochs: Iterable[int]) -> None:
        self.epochs = sorted({int(e) for e in epochs})

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch in self.epochs:
            trainer.reset_optimizer()
