"""Teleportation during training: :class:`Teleport` and the paper's control :class:`PseudoTeleport`, at the
start of given epochs and/or every ``K`` steps, with the CoB chosen at random (the paper) or by an objective or a
principled rescaling (:class:`TeleportCoB`: best-of-n, optimized, balanced, pathcond; :func:`choose_cob`).

A teleport ``V = tau . W`` (Armenta et al. 2023, Theorem 1) keeps the function and moves the weights; gradients
transform as ``dV = dW / tau`` (Theorem 2), so optimizer state accumulated before it is in the old coordinates:
by default the optimizer is re-created right after (:class:`OptimizerStateOnTeleport`).

Pseudo-teleportation (Sec. 5.2): the model is teleported on a copy with the same CoB sample, the step length
``r = ||W - tau W||`` over all parameters is measured, and the weights move to ``V = W + r u`` with ``u``
uniform on the unit sphere of the whole parameter vector (a normalised float64 standard Gaussian).

Each teleport at epoch ``e`` draws from its own generator seeded from ``(seed, e)``, so a teleported run and its
baseline share the initialisation and the order of the batches; a teleport after global step ``k`` draws from
``(seed, k)``.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError
from nnteleport.lab.training.loop import Callback
from nnteleport.lab.training.rng import derived_seed

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = [
    "COB_OPTIONS",
    "OptimizerStateOnTeleport",
    "PseudoTeleport",
    "ResetOptimizer",
    "Teleport",
    "TeleportCoB",
    "choose_cob",
    "merge_cob_options",
]


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
    return math.sqrt(_host_sum((a[k].double() - b[k].double()).pow(2).sum() for k in a))


def _norm(a: dict[str, torch.Tensor]) -> float:
    return math.sqrt(_host_sum(v.double().pow(2).sum() for v in a.values()))


def _device_sum(terms: Iterable[torch.Tensor]) -> torch.Tensor | None:
    """The float64 sum of the scalars ``terms``, added in order on their device (``None`` for none): the same
    IEEE additions as Python's ``sum(float(t) for t in terms)``, so the same number, with no host read."""
    total: torch.Tensor | None = None
    for t in terms:  # (a model spread over devices: the terms go to the first one's)
        total = t.double() if total is None else total + t.double().to(total.device)
    return total


def _host_sum(terms: Iterable[torch.Tensor]) -> float:
    """``sum(float(t) for t in terms)`` with one host read (see :func:`_device_sum`)."""
    total = _device_sum(terms)
    return 0.0 if total is None else float(total)


class TeleportCoB(Choice, what="teleport_cob"):
    """How :class:`Teleport` chooses its CoB (``cob_options`` of :class:`Teleport` tune the choices):

    * ``"random"`` -- sampled as by :func:`nnteleport.sample_cob` (``U[1 - s, 1 + s]``, signs under ``"inter"``);
    * ``"best-of-n"`` -- the best of ``n`` such samples by ``objective`` (:func:`nnteleport.select_cob`);
    * ``"optimized"`` -- projected gradient ascent on ``objective`` inside the range (:func:`nnteleport.optimize_cob`,
      default the squared gradient norm, Zhao et al. 2022), ``steps`` steps of size ``lr`` on ``log |tau|``;
    * ``"balanced"`` -- the minimum of ``sum ||V||^2`` over the positive orbit (ENorm; :func:`nnteleport.balanced_cob`);
    * ``"pathcond"`` -- the PathCond-style conditioning of the path-kernel diagonal
      (:func:`nnteleport.engine.pathcond.pathcond_cob`).

    ``"balanced"`` and ``"pathcond"`` are unbounded by default (``cob_options["principled_range"]``, a range
    ``s`` to bound them); ``"best-of-n"`` and ``"optimized"`` use the teleport's ``cob_range``.
    """

    RANDOM = "random"
    BEST_OF_N = "best-of-n"
    OPTIMIZED = "optimized"
    BALANCED = "balanced"
    PATHCOND = "pathcond"


