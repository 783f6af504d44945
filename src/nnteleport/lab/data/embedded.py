"""The embedded datasets of :mod:`nnteleport.lab.data` (no files, no network): digits, MNIST-1D, random data.

Each ``_name(seed, **options) -> DataBundle``; the split is a seeded permutation (digits) or the generator's
own (MNIST-1D, random).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from nnteleport.errors import InvalidValueError
from nnteleport.lab.data.datasets import DataBundle, TensorPairDataset

__all__: list[str] = []  # used through nnteleport.lab.data.load_dataset


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 < val_fraction < 1.0:
        raise InvalidValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * val_fraction))
    return perm[n_val:], perm[:n_val]


def _digits(seed: int, val_fraction: float = 0.2) -> DataBundle:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.asarray(d.images, dtype=np.float64)  # (1797, 8, 8), values 0..16
    y = np.asarray(d.target, dtype=np.int64)
    tr, va = _split(len(y), val_fraction, seed)
    mean, std = x[tr].mean(), x[tr].std()
    x = ((x - mean) / std).astype(np.float32)[:, None]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return DataBundle(
        "digits",
        TensorPairDataset(xt[tr], yt[tr]),
        TensorPairDataset(xt[va], yt[va]),
        (1, 8, 8),
        10,
    )


_MNIST1D_CACHE: dict[str, tuple[np.ndarray, ...]] = {}  # generation takes seconds; the result is deterministic


def _mnist1d(seed: int, num_samples: int = 5000, train_split: float = 0.8, **args: Any) -> DataBundle:
    from mnist1d.data import get_dataset_args, make_dataset

    dargs = get_dataset_args()
    unknown = set(args) - set(vars(dargs))
    if unknown:
        allowed = ", ".join(sorted(k for k in vars(dargs) if k != "url"))
        raise InvalidValueError(f"unknown mnist1d option(s) {sorted(unknown)}; allowed: {allowed}")
    dargs.num_samples = int(num_samples)
    dargs.train_split = float(train_split)
    dargs.seed = int(seed)
    for k, v in args.items():
        setattr(dargs, k, v)
    key = repr(sorted((k, repr(v)) for k, v in vars(dargs).items()))
    if key not in _MNIST1D_CACHE:
        # the generator seeds numpy's (and python's) global generators: leave the caller's streams untouched
        import random

        np_state, py_state = np.random.get_state(), random.getstate()
        try:
            d = make_dataset(dargs)
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)
        _MNIST1D_CACHE[key] = tuple(
            np.asarray(d[k], dtype=np.float32 if k.startswith("x") else np.int64)
            for k in ("x", "x_test", "y", "y_test")
        )
        while len(_MNIST1D_CACHE) > 4:  # generated sets are small (5000 x 40 floats); keep a few
            _MNIST1D_CACHE.pop(next(iter(_MNIST1D_CACHE)))
    # fresh tensors every call: callers may modify their copy
    x_tr, x_va, y_tr, y_va = (torch.from_numpy(a.copy()) for a in _MNIST1D_CACHE[key])
    x_tr, x_va = x_tr[:, None], x_va[:, None]
    return DataBundle(
        "mnist1d",
        TensorPairDataset(x_tr, y_tr),
        TensorPairDataset(x_va, y_va),
        tuple(x_tr.shape[1:]),
        10,
    )


def _random(
    seed: int,
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    num_train: int = 512,
    num_val: int = 128,
) -> DataBundle:
    shape = tuple(int(s) for s in input_shape)
    if num_classes < 1 or num_train < 1 or num_val < 1 or any(s < 1 for s in shape):
        raise InvalidValueError(
            f"random data needs positive sizes, got input_shape={shape}, num_classes={num_classes}, "
            f"num_train={num_train}, num_val={num_val}"
        )
    g = torch.Generator().manual_seed(seed)
    n = num_train + num_val
    x = torch.randn((n, *shape), generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return DataBundle(
        "random",
        TensorPairDataset(x[:num_train], y[:num_train]),
        TensorPairDataset(x[num_train:], y[num_train:]),
        shape,
        int(num_classes),
    )
