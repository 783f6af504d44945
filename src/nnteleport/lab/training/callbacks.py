"""The standard callbacks that record a run: training statistics, evaluation, penalty, epoch time, and the
adapter for plain ``fn(model, epoch, history)`` functions.

Each fills its own fields of ``trainer.history`` (one entry per epoch, NaN where there is nothing to measure,
so that all per-epoch lists have the same length).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nnteleport.lab.training.batches import correct_count, evaluate
from nnteleport.lab.training.history import History
from nnteleport.lab.training.loop import Callback, Step

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = ["EpochTimer", "Evaluation", "FunctionCallback", "Penalty", "RecordHistory", "StepTimer"]


class RecordHistory(Callback):
    """Fills ``iter_loss``, ``epoch``, ``train_loss``, ``train_acc``, ``lr`` and ``iters_per_epoch``.

    ``train_loss = sum_b n_b L_b / sum_b n_b`` over the epoch's mini-batches ``b`` (sizes ``n_b``, data losses
    ``L_b``); ``train_acc`` = correct argmax predictions / examples seen (NaN when the outputs are not
    ``(B, classes)`` logits); ``lr`` is the learning rate of the first parameter group at the epoch's end.
    Per-step values stay on the device until the end of the epoch (no synchronisation per step).
    """

    state_key = "record_history"

    def __init__(self) -> None:
        self._losses: list[torch.Tensor] = []
        self._corrects: list[torch.Tensor] = []
        self._sizes: list[int] = []

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._losses, self._corrects, self._sizes = [], [], []

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        self._losses.append(step.loss.detach())
        c = correct_count(step.out.detach(), step.y)
        if c is not None:
            self._corrects.append(c)
        self._sizes.append(len(step.x))

    def on_epoch_end(self, trainer: Trainer) -> None:
        history, sizes = trainer.history, self._sizes
        n_it, seen = len(sizes), sum(sizes)
        iter_losses = torch.stack(self._losses).double().cpu().tolist()
        history.iter_loss.extend(iter_losses)
        history.epoch.append(trainer.epoch)
        history.train_loss.append(sum(li * n for li, n in zip(iter_losses, sizes)) / seen)
        correct = float(torch.stack(self._corrects).sum()) if len(self._corrects) == n_it else float("nan")
        history.train_acc.append(correct / seen)
        history.lr.append(float(trainer.optimizer.param_groups[0]["lr"]))
        history.iters_per_epoch.append(n_it)


class Evaluation(Callback):
    """Validation loss and accuracy (:func:`~nnteleport.lab.training.batches.evaluate`, eval mode).

    Fills ``history.initial`` at the start of epoch 0 (after the callbacks before it, e.g. a teleport at 0) and
    ``val_loss``/``val_acc`` at the end of every ``every``-th epoch and of the last one (NaN otherwise, and
    always NaN without ``data``).
    """

    state_key = "evaluation"

    def __init__(
        self,
        data: Dataset | None,
        *,
        every: int = 1,
        batch_size: int = 512,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.data, self.every, self.batch_size, self.loss_fn = data, every, batch_size, loss_fn

    def _evaluate(self, model: nn.Module) -> tuple[float, float]:
        assert self.data is not None
        return evaluate(model, self.data, batch_size=self.batch_size, loss_fn=self.loss_fn)

    def on_epoch_start(self, trainer: Trainer) -> None:
        if trainer.epoch == 0 and self.data is not None:
            vl, va = self._evaluate(trainer.model)
            trainer.history.initial = {"val_loss": vl, "val_acc": va}

    def on_epoch_end(self, trainer: Trainer) -> None:
        epoch = trainer.epoch
        if self.data is not None and ((epoch + 1) % self.every == 0 or epoch == trainer.epochs - 1):
            vl, va = self._evaluate(trainer.model)
        else:
            vl, va = float("nan"), float("nan")
        trainer.history.val_loss.append(vl)
        trainer.history.val_acc.append(va)


class _FunctionState(Callback):
    """The state of a callback that wraps a function ``fn``: ``fn``'s own ``state_dict`` when it has one."""

    fn: Any

    def state_dict(self) -> Any:
        get = getattr(self.fn, "state_dict", None)
        return get() if callable(get) else None

    def load_state_dict(self, state: Any) -> None:
        load = getattr(self.fn, "load_state_dict", None)
        if callable(load):
            load(state)


