"""Where the experiments run: the ``device`` key of every experiment and :func:`resolve_device`.

A device specification is one of

* ``"auto"`` -- the first CUDA device when ``torch.cuda.is_available()``, else the CPU (the default of every
  experiment: a machine with a GPU uses it, the numbers on a CPU-only machine do not change);
* ``"cpu"``;
* ``"cuda"`` -- the current CUDA device (``torch.cuda.current_device()``, normally ``cuda:0``);
* ``"cuda:N"`` -- CUDA device ``N`` (``0 <= N < torch.cuda.device_count()``).

A CUDA device asked for on a machine without one (or a ``cuda:N`` beyond the device count) is an error
(:class:`~nnteleport.errors.InvalidValueError`, one line naming the key and the value) raised before any
work, never a silent fall-back to the CPU.

Determinism: on the CPU every result is bit-identical to a run without the key (the device is only a
``.to(device)`` of what already exists). On CUDA the random draws that define a run (initialisation, batch
order, augmentation, the CoB of a teleport) still come from the CPU generators, so a run on the GPU starts from
the same weights and sees the same batches and the same CoB; its numbers then differ from the CPU run by
floating-point round-off (other kernels, other summation orders), and between GPU runs only where cuDNN picks
non-deterministic kernels.
"""

from __future__ import annotations

import re

import torch

from nnteleport.errors import InvalidValueError

__all__ = ["DEVICE_CHOICES", "resolve_device"]

#: What a device specification may be (for help texts and error messages).
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"

_SPEC = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


def resolve_device(spec: str | torch.device | None, *, what: str = "device") -> torch.device:
    """The ``torch.device`` of a device specification (see the module docstring); ``None`` means ``"auto"``.

    Parameters
    ----------
    spec : str, torch.device or None
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device`` of type cpu or cuda.
    what : str
        Who asks, for the error message (e.g. ``"experiment 'training': device"``).

    Raises
    ------
    InvalidValueError
        A malformed specification, or a CUDA device that this machine does not have.
    """
    if spec is None:
        spec = "auto"
    text = str(spec).strip().lower() if isinstance(spec, (str, torch.device)) else None
    m = _SPEC.match(text) if text is not None else None
    if m is None or (m.group(1) != "cuda" and m.group(2) is not None):
        raise InvalidValueError(f"{what}={spec!r} is not a device; choose one of: {DEVICE_CHOICES}")
    kind, index = m.group(1), m.group(2)
    if kind == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}, " + ("built with CUDA" if torch.version.cuda else "a CPU-only build")
        raise InvalidValueError(
            f"{what}={spec!r}: CUDA is not available on this machine ({build}); use device=auto or cpu"
        )
    if index is not None and int(index) >= torch.cuda.device_count():
        raise InvalidValueError(
            f"{what}={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", int(index)) if index is not None else torch.device("cuda")
