"""Worker processes that stop when asked: one spawned process per job, interruption, output-folder locks.

* :func:`run_jobs` runs ``fn(*args)`` of every job in its own spawned process, at most ``workers`` at once,
  each with ``threads`` torch threads, and reports each job's return value (or error) as it finishes. A job
  whose process dies (killed by the out-of-memory killer, a segfault) fails alone; the other jobs go on.
* :func:`interruptible` makes SIGINT (Ctrl-C) and SIGTERM raise :class:`~nnteleport.user_errors.Interrupted`
  in the main thread; :func:`run_jobs` then ends its worker processes (SIGTERM, SIGKILL after 5 s), cancels
  the queued jobs and removes the temporary files of the stopped jobs. A second signal kills the workers and
  exits the process at once (status ``128 + signal``).
* Worker processes ignore SIGINT (the parent decides; a Ctrl-C in the terminal reaches the whole process
  group) and die with their parent (``PR_SET_PDEATHSIG`` on Linux, and a watchdog thread everywhere), so
  killing the parent, even with SIGKILL, leaves no orphan behind.
* :func:`out_lock` holds an exclusive lock on an output folder (``DIR/.nnteleport.lock``, ``fcntl.flock``;
  re-entrant within a process), so two processes never write the same results.
* Temporary files are named ``.<name>.<pid>.tmp`` (:func:`tmp_path`); :func:`remove_tmp_files` deletes those
  of one process.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nnteleport._atomic import remove_tmp_files, tmp_path
from nnteleport.user_errors import Interrupted, OutputInUseError

__all__ = ["interruptible", "out_lock", "remove_tmp_files", "run_jobs", "tmp_path"]

#: Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 5.0

_LIVE: set[Any] = set()  # worker processes now running (killed at once by a second interrupt)
_HANDLER_DEPTH = [0]


# --------------------------------------------------------------------------------------------------
# signals


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM raises :class:`Interrupted`; a second one exits at once.

    Does nothing outside the main thread, in a worker process (where SIGINT is ignored), or when already
    active (nested use).
    """
    if not _in_main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN or _HANDLER_DEPTH[0] > 0:
        yield
        return
    count = [0]

    def handler(signum: int, frame: Any) -> None:
        count[0] += 1
        name = signal.Signals(signum).name
        if count[0] > 1:
            for p in list(_LIVE):
                with contextlib.suppress(Exception):
                    p.kill()
            os.write(2, f"nnteleport: second {name}: stopped at once (finished results are kept)\n".encode())
            os._exit(128 + signum)
        raise Interrupted(f"interrupted by {name}", signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _HANDLER_DEPTH[0] += 1
    try:
        yield
    finally:
        _HANDLER_DEPTH[0] -= 1
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------------
# the worker side


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before we got here
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="nnteleport-parent-watch", daemon=True).start()


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _child(fn: Callable[..., Any], args: tuple, threads: int, parent_pid: int, conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)
    _set_threads(threads)
    try:
        msg: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as e:  # reported to the parent
        msg = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
    try:
        conn.send(msg)
    except Exception as e:  # e.g. an unpicklable result
        conn.send(("error", f"{type(e).__name__}: the job's result could not be sent back: {e}"))
    conn.close()