class Penalty(_FunctionState):
    """Adds ``fn(model)`` (a scalar tensor, or ``None`` to skip) to the loss of every step and records its mean
    per epoch in ``history.penalty`` (NaN when it never applied, or without ``fn``).

    Checkpointed when ``fn`` has ``state_dict``/``load_state_dict`` (e.g. a
    :class:`~nnteleport.distance.CheckpointDistance`, whose stored checkpoints then survive a resume).
    """

    state_key = "penalty"

    def __init__(self, fn: Callable[[nn.Module], torch.Tensor | None] | None) -> None:
        self.fn = fn
        self._values: list[torch.Tensor] = []

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._values = []

    def loss_term(self, trainer: Trainer, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        if self.fn is None:
            return None
        pen = self.fn(trainer.model)
        if pen is not None:
            self._values.append(pen.detach().reshape(()))
        return pen

    def on_epoch_end(self, trainer: Trainer) -> None:
        v = float(torch.stack(self._values).double().mean()) if self._values else float("nan")
        trainer.history.penalty.append(v)


class FunctionCallback(_FunctionState):
    """Calls ``fn(model, epoch, history)`` at the end of every epoch; checkpointed when ``fn`` has
    ``state_dict``/``load_state_dict`` (``state_key`` ``None``: numbered ``callback{i}`` by the trainer)."""

    def __init__(self, fn: Callable[[nn.Module, int, History], Any]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.fn(trainer.model, trainer.epoch, trainer.history)


class EpochTimer(Callback):
    """Appends the wall time of the epoch, from before its first ``on_epoch_start`` hook to this callback's
    ``on_epoch_end``, to ``history.seconds``; place it after the callbacks whose time should count."""

    state_key = "epoch_timer"

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.history.seconds.append(time.perf_counter() - trainer.epoch_started)


_NOT_STEP_TIME = ("teleport_seconds", "pseudo_seconds", "measure_seconds")


class StepTimer(Callback):
    """Appends the wall time of every optimisation step to ``history.timing["step_seconds"]``: from the end of
    this callback's previous hook (its ``on_epoch_start`` for an epoch's first step) to its ``on_step_end``,
    minus the time of the teleports (and of their measurements) that ran in between (``history.timing``'s
    ``teleport_seconds``, ``pseudo_seconds``, ``measure_seconds``), so that a teleport's cost is counted once,
    where its record says (``step``: the steps done before it). Place it among the user callbacks (after the
    teleport). A run's training wall-clock after step ``k`` (0-based) is then
    ``sum(step_seconds[:k + 1])`` plus the teleports with ``step <= k``.

    On CUDA it synchronises the device at every step's end (kernels run asynchronously: without it a step's
    time would be its launch time, and its compute would be charged to whatever synchronises next); the timer is
    opt-in, the host synchronisation is the price of per-step times.
    """

    state_key = "step_timer"

    def __init__(self) -> None:
        self._ref = math.nan
        self._done = 0.0

    def _spent(self, trainer: Trainer) -> float:
        return float(sum(sum(trainer.history.timing.get(k, [])) for k in _NOT_STEP_TIME))

    def on_epoch_start(self, trainer: Trainer) -> None:
        self._ref, self._done = time.perf_counter(), self._spent(trainer)

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
        now, done = time.perf_counter(), self._spent(trainer)
        trainer.history.timing.setdefault("step_seconds", []).append(now - self._ref - (done - self._done))
        self._ref, self._done = now, done
