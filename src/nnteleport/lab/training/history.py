"""What a training run measured: :class:`History` (plain data; the callbacks of :mod:`.callbacks` fill it)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["History"]

_FLOAT_LISTS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "penalty", "iter_loss")


def _nan_to_none(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, list):
        return [_nan_to_none(u) for u in v]
    if isinstance(v, dict):
        return {k: _nan_to_none(u) for k, u in v.items()}
    return v


def _none_to_nan(v: Any) -> Any:
    if v is None:
        return float("nan")
    if isinstance(v, list):
        return [_none_to_nan(u) for u in v]
    return v


@dataclass
class History:
    """What :func:`~nnteleport.lab.training.train` measured. Lists indexed by epoch have one entry per trained epoch.

    Attributes
    ----------
    epoch : list of int
        Epoch indices (0-based).
    train_loss, train_acc : list of float
        Mean over the epoch's mini-batches (weighted by batch size) of the data loss (without penalty or L2)
        and the accuracy, measured in train mode while training.
    val_loss, val_acc : list of float
        On the validation split at the end of the epoch (eval mode); NaN where not evaluated (``eval_every``).
    lr : list of float
        Learning rate of the first parameter group during the epoch.
    penalty : list of float
        Mean penalty value per epoch (NaN without a penalty).
    iter_loss : list of float
        Data loss of every iteration (mini-batch), in order.
    iters_per_epoch : list of int
        Number of iterations of each epoch (to cut ``iter_loss`` into epochs).
    initial : dict
        ``val_loss``/``val_acc`` before the first trained epoch (after ``init`` and a teleport at 0).
    teleports : list of dict
        One entry per (pseudo-)teleportation: ``epoch``, ``kind`` ("teleport" | "pseudo"), ``cob_range``,
        ``sampling``, ``distance`` (``||W - V||``), ``weight_norm`` (``||W||`` before).
    extra : dict
        Free space for callbacks (``history.extra.setdefault("name", []).append(value)``).
    seconds : list of float
        Wall time of each epoch (not compared by ``==``: it differs between identical runs).
    timing : dict
        Other wall times (not compared by ``==``): ``teleport_seconds`` (one per teleport, in the order of
        ``teleports``), ``teleport_seconds_total``, ``teleport_time_share`` (that total over the sum of
        ``seconds``), ``step_seconds`` (per step, from :class:`~nnteleport.lab.training.callbacks.StepTimer`).
    """

    epoch: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    iter_loss: list[float] = field(default_factory=list)
    iters_per_epoch: list[int] = field(default_factory=list)
    initial: dict[str, float] = field(default_factory=dict)
    teleports: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list, compare=False)
    timing: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN written as ``None``)."""
        return {f.name: _nan_to_none(copy.deepcopy(getattr(self, f.name))) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict` (``None`` read back as NaN in the float lists)."""
        h = cls()
        for f in fields(cls):
            if f.name in d:
                v = copy.deepcopy(d[f.name])
                if f.name in _FLOAT_LISTS:
                    v = _none_to_nan(v)
                setattr(h, f.name, v)
        return h

    def __eq__(self, other: object) -> bool:  # NaN-aware, ignores ``seconds``
        if not isinstance(other, History):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        for d in (a, b):
            d.pop("seconds")
            d.pop("timing")
        return a == b

    __hash__ = None  # type: ignore[assignment]
