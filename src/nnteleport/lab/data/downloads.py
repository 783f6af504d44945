"""Downloads of the standard datasets of :mod:`nnteleport.lab.data` (only with ``download=True``): HTTPS or a
local ``file://`` mirror, every file checked against its published MD5 (:data:`~nnteleport.lab.data.files.CHECKSUMS`),
CIFAR archives extracted with tarfile's ``data`` filter.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from pathlib import Path

from nnteleport.errors import CorruptFileError, MissingFileError, UnsafeFileError
from nnteleport.lab.data.datasets import DatasetName
from nnteleport.lab.data.files import _MNIST_FILES, _SOURCES, CHECKSUMS, _find

__all__: list[str] = []  # used through nnteleport.lab.data.load_dataset(..., download=True)


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
