"""The dataset types of :mod:`nnteleport.lab.data`: names, the train/validation bundle, tensor datasets.

:class:`ImageDataset` holds uint8-range images as a float tensor ``(N, C, H, W)`` with per-channel
normalisation ``(x - mean_c) / std_c`` and optional augmentation (random crop with zero padding, horizontal
flip); :class:`TensorPairDataset` holds ready tensors ``x (N, ...)`` and labels ``y (N,)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError

__all__ = ["EMBEDDED", "DataBundle", "DatasetName", "ImageDataset", "TensorPairDataset"]


class DatasetName(Choice, what="dataset"):
    """Names accepted by :func:`load_dataset`."""

    DIGITS = "digits"
    MNIST1D = "mnist1d"
    RANDOM = "random"
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    CIFAR10 = "cifar10"
    CIFAR100 = "cifar100"


EMBEDDED = (DatasetName.DIGITS, DatasetName.MNIST1D, DatasetName.RANDOM)


@dataclass
class DataBundle:
    """A dataset ready for training: two splits of ``(x, y)`` pairs and their metadata.

    Attributes
    ----------
    name : str
        The dataset name given to :func:`load_dataset`.
    train, val : Dataset
        Map-style datasets; ``ds[i]`` is ``(x, y)`` with ``x`` a float32 tensor of shape ``input_shape`` and
        ``y`` an int64 scalar tensor in ``[0, num_classes)``.
    input_shape : tuple of int
        Shape of one example (no batch axis), e.g. ``(1, 8, 8)``.
    num_classes : int
        Number of classes.
    """

    name: str
    train: Dataset
    val: Dataset
    input_shape: tuple[int, ...]
    num_classes: int

    def example_batch(self, n: int = 8, *, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` examples of a split, stacked: ``x`` ``(n, *input_shape)``, ``y`` ``(n,)``.

        Augmentation is not applied (for an :class:`ImageDataset`), so the batch is the same every call and
        consumes no random numbers.
        """
        ds = self.train if split == "train" else self.val
        n = min(n, len(ds))  # type: ignore[arg-type]
        if isinstance(ds, ImageDataset):
            return ds.get_batch(range(n), augment=False)
        xs, ys = zip(*(ds[i] for i in range(n)))
        return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


class TensorPairDataset(Dataset):
    """``(x[i], y[i])`` from two tensors with the same first dimension."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if len(x) != len(y):
            raise InvalidValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class ImageDataset(Dataset):
    """uint8 images ``(N, C, H, W)`` normalised per channel on access, optionally augmented.

    ``x = (img / 255 - mean[c]) / std[c]``. Augmentation (train split of CIFAR): zero-pad the image by
    ``pad`` pixels on each side in pixel space (the padded value is ``-mean/std`` after normalisation, as
    torchvision's ``RandomCrop(32, padding=4)`` before ``Normalize``), crop a random ``H x W`` window
    (offsets uniform in ``[0, 2 pad]``), then flip horizontally with probability 1/2. Random numbers come
    from torch's global generator.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        augment: bool = False,
        pad: int = 4,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise InvalidValueError(
                f"images must be uint8 of shape (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise InvalidValueError(f"images and labels differ in length: {len(images)} vs {len(labels)}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c:
            raise InvalidValueError(f"mean and std need {c} values (one per channel), got {len(mean)} and {len(std)}")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
        self.augment = augment
        self.pad = pad

    def __len__(self) -> int:
        return len(self.images)

    def _augment(self, img: torch.Tensor) -> torch.Tensor:
        # img: (C, H, W) uint8 -> padded crop + flip, still uint8
        _, h, w = img.shape
        p = self.pad
        if p > 0:
            padded = torch.zeros((img.shape[0], h + 2 * p, w + 2 * p), dtype=img.dtype)
            padded[:, p : p + h, p : p + w] = img
            i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            img = padded[:, i : i + h, j : j + w]
        if bool(torch.rand(()) < 0.5):
            img = img.flip(-1)
        return img

    def _augment_batch(self, imgs: torch.Tensor) -> torch.Tensor:
        # the same random crop + flip as _augment, drawn for a whole batch at once (one gather), on the images'
        # device; the random numbers come from the CPU generator on every device (the same crops everywhere)
        b, c, h, w = imgs.shape
        p, dev = self.pad, imgs.device
        if p > 0:
            padded = torch.zeros((b, c, h + 2 * p, w + 2 * p), dtype=imgs.dtype, device=dev)
            padded[:, :, p : p + h, p : p + w] = imgs
            off = torch.randint(0, 2 * p + 1, (2, b)).to(dev)
            rows = (off[0][:, None] + torch.arange(h, device=dev)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * p)
            imgs = padded.gather(2, rows)
            cols = (off[1][:, None] + torch.arange(w, device=dev)[None, :])[:, None, None, :].expand(b, c, h, w)
            imgs = imgs.gather(3, cols)
        flip = (torch.rand(b) < 0.5).to(dev)
        return torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)

    def _normalise(self, img: torch.Tensor) -> torch.Tensor:
        return (img.to(torch.float32) / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.augment:
            img = self._augment(img)
        return self._normalise(img), self.labels[i]

    def get_batch(
        self, indices: Sequence[int] | torch.Tensor, *, augment: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` stacked, on the images' device; ``augment=None`` follows the dataset's setting."""
        aug = self.augment if augment is None else augment
        dev = self.images.device
        if isinstance(indices, torch.Tensor):
            idx = indices.to(device=dev, dtype=torch.int64)
        else:
            idx = torch.as_tensor(list(indices), dtype=torch.int64, device=dev)
        imgs = self.images[idx]
        if aug:
            imgs = self._augment_batch(imgs)
        x = (imgs.to(torch.float32) / 255.0 - self.mean.to(dev)) / self.std.to(dev)
        return x, self.labels[idx]
