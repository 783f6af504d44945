"""The Ray back-end of sweeps: every run of :func:`~nnteleport.lab.experiments.sweep.run_sweep` as one Ray task.

Ray is imported only here, inside the functions (``pip install 'nnteleport[ray]'``); ``import nnteleport.lab``
never imports it.

* :func:`connect` joins the Ray cluster at ``address`` (``ray.init(address=...)``) or starts a local instance
  (``address=None``); a process already connected keeps its connection. The driver's SIGINT/SIGTERM handlers are
  kept (``ray.init`` would replace SIGTERM's), so Ctrl-C and SIGTERM stop a Ray sweep as they stop a local one.
* :func:`run_jobs_ray` submits every job as a task asking for ``threads`` CPUs and ``gpus_per_run`` GPUs (no
  retries: a run whose worker dies fails alone, as locally), collects them as they finish, and on an
  interruption cancels every unfinished task (``ray.cancel(force=True)``: queued ones never start, running ones
  are ended), waits for them to end, calls ``cleanup(key)`` for each, and raises
  :class:`~nnteleport.errors.Interrupted`. A run no node could ever hold (more CPUs or GPUs than any node has) is
  refused before anything is submitted, not left queued for ever.

Each task runs the job with ``threads`` torch threads (the same as a local worker, so the numbers do not depend on
the back-end) and writes its result where the job says -- for a sweep, the run's folder under the sweep's output
folder, which on a cluster must be a folder every node sees at the same path (NFS, a shared disk).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from nnteleport._extras import require
from nnteleport.errors import Interrupted, InvalidValueError
from nnteleport.lab.experiments.workers import TERMINATE_GRACE_S, interruptible, mark_worker_process

__all__ = ["connect", "prepare", "require_ray", "run_jobs_ray"]


def require_ray() -> None:
    """Raise :class:`~nnteleport.errors.MissingExtraError` (one line) unless Ray can be imported."""
    require("ray", extra="ray", feature="the Ray sweep backend (--backend ray)")


def connect(address: str | None = None) -> None:
    """Connect this process to Ray: the cluster at ``address``, or a new local instance (``None``).

    Does nothing when already connected. Keeps this process's SIGINT and SIGTERM handlers.

    Raises
    ------
    MissingExtraError
        Ray is not installed.
    InvalidValueError
        No Ray cluster at ``address`` (names it).
    """
    require_ray()
    import ray

    if ray.is_initialized():
        return
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False)
        else:
            ray.init(address=address)
    except ConnectionError as e:
        raise InvalidValueError(
            f"--ray-address {address!r}: cannot connect to a Ray cluster there ({' '.join(str(e).split())[:200]}); "
            "start one with `ray start --head` or drop --ray-address for a local instance"
        ) from None
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


def prepare(address: str | None, threads: int, gpus_per_run: float) -> None:
    """:func:`connect`, then refuse runs of ``threads`` CPUs and ``gpus_per_run`` GPUs that no node can hold."""
    connect(address)
    _check_feasible(max(1, int(threads)), gpus_per_run)


def _task(fn: Callable[..., Any], args: tuple, threads: int) -> Any:
    """What a Ray worker runs: ``fn(*args)`` with ``threads`` torch threads."""
    import torch

    mark_worker_process()  # its own interruptions are Ray's business (ray.cancel), not its handlers'
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(threads)))
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def _check_feasible(threads: int, gpus_per_run: float) -> None:
    """Refuse runs that no alive node can hold (Ray would keep them queued for ever)."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= threads and r.get("GPU", 0) >= gpus_per_run for r in nodes):
        return
    have = ", ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes) or "no alive node"
    raise InvalidValueError(
        f"the Ray cluster has no node for a run of {threads} CPU thread(s) and {gpus_per_run:g} GPU(s) (nodes: "
        f"{have}); lower threads / --gpus-per-run, or add nodes with GPUs"
    )


def _error_text(e: BaseException) -> str:
    name = type(e).__name__
    if name == "WorkerCrashedError":
        return f"WorkerDied: the Ray worker running the run died ({' '.join(str(e).split())[:300]})"
    return f"{name}: {e}"


def run_jobs_ray(
    jobs: Sequence[tuple[str, Callable[..., Any], tuple]],
    *,
    threads: int = 1,
    gpus_per_run: float = 0.0,
    address: str | None = None,
    on_done: Callable[[str, bool, Any], None],
    cleanup: Callable[[str], None] | None = None,
    describe_stop: Callable[[int], str] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Run ``fn(*args)`` of every ``(key, fn, args)`` job as a Ray task; ``on_done(key, ok, payload)`` as each ends.

    ``ok`` with ``fn``'s return value, else the error text. ``fn`` must be importable by the Ray workers (a
    module-level function of an installed package). On an interruption every unfinished task is cancelled and
    ended, ``cleanup(key)`` is called for each, and :class:`Interrupted` is raised with the message
    ``describe_stop(number of unfinished jobs)``.
    """
    threads = max(1, int(threads))
    prepare(address, threads, gpus_per_run)
    import ray

    remote = ray.remote(_task)
    pending: dict[Any, str] = {}
    with interruptible():
        try:
            for key, fn, args in jobs:
                opts = remote.options(num_cpus=threads, num_gpus=gpus_per_run, max_retries=0, name=f"run {key}")
                pending[opts.remote(fn, args, threads)] = key
            while pending:
                refs = list(pending)
                ready, rest = ray.wait(refs, num_returns=1, timeout=poll_s, fetch_local=False)
                if ready and rest:  # and whatever else has finished meanwhile
                    more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
                    ready += more
                for ref in ready:
                    key = pending.pop(ref)
                    try:
                        payload = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        if cleanup is not None:
                            cleanup(key)
                        on_done(key, False, _error_text(e))
                    else:
                        on_done(key, True, payload)
        except BaseException as exc:
            n_left = len(pending)
            _cancel_all(pending, cleanup)
            if isinstance(exc, KeyboardInterrupt):
                signum = getattr(exc, "signum", signal.SIGINT)
                base = str(exc) if isinstance(exc, Interrupted) else "interrupted"
                detail = describe_stop(n_left) if describe_stop is not None else ""
                raise Interrupted(f"{base}{': ' + detail if detail else ''}", signum) from None
            raise


def _cancel_all(pending: dict[Any, str], cleanup: Callable[[str], None] | None) -> None:
    """Cancel the unfinished tasks, wait (a few seconds at most) until they have ended, then clean up."""
    import ray

    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    deadline = time.monotonic() + TERMINATE_GRACE_S
    refs = list(pending)
    with contextlib.suppress(Exception):
        while refs and time.monotonic() < deadline:
            _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.2, fetch_local=False)
    if cleanup is not None:
        for key in pending.values():
            cleanup(key)
    pending.clear()
