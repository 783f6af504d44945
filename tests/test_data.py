"""Tests of nnteleport.lab.data: embedded datasets, IDX / CIFAR readers on fixture files written here, errors."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from nnteleport.errors import MissingFileError, UnsafeFileError
from nnteleport.lab.data import DataBundle, ImageDataset, load_dataset, loader, read_idx

# ----------------------------------------------------------------------------- fixture writers (real formats)


def write_idx(path: Path, arr: np.ndarray, *, gz: bool) -> None:
    """IDX: 0, 0, type 0x08 (uint8), ndim, big-endian uint32 sizes, data."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    raw = header + arr.tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_mnist(root: Path, n_train: int = 20, n_val: int = 10, *, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_val, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_val),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        write_idx(root / name, a, gz=gz)
    return arrays


def write_cifar(root: Path, *, variant: str = "cifar10", n_per_batch: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, files, key, ncls = (
            root / "cifar-10-batches-py",
            [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"],
            b"labels",
            10,
        )
    else:
        folder, files, key, ncls = root / "cifar-100-python", ["train", "test"], b"fine_labels", 100
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in files:
        data = rng.integers(0, 256, (n_per_batch, 3072)).astype(np.uint8)
        labels = rng.integers(0, ncls, n_per_batch).tolist()
        with open(folder / f, "wb") as fh:
            pickle.dump({b"data": data, key: labels, b"batch_label": f.encode()}, fh)
        out[f] = (data, labels)
    return out


# ----------------------------------------------------------------------------- embedded


def test_digits_shapes_standardised_and_seeded_split():
    from sklearn.datasets import load_digits

    b = load_dataset("digits", seed=3)
    assert isinstance(b, DataBundle)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.val) == 1797
    assert len(b.val) == round(1797 * 0.2)
    x, y = b.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    xs = torch.stack([b.train[i][0] for i in range(len(b.train))]).double()
    # standardised with the training split's scalar mean/std (float32 storage -> 1e-5)
    assert abs(float(xs.mean())) < 1e-5 and abs(float(xs.std(unbiased=False)) - 1) < 1e-5
    # independent reference: every example is an affine image of an sklearn digit with the same label
    d = load_digits()
    raw = np.asarray(d.images, dtype=np.float64)
    perm = np.random.default_rng(3).permutation(1797)
    tr = perm[len(b.val) :]
    ref = (raw[tr] - raw[tr].mean()) / raw[tr].std()
    np.testing.assert_allclose(xs[:, 0].numpy(), ref, atol=1e-5)
    assert [int(b.train[i][1]) for i in range(5)] == d.target[tr[:5]].tolist()
    # same seed -> same split; other seed -> other split
    b2, b3 = load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert torch.equal(b2.train.x, b.train.x)
    assert not torch.equal(b3.train.x, b.train.x)


def test_mnist1d_generated_small_and_leaves_global_rng_alone():
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    b = load_dataset("mnist1d", seed=1, num_samples=200)
    assert np.random.rand() == expected_next  # the package's set_seed did not leak
    assert b.input_shape == (1, 40) and b.num_classes == 10
    assert len(b.train) == 160 and len(b.val) == 40
    b2 = load_dataset("mnist1d", seed=1, num_samples=200)  # from the in-process cache
    assert torch.equal(b.train.x, b2.train.x) and torch.equal(b.val.y, b2.val.y)
    b2.train.x.zero_()  # independent copies
    assert not torch.equal(b.train.x, b2.train.x)
    assert not torch.equal(load_dataset("mnist1d", seed=2, num_samples=200).train.x, b.train.x)
    with pytest.raises(ValueError, match="nonsense"):
        load_dataset("mnist1d", nonsense=1)


def test_random_dataset_options():
    b = load_dataset("random", seed=0, input_shape=(3, 4, 4), num_classes=5, num_train=30, num_val=7)
    assert b.input_shape == (3, 4, 4) and b.num_classes == 5
    assert len(b.train) == 30 and len(b.val) == 7
    assert int(b.train.y.max()) < 5 and int(b.train.y.min()) >= 0
    assert torch.equal(b.train.x, load_dataset("random", seed=0, input_shape=(3, 4, 4), num_classes=5,
                                               num_train=30, num_val=7).train.x)  # fmt: skip
    with pytest.raises(ValueError, match="allowed: input_shape"):
        load_dataset("random", shape=(1,))


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match=r"digits.*mnist1d.*random.*mnist.*fashion-mnist.*cifar10.*cifar100"):
        load_dataset("imagenet")


def test_subset_sizes():
    b = load_dataset("digits", train_size=50, val_size=20)
    assert len(b.train) == 50 and len(b.val) == 20
    with pytest.raises(ValueError, match="train_size"):
        load_dataset("digits", train_size=10_000)


