"""Optional fused CPU kernels, compiled from C at first use and loaded with :mod:`ctypes`.

The G-space optimizer's per-step work is a dozen small element-wise operations; on a CPU each PyTorch call costs
a couple of microseconds of dispatch, more than the arithmetic on a small network. ``gspace_kernels.c`` fuses
them into one loop per direction. It is plain C99 without dependencies, compiled once per source version,
compiler and platform into ``$NNTELEPORT_CACHE`` (default ``~/.cache/nnteleport``) with the system C compiler
(``$CC``, default ``cc``), in under a second. Everything works without it: if no compiler is found, the build
fails or ``NNTELEPORT_NATIVE=0`` is set, :func:`load` returns ``None`` and callers use their eager PyTorch path
(which is also the path for CUDA tensors and dtypes other than float32 / float64). :func:`status` says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["NtPlan", "NtSeg", "load", "status"]

_SOURCE = Path(__file__).with_name("gspace_kernels.c")
# read at import: the library is built from the source this process's structure definitions belong to, even if
# the file changes later (editable installs)
_SOURCE_BYTES = _SOURCE.read_bytes() if _SOURCE.exists() else b""
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off"]

_lib: ctypes.CDLL | None = None
_tried = False
_status = "not loaded yet"


class NtSeg(ctypes.Structure):
    """One dense segment (a weight matrix or a bias) of the plan; mirrors ``nt_seg`` in the C source."""

    _fields_ = [
        ("rows", ctypes.c_int64),
        ("cols", ctypes.c_int64),
        ("rep", ctypes.c_int64),
        ("hid_base", ctypes.c_int64),
        ("dense_off", ctypes.c_int64),
        ("rowf", ctypes.c_void_p),
        ("param", ctypes.c_void_p),
    ]


class NtPlan(ctypes.Structure):
    """Everything one pull / push call reads and writes (pointers into torch tensors); mirrors ``nt_plan``."""

    _fields_ = [
        ("nseg", ctypes.c_int64),
        ("segs", ctypes.POINTER(NtSeg)),
        ("H", ctypes.c_int64),
        ("root_loc", ctypes.c_void_p),
        ("cinv", ctypes.c_void_p),
        ("Ur", ctypes.c_void_p),
        ("colf", ctypes.c_void_p),
        ("Tsum", ctypes.c_void_p),
        ("gsave", ctypes.c_void_p),
        ("nfixed", ctypes.c_int64),
        ("fixed_dense", ctypes.c_void_p),
        ("fixed_seg", ctypes.c_void_p),
        ("fixed_local", ctypes.c_void_p),
        ("fixed_val", ctypes.c_void_p),
        ("V", ctypes.c_void_p),
        ("D", ctypes.c_void_p),
        ("direct_w", ctypes.c_void_p),
        ("grads", ctypes.POINTER(ctypes.c_int64)),
    ]


def _cache_dir() -> Path:
    root = os.environ.get("NNTELEPORT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "nnteleport")
    return Path(root) / "native"


def _compile(cc: str) -> Path:
    src = _SOURCE_BYTES
    key = hashlib.sha256(src + " ".join([cc, *_FLAGS, platform.machine(), sys.platform]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gspace_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: a shared library is loaded from it
    # build into private files, then rename atomically: parallel processes (sweeps) never load a partial file
    with tempfile.TemporaryDirectory(dir=target.parent) as tmpdir:
        c_file, so_file = Path(tmpdir) / "gspace_kernels.c", Path(tmpdir) / "gspace_kernels.so"
        c_file.write_bytes(src)
        subprocess.run([cc, *_FLAGS, "-o", str(so_file), str(c_file)], check=True, capture_output=True, timeout=120)
        os.replace(so_file, target)
    return target


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or ``None`` when it is disabled or cannot be built (see :func:`status`)."""
    global _lib, _tried, _status
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("NNTELEPORT_NATIVE", "1").strip().lower() in {"0", "false", "no", "off"}:
        _status = "disabled by NNTELEPORT_NATIVE"
        return None
    if sys.platform == "win32":
        _status = "not built on Windows"
        return None
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        _status = f"no C compiler ({cc!r} not found)"
        return None
    try:
        lib = ctypes.CDLL(str(_compile(cc)))
        for name in ("factors", "push", "pull", "restore"):
            for suffix in ("f32", "f64"):
                fn = getattr(lib, f"nt_{name}_{suffix}")
                fn.argtypes = [ctypes.POINTER(NtPlan)]
                fn.restype = None
    except (OSError, subprocess.SubprocessError, AttributeError) as err:
        detail = getattr(err, "stderr", b"") or b""
        _status = f"build or load failed: {err} {detail.decode(errors='replace')[:500]}".strip()
        return None
    _lib = lib
    _status = "loaded"
    return lib


def status() -> str:
    """Why :func:`load` returned what it did (``"loaded"``, ``"disabled by NNTELEPORT_NATIVE"``, ...)."""
    return _status
