"""The training loop: :class:`Trainer` runs epochs of mini-batch steps and calls its callbacks at fixed events.

One epoch of ``Trainer.fit``::

    on_epoch_start(trainer)                      # teleports, learning rate, initial evaluation, ...
    for (x, y) in mini-batches (seeded order):
        out = model(x); L = loss_fn(out, y)
        L_total = L + sum of loss_term(trainer, out, y)   # regularisers, in callback order
        zero_grad; L_total.backward(); optimizer.step()
        on_step_end(trainer, Step(x, y, out, L))  # recording, progress
    on_epoch_end(trainer)                        # history, evaluation, logging, checkpoint (last)

Nothing in a step waits for the device: the loss and the other per-step values stay tensors (the recording
callbacks read them at the epoch's end), and the training data is copied to the model's device once per
:meth:`Trainer.fit` when it fits (:func:`~nnteleport.lab.training.batches.on_device`). A generic dataset can be
read by loader worker processes (``loader_workers``; a fresh set per epoch, see
:mod:`~nnteleport.lab.training.batches`).

``on_train_start`` runs once before the first epoch and ``on_train_end`` once after the last (also when a hook
or a step raises). A callback is any object with some of these methods (:class:`Callback` has them all as
no-ops); its ``state_dict()`` (when it returns something other than ``None``) is part of
:meth:`Trainer.state_dict` under its ``state_key``, and ``load_state_dict`` gets it back on resume.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from nnteleport.errors import InvalidValueError
from nnteleport.lab.training.batches import batches, model_device_dtype, on_device, to_device
from nnteleport.lab.training.history import History
from nnteleport.lab.training.rng import derived_seed, rng_state, set_rng_state

__all__ = ["Callback", "Step", "Trainer", "check_loader_workers"]

#: last word of the derived seed of an epoch's loader workers: ``derived_seed(seed, epoch, LOADER_WORKER_WORD)``
LOADER_WORKER_WORD = 0x10AD

#: keys of :meth:`Trainer.state_dict` that belong to the trainer (callbacks may not use them)
RESERVED_KEYS = ("format", "epoch", "fingerprint", "model", "optimizer", "history", "rng")

#: the hooks of a callback (a callback is any object with some of them)
HOOK_NAMES = ("on_train_start", "on_epoch_start", "loss_term", "on_step_end", "on_epoch_end", "on_train_end")


@dataclass(frozen=True)
class Step:
    """One optimisation step as the callbacks see it (after ``optimizer.step()``).

    Attributes
    ----------
    x : Tensor
        The mini-batch ``(B, *input_shape)`` on the model's device and dtype.
    y : Tensor
        Its labels ``(B,)`` (or targets).
    out : Tensor
        The model's output ``(B, num_classes)`` (attached to the autograd graph; detach it to keep it).
    loss : Tensor
        Scalar data loss ``loss_fn(out, y)`` (without regularisers).
    """

    x: torch.Tensor
    y: torch.Tensor
    out: torch.Tensor
    loss: torch.Tensor


class Callback:
    """Base class of the callbacks of :class:`Trainer`: every hook is a no-op; override the ones you need.

    Any object with some of these methods works as a callback (this class is the protocol, written down).
    Hooks run in the order of ``Trainer.callbacks``.

    Attributes
    ----------
    state_key : str or None
        Key of :meth:`state_dict` in the trainer's state (the checkpoint). ``None``: ``"callback{i}"``, ``i``
        counting the callbacks without a key, in order.
    """

    state_key: str | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Once per :meth:`Trainer.fit`, before the first epoch (after a resume)."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        """Before the first step of epoch ``trainer.epoch``."""

    def loss_term(self, trainer: Trainer, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to the loss of this step (a regulariser), or ``None``."""
        return None

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        """After the optimizer step of one mini-batch."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the last step of epoch ``trainer.epoch``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once per :meth:`Trainer.fit`, after the last epoch, also when training raised (close files here)."""

    def on_resume(self, trainer: Trainer, state: Mapping[str, Any]) -> None:
        """On resume from ``state`` (a :meth:`Trainer.state_dict`), before the model's weights are loaded:
        rebuild structure the weights need (e.g. the activation wrappers of an earlier teleport)."""

    def state_dict(self) -> Any:
        """What to checkpoint (``None``: nothing)."""
        return None

    def load_state_dict(self, state: Any) -> None:
        """Restore what :meth:`state_dict` returned."""


