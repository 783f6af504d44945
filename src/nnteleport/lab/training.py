"""The training loop shared by all experiments.

:func:`train` trains a classifier with SGD, SGD with momentum, Adam or any optimizer-like object (for example
a G-space optimizer), with L2 regularisation, step learning-rate decay, an optional re-initialisation, and
optional neural teleportation (or the paper's pseudo-teleportation control) at epoch boundaries, and records a
:class:`History` of per-epoch train/validation loss and accuracy and per-iteration train loss. It checkpoints
every epoch and resumes an interrupted run with bit-identical results on CPU.

Paper settings (Armenta et al. 2023, Sec. 5): L2 regularisation and learning-rate decay at epoch 80 (the
default ``lr_decay_epochs=(80,)``, ``lr_decay_gamma=0.1``); teleportation once right after initialisation
(``teleport_at=0``) with ``cob_range=0.9``, ``sampling="inter"``; once at epoch 30 for the mid-training
experiment (``teleport_at=30``).

Epochs are numbered from 0. ``teleport_at=k`` teleports at the boundary *before* epoch ``k`` is trained, i.e.
after ``k`` epochs of training (``0`` = at initialisation). The entry ``i`` of every per-epoch list of the
history is measured at the end of epoch ``i``.

Teleporting during training and the optimizer state
---------------------------------------------------
A teleportation ``V = tau . W`` changes the coordinates of the weights: gradients transform as
``dV = dW / tau`` (Theorem 2 of the paper, per weight ``w_ij -> w_ij tau_i / tau_j`` and
``dw_ij -> dw_ij tau_j / tau_i``), so a momentum buffer or Adam moment accumulated before the teleport is
expressed in the old coordinates and would push the teleported weights along a direction that is not the
descent direction of the new point. By default (``optimizer_state_on_teleport="reset"``) the optimizer is
therefore re-created right after each teleport: momentum buffers and Adam moments (and Adam's step count)
start from zero, as they do at initialisation, which is exactly the paper's setting when teleporting at
epoch 0 and a clean "one teleport, then plain training" for the mid-training experiment. The current
learning rate (including decays) is carried over. ``"keep"`` leaves the optimizer state untouched (the
stale buffers act on the new coordinates).

Pseudo-teleportation (the paper's control, Sec. 5.2): the model is teleported on a copy (same CoB sample as a
real teleport would use), the step length ``r = ||W - tau W||`` over all parameters is measured, and the
weights are moved to ``V = W + r u`` with ``u`` uniform on the unit sphere of the whole parameter vector (a
normalised standard Gaussian), i.e. a random point of the sphere centred at ``W`` of radius ``||W - tau W||``.

Determinism: ``seed`` seeds python's, numpy's and torch's global generators at the start; the data order uses
a separate ``torch.Generator`` (seeded from ``seed``), each teleport its own generator seeded from
``(seed, epoch)`` -- so a teleported run and its non-teleported baseline with the same seed share the
initialisation and the order of the batches. Checkpoints hold the model, optimizer, schedule, all generator
states, the history, and the state of ``penalty`` and of callbacks that have ``state_dict``. Resumed runs are
bit-identical on CPU (tested); on CUDA they are as deterministic as the kernels (set
``torch.use_deterministic_algorithms(True)`` and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` for bit-identity).
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from nnteleport._choice import Choice
from nnteleport.errors import ConfigMismatchError, CorruptFileError, InvalidValueError, UnsafeFileError
from nnteleport.lab._atomic import tmp_path
from nnteleport.lab.data import DataBundle, ImageDataset, TensorPairDataset

__all__ = [
    "CHECKPOINT_NAME",
    "History",
    "OptimizerName",
    "OptimizerStateOnTeleport",
    "evaluate",
    "load_checkpoint",
    "make_optimizer",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"


class OptimizerName(Choice, what="optimizer"):
    """Built-in optimizers of :func:`train`: plain SGD, SGD with momentum, Adam (L2 via ``weight_decay``)."""

    SGD = "sgd"
    MOMENTUM = "momentum"
    ADAM = "adam"


class OptimizerStateOnTeleport(Choice, what="optimizer_state_on_teleport"):
    """What happens to the optimizer state when the model is teleported during training (see module doc)."""

    RESET = "reset"
    KEEP = "keep"


# --------------------------------------------------------------------------------------------------
# history


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
    """What :func:`train` measured. Lists indexed by epoch have one entry per trained epoch.

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
                if f.name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "penalty", "iter_loss"):
                    v = _none_to_nan(v)
                setattr(h, f.name, v)
        return h

    def __eq__(self, other: object) -> bool:  # NaN-aware, ignores ``seconds``
        if not isinstance(other, History):
            return NotImplemented
        a, b = self.to_dict(), other.to_dict()
        a.pop("seconds")
        b.pop("seconds")
        return a == b

    __hash__ = None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------------
