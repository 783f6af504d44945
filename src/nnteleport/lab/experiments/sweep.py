"""Run independent runs of a sweep in parallel processes, resume finished ones, aggregate across seeds.

A sweep is a list of runs, each a config dict with a unique ``"id"``. :func:`run_sweep` calls
``fn(config, run_dir)`` for every run whose result does not exist yet, each in its own spawned worker process
(``workers`` at once; ``workers=1`` runs them in this process), writes each result to
``out/runs/<id>/result.json`` atomically (temporary file, then rename), and returns all results -- the
finished ones read back from disk. Interrupt it and run it again: finished runs are skipped, and a run that
checkpoints into its ``run_dir`` (e.g. ``train(..., checkpoint_dir=run_dir)``) continues where it stopped.

Identity. A run's identity is its whole config: ``result.json`` (and ``config.json``, written when the run
starts) store the config and its SHA-256 (:func:`config_sha256`, over the canonical JSON of every key but
``id`` and the ``ignore_keys`` that do not change the result, such as ``workers``). When a run folder holds a
result or a started run of another config, :func:`run_sweep` refuses before any run starts
(:class:`~nnteleport.errors.ConfigMismatchError`, naming the run and the differing keys): a changed
setting never silently reuses an old result.

Parallelism does not change the numbers: every run uses ``threads`` torch threads (default 1) whatever
``workers`` is, in a worker process or in this one. One Ctrl-C or SIGTERM stops the sweep within seconds
(workers included, queued runs cancelled, temporary files removed, finished results kept; see
:mod:`nnteleport.lab.experiments.workers`); a second one exits at once. A run whose worker dies (e.g. the
out-of-memory killer) fails alone. The output folder is locked while the sweep runs.

Back-ends (:mod:`nnteleport.lab.experiments.backends`): local worker processes (default) or Ray (``backend="ray"``,
one task per run, on a local Ray instance or a cluster whose nodes share the output folder). The back-end is not
part of a run's identity and changes no number; resume, refusals and the files are the same.

``fn`` must be a module-level function (picklable by name); its result must be JSON-serialisable (numpy and
torch scalars/arrays are converted). Records are written by :func:`nnteleport.lab.plotting.write_json`: strict
JSON, NaN and infinities as ``null``; a fresh result is returned as it will be read back (``None`` for NaN).
Records written by earlier versions hold ``NaN``/``Infinity`` tokens, which still read back as floats.

>>> runs = grid({"lr": [0.01, 0.001], "teleport": [False, True]}, seeds=range(5))  # doctest: +SKIP
>>> results = run_sweep(train_one, runs, out, workers=2)  # doctest: +SKIP
>>> curves = aggregate([results[r["id"]] for r in runs if r["lr"] == 0.01], ["val_loss"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.errors import (
    ConfigMismatchError,
    CorruptFileError,
    Interrupted,
    InvalidValueError,
    RunsFailedError,
)
from nnteleport.lab.experiments.backends import SweepBackend, current_backend
from nnteleport.lab.experiments.workers import (
    interruptible,
    out_lock,
    remove_tmp_files,
    run_jobs,
    tmp_path,
)
from nnteleport.lab.plotting import to_jsonable, write_json

__all__ = [
    "SweepBackend",
    "aggregate",
    "config_sha256",
    "default_workers",
    "grid",
    "group_by",
    "read_result",
    "result_path",
    "run_sweep",
]

_ID_RE = re.compile(r"^[A-Za-z0-9_.,=+\-]+$")
RECORD_FORMAT = 2


def default_workers() -> int:
    """``min(2, cpu count)``: the default number of worker processes."""
    return max(1, min(2, os.cpu_count() or 1))


def identity(
    config: Mapping[str, Any], ignore_keys: Iterable[str] = (), *, keep_nonfinite: bool = False
) -> dict[str, Any]:
    """The part of a run config that determines its result: every key but ``id`` and ``ignore_keys``.

    As stored in the run's files (:func:`~nnteleport.lab.plotting.to_jsonable`: NaN and infinities are ``None``);
    ``keep_nonfinite`` keeps them, as versions before the one JSON writer did.
    """
    skip = {"id", *ignore_keys}
    return {k: v for k, v in to_jsonable(dict(config), keep_nonfinite=keep_nonfinite).items() if k not in skip}


def config_sha256(config: Mapping[str, Any], ignore_keys: Iterable[str] = (), *, keep_nonfinite: bool = False) -> str:
    """SHA-256 of the canonical JSON (sorted keys) of :func:`identity` of ``config``.

    For a config without NaN or infinities, ``keep_nonfinite`` makes no difference (the hashes of earlier versions).
    """
    ident = identity(config, ignore_keys, keep_nonfinite=keep_nonfinite)
    text = json.dumps(ident, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: d}


def config_diff(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``["key: stored X, now Y", ...]`` for the (dotted) keys whose values differ."""
    a = _flatten(to_jsonable(dict(stored), keep_nonfinite=True))
    b = _flatten(to_jsonable(dict(current), keep_nonfinite=True))
    missing = object()
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k, missing), b.get(k, missing)
        if va != vb:
            fa = "(absent)" if va is missing else json.dumps(va)
            fb = "(absent)" if vb is missing else json.dumps(vb)
            out.append(f"{k}: stored {fa}, now {fb}")
    return out


