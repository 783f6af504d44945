"""Optimizers of a training run: the built-in ones, the step learning-rate decay, and the explicit L2 term."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError
from nnteleport.lab.training.loop import Callback

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = ["OptimizerName", "StepDecay", "WeightDecay", "make_optimizer"]

_OPTIMIZER_METHODS = ("zero_grad", "step", "param_groups", "state_dict", "load_state_dict")


class OptimizerName(Choice, what="optimizer"):
    """Built-in optimizers of :func:`train`: plain SGD, SGD with momentum, Adam (L2 via ``weight_decay``)."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


def make_optimizer(
    model: nn.Module,
    optimizer: str | Callable[[nn.Module], Any],
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> Any:
    """The optimizer :func:`train` uses: ``"sgd"`` (no momentum), ``"momentum"`` (SGD, ``momentum``),
    ``"adam"`` (L2 via ``weight_decay``, not AdamW), or ``optimizer(model)`` for a callable."""
    if callable(optimizer) and not isinstance(optimizer, str):
        opt = optimizer(model)
        for attr in _OPTIMIZER_METHODS:
            if not hasattr(opt, attr):
                raise InvalidValueError(
                    f"optimizer factory {optimizer!r} returned {type(opt).__name__}, which lacks {attr!r}; "
                    "return a torch.optim.Optimizer or an object with zero_grad/step/param_groups/state_dict/"
                    "load_state_dict"
                )
        return opt
    name = OptimizerName.parse(optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    if name is OptimizerName.ADAM:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    mom = momentum if name is OptimizerName.MOMENTUM else 0.0
    return torch.optim.SGD(params, lr=lr, momentum=mom, weight_decay=weight_decay)


class StepDecay(Callback):
    """Step learning-rate decay: during epoch ``e`` every group's rate is ``base * gamma ** #{m <= e}`` over the
    ``milestones`` (as ``torch.optim.lr_scheduler.MultiStepLR``).

    ``base`` is the group's rate when the schedule first sees an optimizer (at the start of training, or the
    first epoch after :meth:`Trainer.reset_optimizer`); it is checkpointed (``state_key = "scheduler"``).
    """

    state_key = "scheduler"

    def __init__(self, milestones: Sequence[int] = (80,), gamma: float = 0.1) -> None:
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = gamma
        self.base_lrs: list[float] | None = None
        self._optimizer: Any = None

    def factor(self, epoch: int) -> float:
        """``gamma ** (number of milestones <= epoch)``."""
        return self.gamma ** sum(epoch >= m for m in self.milestones)

    def on_train_start(self, trainer: Trainer) -> None:
        if self.base_lrs is None:
            self.base_lrs = [g["lr"] for g in trainer.optimizer.param_groups]
        self._optimizer = trainer.optimizer

    def on_epoch_start(self, trainer: Trainer) -> None:
        opt = trainer.optimizer
        if opt is not self._optimizer:  # a fresh optimizer (reset): its rates are the base rates
            self.base_lrs, self._optimizer = [g["lr"] for g in opt.param_groups], opt
        factor = self.factor(trainer.epoch)
        for g, base in zip(opt.param_groups, self.base_lrs or []):
            g["lr"] = base * factor

    def state_dict(self) -> dict[str, Any]:
        return {"base_lrs": self.base_lrs, "milestones": self.milestones, "gamma": self.gamma}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base_lrs = list(state["base_lrs"])


class WeightDecay(Callback):
    """L2 regularisation as a loss term ``weight_decay / 2 * sum ||p||^2`` over the trainable parameters: the
    gradient ``weight_decay * p`` of torch's ``weight_decay``, for optimizers that have none (e.g. G-space)."""

    state_key = "weight_decay"

    def __init__(self, weight_decay: float) -> None:
        self.weight_decay = weight_decay

    def loss_term(self, trainer: Trainer, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.weight_decay * sum(p.pow(2).sum() for p in trainer.model.parameters() if p.requires_grad)
