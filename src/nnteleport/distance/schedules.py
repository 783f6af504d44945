"""Schedules of the checkpoint penalty: ``sigma`` / ``strength`` per epoch, and when to take a checkpoint."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CheckpointSchedule", "ScheduleLike", "StepSchedule", "as_schedule"]

#: A number (constant) or a callable ``epoch -> float``.
ScheduleLike = float | Callable[[int], float]


class StepSchedule:
    """Step schedule ``initial * gamma ** max(0, (epoch - start) // step_size)`` (as ``StepLR``).

    Usable for ``strength`` and ``sigma`` of :class:`CheckpointDistance`; any callable ``epoch -> float``
    works as well.
    """

    def __init__(self, initial: float, gamma: float = 1.0, step_size: int = 1, start: int = 0) -> None:
        if step_size < 1:
            raise ValueError(f"StepSchedule: step_size must be >= 1, got {step_size}")
        self.initial, self.gamma, self.step_size, self.start = float(initial), float(gamma), step_size, start

    def __call__(self, epoch: int) -> float:
        k = max(0, (epoch - self.start) // self.step_size)
        return self.initial * self.gamma**k

    def __repr__(self) -> str:
        return (
            f"StepSchedule(initial={self.initial}, gamma={self.gamma}, step_size={self.step_size}, start={self.start})"
        )


class CheckpointSchedule:
    """Plain training for ``warmup_epochs`` epochs, then a checkpoint every ``every`` epochs (Alg. 3).

    ``epoch`` counts *completed* epochs: ``should_checkpoint(e)`` is true for ``e = warmup_epochs,
    warmup_epochs + every, ...`` (and at most ``max_checkpoints`` times when given), i.e. call it after each
    epoch with the number of epochs done so far.
    """

    def __init__(self, warmup_epochs: int, every: int, max_checkpoints: int | None = None) -> None:
        if warmup_epochs < 0 or every < 1:
            raise ValueError(
                f"CheckpointSchedule: need warmup_epochs >= 0 and every >= 1, got {warmup_epochs}, {every}"
            )
        if max_checkpoints is not None and max_checkpoints < 1:
            raise ValueError(f"CheckpointSchedule: max_checkpoints must be >= 1 or None, got {max_checkpoints}")
        self.warmup_epochs, self.every, self.max_checkpoints = warmup_epochs, every, max_checkpoints

    def should_checkpoint(self, epoch: int) -> bool:
        if epoch < self.warmup_epochs or (epoch - self.warmup_epochs) % self.every:
            return False
        index = (epoch - self.warmup_epochs) // self.every
        return self.max_checkpoints is None or index < self.max_checkpoints

    def checkpoint_epochs(self, total_epochs: int) -> list[int]:
        """All epochs in ``1..total_epochs`` after which a checkpoint is taken."""
        return [e for e in range(1, total_epochs + 1) if self.should_checkpoint(e)]


def as_schedule(value: ScheduleLike, what: str) -> Callable[[int], float]:
    if callable(value):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"CheckpointDistance: {what} must be a number or a callable epoch -> float, got {value!r}")
    v = float(value)
    return lambda epoch: v
