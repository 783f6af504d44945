"""Mini-batches of a dataset on the model's device, and :func:`evaluate` (mean loss and accuracy)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, default_collate

from nnteleport.lab.data import ImageDataset, TensorPairDataset

__all__ = ["batches", "correct_count", "evaluate", "example_batch", "model_device_dtype", "to_device"]


def batches(
    ds: Dataset, batch_size: int, generator: torch.Generator | None, *, shuffle: bool, augment: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of ``ds`` in a (seeded) random order; tensor datasets are sliced directly (fast path).

    The order is ``torch.randperm(len(ds), generator=generator)`` (drawn at the first ``next``), cut into
    consecutive slices of ``batch_size`` (the last one may be smaller). Image datasets augment with their own
    (global-RNG) transform unless ``augment=False``.
    """
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


def example_batch(ds: Dataset, n: int) -> torch.Tensor:
    """The inputs of the first ``min(n, len(ds))`` examples, unaugmented: ``(n, *input_shape)``."""
    n = min(n, len(ds))  # type: ignore[arg-type]
    if isinstance(ds, TensorPairDataset):
        return ds.x[:n]
    if isinstance(ds, ImageDataset):
        return ds.get_batch(range(n), augment=False)[0]
    return default_collate([ds[i] for i in range(n)])[0]


def to_device(x: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``x`` on ``device``; floating tensors also cast to ``dtype`` (integer labels keep theirs)."""
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


def _accuracy(out: torch.Tensor, y: torch.Tensor) -> float:
    c = correct_count(out, y)
    return float("nan") if c is None else float(c)


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
    outputs). The model's train/eval mode is restored afterwards.
    """
    loss_fn = loss_fn or F.cross_entropy
    device, dtype = model_device_dtype(model)
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0.0
    try:
        for x, y in batches(dataset, batch_size, None, shuffle=False, augment=False):
            x, y = to_device(x, device, dtype), to_device(y, device, dtype)
            out = model(x)
            loss_sum += float(loss_fn(out, y)) * len(x)
            correct += _accuracy(out, y)
            total += len(x)
    finally:
        model.train(was_training)
    if total == 0:
        return float("nan"), float("nan")
    return loss_sum / total, correct / total