def result_path(out: str | Path, run_id: str) -> Path:
    """Where the result of run ``run_id`` lives: ``out/runs/<id>/result.json``."""
    return Path(out) / "runs" / run_id / "result.json"


def _read_json(p: Path, what: str) -> dict[str, Any]:
    try:
        with open(p) as f:
            rec = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptFileError(
            f"{p}: cannot read the {what} ({type(e).__name__}: {e}); delete the file to recompute the run"
        ) from None
    if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict):
        raise CorruptFileError(f"{p}: not a {what} of nnteleport (no config); delete the file to recompute the run")
    return rec


def read_result(out: str | Path, run_id: str) -> dict[str, Any] | None:
    """The stored record ``{"id", "config", "config_sha256", "result", "seconds"}`` of a finished run, or ``None``.

    Raises
    ------
    CorruptFileError
        The file exists but is not a readable, intact record (names the file).
    """
    p = result_path(out, run_id)
    if not p.is_file():
        return None
    rec = _read_json(p, "run result")
    if "result" not in rec:
        raise CorruptFileError(f"{p}: not a run result (no 'result'); delete the file to recompute the run")
    return rec


def _stored_sha(rec: Mapping[str, Any], p: Path, ignore_keys: Sequence[str]) -> str:
    """The hash a stored record claims, checked against its stored config (a tampered file is refused)."""
    actual = config_sha256(rec["config"], ignore_keys)
    claimed = rec.get("config_sha256")
    # also accepted: the hash without ignore_keys, and (records of earlier versions, which stored NaN as NaN)
    # the hash over the non-finite values themselves
    accepted = {actual, config_sha256(rec["config"]), config_sha256(rec["config"], ignore_keys, keep_nonfinite=True)}
    if claimed is not None and claimed not in accepted:
        raise CorruptFileError(
            f"{p}: its config does not match its config_sha256 (edited by hand?); delete the file to recompute"
        )
    return actual


def _run_one(fn: Callable[[dict, Path], Any], config: dict, out: str, sha: str) -> tuple[str, dict | None, str | None]:
    run_id = config["id"]
    run_dir = Path(out) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = fn(dict(config), run_dir)
    except Exception as e:  # reported to the parent, which raises after the other runs
        return run_id, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    from nnteleport import __version__

    record = {
        "format": RECORD_FORMAT,
        "id": run_id,
        "config": config,
        "config_sha256": sha,
        "result": result,
        "seconds": time.perf_counter() - t0,
        "nnteleport_version": __version__,
    }
    write_json(result_path(out, run_id), record, indent=1)
    (run_dir / "error.txt").unlink(missing_ok=True)
    return run_id, to_jsonable(record), None  # what a later run_sweep reads back from the file


def _run_in_worker(
    fn: Callable[[dict, Path], Any], config: dict, out: str, sha: str
) -> tuple[str, dict | None, str | None]:
    return _run_one(fn, config, out, sha)


def _check_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    out, seen = [], set()
    for i, r in enumerate(runs):
        if not isinstance(r, Mapping) or "id" not in r:
            raise InvalidValueError(f"run #{i} has no 'id' (every run is a config dict with a unique 'id')")
        rid = str(r["id"])
        if not _ID_RE.match(rid):
            raise InvalidValueError(
                f"run id {rid!r} is not usable as a folder name; use letters, digits and _ . , = + - only"
            )
        if rid in seen:
            raise InvalidValueError(f"duplicate run id {rid!r}; every run needs a unique id")
        seen.add(rid)
        out.append({**r, "id": rid})
    return out


def _mismatch_error(out: Path, mismatches: list[tuple[str, str, list[str]]]) -> ConfigMismatchError:
    rid, what, diff = mismatches[0]
    shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
    more = f" (and {len(mismatches) - 1} other run(s))" if len(mismatches) > 1 else ""
    return ConfigMismatchError(
        f"{out}/runs/{rid} holds a {what} of another config{more}: {shown}. Nothing was run; use another --out, "
        f"or delete {out}/runs/{rid} (and the other folders named) to recompute with the new settings"
    )