def check_loader_workers(value: Any, what: str) -> None:
    """Refuse a ``loader_workers`` that is not a non-negative int (one line naming ``what`` and the value)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidValueError(f"{what}: loader_workers must be a non-negative integer, got {value!r}")


def _overrides(cb: Any, name: str) -> bool:
    """Whether ``cb`` has a hook ``name`` that is not the no-op of :class:`Callback`."""
    method = getattr(type(cb), name, None)
    if method is None:
        return callable(getattr(cb, name, None))  # set on the instance
    return method is not getattr(Callback, name, None)


class Trainer:
    """Mini-batch training of ``model`` on ``train_data``, driven by callbacks (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        Trained in place, on its own device and dtype (batches are moved there).
    train_data : Dataset
        ``(x, y)`` pairs; shuffled every epoch with a generator seeded from ``seed``.
    optimizer : callable
        ``optimizer(model) -> optimizer-like`` (``zero_grad``, ``step``, ``param_groups``, ``state_dict``,
        ``load_state_dict``); called at the start and by :meth:`reset_optimizer`.
    batch_size : int
        Mini-batch size (the last batch of an epoch may be smaller).
    loss_fn : callable, optional
        ``loss_fn(out, y) -> mean loss`` (default cross-entropy).
    callbacks : sequence
        Objects with hooks of :class:`Callback`, called in this order.
    seed : int
        Seed of the data order (``torch.Generator`` seeded from ``(seed, 0xDA7A)``); the global generators
        are the caller's business.
    max_iters_per_epoch : int, optional
        Stop each epoch after this many steps.
    loader_workers : int
        Worker processes that read a generic dataset (``0``: the main process does). Epoch ``e``'s workers
        are seeded from ``derived_seed(seed, e, LOADER_WORKER_WORD)`` and see the same batches (the order
        drawn from the same generator); nnteleport's tensor and image datasets ignore it (one vectorised
        gather per batch). See :mod:`~nnteleport.lab.training.batches`.

    Attributes
    ----------
    epoch : int
        The epoch being trained (during :meth:`fit`); the next one to train otherwise.
    last_epoch : int
        The last epoch whose steps are done (``-1`` before any).
    epochs : int
        The number of epochs the running (or last) :meth:`fit` trains up to.
    history : History
        What the callbacks recorded.
    optimizer
        The current optimizer (``None`` before :meth:`fit`).
    epoch_started : float
        ``time.perf_counter()`` before the current epoch's first hook.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        *,
        optimizer: Callable[[nn.Module], Any],
        batch_size: int = 64,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        callbacks: Sequence[Any] = (),
        seed: int = 0,
        max_iters_per_epoch: int | None = None,
        loader_workers: int = 0,
    ) -> None:
        check_loader_workers(loader_workers, "Trainer")
        self.model = model
        self.train_data = train_data
        self.optimizer_factory = optimizer
        self.batch_size = batch_size
        self.loss_fn = loss_fn or F.cross_entropy
        self.callbacks = list(callbacks)
        self.max_iters_per_epoch = max_iters_per_epoch
        self.seed = seed
        self.loader_workers = loader_workers
        self.loader_generator = torch.Generator().manual_seed(derived_seed(seed, 0xDA7A))
        self.optimizer: Any = None
        self.history = History()
        self.epoch = 0
        self.last_epoch = -1
        self.epochs = 0
        self.epoch_started = math.nan
        self.device, self.dtype = model_device_dtype(model)
        self._step_hooks: dict[str, list[Callable[..., Any]]] = {}
        self._batches_from: Dataset = train_data  # train_data, or its copy on the model's device (fit)

    @property
    def iters_per_epoch(self) -> int:
        """Steps per epoch: ``ceil(len(train_data) / batch_size)``, at most ``max_iters_per_epoch``."""
        iters = math.ceil(len(self.train_data) / self.batch_size)  # type: ignore[arg-type]
        return iters if self.max_iters_per_epoch is None else min(iters, self.max_iters_per_epoch)

    def reset_optimizer(self) -> None:
        """Replace the optimizer by a fresh one (zero momentum buffers / Adam moments, initial learning rates)."""
        self.optimizer = self.optimizer_factory(self.model)

    # ---------------------------------------------------------------------------------------------- state

    def _keyed_callbacks(self) -> list[tuple[str, Any]]:
        keyed, n = [], 0
        for cb in self.callbacks:
            key = getattr(cb, "state_key", None)
            if key is None:
                key, n = f"callback{n}", n + 1
            keyed.append((key, cb))
        keys = [k for k, _ in keyed]
        clash = sorted({k for k in keys if keys.count(k) > 1 or k in RESERVED_KEYS})
        if clash:
            raise InvalidValueError(
                f"callbacks: state_key {clash[0]!r} is used twice or reserved ({', '.join(RESERVED_KEYS)}); give "
                "each callback its own state_key"
            )
        return keyed

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: ``epoch`` (:attr:`last_epoch`), ``model``, ``optimizer``, ``history``
        (as :meth:`History.to_dict`), ``rng`` (global generators and the data order) and, under their
        ``state_key``, the callbacks' states."""
        state: dict[str, Any] = {
            "epoch": self.last_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history.to_dict(),
            "rng": rng_state(self.loader_generator),
        }
        for key, cb in self._keyed_callbacks():
            get = getattr(cb, "state_dict", None)
            value = get() if callable(get) else None
            if value is not None:
                state[key] = value
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`: the callbacks' ``on_resume`` (structure), the model's weights, a fresh
        optimizer with the saved state, the callbacks' states, the history, the generators; the next
        :meth:`fit` continues with epoch ``state["epoch"] + 1``."""
        for cb in self.callbacks:
            if _overrides(cb, "on_resume"):
                cb.on_resume(self, state)
        self.model.load_state_dict(state["model"])
        self.reset_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        for key, cb in self._keyed_callbacks():
            if state.get(key) is not None and callable(getattr(cb, "load_state_dict", None)):
                cb.load_state_dict(state[key])
        self.history = History.from_dict(dict(state["history"]))
        self.last_epoch = int(state["epoch"])
        self.epoch = self.last_epoch + 1
        set_rng_state(state["rng"], self.loader_generator)

    # ---------------------------------------------------------------------------------------------- loop

    def _fire(self, hook: str) -> None:
        for cb in self.callbacks:
            if _overrides(cb, hook):
                getattr(cb, hook)(self)

    def fit(self, epochs: int, *, resume: Mapping[str, Any] | None = None) -> History:
        """Train epochs ``trainer.epoch, ..., epochs - 1`` and return :attr:`history`.

        ``resume``: a :meth:`state_dict` (e.g. a checkpoint) to continue from (see :meth:`load_state_dict`).
        """
        self._keyed_callbacks()  # state keys are checked before anything runs
        if resume is not None:
            self.load_state_dict(resume)
        elif self.optimizer is None:
            self.reset_optimizer()
        self.epochs = epochs
        self.device, self.dtype = model_device_dtype(self.model)
        self._batches_from = on_device(self.train_data, self.device)
        self._step_hooks = {
            name: [getattr(cb, name) for cb in self.callbacks if _overrides(cb, name)]
            for name in ("loss_term", "on_step_end")
        }
        try:
            self._fire("on_train_start")
            while self.epoch < epochs:
                self._train_epoch()
                self.epoch += 1
        finally:
            self._fire("on_train_end")
        return self.history

    def _train_epoch(self) -> None:
        self.epoch_started = time.perf_counter()
        self._fire("on_epoch_start")
        self.model.train()
        limit, n = self.iters_per_epoch, 0
        epoch_batches = batches(self._batches_from, self.batch_size, self.loader_generator, shuffle=True,
                                workers=self.loader_workers, pin_memory=self.device.type == "cuda",
                                worker_seed=derived_seed(self.seed, self.epoch, LOADER_WORKER_WORD))  # fmt: skip
        with contextlib.closing(epoch_batches):  # loader workers stop here, also on a cut or an exception
            for x, y in epoch_batches:
                if n >= limit:
                    break
                step = self._step(to_device(x, self.device, self.dtype), to_device(y, self.device, self.dtype))
                n += 1
                for hook in self._step_hooks["on_step_end"]:
                    hook(self, step)
        self.last_epoch = self.epoch
        self._fire("on_epoch_end")

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> Step:
        """``L = loss_fn(model(x), y) + sum(loss_term)``; one backward pass and one optimizer step."""
        opt = self.optimizer
        opt.zero_grad()
        out = self.model(x)
        loss = self.loss_fn(out, y)
        total = loss
        for term_of in self._step_hooks["loss_term"]:
            term = term_of(self, out, y)
            if term is not None:
                total = total + term
        total.backward()
        opt.step()
        return Step(x, y, out, loss)
