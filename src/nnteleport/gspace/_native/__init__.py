"""Optional fused CPU kernels, compiled from C at first use and loaded with :mod:`ctypes`.

The G-space optimizer's per-step work is a dozen small element-wise operations; on a CPU each PyTorch call costs
a couple of microseconds of dispatch, more than the arithmetic on a small network. ``gspace_kernels.c`` fuses
them into one loop per direction. It is plain C99 without dependencies, compiled once per source version,
compiler and platform into ``$NNTELEPORT_CACHE`` (default ``~/.cache/nnteleport``) with the system C compiler
(``$CC``, default ``cc``), in under a second. Everything works without it: if no compiler is found, the build
fails or ``NNTELEPORT_NATIVE=0`` is set, :func:`load` returns ``None`` and callers use their eager PyTorch path
(which is also the path for CUDA tensors and dtypes other than float32 / float64). :func:`status` says why.

What is loaded is verified first, since loading a shared library runs its code:

* the cache directory must be a real directory owned by the user and writable by nobody else (an existing
  group- or world-writable one, or one owned by someone else, is refused: no kernels, a warning);
* the library and its recorded SHA-256 (``<library>.sha256``, written at build time, before the library is
  renamed into place) must be regular files owned by the user, not group- or world-writable, and the
  library's content must hash to the recorded value; the verified bytes are loaded from a private copy (no
  window between the check and the load);
* after loading, ``nt_layout()`` must report this module's ABI version and the struct layout of its
  ``ctypes`` mirror (:class:`NtSeg`, :class:`NtPlan`).

Any mismatch (a planted, truncated or empty library, a missing or wrong hash, a layout that disagrees) removes
the files and rebuilds once, with a :class:`RuntimeWarning`; if the rebuilt library fails again, the kernels
are refused (eager path, a warning, :func:`status` says why). Nothing is ever loaded unverified.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = ["ABI_VERSION", "NtPlan", "NtSeg", "expected_layout", "load", "reset", "status"]

_SOURCE = Path(__file__).with_name("gspace_kernels.c")
# read at import: the library is built from the source this process's structure definitions belong to, even if
# the file changes later (editable installs)
_SOURCE_BYTES = _SOURCE.read_bytes() if _SOURCE.exists() else b""
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off"]
#: must equal NT_ABI_VERSION in gspace_kernels.c
ABI_VERSION = 1
_KERNELS = ("factors", "push", "pull", "restore")

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


class _Refused(Exception):
    """The cache directory or a cached file cannot be trusted (the message says why)."""


def _check_owned(path: Path, *, directory: bool) -> None:
    """Refuse ``path`` unless it is a real directory / regular file owned by the user and writable by nobody
    else (group or world)."""
    st = os.lstat(path)
    kind = "directory" if directory else "file"
    if not (stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)):
        raise _Refused(f"{path} is not a regular {kind} (symlink or other)")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise _Refused(f"{kind} {path} is owned by uid {st.st_uid}, not by this user ({os.getuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _Refused(f"{kind} {path} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")


def _private_dir() -> Path:
    """The cache directory, created private (``0700``) if missing; an existing unsafe one is refused."""
    d = _cache_dir()
    if not d.exists():
        d.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: a shared library is loaded from it
    _check_owned(d, directory=True)
    return d


def _paths(cc: str) -> tuple[Path, Path]:
    """The library's path (keyed by source, compiler, flags and platform) and its recorded hash's path."""
    src = _SOURCE_BYTES
    key = hashlib.sha256(src + " ".join([cc, *_FLAGS, platform.machine(), sys.platform]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"gspace_kernels-{key}.so"
    return target, target.with_name(target.name + ".sha256")


def _compile(cc: str) -> Path:
    """Build the library into the private cache (if not there yet) and record its SHA-256 beside it."""
    target, digest_file = _paths(cc)
    if target.exists():
        if digest_file.exists():
            return target
        warnings.warn(
            f"nnteleport: cached G-space kernel library {target.name} has no recorded hash; rebuilding it",
            RuntimeWarning,
            stacklevel=3,
        )
    d = _private_dir()
    # build into private files, then rename atomically (hash first): parallel processes (sweeps) never see a
    # partial library or a library without its hash
    with tempfile.TemporaryDirectory(dir=d) as tmpdir:
        c_file, so_file = Path(tmpdir) / "gspace_kernels.c", Path(tmpdir) / "gspace_kernels.so"
        c_file.write_bytes(_SOURCE_BYTES)
        subprocess.run([cc, *_FLAGS, "-o", str(so_file), str(c_file)], check=True, capture_output=True, timeout=120)
        os.chmod(so_file, 0o700)
        h_file = Path(tmpdir) / "digest"
        h_file.write_text(hashlib.sha256(so_file.read_bytes()).hexdigest() + "\n")
        os.chmod(h_file, 0o600)
        os.replace(h_file, digest_file)
        os.replace(so_file, target)
    return target


def _verified_bytes(target: Path) -> bytes:
    """The library's content, after the owner / mode checks and the comparison with the recorded hash."""
    digest_file = target.with_name(target.name + ".sha256")
    for path in (target, digest_file):
        if not path.exists():
            raise _Refused(f"{path.name} is missing")
        _check_owned(path, directory=False)
    data = target.read_bytes()
    recorded = digest_file.read_text().strip()
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise _Refused(f"{target.name} ({len(data)} bytes) does not match its recorded SHA-256")
    return data


