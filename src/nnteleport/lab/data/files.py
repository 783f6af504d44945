"""The standard datasets of :mod:`nnteleport.lab.data` read from a local folder: MNIST-type IDX files and CIFAR
"python version" pickles (read without running pickled code), with where each is looked for and fetched from.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnteleport.errors import CorruptFileError, MissingFileError, UnsafeFileError
from nnteleport.lab.data.datasets import DataBundle, DatasetName, ImageDataset

__all__ = ["CHECKSUMS", "read_cifar_pickle", "read_idx"]


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
