"""Run independent runs of a sweep in parallel processes, resume finished ones, aggregate across seeds.

A sweep is a list of runs, each a config dict with a unique ``"id"``. :func:`run_sweep` calls
``fn(config, run_dir)`` for every run whose result file does not exist yet, in ``workers`` processes
(``concurrent.futures.ProcessPoolExecutor``, "spawn" start method), writes each result to
``out/runs/<id>/result.json`` atomically (temporary file, then rename), and returns all results -- the
finished ones read back from disk. Interrupt it and run it again: finished runs are skipped, and a run that
checkpoints into its ``run_dir`` (e.g. ``train(..., checkpoint_dir=run_dir)``) continues where it stopped.

``fn`` must be a module-level function (picklable by name); its result must be JSON-serialisable (numpy and
torch scalars/arrays are converted). Each worker process limits torch to ``cpu_count // workers`` threads so
the workers do not fight over cores.

>>> runs = grid({"lr": [0.01, 0.001], "teleport": [False, True]}, seeds=range(5))  # doctest: +SKIP
>>> results = run_sweep(train_one, runs, out, workers=2)  # doctest: +SKIP
>>> curves = aggregate([results[r["id"]] for r in runs if r["lr"] == 0.01], ["val_loss"])  # doctest: +SKIP
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import json
import math
import multiprocessing as mp
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "aggregate",
    "default_workers",
    "grid",
    "group_by",
    "read_result",
    "result_path",
    "run_sweep",
    "write_json_atomic",
]

_ID_RE = re.compile(r"^[A-Za-z0-9_.,=+\-]+$")


def default_workers() -> int:
    """``min(2, cpu count)``: the default number of worker processes."""
    return max(1, min(2, os.cpu_count() or 1))


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if type(v).__module__.startswith("torch") and hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    if hasattr(v, "to_dict") and callable(v.to_dict):
        return _jsonable(v.to_dict())
    return v


def write_json_atomic(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file in the same folder, then rename).

    NaN and infinities are written as ``NaN``/``Infinity`` (Python's json reads them back).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def result_path(out: str | Path, run_id: str) -> Path:
    """Where the result of run ``run_id`` lives: ``out/runs/<id>/result.json``."""
    return Path(out) / "runs" / run_id / "result.json"


def read_result(out: str | Path, run_id: str) -> dict[str, Any] | None:
    """The stored record ``{"id", "config", "result", "seconds"}`` of a finished run, or ``None``."""
    p = result_path(out, run_id)
    if not p.is_file():
        return None
    with open(p) as f:
        return json.load(f)


def _worker_init(threads: int) -> None:
    # before torch is imported (spawned workers start bare), the environment sets its thread pools
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(max(1, threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, threads))


def _run_one(fn: Callable[[dict, Path], Any], config: dict, out: str) -> tuple[str, dict | None, str | None]:
    run_id = config["id"]
    run_dir = Path(out) / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        result = fn(dict(config), run_dir)
    except Exception as e:  # reported to the parent, which raises after the other runs
        return run_id, None, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"
    record = {"id": run_id, "config": config, "result": result, "seconds": time.perf_counter() - t0}
    write_json_atomic(record, result_path(out, run_id))
    return run_id, _jsonable(record), None


def _check_runs(runs: Sequence[Mapping[str, Any]]) -> list[dict]:
    out, seen = [], set()
    for i, r in enumerate(runs):
        if not isinstance(r, Mapping) or "id" not in r:
            raise ValueError(f"run #{i} has no 'id' (every run is a config dict with a unique 'id')")
        rid = str(r["id"])
        if not _ID_RE.match(rid):
            raise ValueError(f"run id {rid!r} is not usable as a folder name; use letters, digits and _ . , = + - only")
        if rid in seen:
            raise ValueError(f"duplicate run id {rid!r}; every run needs a unique id")
        seen.add(rid)
        out.append({**r, "id": rid})
    return out


def run_sweep(
    fn: Callable[[dict, Path], Any],
    runs: Sequence[Mapping[str, Any]],
    out: str | Path,
    *,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "runs",
    raise_on_error: bool = True,
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
        Folder of the sweep.
    workers : int, optional
        Worker processes (default ``min(2, cpu count)``); ``1`` runs in this process (no pool).
    progress : bool
        A tqdm bar over the runs.
    desc : str
        Label of the bar.
    raise_on_error : bool
        After all runs, raise ``RuntimeError`` naming the failed runs (their errors are also written to
        ``out/runs/<id>/error.txt``); with ``False`` the failed runs are just missing from the result.

    Returns
    -------
    dict
        ``id -> result`` (what ``fn`` returned, as read back from JSON), in the order of ``runs``.
    """
    checked = _check_runs(runs)
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    todo = []
    for r in checked:
        rec = read_result(out, r["id"])
        if rec is not None:
            records[r["id"]] = rec
        else:
            todo.append(r)
    errors: dict[str, str] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(checked), initial=len(checked) - len(todo), desc=desc, unit="run")

    def done(run_id: str, rec: dict | None, err: str | None) -> None:
        if err is not None:
            errors[run_id] = err
            (out / "runs" / run_id).mkdir(parents=True, exist_ok=True)
            (out / "runs" / run_id / "error.txt").write_text(err)
        else:
            records[run_id] = rec  # type: ignore[assignment]
        if bar is not None:
            bar.update(1)

    try:
        if workers == 1 or len(todo) <= 1:
            for r in todo:
                done(*_run_one(fn, r, str(out)))
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = mp.get_context("spawn")
            with cf.ProcessPoolExecutor(
                max_workers=min(workers, len(todo)), mp_context=ctx, initializer=_worker_init, initargs=(threads,)
            ) as pool:
                futures = {pool.submit(_run_one, fn, r, str(out)): r["id"] for r in todo}
                for fut in cf.as_completed(futures):
                    try:
                        done(*fut.result())
                    except Exception as e:  # the worker died (e.g. killed) or fn is not picklable
                        done(futures[fut], None, f"{type(e).__name__}: {e}")
    finally:
        if bar is not None:
            bar.close()
    if errors and raise_on_error:
        first = next(iter(errors.items()))
        raise RuntimeError(
            f"{len(errors)} of {len(checked)} runs failed (finished runs are kept; run again to retry the "
            f"others): {', '.join(errors)}. First error ({first[0]}): {first[1].splitlines()[0]}"
        )
    return {r["id"]: records[r["id"]]["result"] for r in checked if r["id"] in records}


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