# ----------------------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_datasets_read_back_exactly(tmp_path, gz, name):
    arrays = write_mnist(tmp_path, gz=gz)
    b = load_dataset(name, tmp_path)
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert len(b.train) == 20 and len(b.val) == 10
    mean, std = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}[name]
    x, y = b.train[4]
    ref = (arrays["train-images-idx3-ubyte"][4].astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(x[0].double().numpy(), ref, atol=1e-5)  # float32 normalisation
    assert int(y) == arrays["train-labels-idx1-ubyte"][4]
    assert int(b.val[9][1]) == arrays["t10k-labels-idx1-ubyte"][9]


def test_idx_torchvision_layout_is_found(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    assert len(load_dataset("mnist", tmp_path).train) == 20


def test_read_idx_other_dtype(tmp_path):
    a = np.arange(6, dtype=">i4").reshape(2, 3)
    raw = bytes([0, 0, 0x0C, 2]) + struct.pack(">II", 2, 3) + a.tobytes()
    (tmp_path / "x.idx").write_bytes(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), np.arange(6).reshape(2, 3))


def test_missing_idx_file_error_names_file_folder_and_source(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mnist", tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte" in msg and str(tmp_path) in msg and "yann.lecun.com" in msg
    assert "download=True" in msg


def test_corrupt_idx_file_error_names_file(tmp_path):
    write_mnist(tmp_path, gz=False)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-5])  # truncated
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.*corrupt"):
        load_dataset("mnist", tmp_path)
    p.write_bytes(b"garbage!" * 10)
    with pytest.raises(ValueError, match="not an IDX file"):
        load_dataset("mnist", tmp_path)


def test_mismatched_idx_files(tmp_path):
    write_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3), gz=False)
    with pytest.raises(ValueError, match="do not match"):
        load_dataset("mnist", tmp_path)


# ----------------------------------------------------------------------------- CIFAR pickles


@pytest.mark.parametrize("variant", ["cifar10", "cifar100"])
def test_cifar_reads_batches_normalises(tmp_path, variant):
    batches = write_cifar(tmp_path, variant=variant)
    b = load_dataset(variant, tmp_path, augment=False)
    n_train_files = 5 if variant == "cifar10" else 1
    assert len(b.train) == 6 * n_train_files and len(b.val) == 6
    assert b.input_shape == (3, 32, 32) and b.num_classes == (10 if variant == "cifar10" else 100)
    first = "data_batch_1" if variant == "cifar10" else "train"
    data, labels = batches[first]
    mean = np.array({"cifar10": (0.4914, 0.4822, 0.4465), "cifar100": (0.5071, 0.4865, 0.4409)}[variant])
    std = np.array({"cifar10": (0.2470, 0.2435, 0.2616), "cifar100": (0.2673, 0.2564, 0.2762)}[variant])
    ref = (data[2].reshape(3, 32, 32) / 255.0 - mean[:, None, None]) / std[:, None, None]
    x, y = b.train[2]
    np.testing.assert_allclose(x.double().numpy(), ref, atol=1e-5)
    assert int(y) == labels[2]