def run_sweep(
    fn: Callable[[dict, Path], Any],
    runs: Sequence[Mapping[str, Any]],
    out: str | Path,
    *,
    workers: int | None = None,
    threads: int = 1,
    progress: bool = True,
    desc: str = "runs",
    raise_on_error: bool = True,
    ignore_keys: Sequence[str] = (),
    backend: SweepBackend | str | None = None,
) -> dict[str, dict[str, Any]]:
    """Run ``fn(config, run_dir)`` for every run not finished yet; return ``{id: result}`` of all runs.

    Parameters
    ----------
    fn : callable
        Module-level function ``fn(config: dict, run_dir: Path) -> JSON-able result``; ``run_dir`` is the run's
        own folder ``out/runs/<id>/`` (for checkpoints, TensorBoard files, ...).
    runs : sequence of dict
        Run configurations, each with a unique ``"id"`` (letters, digits, ``_ . , = + -``).
    out : path
        Folder of the sweep (locked while the sweep runs).
    workers : int, optional
        Worker processes of the local back-end (default ``min(2, cpu count)``); ``1`` runs in this process.
    threads : int
        Torch intra-op threads of every run, whatever ``workers`` (so that the numbers do not depend on it).
    progress : bool
        A tqdm bar over the runs.
    desc : str
        Label of the bar (the run being worked on is shown next to it).
    raise_on_error : bool
        After all runs, raise :class:`~nnteleport.errors.RunsFailedError` naming the failed runs (their
        errors are also written to ``out/runs/<id>/error.txt``); with ``False`` the failed runs are just
        missing from the result.
    ignore_keys : sequence of str
        Keys of the run configs that do not change the result (e.g. ``"workers"``), left out of the identity.
    backend : SweepBackend or {"local", "ray"}, optional
        Where the runs execute (:mod:`nnteleport.lab.experiments.backends`): local worker processes, or one Ray
        task per run (``threads`` CPUs and ``backend.gpus_per_run`` GPUs each; ``workers`` is not used). Default:
        :func:`~nnteleport.lab.experiments.backends.current_backend`. Same results, same files, same resume.

    Returns
    -------
    dict
        ``id -> result`` (what ``fn`` returned, as read back from JSON), in the order of ``runs``.

    Raises
    ------
    ConfigMismatchError
        A run folder holds a result or a started run of another config (before any run starts).
    CorruptFileError
        A stored result cannot be read (names the file).
    OutputInUseError
        Another process is running a sweep in ``out``.
    MissingExtraError
        ``backend="ray"`` without Ray installed.
    Interrupted
        SIGINT or SIGTERM: the workers were stopped, the finished results are kept.
    """
    checked = _check_runs(runs)
    if backend is None:
        backend = current_backend()
    elif not isinstance(backend, SweepBackend):
        backend = SweepBackend(backend)
    if backend.name == "ray":
        from nnteleport.lab.experiments.ray_backend import require_ray

        require_ray()
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise InvalidValueError(f"workers must be >= 1, got {workers}")
    if int(threads) < 1:
        raise InvalidValueError(f"threads must be >= 1, got {threads}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InvalidValueError(f"output folder {out} exists and is not a folder")
    with out_lock(out), interruptible():
        return _run_sweep_locked(fn, checked, out, workers, int(threads), progress, desc, raise_on_error,
                                 tuple(ignore_keys), backend)  # fmt: skip


def _run_sweep_locked(
    fn: Callable[[dict, Path], Any],
    checked: list[dict],
    out: Path,
    workers: int,
    threads: int,
    progress: bool,
    desc: str,
    raise_on_error: bool,
    ignore_keys: tuple[str, ...],
    backend: SweepBackend,
) -> dict[str, dict[str, Any]]:
    records: dict[str, dict] = {}
    todo: list[tuple[dict, str]] = []
    mismatches: list[tuple[str, str, list[str]]] = []
    for r in checked:
        sha = config_sha256(r, ignore_keys)
        rec = read_result(out, r["id"])
        if rec is not None:
            if _stored_sha(rec, result_path(out, r["id"]), ignore_keys) != sha:
                diff = config_diff(identity(rec["config"], ignore_keys), identity(r, ignore_keys))
                mismatches.append((r["id"], "result", diff))
            else:
                records[r["id"]] = rec
            continue
        started = out / "runs" / r["id"] / "config.json"
        if started.is_file():
            srec = _read_json(started, "run config")
            if _stored_sha(srec, started, ignore_keys) != sha:
                diff = config_diff(identity(srec["config"], ignore_keys), identity(r, ignore_keys))
                mismatches.append((r["id"], "started run (checkpoint)", diff))
                continue
        todo.append((r, sha))
    if mismatches:
        raise _mismatch_error(out, mismatches)
    if todo and backend.name == "ray":  # an unreachable cluster or a run no node can hold: refused before any run
        from nnteleport.lab.experiments.ray_backend import prepare

        prepare(backend.address, threads, backend.gpus_per_run)
    for r, sha in todo:
        write_json(out / "runs" / r["id"] / "config.json", {"id": r["id"], "config": r, "config_sha256": sha}, indent=1)

    errors: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(checked), initial=len(checked) - len(todo), desc=desc, unit="run")
    active: list[str] = []

    def show() -> None:
        if bar is not None:
            bar.set_postfix_str(("running " + ", ".join(active[:2]) + (" ..." if len(active) > 2 else ""))
                                if active else "", refresh=True)  # fmt: skip

    def done(run_id: str, rec: dict | None, err: str | None) -> None:
        if run_id in active:
            active.remove(run_id)
        if err is not None:
            errors[run_id] = err
            run_dir = out / "runs" / run_id
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_text_atomic(run_dir / "error.txt", err)
        else:
            records[run_id] = rec  # type: ignore[assignment]
        if bar is not None:
            bar.update(1)
        show()

    def stop_message(n_running: int, n_queued: int) -> str:
        return (
            f"{len(records)} of {len(checked)} runs finished (kept in {out}/runs), {n_running} stopped (their "
            f"checkpoints are kept), {n_queued} queued run(s) cancelled; run the same command again to resume"
        )

    def ray_stop_message(n_unfinished: int) -> str:
        return (
            f"{len(records)} of {len(checked)} runs finished (kept in {out}/runs), {n_unfinished} unfinished Ray "
            f"task(s) cancelled (started runs keep their checkpoints); run the same command again to resume"
        )

    try:
        if backend.name == "ray":
            _execute_ray(fn, todo, out, threads, backend, done, ray_stop_message)
        elif workers == 1:
            _execute_here(fn, todo, out, threads, active, show, done, stop_message)
        else:
            by_id = {r["id"]: r for r, _ in todo}

            def on_done(run_id: str, ok: bool, payload: Any) -> None:
                if ok:
                    done(*payload)
                else:
                    done(run_id, None, payload)

            def cleanup(run_id: str, pid: int) -> None:
                remove_tmp_files(out / "runs" / run_id, pid)

            jobs = [(r["id"], _run_in_worker, (fn, by_id[r["id"]], str(out), sha)) for r, sha in todo]

            def on_start(run_id: str) -> None:
                active.append(run_id)
                show()

            run_jobs(jobs, workers=workers, threads=threads, on_done=on_done, on_start=on_start, cleanup=cleanup,
                     describe_stop=stop_message)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if errors and raise_on_error:
        first_id, first = next(iter(errors.items()))
        first_line = next((ln for ln in first.splitlines() if ln.strip()), first)
        raise RunsFailedError(
            f"{len(errors)} of {len(checked)} runs failed (finished runs are kept; run again to retry the "
            f"others): {', '.join(errors)}. First error ({first_id}): {first_line} "
            f"(traceback in {out}/runs/{first_id}/error.txt)"
        )
    return {r["id"]: records[r["id"]]["result"] for r in checked if r["id"] in records}