# helpers


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derived_seed(seed: int, *words: int) -> int:
    return int(np.random.SeedSequence([int(seed) % 2**63, *words]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _batches(
    ds: Dataset, batch_size: int, generator: torch.Generator | None, *, shuffle: bool, augment: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``ds`` in a (seeded) random order; tensor datasets are sliced directly (fast path)."""
    n = len(ds)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if isinstance(ds, TensorPairDataset):
            yield ds.x[idx], ds.y[idx]
        elif isinstance(ds, ImageDataset):
            yield ds.get_batch(idx.tolist(), augment=None if augment else False)
        else:
            yield default_collate([ds[i] for i in idx.tolist()])


def _example_batch(ds: Dataset, n: int) -> torch.Tensor:
    n = min(n, len(ds))  # type: ignore[arg-type]
    if isinstance(ds, TensorPairDataset):
        return ds.x[:n]
    if isinstance(ds, ImageDataset):
        return ds.get_batch(range(n), augment=False)[0]
    return default_collate([ds[i] for i in range(n)])[0]


def _to(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def _correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Number of correct argmax predictions (a tensor on the device), ``None`` if not classification."""
    if out.ndim == 2 and not y.is_floating_point() and y.ndim == 1:
        return (out.argmax(1) == y).sum()
    return None


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    c = _correct(out, y)
    return float("nan") if c is None else float(c)


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (in eval mode) on ``dataset``, on the model's device and dtype.

    ``loss_fn(out, y)`` must return the mean over the batch (default: cross-entropy); the result is the mean
    over all examples (never augmented). Accuracy is ``mean(argmax(out) == y)`` (NaN for non-classification
    outputs). The model's train/eval mode is restored afterwards.
    """
    loss_fn = loss_fn or F.cross_entropy
    device, dtype = _model_device_dtype(model)
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0.0
    try:
        for x, y in _batches(dataset, batch_size, None, shuffle=False, augment=False):
            x, y = _to(x, device, dtype), _to(y, device, dtype)
            out = model(x)
            loss_sum += float(loss_fn(out, y)) * len(x)
            correct += _accuracy(out, y)
            total += len(x)
    finally:
        model.train(was_training)
    if total == 0:
        return float("nan"), float("nan")
    return loss_sum / total, correct / total


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
        for attr in ("zero_grad", "step", "param_groups", "state_dict", "load_state_dict"):
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


def _flat_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        raise RuntimeError(
            "teleportation changed the parameter names of the model "
            f"(only before: {sorted(set(a) - set(b))[:5]}, only after: {sorted(set(b) - set(a))[:5]})"
        )
    return math.sqrt(sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in a))


def _norm(a: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in a.values()))


def _qualname(obj: Any) -> str:
    """A stable name of a callable or object (its class for instances), for the checkpoint fingerprint."""
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def _teleport_fn() -> Callable[..., Any]:
    # through the package's lazy public name: importing the submodule directly (``from nnteleport.teleport
    # import ...``) would bind the attribute ``nnteleport.teleport`` to the module instead of the function
    import nnteleport

    fn = nnteleport.teleport
    if isinstance(fn, ModuleType):  # someone else imported the submodule first
        fn = fn.teleport
    return fn


def _apply_teleport(
    model: nn.Module,
    x: torch.Tensor,
    *,
    epoch: int,
    seed: int,
    cob_range: float,
    sampling: str,
    pseudo: bool,
) -> dict[str, Any]:
    """Teleport ``model`` in place (or pseudo-teleport it) and return the record for the history."""
    teleport = _teleport_fn()
    gen = torch.Generator().manual_seed(_derived_seed(seed, epoch, 0x7E1E))
    before = _flat_params(model)
    if not pseudo:
        out = teleport(model, x, cob_range=cob_range, sampling=sampling, generator=gen, inplace=True)
        if isinstance(out, nn.Module) and out is not model:
            raise RuntimeError("nnteleport.teleport(..., inplace=True) returned a new module; train needs in-place")
        after = _flat_params(model)
        dist = _distance(before, after)
    else:
        ref = copy.deepcopy(model)
        teleport(ref, x, cob_range=cob_range, sampling=sampling, generator=gen, inplace=True)
        dist = _distance(before, _flat_params(ref))
        del ref
        # direction uniform on the unit sphere of the full parameter vector (float64 Gaussian, normalised)
        dirs = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in before.items()}
        scale = dist / math.sqrt(sum(float(d.pow(2).sum()) for d in dirs.values()))
        with torch.no_grad():
            for k, p in model.named_parameters():
                p.add_((dirs[k] * scale).to(device=p.device, dtype=p.dtype))
    return {
        "epoch": epoch,
        "kind": "pseudo" if pseudo else "teleport",
        "cob_range": float(cob_range),
        "sampling": str(sampling),
        "distance": dist,
        "weight_norm": _norm(before),
    }


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
    import pickle

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


def _state_fingerprint(model: nn.Module) -> tuple[dict[str, Any], str]:
    """The model's architecture (class, every state entry's shape and dtype) and a SHA-256 of its state."""
    import hashlib

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


def _data_fingerprint(train_ds: Dataset, val_ds: Dataset | None) -> dict[str, Any]:
    """Sizes of the splits and a SHA-256 of the first (unaugmented) training examples and their labels."""
    import hashlib

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


def _fingerprint_diff(stored: dict[str, Any], now: dict[str, Any]) -> list[str]:
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


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "loader": loader_gen.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _TensorBoard:
    """Writes scalars with ``torch.utils.tensorboard`` when tensorboard is installed, else warns once."""

    def __init__(self, log_dir: str | Path | None, purge_step: int | None) -> None:
        self.writer = None
        if log_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                f"tensorboard_dir={str(log_dir)!r} given but tensorboard is not installed; no event files "
                "are written (pip install tensorboard)",
                stacklevel=3,
            )
            return
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and not math.isnan(value):
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------------------------------
# train


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
    teleport_batch_size: int | None = None,
    penalty: Callable[[nn.Module], torch.Tensor | None] | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Sequence[Callable[[nn.Module, int, History], Any]] = (),
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
) -> History:
    """Train ``model`` on ``data`` and return its :class:`History` (see the module docstring for the maths).

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
    optimizer_state_on_teleport : {"reset", "keep"}
        Re-create the optimizer after a teleport (default) or keep its (stale) state.
    teleport_batch_size : int, optional
        Size of the example batch (first examples of the train split) given to the engine (default
        ``batch_size``).
    penalty : callable, optional
        ``penalty(model) -> scalar tensor | None`` added to the loss every iteration; checkpointed if it has
        ``state_dict``/``load_state_dict``.
    loss_fn : callable, optional
        ``loss_fn(out, y) -> mean loss`` (default cross-entropy).
    callbacks : sequence of callable
        ``cb(model, epoch, history)`` at the end of each epoch, after evaluation and before the checkpoint;
        checkpointed if they have ``state_dict``/``load_state_dict``.
    seed : int
        Seeds python, numpy and torch, the data order and the teleports.
    device, dtype
        Where and in which floating dtype to train (default: the model's).
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

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Invalid option (names it and the allowed values), or a checkpoint in ``checkpoint_dir`` written by a
        run with different settings.
    """
    # ---- validation of the options (once, up front)
    for name, value, ok, rule in (
        ("lr", lr, lambda v: v >= 0, ">= 0"),
        ("momentum", momentum, lambda v: 0 <= v < 1, "in [0, 1)"),
        ("weight_decay", weight_decay, lambda v: v >= 0, ">= 0"),
        ("lr_decay_gamma", lr_decay_gamma, lambda v: v > 0, "> 0"),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
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
    state_policy = OptimizerStateOnTeleport.parse(optimizer_state_on_teleport)
    if init is not None:
        from nnteleport.lab.init import InitScheme

        InitScheme.parse(init)
    teleport_epochs: list[int] = []
    if teleport_at is not None:
        teleport_epochs = sorted({int(teleport_at)} if isinstance(teleport_at, int) else {int(e) for e in teleport_at})
        bad = [e for e in teleport_epochs if not 0 <= e < max(epochs, 1)]
        if bad:
            raise InvalidValueError(
                f"teleport_at={teleport_at!r}: epochs must be in [0, {max(epochs, 1) - 1}] (epochs={epochs})"
            )
    elif pseudo_teleport:
        raise InvalidValueError("pseudo_teleport=True needs teleport_at (the epoch of the pseudo-teleportation)")
    if isinstance(data, DataBundle):
        train_ds, val_ds = data.train, data.val
    else:
        try:
            train_ds, val_ds = data
        except (TypeError, ValueError):
            raise InvalidValueError("data must be a DataBundle or a (train, val) pair of datasets") from None
    if len(train_ds) == 0:  # type: ignore[arg-type]
        raise InvalidValueError("the training split is empty")
    loss_fn_given = loss_fn
    loss_fn = loss_fn or F.cross_entropy
    milestones = sorted(int(m) for m in lr_decay_epochs)

    # ---- setup
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    device_, dtype_ = _model_device_dtype(model)
    _seed_all(seed)
    loader_gen = torch.Generator().manual_seed(_derived_seed(seed, 0xDA7A))
    if init is not None:
        from nnteleport.lab.init import initialize

        initialize(model, init)
    x_tp = None
    if teleport_epochs:
        x_tp = _to(_example_batch(train_ds, teleport_batch_size or batch_size), device_, dtype_)

    history = History()
    architecture, initial_sha = _state_fingerprint(model)
    fingerprint = {
        "batch_size": batch_size,
        "optimizer": optimizer if isinstance(optimizer, str) else _qualname(optimizer),
        "lr": lr,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "lr_decay_epochs": milestones,
        "lr_decay_gamma": lr_decay_gamma,
        "init": init,
        "teleport_at": teleport_epochs,
        "cob_range": cob_range,
        "sampling": sampling,
        "pseudo_teleport": pseudo_teleport,
        "optimizer_state_on_teleport": state_policy.value,
        "teleport_batch_size": teleport_batch_size,
        "penalty": None if penalty is None else _qualname(penalty),
        "loss_fn": None if loss_fn_given is None else _qualname(loss_fn_given),
        "seed": seed,
        "dtype": str(dtype_),
        "eval_every": eval_every,
        "max_iters_per_epoch": max_iters_per_epoch,
        "architecture": architecture,
        "initial_state_sha256": initial_sha,
        **_data_fingerprint(train_ds, val_ds),
    }
    ckpt_path = None
    ckpt = None
    if checkpoint_dir is not None:
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        if ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)
            stored = dict(ckpt["fingerprint"])
            diff = _fingerprint_diff({k: v for k, v in stored.items() if k != "epochs"}, fingerprint)
            done_epochs = int(ckpt["epoch"]) + 1
            if "epochs" not in stored:
                diff.append("epochs: not recorded (a checkpoint of an older version)")
            elif done_epochs > epochs:
                diff.append(
                    f"epochs: the checkpoint has {done_epochs} trained epochs, more than the {epochs} asked for"
                )
            elif epochs > done_epochs and done_epochs == stored["epochs"] and done_epochs % eval_every:
                # its last epoch was evaluated because it was the last: a longer run would not have done that
                diff.append(
                    f"epochs: the checkpoint finished a {done_epochs}-epoch run evaluated at its last epoch, which a "
                    f"{epochs}-epoch run with eval_every={eval_every} does not do"
                )
            if diff:
                raise ConfigMismatchError(
                    f"checkpoint {ckpt_path} was written by a run with other settings ({'; '.join(diff)}); use "
                    "another checkpoint_dir or delete the checkpoint"
                )

    def lr_factor(epoch: int) -> float:
        return lr_decay_gamma ** sum(epoch >= m for m in milestones)

    def new_optimizer() -> tuple[Any, list[float]]:
        opt = make_optimizer(model, optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return opt, [g["lr"] for g in opt.param_groups]

    stateful = [("penalty", penalty)] + [(f"callback{i}", cb) for i, cb in enumerate(callbacks)]
    start_epoch = 0
    if ckpt is not None:
        # replay the structural part of earlier teleports (e.g. activation wrappers) so that the state matches
        for rec in ckpt["history"]["teleports"]:
            if rec["kind"] == "teleport":
                _apply_teleport(model, x_tp, epoch=rec["epoch"], seed=seed, cob_range=cob_range,
                                sampling=sampling, pseudo=False)  # fmt: skip
        model.load_state_dict(ckpt["model"])
        opt, base_lrs = new_optimizer()
        base_lrs = ckpt["scheduler"]["base_lrs"]
        opt.load_state_dict(ckpt["optimizer"])
        for name, obj in stateful:
            if obj is not None and hasattr(obj, "load_state_dict") and ckpt.get(name) is not None:
                obj.load_state_dict(ckpt[name])
        history = History.from_dict(ckpt["history"])
        start_epoch = int(ckpt["epoch"]) + 1
        _set_rng_state(ckpt["rng"], loader_gen)
    else:
        opt, base_lrs = new_optimizer()

    explicit_l2 = weight_decay > 0 and not isinstance(optimizer, str)
    # TensorBoard steps are iteration indices for every tag (epoch-level values at the epoch's last one), so a
    # resumed run can purge what was logged after its checkpoint with one purge step
    done_iters = len(history.iter_loss)
    tb = _TensorBoard(
        tensorboard_dir if start_epoch < epochs else None, purge_step=done_iters if start_epoch > 0 else None
    )
    n_train = len(train_ds)  # type: ignore[arg-type]
    iters = math.ceil(n_train / batch_size)
    if max_iters_per_epoch is not None:
        iters = min(iters, max_iters_per_epoch)
    bar = None
    if progress and start_epoch < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=(epochs - start_epoch) * iters, desc=desc or "train", unit="it", leave=False)

    try:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            if epoch in teleport_epochs:
                rec = _apply_teleport(
                    model,
                    x_tp,
                    epoch=epoch,
                    seed=seed,
                    cob_range=cob_range,
                    sampling=sampling,
                    pseudo=pseudo_teleport,
                )
                history.teleports.append(rec)
                tb.scalar("teleport/distance", rec["distance"], len(history.iter_loss))
                if state_policy is OptimizerStateOnTeleport.RESET:
                    opt, base_lrs = new_optimizer()
            if epoch == 0 and val_ds is not None:
                vl, va = evaluate(model, val_ds, batch_size=eval_batch_size, loss_fn=loss_fn)
                history.initial = {"val_loss": vl, "val_acc": va}
            factor = lr_factor(epoch)
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = base * factor
            model.train()
            # per-iteration values stay on the device until the end of the epoch (no sync per step)
            losses: list[torch.Tensor] = []
            corrects: list[torch.Tensor] = []
            pens: list[torch.Tensor] = []
            sizes: list[int] = []
            for x, y in _batches(train_ds, batch_size, loader_gen, shuffle=True):
                if len(sizes) >= iters:
                    break
                x, y = _to(x, device_, dtype_), _to(y, device_, dtype_)
                opt.zero_grad()
                out = model(x)
                loss = loss_fn(out, y)
                total = loss
                if penalty is not None:
                    pen = penalty(model)
                    if pen is not None:
                        total = total + pen
                        pens.append(pen.detach().reshape(()))
                if explicit_l2:
                    total = total + 0.5 * weight_decay * sum(
                        p.pow(2).sum() for p in model.parameters() if p.requires_grad
                    )
                total.backward()
                opt.step()
                losses.append(loss.detach())
                c = _correct(out.detach(), y)
                if c is not None:
                    corrects.append(c)
                sizes.append(len(x))
                if bar is not None:
                    bar.update(1)
            n_it, seen = len(sizes), sum(sizes)
            iter_losses = torch.stack(losses).double().cpu().tolist()
            for li in iter_losses:
                tb.scalar("loss/train_iter", li, len(history.iter_loss))
                history.iter_loss.append(li)
            history.epoch.append(epoch)
            history.train_loss.append(sum(li * n for li, n in zip(iter_losses, sizes)) / seen)
            correct = float(torch.stack(corrects).sum()) if len(corrects) == n_it else float("nan")
            history.train_acc.append(correct / seen)
            history.penalty.append(float(torch.stack(pens).double().mean()) if pens else float("nan"))
            history.lr.append(float(opt.param_groups[0]["lr"]))
            history.iters_per_epoch.append(n_it)
            if val_ds is not None and ((epoch + 1) % eval_every == 0 or epoch == epochs - 1):
                vl, va = evaluate(model, val_ds, batch_size=eval_batch_size, loss_fn=loss_fn)
            else:
                vl, va = float("nan"), float("nan")
            history.val_loss.append(vl)
            history.val_acc.append(va)
            for cb in callbacks:
                cb(model, epoch, history)
            history.seconds.append(time.perf_counter() - t0)
            last_iter = len(history.iter_loss) - 1
            for tag, v in (("loss/train", history.train_loss[-1]), ("accuracy/train", history.train_acc[-1]),
                           ("loss/val", vl), ("accuracy/val", va), ("lr", history.lr[-1]),
                           ("epoch", epoch)):  # fmt: skip
                tb.scalar(tag, v, last_iter)
            if bar is not None:
                bar.set_postfix(epoch=epoch, loss=f"{history.train_loss[-1]:.4g}", val_acc=f"{va:.3f}")
            if ckpt_path is not None:
                state = {
                    "format": 2,
                    "epoch": epoch,
                    "fingerprint": {**fingerprint, "epochs": epochs},
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": {"base_lrs": base_lrs, "milestones": milestones, "gamma": lr_decay_gamma},
                    "history": history.to_dict(),
                    "rng": _rng_state(loader_gen),
                }
                for name, obj in stateful:
                    if obj is not None and hasattr(obj, "state_dict"):
                        state[name] = obj.state_dict()
                _atomic_save(state, ckpt_path)
    finally:
        if bar is not None:
            bar.close()
        tb.close()
    return history
