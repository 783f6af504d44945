"""Worker processes that stop when asked: one spawned process per job, interruption, output-folder locks.

* :func:`run_jobs` runs ``fn(*args)`` of every job in ``workers`` spawned worker processes (one job at a time
  each), each with ``threads`` torch threads, and reports each job's return value (or error) as it finishes. A
  job whose worker dies (killed by the out-of-memory killer, a segfault) fails alone; the worker is replaced and
  the other jobs go on.
* :func:`interruptible` makes SIGINT (Ctrl-C) and SIGTERM raise :class:`~nnteleport.errors.Interrupted`
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

from nnteleport.errors import Interrupted, OutputInUseError
from nnteleport.lab._atomic import remove_tmp_files, tmp_path

__all__ = ["interruptible", "mark_worker_process", "out_lock", "remove_tmp_files", "run_jobs", "tmp_path"]

#: Seconds a worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_S = 5.0

_LIVE: set[Any] = set()  # worker processes now running (killed at once by a second interrupt)
_HANDLER_DEPTH = [0]
_IN_WORKER = [False]  # set in worker processes: they are stopped by their parent, not by their own handlers


# --------------------------------------------------------------------------------------------------
# signals


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Within: the first SIGINT/SIGTERM raises :class:`Interrupted`; a second one exits at once.

    Does nothing outside the main thread, in a worker process (its parent stops it), or when already active
    (nested use). An ignored SIGINT (a background job of a non-interactive shell) stays ignored.
    """
    if not _in_main_thread() or _IN_WORKER[0] or _HANDLER_DEPTH[0] > 0:
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

    signals = [signal.SIGTERM] + ([signal.SIGINT] if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else [])
    previous = {s: signal.signal(s, handler) for s in signals}
    _HANDLER_DEPTH[0] += 1
    try:
        yield
    finally:
        _HANDLER_DEPTH[0] -= 1
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------------
# the worker side


def mark_worker_process() -> None:
    """Mark this process as a worker of a sweep (a local worker, a Ray worker): its parent or scheduler stops it,
    so :func:`interruptible` installs no handlers here, and its progress bars need no cross-process lock."""
    _IN_WORKER[0] = True
    _thread_lock_for_tqdm()


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