def _execute_here(
    fn: Callable[[dict, Path], Any],
    todo: list[tuple[dict, str]],
    out: Path,
    threads: int,
    active: list[str],
    show: Callable[[], None],
    done: Callable[[str, dict | None, str | None], None],
    stop_message: Callable[[int, int], str],
) -> None:
    """The runs one after the other in this process, with ``threads`` torch threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, (r, sha) in enumerate(todo):
            active[:] = [r["id"]]
            show()
            try:
                done(*_run_one(fn, r, str(out), sha))
            except KeyboardInterrupt as e:
                remove_tmp_files(out / "runs" / r["id"], os.getpid())
                signum = getattr(e, "signum", 2)
                base = str(e) if isinstance(e, Interrupted) else "interrupted"
                raise Interrupted(f"{base}: " + stop_message(1, len(todo) - i - 1), signum) from None
    finally:
        torch.set_num_threads(before)


def _execute_ray(
    fn: Callable[[dict, Path], Any],
    todo: list[tuple[dict, str]],
    out: Path,
    threads: int,
    backend: SweepBackend,
    done: Callable[[str, dict | None, str | None], None],
    stop_message: Callable[[int], str],
) -> None:
    """The runs as Ray tasks; each task writes its record into ``out`` as a local worker does. A record that
    did not arrive in this machine's ``out`` (a result folder not shared with the node that ran it) is written
    here from the record the task returned, so no finished run is lost."""
    from nnteleport.lab.experiments.ray_backend import run_jobs_ray

    def on_done(run_id: str, ok: bool, payload: Any) -> None:
        if not ok:
            done(run_id, None, payload)
            return
        rid, record, err = payload
        if err is None and record is not None and not result_path(out, rid).is_file():
            write_json(result_path(out, rid), record, indent=1)
        done(rid, record, err)

    def cleanup(run_id: str) -> None:  # the task was ended: its temporary files, whatever its process id
        for p in (out / "runs" / run_id).rglob(".*.tmp"):
            p.unlink(missing_ok=True)

    jobs = [(r["id"], _run_in_worker, (fn, r, str(out), sha)) for r, sha in todo]
    run_jobs_ray(jobs, threads=threads, gpus_per_run=backend.gpus_per_run, address=backend.address,
                 on_done=on_done, cleanup=cleanup, describe_stop=stop_message)  # fmt: skip


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    tmp = tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(u) for u in v)
    return str(v)


def grid(
    axes: Mapping[str, Sequence[Any]],
    *,
    seeds: Iterable[int] = (0,),
    base: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The cartesian product of ``axes`` times ``seeds``, as run configs with readable unique ids.

    ``grid({"lr": [0.1, 0.01], "opt": ["sgd"]}, seeds=[0, 1])`` gives four runs with ids such as
    ``"lr=0.1,opt=sgd,seed=0"``, each ``{**base, "lr": ..., "opt": ..., "seed": ..., "id": ...}``.
    """
    keys = list(axes)
    runs = []
    for values in itertools.product(*(list(axes[k]) for k in keys)):
        for seed in seeds:
            cfg = {**(base or {}), **dict(zip(keys, values)), "seed": int(seed)}
            cfg["id"] = ",".join(f"{k}={_fmt(v)}" for k, v in [*zip(keys, values), ("seed", seed)])
            runs.append(cfg)
    return runs