def test_cifar_augmentation_is_crop_and_flip_of_padded_image(tmp_path):
    write_cifar(tmp_path)
    b = load_dataset("cifar10", tmp_path)
    assert isinstance(b.train, ImageDataset) and b.train.augment and not b.val.augment
    img = b.train.images[0].double()  # (3, 32, 32) raw pixels
    padded = torch.zeros(3, 40, 40, dtype=torch.float64)
    padded[:, 4:36, 4:36] = img
    candidates = [padded[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
    candidates += [c.flip(-1) for c in candidates]
    torch.manual_seed(0)
    seen = set()
    for _ in range(30):
        x, _ = b.train[0]
        pix = x.double() * b.train.std.double() + b.train.mean.double()  # undo normalisation
        dists = [float((pix * 255 - c).abs().max()) for c in candidates]
        k = int(np.argmin(dists))
        assert dists[k] < 1e-3  # exactly one of the 162 crops/flips (float32 round-off only)
        seen.add(k)
    assert len(seen) > 5  # it is random
    # the batched path (used by the training loop) draws from the same set of crops and flips
    xb, _ = b.train.get_batch([0] * 40)
    seen_b = set()
    for x in xb:
        pix = x.double() * b.train.std.double() + b.train.mean.double()
        dists = [float((pix * 255 - c).abs().max()) for c in candidates]
        k = int(np.argmin(dists))
        assert dists[k] < 1e-3
        seen_b.add(k)
    assert len(seen_b) > 5 and any(k >= 81 for k in seen_b) and any(k < 81 for k in seen_b)  # flips and not
    # validation split never augmented
    assert torch.equal(b.val[0][0], b.val[0][0])


def test_cifar_missing_and_corrupt(tmp_path):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=r"data_batch_3.*cifar-10-batches-py.*cs\.toronto\.edu"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match=r"data_batch_3.*corrupt"):
        load_dataset("cifar10", tmp_path)


def test_download_from_local_url(tmp_path, monkeypatch):
    # a plain urllib download, exercised on a file:// "mirror" (tests never use the network)
    from nnteleport.lab.data import files

    mirror = tmp_path / "mirror"
    write_mnist(mirror, gz=True)
    src = dict(files._SOURCES[files.DatasetName.MNIST])
    src["url"] = mirror.as_uri() + "/"
    monkeypatch.setitem(files._SOURCES, files.DatasetName.MNIST, src)
    for f in mirror.iterdir():  # the mirror's files are not the real ones: their own checksums
        monkeypatch.setitem(files.CHECKSUMS, f"mnist/{f.name}", hashlib.md5(f.read_bytes()).hexdigest())
    root = tmp_path / "root"
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", root)
    b = load_dataset("mnist", root, download=True)
    assert len(b.train) == 20
    assert (root / "train-images-idx3-ubyte.gz").is_file()


def test_download_with_wrong_checksum_is_refused_and_deleted(tmp_path, monkeypatch):
    from nnteleport.lab.data import files

    mirror = tmp_path / "mirror"
    write_mnist(mirror, gz=True)
    src = dict(files._SOURCES[files.DatasetName.MNIST])
    src["url"] = mirror.as_uri() + "/"
    monkeypatch.setitem(files._SOURCES, files.DatasetName.MNIST, src)  # the real checksums stay
    root = tmp_path / "root"
    with pytest.raises(UnsafeFileError, match=r"train-images-idx3-ubyte\.gz.*MD5 [0-9a-f]{32} does not match the "
                       r"published f68b3c2dcbeaaa9fbdd348bbdeb94873"):  # fmt: skip
        load_dataset("mnist", root, download=True)
    assert not list(root.iterdir())  # nothing of it kept


def test_sources_are_https_and_plain_http_is_refused(tmp_path):
    from nnteleport.lab.data import downloads, files

    for src in files._SOURCES.values():
        assert src["url"].startswith("https://")
    with pytest.raises(UnsafeFileError, match="only https://"):
        downloads._fetch("http://example.org/x.gz", tmp_path / "x.gz", "0" * 32)
    assert set(files.CHECKSUMS) == {
        f"{n}/{f}.gz" for n in ("mnist", "fashion-mnist") for f in files._MNIST_FILES.values()
    } | {"cifar10/cifar-10-python.tar.gz", "cifar100/cifar-100-python.tar.gz"}


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_cifar_batch_is_refused_without_running(tmp_path):
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({b"data": _Planted(marker), b"labels": [1]}))
    with pytest.raises(UnsafeFileError, match=r"data_batch_2 was refused without being run: global posix\.system"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    # an object array (whose elements would be arbitrary objects) is refused as well
    path.write_bytes(pickle.dumps({b"data": np.array([marker], dtype=object), b"labels": [1]}))
    with pytest.raises(UnsafeFileError, match="object arrays"):
        load_dataset("cifar10", tmp_path)


def test_check_available_names_the_missing_file(tmp_path):
    from nnteleport.lab.data import check_available

    check_available("digits", tmp_path)  # embedded: nothing to check
    with pytest.raises(MissingFileError, match=r"mnist: file 'train-images-idx3-ubyte\[\.gz\]' not found"):
        check_available("mnist", tmp_path)
    write_cifar(tmp_path)
    check_available("cifar10", tmp_path)


# ----------------------------------------------------------------------------- loader


def test_loader_seeded_order():
    b = load_dataset("random", num_train=40, num_val=4)
    ys1 = torch.cat([y for _, y in loader(b.train, 8, seed=5)])
    ys2 = torch.cat([y for _, y in loader(b.train, 8, seed=5)])
    ys3 = torch.cat([y for _, y in loader(b.train, 8, seed=6)])
    assert torch.equal(ys1, ys2) and not torch.equal(ys1, ys3)
    assert sorted(ys1.tolist()) == sorted(b.train.y.tolist())  # a permutation
    with pytest.raises(ValueError, match="batch_size"):
        loader(b.train, 0)


def test_example_batch_is_deterministic(tmp_path):
    write_cifar(tmp_path)
    b = load_dataset("cifar10", tmp_path)
    x1, y1 = b.example_batch(4)
    x2, _ = b.example_batch(4)
    assert x1.shape == (4, 3, 32, 32) and y1.shape == (4,)
    assert torch.equal(x1, x2)


def test_cifar_download_and_extract_from_local_url(tmp_path, monkeypatch):
    import tarfile

    from nnteleport.lab.data import files

    src_dir = tmp_path / "src"
    batches = write_cifar(src_dir, n_per_batch=3)
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    src = dict(files._SOURCES[files.DatasetName.CIFAR10])
    src["url"] = archive.as_uri()
    monkeypatch.setitem(files._SOURCES, files.DatasetName.CIFAR10, src)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(files.CHECKSUMS, "cifar10/cifar-10-python.tar.gz", md5)
    b = load_dataset("cifar10", tmp_path / "root", download=True, augment=False)
    assert len(b.train) == 15 and int(b.val[2][1]) == batches["test_batch"][1][2]