def _thread_lock_for_tqdm() -> None:
    """Give tqdm a thread lock: its default also creates a multiprocessing semaphore (``torch.fx`` makes a
    disabled bar on every trace), which a worker stopped by its parent could not release -- the resource tracker
    would then warn about a "leaked semaphore". A worker's bars are never shared with other processes."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    tqdm.set_lock(threading.RLock())


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(threads)))


def _worker_loop(threads: int, parent_pid: int, conn: Any) -> None:
    """A worker process: run the jobs the parent sends, one at a time, until it sends ``None`` or goes away."""
    mark_worker_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent(parent_pid)
    _set_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fn, args = job
        try:
            msg: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as e:  # reported to the parent
            msg = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        try:
            conn.send(msg)
        except Exception as e:  # e.g. an unpicklable result
            conn.send(("error", f"{type(e).__name__}: the job's result could not be sent back: {e}"))


def death_message(exitcode: int | None) -> str:
    """Why a worker process ended without reporting back, from its exit code."""
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else str(-exitcode)
        hint = " (often the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"WorkerDied: the worker process was killed by {name}{hint}"
    return f"WorkerDied: the worker process exited with status {exitcode} without reporting a result"


# --------------------------------------------------------------------------------------------------
# the parent side


class _Worker:
    def __init__(self, ctx: Any, threads: int) -> None:
        self.conn, child_conn = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=_worker_loop, args=(threads, os.getpid(), child_conn), name="nnteleport-worker")
        env_before = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        os.environ.update({v: str(max(1, threads)) for v in env_before})
        # an ignored SIGINT is inherited across exec: the worker never sees the terminal's Ctrl-C
        sigint = signal.signal(signal.SIGINT, signal.SIG_IGN) if _in_main_thread() else None
        try:
            self.proc.start()
        finally:
            if sigint is not None:
                signal.signal(signal.SIGINT, sigint)
            for v, old in env_before.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old
        child_conn.close()
        _LIVE.add(self.proc)
        self.key: str | None = None  # the job it is running

    def close(self) -> None:
        _LIVE.discard(self.proc)
        with contextlib.suppress(Exception):
            self.conn.close()


def run_jobs(
    jobs: Sequence[tuple[str, Callable[..., Any], tuple]],
    *,
    workers: int,
    threads: int = 1,
    on_done: Callable[[str, bool, Any], None],
    on_start: Callable[[str], None] | None = None,
    cleanup: Callable[[str, int], None] | None = None,
    describe_stop: Callable[[int, int], str] | None = None,
) -> None:
    """Run ``fn(*args)`` of every ``(key, fn, args)`` job in ``workers`` spawned worker processes.

    Each worker runs one job at a time (so the imports are paid once per worker, not per job).
    ``on_start(key)`` is called when a job is handed to a worker, ``on_done(key, ok, payload)`` when it ends:
    ``ok`` with ``fn``'s return value (pickled back), else with the error text (exception and traceback, or how
    the worker died). A worker that dies fails only its current job (``cleanup(key, pid)`` is called for it, e.g.
    to delete its temporary files) and is replaced. On an interruption (see :func:`interruptible`, which this
    function activates) the workers are ended (SIGTERM, SIGKILL after :data:`TERMINATE_GRACE_S`), the queued jobs
    are cancelled, ``cleanup`` is called for the jobs that were running, and :class:`Interrupted` is raised with
    the message ``describe_stop(running, queued)``.
    """
    ctx = mp.get_context("spawn")
    pending = list(jobs)[::-1]
    pool: list[_Worker] = []

    def assign(w: _Worker) -> None:
        while pending:
            key, fn, args = pending.pop()
            try:
                w.conn.send((fn, args))
            except (BrokenPipeError, OSError):  # it died before taking the job: the job goes back
                pending.append((key, fn, args))
                return
            w.key = key
            if on_start is not None:
                on_start(key)
            return

    with interruptible():
        try:
            while pending or any(w.key is not None for w in pool):
                for w in pool:
                    if w.key is None and pending:
                        assign(w)
                while pending and len(pool) < workers:
                    pool.append(_Worker(ctx, threads))
                    assign(pool[-1])
                for w in [w for w in pool if w.key is None and not pending]:  # nothing left for it
                    with contextlib.suppress(Exception):
                        w.conn.send(None)
                    w.proc.join(TERMINATE_GRACE_S)
                    w.close()
                    pool.remove(w)
                if not pool:
                    continue
                ready = set(mpc.wait([w.conn for w in pool if w.key is not None] + [w.proc.sentinel for w in pool]))
                for w in list(pool):
                    msg = None
                    if w.key is not None and (w.conn in ready or (w.proc.sentinel in ready and w.conn.poll())):
                        with contextlib.suppress(EOFError, OSError):
                            msg = w.conn.recv()
                    if msg is not None:
                        key, w.key = w.key, None
                        on_done(key, msg[0] == "ok", msg[1])
                    if w.proc.sentinel in ready or not w.proc.is_alive():
                        w.proc.join()
                        w.close()
                        pool.remove(w)
                        if w.key is not None:
                            if cleanup is not None:
                                cleanup(w.key, w.proc.pid)
                            on_done(w.key, False, death_message(w.proc.exitcode))
        except BaseException as exc:
            n_running, n_queued = sum(w.key is not None for w in pool), len(pending)
            _stop_all(pool, cleanup)
            if isinstance(exc, KeyboardInterrupt):
                signum = getattr(exc, "signum", signal.SIGINT)
                base = str(exc) if isinstance(exc, Interrupted) else "interrupted"
                detail = describe_stop(n_running, n_queued) if describe_stop is not None else ""
                raise Interrupted(f"{base}{': ' + detail if detail else ''}", signum) from None
            raise
        finally:
            for w in pool:  # normally none left
                w.close()


def _stop_all(pool: list[_Worker], cleanup: Callable[[str, int], None] | None) -> None:
    for w in pool:
        with contextlib.suppress(Exception):
            w.proc.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for w in pool:
        w.proc.join(max(0.0, deadline - time.monotonic()))
    for w in pool:
        if w.proc.is_alive():
            with contextlib.suppress(Exception):
                w.proc.kill()
            w.proc.join()
    for w in pool:
        w.close()
        if w.key is not None and cleanup is not None:
            cleanup(w.key, w.proc.pid)
    pool.clear()


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