def expected_layout() -> list[int]:
    """What ``nt_layout()`` must report: ABI version, size and field offsets of ``NtSeg``, then of ``NtPlan``."""
    out = [ABI_VERSION]
    for struct in (NtSeg, NtPlan):
        out.append(ctypes.sizeof(struct))
        out += [getattr(struct, name).offset for name, _ in struct._fields_]
    return out


def _open(data: bytes, d: Path) -> ctypes.CDLL:
    """Load exactly the verified bytes: from a private copy with a unique name (removed once loaded), then check
    the exported layout and declare the kernels' signatures."""
    fd, tmp = tempfile.mkstemp(prefix="load-", suffix=".so", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        lib = ctypes.CDLL(tmp)
    finally:
        os.unlink(tmp)
    try:
        layout_fn = lib.nt_layout
    except AttributeError as err:
        raise _Refused("the library exports no nt_layout() (not built from this source)") from err
    layout_fn.argtypes, layout_fn.restype = [ctypes.POINTER(ctypes.c_int64), ctypes.c_int64], ctypes.c_int64
    want = expected_layout()
    buf = (ctypes.c_int64 * len(want))()
    n = layout_fn(buf, len(want))
    if n != len(want) or list(buf) != want:
        raise _Refused(f"struct layout / ABI mismatch: library reports {list(buf)[:n]}, Python expects {want}")
    for name in _KERNELS:
        for suffix in ("f32", "f64"):
            try:
                fn = getattr(lib, f"nt_{name}_{suffix}")
            except AttributeError as err:
                raise _Refused(f"the library lacks nt_{name}_{suffix}") from err
            fn.argtypes = [ctypes.POINTER(NtPlan)]
            fn.restype = None
    return lib


def _remove(target: Path) -> None:
    for path in (target, target.with_name(target.name + ".sha256")):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _build_and_open(cc: str) -> ctypes.CDLL:
    """Verified library; a cached one that fails a check is removed and rebuilt once (with a warning)."""
    d = _private_dir()
    target, _ = _paths(cc)
    for attempt in range(2):
        _compile(cc)
        try:
            return _open(_verified_bytes(target), d)
        except _Refused as why:
            _remove(target)
            if attempt:
                raise _Refused(f"rebuilt library failed verification: {why}") from None
            warnings.warn(
                f"nnteleport: cached G-space kernel library rejected ({why}); rebuilding it",
                RuntimeWarning,
                stacklevel=4,
            )
    raise AssertionError("unreachable")


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
        lib = _build_and_open(cc)
    except (_Refused, OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", b"") or b""
        _status = f"build, verification or load failed: {err} {detail.decode(errors='replace')[:500]}".strip()
        warnings.warn(
            f"nnteleport: G-space kernels not used ({_status}); the optimizer runs the slower PyTorch path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    _lib = lib
    _status = "loaded"
    return lib


def status() -> str:
    """Why :func:`load` returned what it did (``"loaded"``, ``"disabled by NNTELEPORT_NATIVE"``, ...)."""
    return _status


def reset() -> None:
    """Forget the load attempt (the next :func:`load` checks and loads again; tests, a changed cache)."""
    global _lib, _tried, _status
    _lib, _tried, _status = None, False, "not loaded yet"
