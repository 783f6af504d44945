"""Mini-batches of a dataset on the model's device, and :func:`evaluate` (mean loss and accuracy).

Data on an accelerator (:func:`on_device`): a :class:`~nnteleport.lab.data.TensorPairDataset` or
:class:`~nnteleport.lab.data.ImageDataset` (every dataset of :mod:`nnteleport.lab.data`) whose tensors take at
most :data:`RESIDENT_FRACTION` of the device's free memory is copied there once and stays there: a mini-batch
is then an index into device memory (and CIFAR's crop and flip run on the device too), with no host work and
no transfer per step. A larger one stays on the host and each batch is put in pinned memory and copied
asynchronously (``non_blocking``), so the copy overlaps the previous step's kernels. Other datasets are
collated on the host (``default_collate``) and copied the same way. On the CPU nothing is copied.

Loader workers (``batches(..., workers=N)``, ``train(..., loader_workers=N)``): a generic dataset (any other
``Dataset``, whose batch is ``batch_size`` calls of ``__getitem__``) is then read by ``N`` worker processes of a
``torch.utils.data.DataLoader`` that collate the same index slices as the main process would (the same
order, drawn in the main process from the same generator), pinned by the loader when the model is on CUDA.
The workers start with each epoch and stop at its end (also when it is cut short or raises). Each worker's
generators (torch, python, numpy) are seeded by the loader from ``worker_seed`` (DataLoader's ``generator``)
plus the worker's index: a random transform in ``__getitem__`` is reproducible per ``worker_seed`` and
worker count, but draws other numbers than the main process's global generator (no workers). A tensor or
image dataset of :mod:`nnteleport.lab.data` never uses workers: its batch is one vectorised gather (and one
batched augmentation) in the main process, faster than any worker could collate it.

The order of the batches and every random number of the augmentation are drawn on the CPU generators, on any
device: the same batches and crops as on the CPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

from nnteleport.lab.data import ImageDataset, TensorPairDataset

__all__ = [
    "RESIDENT_FRACTION",
    "batches",
    "correct_count",
    "evaluate",
    "example_batch",
    "model_device_dtype",
    "on_device",
    "to_device",
    "uses_workers",
]

#: A dataset whose tensors need at most this fraction of the accelerator's free memory is kept there.
RESIDENT_FRACTION = 0.5

# dataset -> {device: its copy on that device}; the copies live as long as the dataset does
_RESIDENT: weakref.WeakKeyDictionary[Dataset, dict[str, Dataset]] = weakref.WeakKeyDictionary()


def _nbytes(ds: Dataset) -> int | None:
    if isinstance(ds, TensorPairDataset):
        return ds.x.nbytes + ds.y.nbytes
    if isinstance(ds, ImageDataset):
        return ds.images.nbytes + ds.labels.nbytes
    return None


def on_device(ds: Dataset, device: torch.device | str) -> Dataset:
    """``ds`` with its tensors on ``device`` when they fit (see the module docstring), else ``ds`` itself.

    The copy is made once per dataset and device (cached while ``ds`` lives); on the CPU, for a dataset that
    is not a tensor or image dataset, and for one that does not fit, ``ds`` is returned as it is.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return ds
    size = _nbytes(ds)
    if size is None:
        return ds
    cached = _RESIDENT.get(ds, {}).get(str(device))
    if cached is not None:
        return cached
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if size > RESIDENT_FRACTION * free:
            return ds
    if isinstance(ds, TensorPairDataset):
        copy: Dataset = TensorPairDataset(ds.x.to(device), ds.y.to(device))
    else:
        assert isinstance(ds, ImageDataset)
        copy = ImageDataset(ds.images.to(device), ds.labels.to(device), ds.mean.flatten().tolist(),
                            ds.std.flatten().tolist(), augment=ds.augment, pad=ds.pad)  # fmt: skip
    _RESIDENT.setdefault(ds, {})[str(device)] = copy
    return copy


def _data_device(ds: Dataset) -> torch.device:
    if isinstance(ds, TensorPairDataset):
        return ds.x.device
    if isinstance(ds, ImageDataset):
        return ds.images.device
    return torch.device("cpu")


def uses_workers(ds: Dataset, workers: int) -> bool:
    """Whether :func:`batches` reads ``ds`` with loader worker processes: ``workers > 0`` and a generic dataset
    (nnteleport's tensor and image datasets never use them)."""
    return workers > 0 and not isinstance(ds, (TensorPairDataset, ImageDataset))