def death_message(exitcode: int | None) -> str:
    """Why a worker process ended without reporting back, from its exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"WorkerDied: the worker process was killed by {name}{hint}"
    return f"WorkerDied: the worker process exited with status {exitcode} without reporting a result"


# --------------------------------------------------------------------------------------------------
# the parent side


def run_jobs(
    jobs: Sequence[tuple[str, Callable[..., Any], tuple]],
    *,
    workers: int,
    threads: int = 1,
    on_done: Callable[[str, bool, Any], None],
    cleanup: Callable[[str, int], None] | None = None,
    describe_stop: Callable[[int, int], str] | None = None,
) -> None:
    """Run ``fn(*args)`` of every ``(key, fn, args)`` job in its own spawned process, ``workers`` at once.

    ``on_done(key, ok, payload)`` is called in this process as each job ends: ``ok`` with ``fn``'s return value
    (pickled back), else with the error text (exception and traceback, or how the process died).
    ``cleanup(key, pid)`` is called for a job whose process died or was stopped (e.g. to delete its temporary
    files). On an interruption (see :func:`interruptible`, which this function activates) the running
    processes are ended, the queued jobs are cancelled, and :class:`Interrupted` is raised with the message
    ``describe_stop(running, queued)``.
    """
    ctx = mp.get_context("spawn")
    pending = list(jobs)[::-1]
    running: dict[str, list[Any]] = {}  # key -> [process, connection, message]

    def start(key: str, fn: Callable[..., Any], args: tuple) -> None:
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(fn, args, threads, os.getpid(), w), name=f"nnteleport:{key}")
        env_before = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({v: str(max(1, threads)) for v in env_before})
        # an ignored SIGINT is inherited across exec: the worker never sees the terminal's Ctrl-C
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if _in_main_thread() else None
        try:
            p.start()
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            for v, old in env_before.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old
        w.close()
        _LIVE.add(p)
        running[key] = [p, r, None]

    def finish(key: str) -> None:
        p, conn, msg = running.pop(key)
        p.join()
        _LIVE.discard(p)
        conn.close()
        if msg is None or msg is False:
            if cleanup is not None:
                cleanup(key, p.pid)
            on_done(key, False, death_message(p.exitcode))
        else:
            on_done(key, msg[0] == "ok", msg[1])

    with interruptible():
        try:
            while pending or running:
                while pending and len(running) < workers:
                    start(*pending.pop())
                waitables = [x for v in running.values() for x in (v[0].sentinel, v[1]) if v[2] is None or x != v[1]]
                ready = set(mpc.wait(waitables))
                for key in list(running):
                    p, conn, msg = running[key]
                    if msg is None and (conn in ready or (p.sentinel in ready and conn.poll())):
                        try:
                            running[key][2] = conn.recv()
                        except (EOFError, OSError):
                            running[key][2] = False
                    if p.sentinel in ready:
                        finish(key)
        except BaseException as exc:
            n_running, n_queued = len(running), len(pending)
            _stop_all(running, cleanup)
            if isinstance(exc, KeyboardInterrupt):
                signum = getattr(exc, "signum", signal.SIGINT)
                base = str(exc) if isinstance(exc, Interrupted) else "interrupted"
                detail = describe_stop(n_running, n_queued) if describe_stop is not None else ""
                raise Interrupted(f"{base}{': ' + detail if detail else ''}", signum) from None
            raise


def _stop_all(running: dict[str, list[Any]], cleanup: Callable[[str, int], None] | None) -> None:
    procs = [(k, v[0]) for k, v in running.items()]
    for _, p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for _, p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for _, p in procs:
        if p.is_alive():
            with contextlib.suppress(Exception):
                p.kill()
            p.join()
    for k, p in procs:
        _LIVE.discard(p)
        with contextlib.suppress(Exception):
            running[k][1].close()
        if cleanup is not None:
            cleanup(k, p.pid)
    running.clear()


# --------------------------------------------------------------------------------------------------
# output folder lock

_HELD: dict[str, list[Any]] = {}  # resolved folder -> [file object, depth]


@contextlib.contextmanager
def out_lock(folder: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of output folder ``folder`` (created) for the duration (re-entrant).

    Raises
    ------
    OutputInUseError
        Another process holds it (names the folder and that process).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    f = open(folder / ".nnteleport.lock", "a+")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise OutputInUseError(
            f"output folder {folder} is in use by {holder}; wait for it to finish or use another --out"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"nnteleport process {os.getpid()}")
    f.flush()
    _HELD[key] = [f, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            f.seek(0)
            f.truncate()
        f.close()
