"""Checkpoints of a training run: the :class:`Checkpoint` callback, :func:`load_checkpoint` (which runs no code
from the file) and the fingerprint that refuses to resume a run with other settings.

A checkpoint (``format`` 2) is one ``torch.save`` dict: ``format``, ``epoch`` (the last trained one),
``fingerprint`` (settings, architecture, SHA-256 of the initial weights and of the first examples),
``model``, ``optimizer``, ``scheduler``, ``history``, ``rng`` and the states of stateful callbacks (``penalty``,
``callback0``, ...). It is written atomically (temporary file, then ``os.replace``).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from nnteleport.errors import CorruptFileError, UnsafeFileError
from nnteleport.lab._atomic import tmp_path
from nnteleport.lab.data import ImageDataset, TensorPairDataset
from nnteleport.lab.training.loop import Callback

if TYPE_CHECKING:
    from nnteleport.lab.training.loop import Trainer

__all__ = ["CHECKPOINT_NAME", "Checkpoint", "data_fingerprint", "fingerprint_diff", "load_checkpoint",
           "state_fingerprint"]  # fmt: skip

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = 2
# the order of the keys in the file (others follow in the order the trainer gives them)
_KEY_ORDER = ("format", "epoch", "fingerprint", "model", "optimizer", "scheduler", "history", "rng")


class Checkpoint(Callback):
    """Writes ``path`` at the end of every epoch: the trainer's :meth:`~Trainer.state_dict` with ``format`` and
    ``fingerprint`` (``{**fingerprint, "epochs": trainer.epochs}``). Place it last: it saves what the callbacks
    before it left. Resume with ``trainer.fit(epochs, resume=load_checkpoint(path))``."""

    state_key = "checkpoint"

    def __init__(self, path: str | Path, fingerprint: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.fingerprint = dict(fingerprint or {})

    def on_train_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, trainer: Trainer) -> None:
        state = {"format": FORMAT, "fingerprint": {**self.fingerprint, "epochs": trainer.epochs}}
        state.update(trainer.state_dict())
        ordered = {k: state[k] for k in _KEY_ORDER if k in state}
        ordered.update((k, v) for k, v in state.items() if k not in ordered)
        _atomic_save(ordered, self.path)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = tmp_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _numpy_globals() -> list[Any]:
    """The numpy names a checkpoint's RNG state needs (``np.random.get_state()`` holds a uint32 array)."""

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    uint32_dtype = type(np.dtype(np.uint32))
    names = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        (_reconstruct, "numpy._core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        uint32_dtype,
    ]
    return names


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`train` without running code from it.

    ``torch.load(weights_only=True)``: only tensors, containers, numbers, strings and the four numpy names of
    the saved RNG state (``numpy._core.multiarray._reconstruct``, ``ndarray``, ``dtype``, ``UInt32DType``)
    are accepted; a file that asks for anything else (e.g. a planted pickle calling ``os.system``) is refused.

    Raises
    ------
    UnsafeFileError
        The file asks for other Python objects (names the file; nothing of it was run).
    CorruptFileError
        The file cannot be read as a checkpoint.
    """
    path = Path(path)
    try:
        ctx = getattr(torch.serialization, "safe_globals", None)
        if ctx is not None:
            with ctx(_numpy_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        else:  # torch < 2.5: no allow-list context
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = next((ln for ln in str(e).splitlines() if "GLOBAL" in ln or "got <class" in ln), "")
        raise UnsafeFileError(
            f"checkpoint {path} asks for Python objects a checkpoint of nnteleport does not hold and was not "
            f"loaded ({first.strip() or 'refused by torch.load(weights_only=True)'}); delete it if you did not "
            "write it"
        ) from None
    except Exception as e:
        raise CorruptFileError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}; delete it to start afresh"
        ) from None
    if not isinstance(ckpt, dict) or "fingerprint" not in ckpt or "model" not in ckpt:
        raise CorruptFileError(
            f"{path} is not a checkpoint of nnteleport.lab.training.train; delete it to start afresh"
        )
    return ckpt


def state_fingerprint(model: nn.Module) -> tuple[dict[str, Any], str]:
    """The model's architecture (class, every state entry's shape and dtype) and a SHA-256 of its state."""
    h = hashlib.sha256()
    entries = {}
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            continue
        entries[name] = f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"
        h.update(f"{name}:{entries[name]};".encode())
        flat = t.detach().to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    arch = {"class": f"{type(model).__module__}.{type(model).__qualname__}", "state": entries}
    return arch, h.hexdigest()


def data_fingerprint(train_ds: Dataset, val_ds: Dataset | None) -> dict[str, Any]:
    """Sizes of the splits and a SHA-256 of the first (unaugmented) training examples and their labels."""
    n = min(64, len(train_ds))  # type: ignore[arg-type]
    if isinstance(train_ds, TensorPairDataset):
        x, y = train_ds.x[:n], train_ds.y[:n]
    elif isinstance(train_ds, ImageDataset):
        x, y = train_ds.get_batch(range(n), augment=False)
    else:
        x, y = default_collate([train_ds[i] for i in range(n)])
    h = hashlib.sha256()
    for t in (x, y):
        t = torch.as_tensor(t).detach().to("cpu").contiguous().reshape(-1)
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return {
        "num_train": len(train_ds),  # type: ignore[arg-type]
        "num_val": None if val_ds is None else len(val_ds),  # type: ignore[arg-type]
        "first_examples_sha256": h.hexdigest(),
    }


def fingerprint_diff(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two fingerprints, one phrase per difference (the architecture by its first
    differing state entry; the initial weights only when the architectures agree)."""
    out = []
    for k in sorted(set(stored) | set(now)):
        a, b = stored.get(k), now.get(k)
        if a == b:
            continue
        if k == "architecture" and isinstance(a, dict) and isinstance(b, dict):
            if a.get("class") != b.get("class"):
                out.append(f"model class: checkpoint {a.get('class')} vs now {b.get('class')}")
                continue
            sa, sb = a.get("state", {}), b.get("state", {})
            first = next((n for n in [*sa, *sb] if sa.get(n) != sb.get(n)), None)
            out.append(
                f"architecture: {first}: checkpoint {sa.get(first, '(absent)')} vs now {sb.get(first, '(absent)')}"
            )
        elif k == "initial_state_sha256":
            if stored.get("architecture") != now.get("architecture"):
                continue  # another architecture has other weights, said above
            out.append("initial weights differ (build the model after the same torch.manual_seed, or pass init=...)")
        else:
            out.append(f"{k}: checkpoint {a!r} vs now {b!r}")
    return out
