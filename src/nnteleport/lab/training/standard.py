""":func:`train`: the standard run of the experiments, a :class:`~.loop.Trainer` with the standard callbacks
built from its arguments (see the package docstring for the maths and the determinism)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nnteleport.errors import ConfigMismatchError, InvalidValueError
from nnteleport.lab.data import DataBundle
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.training.batches import example_batch, model_device_dtype, to_device, uses_workers
from nnteleport.lab.training.callbacks import EpochTimer, Evaluation, FunctionCallback, Penalty, RecordHistory
from nnteleport.lab.training.checkpoint import (
    CHECKPOINT_NAME,
    Checkpoint,
    data_fingerprint,
    fingerprint_diff,
    load_checkpoint,
    state_fingerprint,
)
from nnteleport.lab.training.history import History
from nnteleport.lab.training.logs import ProgressBar, TensorBoard
from nnteleport.lab.training.loop import HOOK_NAMES, Callback, Trainer, check_loader_workers
from nnteleport.lab.training.optim import OptimizerName, StepDecay, WeightDecay, make_optimizer
from nnteleport.lab.training.rng import seed_all
from nnteleport.lab.training.teleport import OptimizerStateOnTeleport, PseudoTeleport, ResetOptimizer, Teleport

__all__ = ["train"]


def train(
    model: nn.Module,
    data: DataBundle | tuple[Dataset, Dataset | None],
    *,
    epochs: int,
    batch_size: int = 64,
    optimizer: str | Callable[[nn.Module], Any] = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_decay_epochs: Sequence[int] = (80,),
    lr_decay_gamma: float = 0.1,
    init: str | None = None,
    teleport_at: int | Sequence[int] | None = None,
    cob_range: float = 0.9,
    sampling: str = "inter",
    pseudo_teleport: bool = False,
    optimizer_state_on_teleport: str = "reset",
    reset_optimizer_at: Sequence[int] = (),
    teleport_batch_size: int | None = None,
    teleport_cob: str = "random",
    teleport_every: int | None = None,
    teleport_options: dict[str, Any] | None = None,
    reset_optimizer_every: int | None = None,
    penalty: Callable[[nn.Module], torch.Tensor | None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callable[[nn.Module, int, History], Any] | Callback] = (),
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    checkpoint_dir: str | Path | None = None,
    tensorboard_dir: str | Path | None = None,
    progress: bool = True,
    desc: str | None = None,
    eval_every: int = 1,
    eval_batch_size: int = 512,
    max_iters_per_epoch: int | None = None,
    loader_workers: int = 0,
) -> History:
    """Train ``model`` on ``data`` and return its :class:`History` (see the package docstring for the maths).

    Parameters
    ----------
    model : nn.Module
        Classifier mapping a batch ``(B, *input_shape)`` to logits ``(B, num_classes)``; trained in place
        (moved to ``device``/``dtype`` first when given).
    data : DataBundle or (train, val)
        Training and validation datasets of ``(x, y)`` pairs (``val`` may be ``None``).
    epochs : int
        Total number of epochs (a resumed run continues up to this number).
    batch_size : int
        Mini-batch size (the last batch of an epoch may be smaller).
    optimizer : {"sgd", "momentum", "adam"} or callable
        Built-in optimizer, or ``optimizer(model) -> optimizer-like`` (``zero_grad``, ``step``,
        ``param_groups``, ``state_dict``, ``load_state_dict``; e.g. a G-space optimizer). For a callable,
        ``lr`` and ``momentum`` are the factory's business and ``weight_decay > 0`` adds the L2 term
        ``weight_decay / 2 * ||W||^2`` to the loss (the same gradient as torch's ``weight_decay``).
    lr, momentum, weight_decay : float
        Learning rate, momentum of ``"momentum"``, L2 coefficient.
    lr_decay_epochs, lr_decay_gamma
        Step decay: from epoch ``m`` on (for each ``m`` in ``lr_decay_epochs``) the learning rate is
        multiplied by ``lr_decay_gamma`` (``torch.optim.lr_scheduler.MultiStepLR``). Paper: ``(80,)``.
    init : {"kaiming", "xavier", "normal", "default"}, optional
        Re-initialise the model (:func:`nnteleport.lab.init.initialize`) after seeding (``None``: keep).
    teleport_at : int or sequence of int, optional
        Epoch boundary(ies) at which to teleport (``0`` = right after initialisation).
    cob_range, sampling
        CoB range ``sigma`` and ``"intra"``/``"inter"`` sampling of the teleportation.
    pseudo_teleport : bool
        Replace each teleport by the paper's pseudo-teleportation control.
    optimizer_state_on_teleport : {"reset", "keep", "transform"}
        Re-create the optimizer after a teleport (default), keep its (stale) state, or transform it like the
        gradients (:func:`nnteleport.engine.optim_state.transform_optimizer_state`).
    reset_optimizer_at : sequence of int
        Also re-create the optimizer at the start of these epochs (after any teleport there, before the
        learning-rate schedule): the control arm of a comparison whose other arm teleports (and resets) at
        those epochs, so that both arms are treated alike.
    teleport_batch_size : int, optional
        Size of the example batch (first examples of the train split) given to the engine (default
        ``batch_size``; the CoB objectives see it: a few batches is a multiple of ``batch_size``).
    teleport_cob, teleport_every, teleport_options, reset_optimizer_every
        CoB choice of each teleport (:class:`~.teleport.TeleportCoB`; options :data:`~.teleport.COB_OPTIONS`);
        also teleport (or, the control, reset the optimizer state) after every that many steps, not after the last.
    penalty : callable, optional
        ``penalty(model) -> scalar tensor | None`` added to the loss every iteration; checkpointed if it has
        ``state_dict``/``load_state_dict``.
    loss_fn : callable, optional
        ``loss_fn(out, y) -> mean loss`` (default cross-entropy).
    callbacks : sequence of callable or Callback
        ``cb(model, epoch, history)`` at the end of each epoch, after evaluation and before the checkpoint, or
        :class:`~nnteleport.lab.training.Callback` objects (all hooks; after the standard callbacks that
        record and before those that log and checkpoint); checkpointed if they have
        ``state_dict``/``load_state_dict``.
    seed : int
        Seeds python, numpy and torch, the data order and the teleports.
    device, dtype
        Where and in which floating dtype to train (default: the model's). ``device``: a ``torch.device`` or
        ``"auto"`` | ``"cpu"`` | ``"cuda"`` | ``"cuda:N"`` (:func:`nnteleport.lab.devices.resolve_device`;
        a CUDA device on a machine without one is refused). The training data stays on the device for the
        whole run when it fits (:func:`~nnteleport.lab.training.batches.on_device`).
    checkpoint_dir : path, optional
        Write ``checkpoint_dir/checkpoint.pt`` at the end of every epoch (atomically) and resume from it when
        it exists (an already finished run returns its history without training).
    tensorboard_dir : path, optional
        Write TensorBoard event files there (needs the ``tensorboard`` package).
    progress : bool
        Show a tqdm progress bar (iterations, with the epoch's loss/accuracy).
    desc : str, optional
        Label of the progress bar.
    eval_every : int
        Evaluate on the validation split every ``eval_every`` epochs and at the last epoch.
    eval_batch_size : int
        Batch size of the evaluation.
    max_iters_per_epoch : int, optional
        Stop each epoch after this many iterations (small-scale runs).
    loader_workers : int
        Worker processes reading a generic training ``Dataset`` (fresh per epoch; :mod:`~.batches`): the same
        batches as ``0`` (a deterministic dataset: the same run), a random ``__getitem__`` reproducible per
        seed, epoch and worker count; the datasets of :mod:`nnteleport.lab.data` and evaluation ignore it.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Invalid option (names it and the allowed values), or a checkpoint in ``checkpoint_dir`` written by a
        run with different settings.
    """
    s = _Settings(**{k: v for k, v in locals().items() if k not in ("model", "data")})  # validated here
    train_ds, val_ds = _splits(data)
    _place(model, device, dtype)
    seed_all(seed)
    if init is not None:
        from nnteleport.lab.init import initialize

        initialize(model, init)
    device_, dtype_ = model_device_dtype(model)
    x_tp = y_tp = None
    if s.teleport_epochs or teleport_every is not None:
        x_tp, y_tp = (to_device(t, device_, dtype_) for t in _example_pair(train_ds, teleport_batch_size or batch_size))
    fingerprint = s.fingerprint(model, train_ds, val_ds)
    ckpt_path, ckpt = _checkpoint(checkpoint_dir, fingerprint, epochs, eval_every)
    trainer = Trainer(model, train_ds, optimizer=s.make_optimizer, batch_size=batch_size, loss_fn=loss_fn,
                      callbacks=s.standard_callbacks((x_tp, y_tp), val_ds, ckpt_path, fingerprint), seed=seed,
                      max_iters_per_epoch=max_iters_per_epoch, loader_workers=loader_workers)  # fmt: skip
    return trainer.fit(epochs, resume=ckpt)


def _place(model: nn.Module, device: str | torch.device | None, dtype: torch.dtype | None) -> None:
    """Move ``model`` to ``device`` (``"auto"`` etc. resolved) and ``dtype`` when given."""
    if device is not None:
        device = resolve_device(device, what="train: device")
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)


def _checkpoint(
    checkpoint_dir: str | Path | None, fingerprint: dict[str, Any], epochs: int, eval_every: int
) -> tuple[Path | None, Any]:
    """The checkpoint path (folder created) and the checkpoint to resume from (``None`` if there is none),
    refused when it was written by a run with other settings."""
    if checkpoint_dir is None:
        return None, None
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    if not ckpt_path.is_file():
        return ckpt_path, None
    ckpt = load_checkpoint(ckpt_path)
    _check_resumable(ckpt, fingerprint, ckpt_path, epochs=epochs, eval_every=eval_every)
    return ckpt_path, ckpt


@dataclass
class _Settings:
    """The options of :func:`train` but the model and the data; validated on construction (:meth:`_check`)."""

    epochs: int
    batch_size: int
    optimizer: str | Callable[[nn.Module], Any]
    lr: float
    momentum: float
    weight_decay: float
    lr_decay_epochs: Sequence[int]
    lr_decay_gamma: float
    init: str | None
    teleport_at: int | Sequence[int] | None
    cob_range: float
    sampling: str
    pseudo_teleport: bool
    optimizer_state_on_teleport: str
    reset_optimizer_at: Sequence[int]
    teleport_batch_size: int | None
    teleport_cob: str
    teleport_every: int | None
    teleport_options: dict[str, Any] | None
    reset_optimizer_every: int | None
    penalty: Callable[[nn.Module], torch.Tensor | None] | None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
    callbacks: Sequence[Any]
    seed: int
    device: str | torch.device | None
    dtype: torch.dtype | None
    checkpoint_dir: str | Path | None
    tensorboard_dir: str | Path | None
    progress: bool
    desc: str | None
    eval_every: int
    eval_batch_size: int
    max_iters_per_epoch: int | None
    loader_workers: int = 0  # not an option of train_stacked
    teleport_epochs: list[int] = field(init=False)
    reset_optimizer: bool = field(init=False)
    transform_optimizer: bool = field(init=False)

    def __post_init__(self) -> None:
        check_loader_workers(self.loader_workers, "train")
        self.teleport_epochs, policy = self._check()
        self.reset_optimizer = policy is OptimizerStateOnTeleport.RESET
        self.transform_optimizer = policy is OptimizerStateOnTeleport.TRANSFORM

    def _check(self) -> tuple[list[int], OptimizerStateOnTeleport]:
        epochs, batch_size, optimizer, eval_every = self.epochs, self.batch_size, self.optimizer, self.eval_every
        lr, momentum, weight_decay, lr_decay_gamma = self.lr, self.momentum, self.weight_decay, self.lr_decay_gamma
        init, teleport_at, cob_range = self.init, self.teleport_at, self.cob_range
        """Refuse invalid options of :func:`train` up front (naming the option and what is allowed); return the
        sorted teleport epochs and whether the optimizer is reset after a teleport."""
        for name, value, ok, rule in (
            ("lr", lr, lambda v: v >= 0, ">= 0"),
            ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, lambda v: v >= 0, ">= 0"),
            ("lr_decay_gamma", lr_decay_gamma, lambda v: v > 0, "> 0"),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not ok(value)
            ):
                raise InvalidValueError(f"train: {name} must be a finite number {rule}, got {value!r}")
        if teleport_at is not None and not (isinstance(cob_range, (int, float)) and 0 <= cob_range < 1):
            raise InvalidValueError(
                f"train: cob_range must be in [0, 1) (the CoB factors stay positive), got {cob_range!r}"
            )
        if epochs < 0:
            raise InvalidValueError(f"epochs must be >= 0, got {epochs}")
        if batch_size < 1:
            raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
        if eval_every < 1:
            raise InvalidValueError(f"eval_every must be >= 1, got {eval_every}")
        if not (isinstance(optimizer, str) or callable(optimizer)):
            raise InvalidValueError(f"optimizer must be one of sgd, momentum, adam or a callable, got {optimizer!r}")
        if isinstance(optimizer, str):
            OptimizerName.parse(optimizer)
        policy = OptimizerStateOnTeleport.parse(self.optimizer_state_on_teleport)
        if init is not None:
            from nnteleport.lab.init import InitScheme

            InitScheme.parse(init)
        teleport_epochs: list[int] = []
        if teleport_at is not None:
            teleport_epochs = sorted(
                {int(teleport_at)} if isinstance(teleport_at, int) else {int(e) for e in teleport_at}
            )
            bad = [e for e in teleport_epochs if not 0 <= e < max(epochs, 1)]
            if bad:
                raise InvalidValueError(
                    f"teleport_at={teleport_at!r}: epochs must be in [0, {max(epochs, 1) - 1}] (epochs={epochs})"
                )
        bad_resets = [e for e in self.reset_optimizer_at if not (isinstance(e, int) and 0 <= e < max(epochs, 1))]
        if bad_resets:
            raise InvalidValueError(
                f"reset_optimizer_at={list(self.reset_optimizer_at)!r}: epochs must be integers in "
                f"[0, {max(epochs, 1) - 1}] (epochs={epochs})"
            )
        if teleport_at is None and self.teleport_every is None and self.pseudo_teleport:
            raise InvalidValueError("pseudo_teleport=True needs teleport_at (the epoch of the pseudo-teleportation)")
        self._check_schedule()
        if self.pseudo_teleport and policy is OptimizerStateOnTeleport.TRANSFORM:
            raise InvalidValueError(
                "optimizer_state_on_teleport='transform' needs a teleport, not a pseudo-teleport (a random move has no "
                "factors to transform the state by); use 'reset' or 'keep'"
            )
        return teleport_epochs, policy

    def _check_schedule(self) -> None:
        """The options of the teleport schedule: the CoB choice, its options, the step intervals."""
        from nnteleport.lab.training.teleport import TeleportCoB, merge_cob_options

        cob = TeleportCoB.parse(self.teleport_cob)
        merge_cob_options(self.teleport_options)
        for name in ("teleport_every", "reset_optimizer_every"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise InvalidValueError(f"train: {name} must be a positive integer or None, got {v!r}")
        if self.pseudo_teleport and cob is not TeleportCoB.RANDOM:
            raise InvalidValueError(f"pseudo_teleport=True needs teleport_cob='random', got {self.teleport_cob!r}")

    def schedule_fingerprint(self) -> dict[str, Any]:
        """The schedule options that differ from the defaults (older checkpoints stay resumable)."""
        out: dict[str, Any] = {}
        if self.teleport_cob != "random":
            out["teleport_cob"] = str(self.teleport_cob)
        if self.teleport_options:
            out["teleport_options"] = dict(sorted(self.teleport_options.items()))
        for name in ("teleport_every", "reset_optimizer_every"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def loader_fingerprint(self, train_ds: Dataset) -> dict[str, Any]:
        """``loader_workers`` when workers read ``train_ds`` (their streams define a random transform's
        numbers); nothing otherwise (older checkpoints, and nnteleport's own datasets, stay resumable)."""
        if uses_workers(train_ds, self.loader_workers):
            return {"loader_workers": self.loader_workers}
        return {}

    def make_optimizer(self, model: nn.Module) -> Any:
        """The optimizer factory of the trainer (:func:`~.optim.make_optimizer` with these options)."""
        return make_optimizer(model, self.optimizer, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    def fingerprint(self, model: nn.Module, train_ds: Dataset, val_ds: Dataset | None) -> dict[str, Any]:
        """What the result depends on, recorded in the checkpoint (a resume with another one is refused)."""
        architecture, initial_sha = state_fingerprint(model)
        return {
            "batch_size": self.batch_size,
            "optimizer": self.optimizer if isinstance(self.optimizer, str) else _qualname(self.optimizer),
            "lr": self.lr,
            "momentum": self.momentum,
            "weight_decay": self.weight_decay,
            "lr_decay_epochs": sorted(int(m) for m in self.lr_decay_epochs),
            "lr_decay_gamma": self.lr_decay_gamma,
            "init": self.init,
            "teleport_at": self.teleport_epochs,
            "cob_range": self.cob_range,
            "sampling": self.sampling,
            "pseudo_teleport": self.pseudo_teleport,
            "optimizer_state_on_teleport": OptimizerStateOnTeleport.parse(self.optimizer_state_on_teleport).value,
            **({"reset_optimizer_at": sorted(set(self.reset_optimizer_at))} if self.reset_optimizer_at else {}),
            "teleport_batch_size": self.teleport_batch_size,
            **self.schedule_fingerprint(),
            "penalty": None if self.penalty is None else _qualname(self.penalty),
            "loss_fn": None if self.loss_fn is None else _qualname(self.loss_fn),
            "seed": self.seed,
            "dtype": str(model_device_dtype(model)[1]),
            "eval_every": self.eval_every,
            "max_iters_per_epoch": self.max_iters_per_epoch,
            **self.loader_fingerprint(train_ds),
            "architecture": architecture,
            "initial_state_sha256": initial_sha,
            **data_fingerprint(train_ds, val_ds),
        }

    def standard_callbacks(
        self,
        tp: tuple[torch.Tensor | None, torch.Tensor | None],
        val_ds: Dataset | None,
        ckpt_path: Path | None,
        fingerprint: dict[str, Any],
    ) -> list[Any]:
        """The standard callbacks, in the order their hooks must run: recording, teleport, evaluation,
        schedule, regularisers, the user's callbacks, then timing, logging and the checkpoint (last)."""
        out: list[Any] = [RecordHistory()]
        x_tp, y_tp = tp
        if self.teleport_epochs or self.teleport_every is not None:
            assert x_tp is not None
            kind = PseudoTeleport if self.pseudo_teleport else Teleport
            out.append(kind(x_tp, self.teleport_epochs, seed=self.seed, cob_range=self.cob_range,
                            sampling=self.sampling, reset_optimizer=self.reset_optimizer,
                            transform_optimizer=self.transform_optimizer, cob=self.teleport_cob,
                            every=self.teleport_every, y=y_tp, cob_options=self.teleport_options))  # fmt: skip
        if self.reset_optimizer_at or self.reset_optimizer_every is not None:
            out.append(ResetOptimizer(self.reset_optimizer_at, every=self.reset_optimizer_every))
        out += [
            Evaluation(val_ds, every=self.eval_every, batch_size=self.eval_batch_size, loss_fn=self.loss_fn),
            StepDecay(self.lr_decay_epochs, self.lr_decay_gamma),
            Penalty(self.penalty),
        ]
        if self.weight_decay > 0 and not isinstance(self.optimizer, str):  # callable optimizers: explicit L2
            out.append(WeightDecay(self.weight_decay))
        out += [_as_callback(cb) for cb in self.callbacks]
        out.append(EpochTimer())
        if self.tensorboard_dir is not None:
            out.append(TensorBoard(self.tensorboard_dir))
        if self.progress:
            out.append(ProgressBar(self.desc))
        if ckpt_path is not None:
            out.append(Checkpoint(ckpt_path, fingerprint))
        return out


def _splits(data: DataBundle | tuple[Dataset, Dataset | None]) -> tuple[Dataset, Dataset | None]:
    """``(train, val)`` of a :class:`~nnteleport.lab.data.DataBundle` or a pair; the training split non-empty."""
    if isinstance(data, DataBundle):
        train_ds, val_ds = data.train, data.val
    else:
        try:
            train_ds, val_ds = data
        except (TypeError, ValueError):
            raise InvalidValueError("data must be a DataBundle or a (train, val) pair of datasets") from None
    if len(train_ds) == 0:  # type: ignore[arg-type]
        raise InvalidValueError("the training split is empty")
    return train_ds, val_ds


def _example_pair(ds: Dataset, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Inputs and targets of the first ``min(n, len(ds))`` examples, unaugmented (targets ``None`` when the
    dataset's items are not ``(x, y)`` pairs of tensors / numbers)."""
    x = example_batch(ds, n)
    m = len(x)
    targets = getattr(ds, "y", None)
    if targets is None:
        targets = getattr(ds, "labels", None)
    if isinstance(targets, torch.Tensor) and len(targets) >= m:
        return x, targets[:m]
    try:
        return x, torch.as_tensor([ds[i][1] for i in range(m)])
    except (TypeError, IndexError, ValueError, RuntimeError):
        return x, None


def _qualname(obj: Any) -> str:
    """A stable name of a callable or object (its class for instances), for the checkpoint fingerprint."""
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _as_callback(cb: Any) -> Any:
    """A :class:`~.loop.Callback` (or an object with its hooks) as it is; a function ``cb(model, epoch,
    history)`` wrapped in :class:`~.callbacks.FunctionCallback`."""
    if isinstance(cb, Callback) or any(hasattr(cb, hook) for hook in HOOK_NAMES):
        return cb
    if callable(cb):
        return FunctionCallback(cb)
    raise InvalidValueError(f"callbacks: {cb!r} is neither a Callback nor a function cb(model, epoch, history)")


def _check_resumable(
    ckpt: dict[str, Any], fingerprint: dict[str, Any], path: Path, *, epochs: int, eval_every: int
) -> None:
    """Raise :class:`ConfigMismatchError` unless the checkpoint ``ckpt`` at ``path`` was written by a run with
    this ``fingerprint`` that an ``epochs``-epoch run continues (or has finished) exactly."""
    stored = dict(ckpt["fingerprint"])
    diff = fingerprint_diff({k: v for k, v in stored.items() if k != "epochs"}, fingerprint)
    done_epochs = int(ckpt["epoch"]) + 1
    if "epochs" not in stored:
        diff.append("epochs: not recorded (a checkpoint of an older version)")
    elif done_epochs > epochs:
        diff.append(f"epochs: the checkpoint has {done_epochs} trained epochs, more than the {epochs} asked for")
    elif epochs > done_epochs and done_epochs == stored["epochs"] and done_epochs % eval_every:
        # its last epoch was evaluated because it was the last: a longer run would not have done that
        diff.append(
            f"epochs: the checkpoint finished a {done_epochs}-epoch run evaluated at its last epoch, which a "
            f"{epochs}-epoch run with eval_every={eval_every} does not do"
        )
    if diff:
        raise ConfigMismatchError(
            f"checkpoint {path} was written by a run with other settings ({'; '.join(diff)}); use "
            "another checkpoint_dir or delete the checkpoint"
        )
