"""Where the runs of a sweep execute: local worker processes (default) or a Ray cluster.

One sweep interface (:func:`nnteleport.lab.experiments.sweep.run_sweep`), two back-ends:

* ``"local"``: ``workers`` spawned processes on this machine (:mod:`nnteleport.lab.experiments.workers`);
* ``"ray"``: one Ray task per run (:mod:`nnteleport.lab.experiments.ray_backend`, ``pip install
  'nnteleport[ray]'``), on the cluster at ``address`` (``"auto"``: the one started with ``ray start`` on this
  machine; ``"HOST:6379"``: a head node) or, without an address, on a new local Ray instance. Each run asks
  Ray for ``threads`` CPUs and ``gpus_per_run`` GPUs (a fraction shares a GPU: ``0.5`` runs two per GPU), so the
  cluster's resources decide how many run at once (``workers`` is not used).

The back-end never changes a result: it is not part of a run's identity, every run gets the same torch thread
count, and the record is written by the same code. A sweep started on one back-end can be resumed on the other.

:func:`run_sweep` takes ``backend=`` explicitly; without it, the one set by :func:`use_backend` (the CLI's
``--backend``, ``--ray-address``, ``--gpus-per-run`` for every sweep an experiment runs), else ``"local"``.

>>> with use_backend(SweepBackend("ray", address="auto", gpus_per_run=1)):  # doctest: +SKIP
...     module.run(config, out)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

from nnteleport._choice import Choice
from nnteleport.errors import InvalidValueError

__all__ = ["BackendName", "SweepBackend", "current_backend", "use_backend"]


class BackendName(Choice, what="sweep backend"):
    """The sweep back-ends."""

    LOCAL = "local"
    RAY = "ray"


@dataclass(frozen=True)
class SweepBackend:
    """A sweep back-end and its settings.

    Attributes
    ----------
    name : {"local", "ray"}
        Local worker processes, or Ray tasks.
    address : str or None
        Ray only: the cluster to connect to (``ray.init(address=...)``: ``"auto"``, ``"HOST:PORT"``,
        ``"ray://HOST:10001"``); ``None`` starts a local Ray instance (unless this process is already connected).
    gpus_per_run : float
        Ray only: GPUs each run reserves (``>= 0``; ``1`` one run per GPU, ``0.25`` four per GPU). Ray sets
        ``CUDA_VISIBLE_DEVICES`` of the run to its GPU, so the run sees it as ``cuda:0``.
    """

    name: str = "local"
    address: str | None = None
    gpus_per_run: float = 0.0

    def __post_init__(self) -> None:
        name = BackendName.parse(self.name)
        object.__setattr__(self, "name", str(name))
        g = self.gpus_per_run
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise InvalidValueError(f"sweep backend: gpus_per_run={g!r} must be a finite number >= 0")
        object.__setattr__(self, "gpus_per_run", float(g))
        if name == BackendName.LOCAL:
            if self.address is not None:
                raise InvalidValueError(
                    f"sweep backend 'local': a Ray address ({self.address!r}) needs backend 'ray' (--backend ray)"
                )
            if g > 0:
                raise InvalidValueError(
                    f"sweep backend 'local': gpus_per_run={g:g} needs backend 'ray' (--backend ray); local runs use "
                    "the device of their config"
                )
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise InvalidValueError(f"sweep backend 'ray': address={self.address!r} must be a non-empty string")


_CURRENT: list[SweepBackend] = [SweepBackend()]


def current_backend() -> SweepBackend:
    """The back-end :func:`run_sweep` uses when not given one (``"local"`` unless :func:`use_backend` is active)."""
    return _CURRENT[-1]


@contextlib.contextmanager
def use_backend(backend: SweepBackend | str) -> Iterator[SweepBackend]:
    """Within: every :func:`run_sweep` without an explicit ``backend`` uses ``backend`` (nestable)."""
    b = backend if isinstance(backend, SweepBackend) else SweepBackend(backend)
    _CURRENT.append(b)
    try:
        yield b
    finally:
        _CURRENT.pop()
