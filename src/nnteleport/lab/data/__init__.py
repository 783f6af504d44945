"""Datasets for the experiments: embedded (no network) and standard formats read from a local folder.

``load_dataset(name, root, ...)`` returns a :class:`DataBundle` -- a train and a validation split of
``(x, y)`` pairs of tensors, the input shape and the number of classes.

Embedded datasets (never touch the network):

* ``"digits"`` -- scikit-learn's 8x8 handwritten digits (1797 images), shape ``(1, 8, 8)``, standardised with
  the mean and standard deviation of the training split (one scalar each; several pixels are constant), split
  into train/validation by a seeded permutation (``val_fraction=0.2``).
* ``"mnist1d"`` -- MNIST-1D generated with the ``mnist1d`` package's generator (Greydanus 2020; never
  downloaded), shape ``(1, 40)``, the package's own train/test split (80/20) and its seed.
* ``"random"`` -- random inputs ``x ~ N(0, 1)`` with random labels, as in the paper's micro-teleportation
  figure (Armenta et al. 2023, Sec. 4.3, Fig. 3); options ``input_shape``, ``num_classes``, ``num_train``,
  ``num_val``.

Standard datasets, read from ``root`` in their distribution formats (``download=True`` fetches them first):

* ``"mnist"``, ``"fashion-mnist"`` -- the four IDX files (``train-images-idx3-ubyte`` ..., gzipped or not),
  shape ``(1, 28, 28)``, normalised with the usual per-dataset mean/std;
* ``"cifar10"``, ``"cifar100"`` -- the CIFAR "python version" pickles
  (``cifar-10-batches-py/data_batch_1`` ..., ``cifar-100-python/train``), shape ``(3, 32, 32)``, per-channel
  normalisation, and on the train split the usual augmentation (random crop 32 with zero padding 4,
  horizontal flip with probability 1/2; ``augment=False`` turns it off).

The validation split of the standard datasets is their official test split (as in the paper's experiments).
``train_size`` / ``val_size`` take a seeded random subset of either split (small-scale runs).

Randomness: the embedded splits and the subsets use ``seed`` only; augmentation draws from torch's global
generator in the process that reads the data (seeded and checkpointed by :func:`nnteleport.lab.training.train`;
with ``num_workers > 0`` each worker is seeded by the loader's generator), so a run is reproducible.

Modules: :mod:`~nnteleport.lab.data.datasets` (the types), :mod:`~nnteleport.lab.data.embedded`,
:mod:`~nnteleport.lab.data.files` (local standard formats), :mod:`~nnteleport.lab.data.downloads`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnteleport.errors import InvalidValueError
from nnteleport.lab.data.datasets import EMBEDDED, DataBundle, DatasetName, ImageDataset, TensorPairDataset
from nnteleport.lab.data.downloads import _download
from nnteleport.lab.data.embedded import _digits, _mnist1d, _random
from nnteleport.lab.data.files import (
    _MNIST_FILES,
    _SOURCES,
    CHECKSUMS,
    _find,
    _load_cifar,
    _load_mnist,
    _missing,
    read_cifar_pickle,
    read_idx,
)

__all__ = [
    "CHECKSUMS",
    "DataBundle",
    "DatasetName",
    "ImageDataset",
    "TensorPairDataset",
    "check_available",
    "load_dataset",
    "loader",
    "read_cifar_pickle",
    "read_idx",
]


def check_available(name: str, root: str | Path | None = None) -> None:
    """Check, without reading them, that the files of dataset ``name`` are in ``root`` (embedded: nothing to do).

    Raises
    ------
    InvalidValueError
        Unknown dataset name.
    MissingFileError
        A file is missing (names it, the folders searched and where to get it).
    """
    ds = DatasetName.parse(name)
    if ds in EMBEDDED:
        return
    root_path = Path(root) if root is not None else Path("data")
    if ds in (DatasetName.MNIST, DatasetName.FASHION_MNIST):
        for fname in _MNIST_FILES.values():
            if _find(ds, root_path, fname, gz=True) is None:
                raise _missing(ds, fname + "[.gz]", root_path)
    else:
        src = _SOURCES[ds]
        for fname in src["train"] + src["val"]:
            if _find(ds, root_path, fname, gz=False) is None:
                raise _missing(ds, fname, root_path)


def _subset(ds: Dataset, size: int | None, seed: int, what: str) -> Dataset:
    if size is None:
        return ds
    n = len(ds)  # type: ignore[arg-type]
    if not 1 <= size <= n:
        raise InvalidValueError(f"{what} must be in [1, {n}] (the split has {n} examples), got {size}")
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(n)[:size]))
    if isinstance(ds, ImageDataset):
        return ImageDataset(
            ds.images[idx],
            ds.labels[idx],
            ds.mean.flatten().tolist(),
            ds.std.flatten().tolist(),
            augment=ds.augment,
            pad=ds.pad,
        )
    if isinstance(ds, TensorPairDataset):
        return TensorPairDataset(ds.x[idx], ds.y[idx])
    return torch.utils.data.Subset(ds, idx.tolist())


def load_dataset(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    seed: int = 0,
    train_size: int | None = None,
    val_size: int | None = None,
    augment: bool | None = None,
    **options: Any,
) -> DataBundle:
    """Load dataset ``name`` as a :class:`DataBundle`.

    Parameters
    ----------
    name : str
        One of ``"digits"``, ``"mnist1d"``, ``"random"`` (embedded, no files needed) or ``"mnist"``,
        ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` (read from ``root``).
    root : path, optional
        Folder holding the files of a standard dataset (also searched: the usual sub-folders such as
        ``ROOT/cifar-10-batches-py`` or torchvision's ``ROOT/MNIST/raw``). Default ``./data``.
    download : bool
        Fetch missing files of a standard dataset into ``root`` first (HTTPS, each file checked against its
        published MD5 in :data:`CHECKSUMS`; never done otherwise).
    seed : int
        Seed of the embedded datasets' generation/split and of the ``train_size``/``val_size`` subsets.
    train_size, val_size : int, optional
        Keep a seeded random subset of this many examples of the split.
    augment : bool, optional
        Train-split augmentation of the datasets that have one (CIFAR: random crop and horizontal flip):
        ``None`` the dataset's default (on for CIFAR), ``False`` off, ``True`` on. Datasets without
        augmentation (digits, MNIST-1D, random, MNIST, Fashion-MNIST) ignore it, so an experiment config can
        carry one ``augment`` key for every dataset.
    **options
        Per dataset: ``digits``: ``val_fraction`` (0.2); ``mnist1d``: ``num_samples`` (5000), ``train_split``
        (0.8) and any other field of ``mnist1d.data.get_dataset_args()``; ``random``: ``input_shape``
        ((1, 8, 8)), ``num_classes`` (10), ``num_train`` (512), ``num_val`` (128); ``cifar10``/``cifar100``:
        ``augment`` (True, train split only).

    Raises
    ------
    ValueError
        Unknown name or option (:class:`~nnteleport.errors.InvalidValueError`), a corrupt file
        (:class:`~nnteleport.errors.CorruptFileError`), a CIFAR file that would run code or a download
        that fails its checksum (:class:`~nnteleport.errors.UnsafeFileError`); the message names the file.
    FileNotFoundError
        A file of a standard dataset is missing (the message names the file, the folders searched and where
        to get it).
    """
    ds_name = DatasetName.parse(name)
    if augment is not None and ds_name in (DatasetName.CIFAR10, DatasetName.CIFAR100):
        options["augment"] = bool(augment)
    if ds_name in EMBEDDED:
        allowed_opts = {
            DatasetName.DIGITS: {"val_fraction"},
            DatasetName.RANDOM: {"input_shape", "num_classes", "num_train", "num_val"},
            DatasetName.MNIST1D: None,  # validated against the package's own arguments
        }[ds_name]
        if allowed_opts is not None and set(options) - allowed_opts:
            raise InvalidValueError(
                f"unknown option(s) {sorted(set(options) - allowed_opts)} for dataset {ds_name.value!r}; "
                f"allowed: {', '.join(sorted(allowed_opts)) or '(none)'}"
            )
        fn = {DatasetName.DIGITS: _digits, DatasetName.MNIST1D: _mnist1d, DatasetName.RANDOM: _random}[ds_name]
        bundle = fn(seed, **options)
    else:
        allowed_opts = {"augment"} if ds_name in (DatasetName.CIFAR10, DatasetName.CIFAR100) else set()
        if set(options) - allowed_opts:
            raise InvalidValueError(
                f"unknown option(s) {sorted(set(options) - allowed_opts)} for dataset {ds_name.value!r}; "
                f"allowed: {', '.join(sorted(allowed_opts)) or '(none)'}"
            )
        root_path = Path(root) if root is not None else Path("data")
        if download:
            _download(ds_name, root_path)
        augment = bool(options.get("augment", True))
        if ds_name in (DatasetName.MNIST, DatasetName.FASHION_MNIST):
            bundle = _load_mnist(ds_name, root_path, augment)
        else:
            bundle = _load_cifar(ds_name, root_path, augment)
    bundle.train = _subset(bundle.train, train_size, seed, "train_size")
    bundle.val = _subset(bundle.val, val_size, seed + 1, "val_size")
    return bundle


def loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    seed: int | None = 0,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` whose shuffling (and worker seeding) uses its own seeded generator.

    Parameters
    ----------
    dataset : Dataset
        Map-style dataset of ``(x, y)`` pairs.
    batch_size : int
        Examples per batch.
    shuffle : bool
        Reshuffle every epoch (the order follows ``generator``, not torch's global generator).
    seed : int, optional
        Seed of a fresh generator (ignored when ``generator`` is given).
    generator : torch.Generator, optional
        Use this generator (e.g. to save and restore its state for an exact resume).
    drop_last, num_workers
        As in ``torch.utils.data.DataLoader``.
    """
    if batch_size < 1:
        raise InvalidValueError(f"batch_size must be >= 1, got {batch_size}")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        num_workers=num_workers,
        persistent_workers=False,
    )