def group_by(
    runs: Sequence[Mapping[str, Any]], results: Mapping[str, Any], by: Sequence[str]
) -> dict[tuple, list[Any]]:
    """Results grouped by the values of config keys ``by`` (e.g. everything but the seed).

    Returns ``{(value of by[0], value of by[1], ...): [result, ...]}`` in the order of ``runs``; runs without a
    result (failed) are left out.
    """
    groups: dict[tuple, list[Any]] = {}
    for r in runs:
        if r["id"] not in results:
            continue
        key = tuple(_hashable(r.get(k)) for k in by)
        groups.setdefault(key, []).append(results[r["id"]])
    return groups


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(u) for u in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(u)) for k, u in v.items()))
    return v


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    node: Any = d
    for p in dotted.split("."):
        node = node[p]
    return node


def aggregate(results: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation across runs (e.g. seeds) of curves or scalars.

    Parameters
    ----------
    results : sequence of mapping
        One result per run.
    keys : sequence of str
        Dotted keys of list-valued curves or scalars in every result (``"history.val_loss"``).

    Returns
    -------
    dict
        ``key -> {"mean": [...], "std": [...], "n": [...]}`` per position of the curve (scalars give lists of
        length 1). ``None``/NaN entries are ignored; curves of different lengths are aligned at the start (a
        position's statistics use the runs that have it). ``std`` is the sample standard deviation
        (``ddof = 1``; 0 for a single value), as in the paper's ``mean +- 2 std`` shading.

    Raises
    ------
    KeyError
        A key missing from a result (names the key).
    """
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        curves = []
        for i, r in enumerate(results):
            try:
                v = _get(r, key)
            except (KeyError, TypeError):
                raise KeyError(f"result #{i} has no {key!r}") from None
            vals = list(v) if isinstance(v, (list, tuple)) else [v]
            curves.append([math.nan if u is None else float(u) for u in vals])
        length = max((len(c) for c in curves), default=0)
        arr = np.full((len(curves), length), np.nan)
        for i, c in enumerate(curves):
            arr[i, : len(c)] = c
        n = np.sum(~np.isnan(arr), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            total = np.nansum(arr, axis=0)
            mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
            sq = np.nansum((arr - mean) ** 2, axis=0)
            std = np.where(n > 1, np.sqrt(sq / np.maximum(n - 1, 1)), np.where(n == 1, 0.0, np.nan))
        out[key] = {"mean": mean.tolist(), "std": std.tolist(), "n": n.astype(int).tolist()}
    return out