def batches(
    ds: Dataset,
    batch_size: int,
    generator: torch.Generator | None,
    *,
    shuffle: bool,
    augment: bool = True,
    workers: int = 0,
    worker_seed: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``ds`` in a (seeded) random order; tensor datasets are sliced directly (fast path).

    The order is ``torch.randperm(len(ds), generator=generator)`` (drawn at the first ``next``), cut into
    consecutive slices of ``batch_size`` (the last one may be smaller). Image datasets augment with their own
    (global-RNG) transform unless ``augment=False``. The batches are on the dataset's device (the order is
    drawn on the CPU and copied there once).

    ``workers > 0``: a generic dataset's slices are collated by that many ``DataLoader`` worker processes,
    seeded from ``worker_seed`` (their batches pinned when ``pin_memory``); they are shut down when the
    iteration ends or the generator is closed (see the module docstring). Tensor and image datasets ignore
    ``workers``, ``worker_seed`` and ``pin_memory``.
    """
    n = len(ds)  # type: ignore[arg-type]
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    order = order.to(_data_device(ds))
    if uses_workers(ds, workers):
        yield from _worker_batches(ds, order, batch_size, workers, worker_seed, pin_memory)
        return
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if isinstance(ds, TensorPairDataset):
            yield ds.x[idx], ds.y[idx]
        elif isinstance(ds, ImageDataset):
            yield ds.get_batch(idx, augment=None if augment else False)
        else:
            yield default_collate([ds[i] for i in idx.tolist()])


def _worker_batches(
    ds: Dataset, order: torch.Tensor, batch_size: int, workers: int, worker_seed: int, pin_memory: bool
) -> Iterator[Any]:
    """The slices ``order[k * batch_size : (k + 1) * batch_size]`` of ``ds``, collated by ``workers`` fresh
    worker processes (base seed drawn from a generator seeded with ``worker_seed``), shut down at the end."""
    slices = [order[start : start + batch_size].tolist() for start in range(0, len(order), batch_size)]
    loader = DataLoader(ds, batch_sampler=slices, num_workers=workers, collate_fn=default_collate,
                        pin_memory=pin_memory, persistent_workers=False,
                        generator=torch.Generator().manual_seed(worker_seed))  # fmt: skip
    it = iter(loader)
    # Stop the workers at the end, also when the epoch is cut short (generator closed) or a worker raised (a
    # traceback then holds the iterator, whose ``__del__`` would stop them only when it is freed).
    # ``_shutdown_workers`` is what that ``__del__`` calls: a torch internal, checked before the first batch
    # (tests/test_loader_workers.py checks that no worker outlives its epoch).
    shutdown = getattr(it, "_shutdown_workers", None)
    if not callable(shutdown):
        del it
        raise RuntimeError(
            f"train: loader_workers needs torch's DataLoader iterator to have _shutdown_workers, which torch "
            f"{torch.__version__} does not; use loader_workers=0"
        )
    try:
        yield from it
    finally:
        shutdown()


def example_batch(ds: Dataset, n: int) -> torch.Tensor:
    """The inputs of the first ``min(n, len(ds))`` examples, unaugmented: ``(n, *input_shape)``."""
    n = min(n, len(ds))  # type: ignore[arg-type]
    if isinstance(ds, TensorPairDataset):
        return ds.x[:n]
    if isinstance(ds, ImageDataset):
        return ds.get_batch(range(n), augment=False)[0]
    return default_collate([ds[i] for i in range(n)])[0]


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on ``device``; floating tensors also cast to ``dtype`` (integer labels keep theirs).

    A host tensor going to a CUDA device is pinned first (unless it already is, e.g. by a loader's workers)
    and copied asynchronously (``non_blocking``).
    """
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        if not x.is_pinned():
            x = x.pin_memory()
        if x.is_floating_point():
            return x.to(device=device, non_blocking=True).to(dtype)
        return x.to(device=device, non_blocking=True)
    if x.is_floating_point():
        return x.to(device=device, dtype=dtype)
    return x.to(device=device)


def correct_count(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """Number of correct argmax predictions (a tensor on the device), ``None`` if not classification.

    Classification means logits ``out`` of shape ``(B, classes)`` and integer labels ``y`` of shape ``(B,)``.
    """
    if out.ndim == 2 and not y.is_floating_point() and y.ndim == 1:
        return (out.argmax(1) == y).sum()
    return None


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the model's first parameter (CPU and the default dtype for a parameter-free model)."""
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
    outputs). The model's train/eval mode is restored afterwards. The sums stay on the device (float64 losses,
    integer counts: the same numbers as summing on the host) and are read once, at the end.
    """
    loss_fn = loss_fn or F.cross_entropy
    device, dtype = model_device_dtype(model)
    was_training = model.training
    model.eval()
    total, classification = 0, True
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    try:
        for x, y in batches(on_device(dataset, device), batch_size, None, shuffle=False, augment=False):
            x, y = to_device(x, device, dtype), to_device(y, device, dtype)
            out = model(x)
            loss_sum += loss_fn(out, y).detach().double() * len(x)
            c = correct_count(out, y)
            if c is None:
                classification = False
            else:
                correct += c
            total += len(x)
    finally:
        model.train(was_training)
    if total == 0:
        return float("nan"), float("nan")
    return float(loss_sum) / total, (float(correct) / total if classification else float("nan"))
