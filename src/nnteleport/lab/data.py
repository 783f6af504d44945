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
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nnteleport._choice import Choice
from nnteleport.errors import CorruptFileError, InvalidValueError, MissingFileError, UnsafeFileError

__all__ = [
    "DataBundle",
    "DatasetName",
    "ImageDataset",
    "check_available",
    "load_dataset",
    "loader",
]


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
        # the same random crop + flip as _augment, drawn for a whole batch at once (one gather)
        b, c, h, w = imgs.shape
        p = self.pad
        if p > 0:
            padded = torch.zeros((b, c, h + 2 * p, w + 2 * p), dtype=imgs.dtype)
            padded[:, :, p : p + h, p : p + w] = imgs
            off = torch.randint(0, 2 * p + 1, (2, b))
            rows = (off[0][:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(b, c, h, w + 2 * p)
            imgs = padded.gather(2, rows)
            cols = (off[1][:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(b, c, h, w)
            imgs = imgs.gather(3, cols)
        flip = torch.rand(b) < 0.5
        return torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)

    def _normalise(self, img: torch.Tensor) -> torch.Tensor:
        return (img.to(torch.float32) / 255.0 - self.mean) / self.std

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.augment:
            img = self._augment(img)
        return self._normalise(img), self.labels[i]

    def get_batch(self, indices: Sequence[int], *, augment: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Examples ``indices`` stacked; ``augment=None`` follows the dataset's setting."""
        aug = self.augment if augment is None else augment
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        imgs = self.images[idx]
        if aug:
            imgs = self._augment_batch(imgs)
        x = (imgs.to(torch.float32) / 255.0 - self.mean) / self.std
        return x, self.labels[idx]


# --------------------------------------------------------------------------------------------------
# embedded datasets


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


# --------------------------------------------------------------------------------------------------
# standard formats from a local folder

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "val_images": "t10k-images-idx3-ubyte",
    "val_labels": "t10k-labels-idx1-ubyte",
}

#: MD5 of every file :func:`load_dataset` downloads (the published checksums, also torchvision's). A download
#: that does not match is deleted and refused.
CHECKSUMS: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "mnist/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "mnist/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "fashion-mnist/train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "fashion-mnist/train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "fashion-mnist/t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    "cifar10/cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar100/cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
}

_SOURCES: dict[DatasetName, dict[str, Any]] = {
    DatasetName.MNIST: {
        "url": "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "page": "https://ossci-datasets.s3.amazonaws.com/mnist/ (the files of yann.lecun.com/exdb/mnist)",
        "subdirs": ["", "mnist", "MNIST/raw", "MNIST"],
        "mean": (0.1307,),
        "std": (0.3081,),
    },
    DatasetName.FASHION_MNIST: {
        "url": "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "page": "https://github.com/zalandoresearch/fashion-mnist (folder data/fashion)",
        "subdirs": ["", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"],
        "mean": (0.2860,),
        "std": (0.3530,),
    },
    DatasetName.CIFAR10: {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "page": "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-10-python.tar.gz, extract it into ROOT)",
        "subdirs": ["cifar-10-batches-py", ""],
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "val": ["test_batch"],
        "label_key": b"labels",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "num_classes": 10,
    },
    DatasetName.CIFAR100: {
        "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "page": "https://www.cs.toronto.edu/~kriz/cifar.html (cifar-100-python.tar.gz, extract it into ROOT)",
        "subdirs": ["cifar-100-python", ""],
        "train": ["train"],
        "val": ["test"],
        "label_key": b"fine_labels",
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
        "num_classes": 100,
    },
}


def _missing(name: DatasetName, file: str, root: Path) -> MissingFileError:
    searched = _searched(name, root)
    src = _SOURCES[name]
    where = ", ".join(str(p) for p in searched)
    page = src["page"].replace("ROOT", str(root))
    return MissingFileError(
        f"{name.value}: file {file!r} not found (searched: {where}). Get it from {page} and put it in "
        f"one of these folders, or fetch it once with nnteleport.lab.data.load_dataset({name.value!r}, "
        f"{str(root)!r}, download=True)."
    )


def _find(name: DatasetName, root: Path, filename: str, *, gz: bool) -> Path | None:
    for sub in _SOURCES[name]["subdirs"]:
        for cand in [filename, filename + ".gz"] if gz else [filename]:
            p = root / sub / cand
            if p.is_file():
                return p
    return None


def _searched(name: DatasetName, root: Path) -> list[Path]:
    return [root / s if s else root for s in _SOURCES[name]["subdirs"]]


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip-compressed if the name ends in ``.gz``).

    Format: two zero bytes, a type code (0x08 = uint8, ...), the number of dimensions ``d``, then ``d``
    big-endian uint32 sizes, then the data in C order.

    Raises
    ------
    ValueError
        If the header is not an IDX header or the data length does not match the sizes (names the file).
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    types = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise CorruptFileError(
            f"cannot read IDX file {path}: {e}; the file is corrupt, delete it and get it again"
        ) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in types:
        raise CorruptFileError(
            f"{path} is not an IDX file (bad magic number); the file is corrupt, delete it and get it again"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated IDX header; the file is corrupt, delete it and get it again")
    shape = struct.unpack(">" + "I" * ndim, raw[4:header])
    dt = np.dtype(types[raw[2]])
    expected = int(np.prod(shape)) * dt.itemsize
    if len(raw) - header != expected:
        raise CorruptFileError(
            f"{path}: IDX data has {len(raw) - header} bytes, the header says {expected} (shape {shape}); "
            "the file is corrupt or truncated, delete it and get it again"
        )
    return np.frombuffer(raw, dtype=dt, offset=header).reshape(shape).astype(dt.newbyteorder("="))


def _load_mnist(name: DatasetName, root: Path, augment: bool) -> DataBundle:
    del augment  # no augmentation for MNIST-type data
    arrays = {}
    for key, fname in _MNIST_FILES.items():
        p = _find(name, root, fname, gz=True)
        if p is None:
            raise _missing(name, fname + "[.gz]", root)
        arrays[key] = read_idx(p)
        arrays[key + "_path"] = p
    for split in ("train", "val"):
        imgs, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if imgs.ndim != 3 or labels.ndim != 1 or len(imgs) != len(labels):
            raise CorruptFileError(
                f"{name.value}: {arrays[f'{split}_images_path']} (shape {imgs.shape}) and "
                f"{arrays[f'{split}_labels_path']} (shape {labels.shape}) do not match as images (N, H, W) "
                "and labels (N,); the files are corrupt or mixed up"
            )
    src = _SOURCES[name]

    def make(split: str) -> ImageDataset:
        imgs = torch.from_numpy(np.ascontiguousarray(arrays[f"{split}_images"], dtype=np.uint8))[:, None]
        labels = torch.from_numpy(arrays[f"{split}_labels"].astype(np.int64))
        return ImageDataset(imgs, labels, src["mean"], src["std"])

    train, val = make("train"), make("val")
    return DataBundle(name.value, train, val, tuple(train.images.shape[1:]), 10)


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler for the CIFAR "python version" batches: dicts, lists, bytes, strings, numbers and numpy arrays.

    A batch is a pickled dict of ``bytes`` keys, a ``uint8`` numpy array and lists of ints/bytes. The only
    callables such a file needs are numpy's array reconstruction (``_reconstruct``, ``ndarray``, ``dtype``);
    every other global -- ``os.system``, ``builtins.eval``, any class -- is refused before it is looked up, so a
    planted file cannot run code. Object arrays are refused too (their elements would be arbitrary objects).
    """

    _ARRAY_GLOBALS = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if name == "dtype":
            return _plain_dtype
        if name == "_reconstruct":
            return _reconstruct_ndarray
        return np.ndarray


def _plain_dtype(spec: Any, *args: Any) -> np.dtype:
    dt = np.dtype(spec, *args)
    if dt.hasobject:
        raise pickle.UnpicklingError(f"object arrays ({dt}) are not allowed in a CIFAR batch")
    return dt


def _reconstruct_ndarray(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"array subclass {cls!r} is not allowed in a CIFAR batch")
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct(np.ndarray, shape, _plain_dtype(dtype))


def read_cifar_pickle(path: str | Path) -> Any:
    """The content of a CIFAR python-version file, read with :class:`_CifarUnpickler` (no code can run).

    Raises
    ------
    UnsafeFileError
        The file asks for anything but plain data and numpy arrays (names the file and the refused name).
    CorruptFileError
        The file is not a readable pickle.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"cannot read CIFAR batch {path}: {e}") from None
    try:
        return _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if "not allowed" in str(e):
            raise UnsafeFileError(
                f"CIFAR batch {path} was refused without being run: {e}; a real CIFAR batch holds only arrays "
                "and lists, delete this file and get the dataset again"
            ) from None
        raise CorruptFileError(
            f"cannot read CIFAR batch {path}: UnpicklingError: {e}; the file is corrupt or not a CIFAR "
            "python-version batch, delete it and get it again"
        ) from None
    except Exception as e:  # truncated or garbage data: many exception types
        raise CorruptFileError(
            f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}; the file is corrupt or not a CIFAR "
            "python-version batch, delete it and get it again"
        ) from None


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    d = read_cifar_pickle(path)
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[label_key], dtype=np.int64)
    except Exception as e:  # not a dict, missing keys, wrong content
        raise CorruptFileError(
            f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}; the file is corrupt or not a CIFAR "
            "python-version batch, delete it and get it again"
        ) from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise CorruptFileError(
            f"{path}: data of shape {data.shape} with {len(labels)} labels is not a CIFAR batch "
            "(expected (N, 3072) uint8 and N labels)"
        )
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(name: DatasetName, root: Path, augment: bool) -> DataBundle:
    src = _SOURCES[name]
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val"):
        xs, ys = [], []
        for fname in src[split]:
            p = _find(name, root, fname, gz=False)
            if p is None:
                raise _missing(name, fname, root)
            x, y = _read_cifar_batch(p, src["label_key"])
            if y.min(initial=0) < 0 or y.max(initial=0) >= src["num_classes"]:
                raise CorruptFileError(
                    f"{p}: labels outside [0, {src['num_classes']}); is this the right CIFAR variant?"
                )
            xs.append(x)
            ys.append(y)
        parts[split] = (np.concatenate(xs), np.concatenate(ys))

    def make(split: str, aug: bool) -> ImageDataset:
        x, y = parts[split]
        return ImageDataset(torch.from_numpy(x.copy()), torch.from_numpy(y), src["mean"], src["std"], augment=aug)

    return DataBundle(name.value, make("train", augment), make("val", False), (3, 32, 32), src["num_classes"])


