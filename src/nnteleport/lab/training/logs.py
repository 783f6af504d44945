"""Logging callbacks: TensorBoard event files and a tqdm progress bar (both optional packages, imported lazily)."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nnteleport.lab.training.loop import Callback, Step

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = ["ProgressBar", "TensorBoard"]

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _stacklevel_outside_package() -> int:
    """The ``stacklevel`` of :func:`warnings.warn`, called from here, that names the caller's first frame
    outside this package (the user's call of ``train`` or ``Trainer.fit``)."""
    here = inspect.currentframe()
    level, frame = 1, here.f_back if here is not None else None
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_PACKAGE_DIR):
        level, frame = level + 1, frame.f_back
    return level


class TensorBoard(Callback):
    """Scalars for TensorBoard under ``log_dir`` (needs the ``tensorboard`` package; warns once without it).

    Every tag's step is an iteration index: ``loss/train_iter`` at each iteration, ``teleport/distance`` at the
    first iteration after the teleport, and ``loss/train``, ``accuracy/train``, ``loss/val``, ``accuracy/val``,
    ``lr``, ``epoch`` at the epoch's last iteration (NaN values are not written). A resumed run purges what was
    logged after its checkpoint (``purge_step``), so event files survive an interruption.
    """

    state_key = "tensorboard"

    def __init__(self, log_dir: str | Path) -> None:
        self.log_dir = log_dir
        self.writer: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.epoch >= trainer.epochs:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                f"tensorboard_dir={str(self.log_dir)!r} given but tensorboard is not installed; no event files "
                "are written (pip install tensorboard)",
                stacklevel=_stacklevel_outside_package(),
            )
            return
        purge_step = len(trainer.history.iter_loss) if trainer.epoch > 0 else None
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Write one scalar (skipped when NaN or without a writer)."""
        if self.writer is not None and not math.isnan(value):
            self.writer.add_scalar(tag, value, step)

    def on_epoch_start(self, trainer: Trainer) -> None:
        h = trainer.history
        if h.teleports and h.teleports[-1]["epoch"] == trainer.epoch:
            self.scalar("teleport/distance", h.teleports[-1]["distance"], len(h.iter_loss))

    def on_epoch_end(self, trainer: Trainer) -> None:
        h = trainer.history
        first = len(h.iter_loss) - h.iters_per_epoch[-1]
        for i, li in enumerate(h.iter_loss[first:]):
            self.scalar("loss/train_iter", li, first + i)
        last = len(h.iter_loss) - 1
        for tag, v in (("loss/train", h.train_loss[-1]), ("accuracy/train", h.train_acc[-1]),
                       ("loss/val", h.val_loss[-1]), ("accuracy/val", h.val_acc[-1]), ("lr", h.lr[-1]),
                       ("epoch", trainer.epoch)):  # fmt: skip
            self.scalar(tag, v, last)

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar over the iterations of the run, showing the epoch, its train loss and validation accuracy."""

    state_key = "progress"

    def __init__(self, desc: str | None = None) -> None:
        self.desc = desc
        self.bar: Any = None

    def on_train_start(self, trainer: Trainer) -> None:
        if trainer.epoch >= trainer.epochs:
            return
        from tqdm.auto import tqdm

        total = (trainer.epochs - trainer.epoch) * trainer.iters_per_epoch
        self.bar = tqdm(total=total, desc=self.desc or "train", unit="it", leave=False)

    def on_step_end(self, trainer: Trainer, step: Step) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_epoch_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            h = trainer.history
            self.bar.set_postfix(epoch=trainer.epoch, loss=f"{h.train_loss[-1]:.4g}", val_acc=f"{h.val_acc[-1]:.3f}")

    def on_train_end(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
