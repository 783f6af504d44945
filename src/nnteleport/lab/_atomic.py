"""Temporary files of atomic writes: ``.<name>.<pid>.tmp`` beside the target, renamed onto it when complete.

A process stopped mid-write leaves such a file behind; :func:`remove_tmp_files` deletes those of one process
(the sweep runner calls it for every worker it stops or loses).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["remove_tmp_files", "tmp_path"]


def tmp_path(path: str | Path, pid: int | None = None) -> Path:
    """The temporary file written before an atomic rename onto ``path``: ``.<name>.<pid>.tmp`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def remove_tmp_files(folder: str | Path, pid: int) -> list[Path]:
    """Delete the temporary files process ``pid`` left under ``folder`` (recursively); returns them."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.rglob(f".*.{pid}.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            removed.append(p)
    return removed