def _download(name: DatasetName, root: Path) -> None:
    """Fetch the files of ``name`` into ``root`` over HTTPS, each checked against :data:`CHECKSUMS`."""
    src = _SOURCES[name]
    root.mkdir(parents=True, exist_ok=True)
    if name in (DatasetName.MNIST, DatasetName.FASHION_MNIST):
        for fname in _MNIST_FILES.values():
            if _find(name, root, fname, gz=True) is not None:
                continue
            _fetch(src["url"] + fname + ".gz", root / (fname + ".gz"), CHECKSUMS[f"{name.value}/{fname}.gz"])
    else:
        if all(_find(name, root, f, gz=False) is not None for f in src["train"] + src["val"]):
            return
        archive = root / src["url"].rsplit("/", 1)[-1]
        md5 = CHECKSUMS[f"{name.value}/{archive.name}"]
        if not archive.is_file():
            _fetch(src["url"], archive, md5)
        else:
            _verify(archive, md5, src["url"])
        try:
            with tarfile.open(archive, "r:gz") as tar:
                try:
                    tar.extractall(root, filter="data")
                except TypeError:  # Python < 3.11.4 has no extraction filters: check the member paths
                    base = root.resolve()
                    for m in tar.getmembers():
                        target = (root / m.name).resolve()
                        if base not in (target, *target.parents) or m.issym() or m.islnk():
                            raise CorruptFileError(f"{archive}: unsafe member {m.name!r}; not extracting") from None
                    tar.extractall(root)
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CorruptFileError(
                f"{archive}: cannot extract ({e}); the download is corrupt, delete it and retry"
            ) from e


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, md5: str, url: str) -> None:
    got = _md5(path)
    if got != md5:
        raise UnsafeFileError(
            f"{path}: MD5 {got} does not match the published {md5} of {url}; the file is corrupt or not the "
            "dataset, delete it and download again"
        )


def _fetch(url: str, dest: Path, md5: str) -> None:
    """Download ``url`` (HTTPS, or a local ``file://`` mirror) to ``dest`` and check its MD5 (deleted if wrong)."""
    if not url.startswith(("https://", "file://")):
        raise UnsafeFileError(f"refusing to download {url}: only https:// (or local file://) URLs are fetched")
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MissingFileError(f"download of {url} to {dest} failed: {e}") from e
    try:
        _verify(tmp, md5, url)
    except UnsafeFileError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dest)


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
