"""Results files and figures of the experiments: tidy JSON/CSV first, PNG plots drawn from them.

Every experiment writes ``results.json`` (all numbers behind its plots) and CSVs of its curves with
:func:`write_json` / :func:`write_csv`, then draws PNGs from those rows with matplotlib's object API
(:func:`new_figure` / :func:`save_figure`, Agg canvas, no pyplot state, safe in worker processes), so a figure can
be redrawn from the files without re-running anything (:func:`read_csv`).

Also here: the small helpers every experiment shares -- summary statistics (:func:`summary`), angles between
flat vectors (:func:`angle_deg`) and optional progress bars (:func:`progress`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from nnteleport.lab._atomic import tmp_path

__all__ = [
    "COLORS",
    "angle_deg",
    "band",
    "new_figure",
    "progress",
    "read_csv",
    "save_figure",
    "summary",
    "to_jsonable",
    "write_csv",
    "write_json",
]

T = TypeVar("T")

#: Colours used consistently across figures: baseline vs teleported, and a palette for extra series.
COLORS = {
    "baseline": "#d95f02",
    "teleport": "#1b65a6",
    "pseudo": "#7a7a7a",
    "grid": ["#1b65a6", "#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#a6761d"],
}


# --------------------------------------------------------------------------------------------------
# results files


def to_jsonable(obj: Any, *, keep_nonfinite: bool = False) -> Any:
    """Convert ``obj`` to plain JSON types: mappings (keys as ``str``), lists, ``str``, ``int``, ``float``, ``None``.

    Tensors and numpy arrays become (nested) lists, numpy scalars Python scalars, tuples lists, paths strings,
    objects with a ``to_dict()`` method their dict. Non-finite floats (NaN, +-inf) become ``None`` -- the
    convention of every results file (:func:`write_json`) -- unless ``keep_nonfinite`` (used for hashing run
    configs, whose SHA-256 must not change).
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, keep_nonfinite=keep_nonfinite) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), keep_nonfinite=keep_nonfinite)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), keep_nonfinite=keep_nonfinite)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, keep_nonfinite=keep_nonfinite) for v in obj]
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if keep_nonfinite or math.isfinite(value) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return to_jsonable(obj.to_dict(), keep_nonfinite=keep_nonfinite)
    return obj


def write_json(path: Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (RFC 8259) to ``path``, atomically and durably; creates the parent folder.

    The one JSON writer of the experiments (``results.json``, ``summary.json``, the sweep's run records).
    ``obj`` goes through :func:`to_jsonable`, so NaN and infinities are written as ``null`` (strict JSON: any
    parser reads the file; readers of numbers treat ``null`` as missing / NaN). The text goes to a temporary
    file in the same folder, is flushed to disk and renamed over ``path``: an interrupted write never leaves
    half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    tmp = tmp_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (dicts with the same keys, in order of the first row) as a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else []
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in fields})
    return path


def _csv_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # round-trips exactly
    return value


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Read a CSV written by :func:`write_csv`; numbers come back as ``int``/``float``, the rest as ``str``."""

    def parse(s: str) -> Any:
        for kind in (int, float):
            try:
                return kind(s)
            except ValueError:
                pass
        return s

    with Path(path).open(newline="") as f:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


# --------------------------------------------------------------------------------------------------
# numbers


def summary(values: Iterable[float]) -> dict[str, float]:
    """``mean``, ``std``, ``min``, ``max`` and ``n`` of ``values`` (NaN when empty).

    ``std`` is the sample standard deviation (``ddof=1``; 0 for a single value), as used for the paper's
    ``mean +- 2 std`` bands.
    """
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle in degrees between two flat vectors, computed in float64: ``acos(<a, b> / (|a| |b|))``."""
    a64 = a.detach().flatten().to(torch.float64)
    b64 = b.detach().flatten().to(torch.float64)
    cos = torch.dot(a64, b64) / (a64.norm() * b64.norm())
    return math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))


def progress(iterable: Iterable[T], *, enabled: bool, desc: str, total: int | None = None) -> Iterator[T]:
    """``tqdm(iterable)`` when ``enabled`` (to stderr, cleared when done), else the iterable itself."""
    if not enabled:
        yield from iterable
        return
    from tqdm.auto import tqdm

    yield from tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------------
# figures


def new_figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    size: tuple[float, float] = (4.0, 3.0),
    layout: str = "constrained",
    **kw: Any,
) -> tuple[Any, np.ndarray]:
    """A matplotlib ``Figure`` with an ``nrows x ncols`` array of axes, made without pyplot.

    The figure is a plain :class:`matplotlib.figure.Figure` (PNG through the Agg renderer by
    :func:`save_figure`): no pyplot figure manager, so the global backend is neither read nor switched (a
    notebook keeps its backend) and nothing needs closing. ``size`` is the size of one panel in inches;
    ``layout`` is matplotlib's layout engine (``"constrained"``, ``"tight"``). Returns ``(fig, axes)`` with
    ``axes`` a 2-d numpy array of shape ``(nrows, ncols)``.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout=layout)
    kw.pop("squeeze", None)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def save_figure(fig: Any, path: Path, *, dpi: int = 110) -> Path:
    """Save ``fig`` as PNG to ``path`` (parent folder created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def band(
    ax: Any,
    x: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    *,
    k: float = 2.0,
    color: str,
    label: str,
    linestyle: str = "-",
) -> None:
    """Plot ``mean`` with a shaded band ``mean +- k * std`` (the paper's Figs. 6-9 use ``k = 2``)."""
    x_arr = np.asarray(x, dtype=float)
    m = np.asarray(mean, dtype=float)
    s = np.asarray(std, dtype=float)
    ax.plot(x_arr, m, color=color, label=label, linestyle=linestyle, linewidth=1.6)
    ax.fill_between(x_arr, m - k * s, m + k * s, color=color, alpha=0.2, linewidth=0)