#: The options of the CoB choices and their defaults (``cob_options`` of :class:`Teleport` / ``train``).
COB_OPTIONS: dict[str, Any] = {"n": 10, "objective": "grad_norm", "steps": 20, "lr": 0.15, "principled_range": None}


def merge_cob_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """:data:`COB_OPTIONS` updated by ``options`` (unknown keys refused)."""
    unknown = sorted(set(options or {}) - set(COB_OPTIONS))
    if unknown:
        raise InvalidValueError(f"teleport_options: unknown key(s) {unknown}; allowed: {', '.join(COB_OPTIONS)}")
    return {**COB_OPTIONS, **dict(options or {})}


def choose_cob(
    kind: str | TeleportCoB,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    cob_range: float,
    sampling: str,
    generator: torch.Generator,
    options: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The CoB of one teleport of ``kind`` (:class:`TeleportCoB`) at the model's current weights, and what the
    choice measured (``objective``, ``objective_initial`` at the identity, ``objective_value`` at the CoB)."""
    from nnteleport.engine import optimize
    from nnteleport.engine.apply import sample_cob
    from nnteleport.engine.pathcond import pathcond_cob

    k, o = TeleportCoB.parse(kind), merge_cob_options(options)
    if k is TeleportCoB.RANDOM:
        return sample_cob(model, x, cob_range, sampling, generator=generator), {}
    if k in (TeleportCoB.BEST_OF_N, TeleportCoB.OPTIMIZED) and y is None:
        raise InvalidValueError(f"teleport_cob={k.value!r} needs the targets of the teleport batch")
    if k is TeleportCoB.BEST_OF_N:
        r = optimize.select_cob(model, x, y, loss_fn, int(o["n"]), cob_range=cob_range, objective=o["objective"],
                                sampling=sampling, generator=generator)  # fmt: skip
    elif k is TeleportCoB.OPTIMIZED:
        r = optimize.optimize_cob(model, x, y, loss_fn, o["objective"], steps=int(o["steps"]), lr=float(o["lr"]),
                                  cob_range=cob_range)  # fmt: skip
    elif k is TeleportCoB.BALANCED:
        r = optimize.balanced_cob(model, x, cob_range=o["principled_range"])
    else:
        r = pathcond_cob(model, x, cob_range=o["principled_range"])
    return r.cob, {"objective": r.objective, "objective_initial": r.initial, "objective_value": r.value}


def _loss_and_grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, loss_fn: Any) -> tuple[float, float]:
    """``(L, sum ||dL/dW||^2)`` on ``(x, y)`` in eval mode (no running statistics move; ``.grad`` untouched)."""
    if y is None:
        return math.nan, math.nan
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        params = [p for p in model.parameters() if p.requires_grad]
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for m, mode in modes.items():
            m.training = mode
    sq = _device_sum(g.double().pow(2).sum() for g in grads if g is not None)
    if sq is None:
        return float(loss.detach()), 0.0
    loss_value, sq_value = torch.stack([loss.detach().double(), sq.to(loss.device)]).tolist()  # one host read
    return loss_value, sq_value


def _clear_optimizer_state(trainer: Trainer) -> None:
    """Reset the optimizer in the middle of an epoch: a torch optimizer keeps its object and learning rates (the
    schedule's decays stay), its state (momentum buffers, Adam moments, step counts) starts from zero; any other
    optimizer-like object is re-created."""
    opt = trainer.optimizer
    if isinstance(opt, torch.optim.Optimizer):
        opt.state = defaultdict(dict)
    else:
        trainer.reset_optimizer()


class _StepSchedule:
    """Counts the optimisation steps of a run and says when an every-``K``-steps event is due: after global step
    ``K, 2K, ...`` (so before step ``K + 1``), never after the very last step of the run. The count is rebuilt
    from ``history.iters_per_epoch`` when training starts (also after a resume at an epoch boundary)."""

    def __init__(self, every: int | None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidValueError(
                f"every (steps between teleports / resets) must be a positive integer, got {every!r}"
            )
        self.every, self.steps, self.in_epoch = every, 0, 0

    def start(self, trainer: Trainer) -> None:
        self.steps = int(sum(trainer.history.iters_per_epoch))

    def epoch_start(self) -> None:
        self.in_epoch = 0

    def step(self, trainer: Trainer) -> bool:
        self.steps += 1
        self.in_epoch += 1
        last = trainer.epoch == trainer.epochs - 1 and self.in_epoch >= trainer.iters_per_epoch
        return self.every is not None and self.steps % self.every == 0 and not last


class Teleport(Callback):
    """Teleports the model in place at the start of each epoch in ``epochs`` (before its first step; ``0`` =
    right after initialisation) and, with ``every = K``, after every ``K``-th optimisation step of the run (not
    after the last one); appends a record to ``history.teleports`` per teleport: ``epoch``, ``step`` (steps done
    before it), ``kind``, ``cob`` (:class:`TeleportCoB`), ``cob_range``, ``sampling``, ``distance`` ``||W - V||``,
    ``weight_norm`` ``||W||`` (before), and -- measured in eval mode on the teleport batch ``(x, y)``, outside the
    timed part -- ``loss_before`` / ``loss_after`` (equal up to round-off: the function is kept) and
    ``grad_norm_sq_before`` / ``_after``; the CoB choices with an objective add ``objective``,
    ``objective_initial``, ``objective_value``. The wall time of each teleport (choosing the CoB, moving the
    weights and the optimizer state) goes to ``history.timing["teleport_seconds"]`` (``"pseudo_seconds"`` for
    :class:`PseudoTeleport`); at the end of training ``history.timing["teleport_seconds_total"]`` and
    ``["teleport_time_share"]`` (that total over the sum of ``history.seconds``, the epochs' wall time); the time
    of the records' measurements, not part of the teleport's cost, goes to ``history.timing["measure_seconds"]``.

    Parameters
    ----------
    x : Tensor
        Example batch ``(B, *input_shape)`` given to the engine (on the model's device and dtype); the CoB
        objectives are evaluated on it (one batch, or a few concatenated).
    epochs : iterable of int
        Epoch boundaries of the teleports.
    seed : int
        The teleport at epoch ``e`` samples from a generator seeded from ``(seed, e, 0x7E1E)``; the one after
        step ``k`` from ``(seed, k, 0x57E9)``.
    cob_range, sampling
        CoB range ``sigma`` (factors in ``[1 - sigma, 1 + sigma]``) and ``"intra"``/``"inter"`` sampling.
    reset_optimizer : bool
        Reset the optimizer right after each teleport (``"reset"`` of :class:`OptimizerStateOnTeleport`; at an
        epoch start a fresh optimizer, after a step the state is cleared, the learning rates kept).
    transform_optimizer : bool
        Transform the optimizer state like the gradients (``"transform"``).
    cob : str
        :class:`TeleportCoB` (default ``"random"``, the paper's).
    every : int, optional
        Also teleport after every ``every``-th step.
    y : Tensor, optional
        Targets of ``x`` (needed by ``"best-of-n"`` and ``"optimized"``, and for the loss / gradient records).
    cob_options : mapping, optional
        :data:`COB_OPTIONS` to change.

    On resume it replays its earlier teleports before the weights are loaded, which rebuilds the structure they
    added (activation wrappers ``tau * act(x / tau)``): the random ones from their generators, the others from
    the CoBs it keeps in its state.
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
        cob: str = "random",
        every: int | None = None,
        y: torch.Tensor | None = None,
        cob_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.epochs = sorted({int(e) for e in epochs})
        self.seed, self.cob_range, self.sampling = seed, cob_range, sampling
        self.reset_optimizer = reset_optimizer
        self.transform_optimizer = transform_optimizer
        self.cob = TeleportCoB.parse(cob)
        self.options = merge_cob_options(cob_options)
        self.schedule = _StepSchedule(every)
        self._factors: dict[str, torch.Tensor] | None = None  # of the last move, for the optimizer transform
        self._info: dict[str, Any] = {}
        self._cobs: list[Any] = []  # the non-random CoBs applied, in order (replayed on resume)

    def _generator(self, epoch: int, step: int | None = None) -> torch.Generator:
        seed = derived_seed(self.seed, epoch, 0x7E1E) if step is None else derived_seed(self.seed, step, 0x57E9)
        return torch.Generator().manual_seed(seed)

    def _teleport(self, model: nn.Module, gen: torch.Generator, loss_fn: Any = None) -> Any:
        self._info = {}
        if self.cob is TeleportCoB.RANDOM and not self.transform_optimizer:
            return _teleport_fn()(
                model, self.x, cob_range=self.cob_range, sampling=self.sampling, generator=gen, inplace=True
            )
        # the same CoB draw as teleport's own for "random", made explicit for the factors
        cob, self._info = choose_cob(self.cob, model, self.x, self.y, loss_fn or F.cross_entropy,
                                     cob_range=self.cob_range, sampling=self.sampling, generator=gen,
                                     options=self.options)  # fmt: skip
        if self.transform_optimizer:
            from nnteleport.engine.optim_state import parameter_factors

            self._factors = parameter_factors(model, self.x, cob)
        if self.cob is not TeleportCoB.RANDOM:
            self._cobs.append(cob)
        return _teleport_fn()(model, self.x, cob=cob, inplace=True)

    def move(
        self, model: nn.Module, epoch: int, *, step: int | None = None, loss_fn: Any = None
    ) -> tuple[float, float]:
        """Move ``model`` in place as the teleport at ``epoch`` (or after global step ``step``) does; return
        ``(||W - V||, ||W||)``."""
        before = _flat_params(model)
        out = self._teleport(model, self._generator(epoch, step), loss_fn)
        if isinstance(out, nn.Module) and out is not model:
            raise RuntimeError("nnteleport.teleport(..., inplace=True) returned a new module; train needs in-place")
        return _distance(before, _flat_params(model)), _norm(before)

    def _apply(self, trainer: Trainer, *, after_step: bool) -> None:
        loss_fn = trainer.loss_fn
        if trainer.device.type == "cuda":  # the step's queued kernels are the step's time, not the teleport's
            torch.cuda.synchronize(trainer.device)
        measured = time.perf_counter()
        loss0, g0 = _loss_and_grad_norm(trainer.model, self.x, self.y, loss_fn)
        started = time.perf_counter()
        step = self.schedule.steps if after_step else None
        distance, weight_norm = self.move(trainer.model, trainer.epoch, step=step, loss_fn=loss_fn)
        if self.reset_optimizer:
            _clear_optimizer_state(trainer) if after_step else trainer.reset_optimizer()
        elif self.transform_optimizer and self._factors is not None:
            from nnteleport.engine.optim_state import transform_optimizer_state

            transform_optimizer_state(trainer.optimizer, trainer.model, self._factors)
        seconds = time.perf_counter() - started
        loss1, g1 = _loss_and_grad_norm(trainer.model, self.x, self.y, loss_fn)
        timing = trainer.history.timing
        timing.setdefault(f"{self.kind}_seconds", []).append(seconds)
        timing.setdefault("measure_seconds", []).append(time.perf_counter() - measured - seconds)
        trainer.history.teleports.append(
            {
                "epoch": trainer.epoch,
                "step": self.schedule.steps,
                "at": "step" if after_step else "epoch",
                "kind": self.kind,
                "cob": str(self.cob),
                "cob_range": float(self.cob_range),
                "sampling": str(self.sampling),
                "distance": distance,
                "weight_norm": weight_norm,
                "loss_before": loss0,
                "loss_after": loss1,
                "grad_norm_sq_before": g0,
                "grad_norm_sq_after": g1,
                **self._info,
            }
        )

    def on_train_start(self, trainer: Trainer) -> None:
        self.schedule.start(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.schedule.epoch_start()
        if trainer.epoch in self.epochs:
            self._apply(trainer, after_step=False)

    def on_step_end(self, trainer: Trainer, step: Any) -> None:
        if self.schedule.step(trainer):
            self._apply(trainer, after_step=True)

    def on_train_end(self, trainer: Trainer) -> None:
        h = trainer.history
        total = float(sum(h.timing.get(f"{self.kind}_seconds", [])))
        wall = sum(h.seconds)
        h.timing[f"{self.kind}_seconds_total"] = total
        h.timing[f"{self.kind}_time_share"] = total / wall if wall > 0 else math.nan

    def state_dict(self) -> Any:
        return {"cobs": [{k: v.clone() for k, v in c.items()} for c in self._cobs]} if self._cobs else None

    def on_resume(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        saved = (state.get(self.state_key) or {}).get("cobs")
        if saved:
            for cob in saved:
                _teleport_fn()(trainer.model, self.x, cob=cob, inplace=True)
            self._cobs = list(saved)
            return
        for rec in state["history"]["teleports"]:
            if rec["kind"] != self.kind:
                continue
            if rec.get("at") == "step":
                self.move(trainer.model, rec["epoch"], step=rec["step"])
            elif rec["epoch"] in self.epochs:
                self.move(trainer.model, rec["epoch"])

    def load_state_dict(self, state: Any) -> None:
        """The CoBs were restored by :meth:`on_resume` (which needs them before the weights are loaded)."""


class PseudoTeleport(Teleport):
    """The control of a :class:`Teleport`: at the same epochs the weights move by the same distance
    ``r = ||W - tau W||`` (``tau`` from the same generator, applied to a copy) in a uniformly random direction:
    ``V = W + r u``, ``u = g / ||g||``, ``g`` a float64 standard Gaussian over all parameters (same generator,
    after the CoB). Records have ``kind = "pseudo"``; nothing to replay on resume (no structure changes)."""

    kind = "pseudo"
    state_key = "pseudo_teleport"

    def move(
        self, model: nn.Module, epoch: int, *, step: int | None = None, loss_fn: Any = None
    ) -> tuple[float, float]:
        gen = self._generator(epoch, step)
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
    """Resets the optimizer at the start of each epoch in ``epochs`` and, with ``every = K``, after every
    ``K``-th step (the steps of :class:`Teleport`'s ``every``), without moving the weights.

    The control arm of a comparison whose other arm teleports at those epochs / steps (and resets its optimizer
    there, :class:`OptimizerStateOnTeleport` ``"reset"``): both arms then start the epoch (or continue after the
    step) with fresh optimizer state (zero momentum buffers, Adam moments and step count), so they differ only
    by the teleport. At an epoch start the optimizer is re-created, after the teleport and before the
    learning-rate schedule, which sets the (decayed) learning rate of the new optimizer; after a step its state
    is cleared and its learning rates kept. Nothing to checkpoint: the optimizer state itself is in the
    checkpoint.
    """

    state_key = "reset_optimizer"

    def __init__(self, epochs: Iterable[int], every: int | None = None) -> None:
        self.epochs = sorted({int(e) for e in epochs})
        self.schedule = _StepSchedule(every)

    def on_train_start(self, trainer: Trainer) -> None:
        self.schedule.start(trainer)

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.schedule.epoch_start()
        if trainer.epoch in self.epochs:
            trainer.reset_optimizer()

    def on_step_end(self, trainer: Trainer, step: Any) -> None:
        if self.schedule.step(trainer):
            _clear_optimizer_state(trainer)
