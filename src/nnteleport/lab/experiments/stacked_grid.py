"""``vectorize: true`` in the training-grid experiments (training, pseudo-teleport, mid-training): all seeds and
arms of one setting trained side by side in one process by
:func:`~nnteleport.lab.training.vectorized.train_stacked`.

A *setting* is one combination of model x dataset x activation x init x optimizer x learning rate (every key of
a run of :func:`~nnteleport.lab.experiments.training.grid_tasks` but the seed and the arm). One sweep task
(:func:`train_setting`) trains the setting's ``seeds x arms`` runs together -- member ``i`` exactly as
:func:`~nnteleport.lab.experiments.training.train_one` would train run ``i``, equal to round-off, not
bit-identical (:mod:`nnteleport.lab.training.vectorized`) -- and returns every run's history. Round-off
is amplified like any perturbation of training: on the training DEMO config (8 epochs) the final losses of the
two modes agree to 2.6e-13 in float64, but in float32 (the default) teleported momentum runs differ by up to
40% of a final loss (``python -m benchmarks.bench_training_vectorize``): a run's float32 result is not stable
beyond that anyway, but the two modes' numbers are not interchangeable, hence separate identities. Arms with
different teleport options (mid-training's CoB ranges) are trained as separate stacks inside the task; the
arms without a teleport join the first.

Identity and files. The runs of this mode carry ``"vectorize": True`` in their config and end in ``_vec``
(``runs/<id>_vec/``), so they never share a folder or an identity with the sequential runs: switching the mode
recomputes (the other mode's results stay where they are). The sweep itself runs over the settings in
``out/stacked/`` (:func:`~nnteleport.lab.experiments.sweep.run_sweep`: resume, config refusals, interrupts,
back-ends as for any sweep; a setting's record ``out/stacked/runs/<setting>/result.json`` holds its runs'
histories). Afterwards :func:`run_stacked_grid` writes every run's record ``out/runs/<id>_vec/result.json`` in
the format of the sequential sweep (config, ``config_sha256``, ``{"history": ...}``; ``seconds``: the
setting's time divided by its number of runs; ``stacked``: the setting's record), so the per-run files look the
same in both modes. Resume is per setting: an interrupted setting is trained again from the start (no
checkpoints in a stack).

Refused before any run starts (one line, naming the setting, :func:`check_grid`): models whose forward pass
cannot be stacked (dropout in train mode, operations ``vmap`` cannot batch), optimizers other than SGD / momentum
/ Adam, and ``tensorboard: true`` (a stack writes no event files). There is no silent fall-back to sequential
runs: set ``vectorize: false`` for those.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnteleport.errors import InvalidValueError, UnsupportedModelError
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.plotting import write_json

__all__ = ["IGNORE_KEYS", "STACKED_DIR", "check_grid", "run_stacked_grid", "setting_tasks", "train_setting"]

#: Sub-folder of the output folder holding the sweep over settings.
STACKED_DIR = "stacked"

#: Keys of a run that do not change its result (as in the sequential sweep of the training grid).
IGNORE_KEYS = ("tensorboard", "device")

#: Keys of a run that vary inside a setting.
_MEMBER_KEYS = ("id", "seed", "arm", "teleport_at", "cob_range", "sampling", "pseudo")


def _setting_id(task: dict[str, Any]) -> str:
    parts = [task["model"], task["dataset"], task["activation"], task["init"] or "noinit", task["optimizer"],
             f"lr{task['lr']:g}", "vec"]  # fmt: skip
    return re.sub(r"[^A-Za-z0-9_.,=+\-]", "-", "_".join(str(p) for p in parts))


def setting_tasks(tasks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The sweep tasks of ``vectorize: true``: the runs ``tasks`` grouped by setting, in their order.

    Each is ``{"id": <setting>_vec, "vectorize": True, "shared": {...}, "members": [...], "device",
    "tensorboard"}``: ``shared`` the keys common to the setting's runs, ``members`` each run's own keys
    (:data:`_MEMBER_KEYS`); ``device`` and ``tensorboard`` are not part of the identity.

    Raises
    ------
    InvalidValueError
        Two different settings would share a folder name (not possible for the grids of ``grid_tasks``).
    """
    groups: dict[str, dict[str, Any]] = {}
    for t in tasks:
        shared = {k: v for k, v in t.items() if k not in _MEMBER_KEYS and k not in IGNORE_KEYS}
        sid = _setting_id(t)
        new = {"id": sid, "vectorize": True, "shared": shared, "members": [], "device": t.get("device", "auto"),
               "tensorboard": bool(t.get("tensorboard"))}  # fmt: skip
        g = groups.setdefault(sid, new)
        if json.dumps(g["shared"], sort_keys=True) != json.dumps(shared, sort_keys=True):
            raise InvalidValueError(f"vectorize: runs {g['members'][0]['id']} and {t['id']} would share the stack "
                                    f"{sid} but differ in more than the seed and the arm")  # fmt: skip
        g["members"].append({k: t[k] for k in _MEMBER_KEYS})
    return list(groups.values())


@functools.lru_cache(maxsize=8)
def _data(name: str, root: str | None, augment: bool = True) -> Any:
    """The dataset as :func:`~nnteleport.lab.experiments.training.train_one` loads it (``seed=0``)."""
    from nnteleport.lab.data import load_dataset

    return load_dataset(name, root, seed=0, augment=augment)


def _model_for(task: dict[str, Any], data: Any, seed: int | None = None) -> Any:
    import torch

    from nnteleport.lab.models import build_model

    kwargs = dict(task["model_kwargs"])
    if task["activation"] is not None:
        kwargs["activation"] = task["activation"]
    if seed is not None:
        torch.manual_seed(seed)
    return build_model(task["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)


def check_grid(tasks: Sequence[dict[str, Any]]) -> None:
    """Refuse, before any run, a ``vectorize: true`` grid that :func:`train_stacked` could not train.

    Builds each distinct model once (on the CPU, in the default dtype) and probes its forward pass on two
    training examples (:func:`~nnteleport.lab.training.vectorized.check_stackable`).

    Raises
    ------
    UnsupportedModelError
        A model whose forward pass cannot be stacked (names the setting; dropout, for example).
    InvalidValueError
        An optimizer other than sgd / momentum / adam, or ``tensorboard: true``.
    """
    from nnteleport.lab.training.batches import example_batch
    from nnteleport.lab.training.vectorized import check_stackable

    if any(t.get("tensorboard") for t in tasks):
        raise InvalidValueError(
            "vectorize: true writes no TensorBoard files (a stack of runs has no callbacks); set tensorboard: false "
            "as well, or vectorize: false"
        )
    seen: set[str] = set()
    for t in tasks:
        key = json.dumps([t[k] for k in ("model", "model_kwargs", "dataset", "data_root", "augment", "activation",
                                         "optimizer")], sort_keys=True)  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        data = _data(t["dataset"], t["data_root"], t.get("augment", True))
        try:
            check_stackable(_model_for(t, data), example_batch(data.train, 2), optimizer=t["optimizer"])
        except (UnsupportedModelError, InvalidValueError) as e:
            raise type(e)(
                f"vectorize: true cannot train {t['model']} ({t['activation']}) on {t['dataset']} with "
                f"{t['optimizer']}: {e}; set vectorize: false for this model"
            ) from None


def _stacks(members: list[dict[str, Any]]) -> list[list[int]]:
    """Indices of ``members`` trained together: one stack per (cob_range, sampling) of the teleported arms; the
    arms without a teleport join the first stack."""
    keys: dict[tuple, list[int]] = {}
    plain = []
    for i, m in enumerate(members):
        if m["teleport_at"] is None:
            plain.append(i)
        else:
            keys.setdefault((m["cob_range"], m["sampling"]), []).append(i)
    stacks = list(keys.values()) or [[]]
    stacks[0] = sorted(stacks[0] + plain)
    return stacks


def train_setting(setting: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train every run of one setting with :func:`train_stacked`; ``{"runs": {id: {"history": ...}}}``.

    The sweep task of ``vectorize: true`` (a module-level function, for the worker processes): member ``i``
    is built and trained as :func:`~nnteleport.lab.experiments.training.train_one` builds and trains run ``i``
    (``torch.manual_seed(seed)`` before ``build_model``; the same options), without checkpoints or TensorBoard.
    """
    from nnteleport.lab.training.vectorized import train_stacked

    t = setting["shared"]
    members = setting["members"]
    data = _data(t["dataset"], t["data_root"], t.get("augment", True))
    device = resolve_device(setting.get("device", "auto"))
    histories: dict[int, Any] = {}
    for idx in _stacks(members):
        group = [members[i] for i in idx]
        tele = next((m for m in group if m["teleport_at"] is not None), group[0])
        models = [_model_for(t, data, seed=m["seed"]) for m in group]
        hs = train_stacked(
            models, data, epochs=t["epochs"], seeds=[m["seed"] for m in group], batch_size=t["batch_size"],
            optimizer=t["optimizer"], lr=t["lr"], weight_decay=t["weight_decay"],
            lr_decay_epochs=t["lr_decay_epochs"], init=None if t["init"] == "default" else t["init"],
            teleport_at=[m["teleport_at"] for m in group], cob_range=tele["cob_range"], sampling=tele["sampling"],
            pseudo_teleport=[bool(m["pseudo"]) for m in group], optimizer_state_on_teleport="reset",
            reset_optimizer_at=t.get("reset_optimizer_at", ()), device=device,
            max_iters_per_epoch=t["max_iters_per_epoch"],
        )  # fmt: skip
        histories.update(zip(idx, hs))
    return {"runs": {m["id"]: {"history": histories[i].to_dict()} for i, m in enumerate(members)}}


def _write_run_records(out: Path, tasks: Sequence[dict[str, Any]], results: dict[str, Any], seconds: dict) -> None:
    """``out/runs/<id>/result.json`` of every run, in the sequential sweep's format (from the settings)."""
    from nnteleport import __version__
    from nnteleport.lab.experiments.sweep import RECORD_FORMAT, config_sha256, read_result, result_path

    for task in tasks:
        sid, sha = _setting_id(task), config_sha256(task, IGNORE_KEYS)
        old = read_result(out, task["id"])
        if old is not None and old.get("config_sha256") == sha:
            continue  # written by an earlier call (the settings are deterministic)
        write_json(result_path(out, task["id"]), {
            "format": RECORD_FORMAT, "id": task["id"], "config": task,
            "config_sha256": sha, "result": results[sid]["runs"][task["id"]],
            "seconds": seconds[sid], "stacked": f"{STACKED_DIR}/runs/{sid}/result.json",
            "nnteleport_version": __version__,
        }, indent=1)  # fmt: skip


def run_stacked_grid(
    tasks: Sequence[dict[str, Any]], out: Path, *, workers: int = 1, progress_bar: bool = True, desc: str = "runs"
) -> list[dict[str, Any]]:
    """:func:`~nnteleport.lab.experiments.training.run_grid` for runs with ``vectorize: true``: checks the grid
    (:func:`check_grid`), sweeps over the settings in ``out/stacked`` (``workers`` processes), writes the runs'
    records and returns ``[{"task", "history"}]`` in the order of ``tasks``."""
    from nnteleport.lab.experiments.sweep import read_result, run_sweep
    from nnteleport.lab.experiments.workers import out_lock

    out = Path(out)
    check_grid(tasks)
    settings = setting_tasks(tasks)
    with out_lock(out):  # the sequential mode locks out; this one out/stacked as well
        results = run_sweep(train_setting, settings, out / STACKED_DIR, workers=max(1, int(workers)),
                            progress=progress_bar, desc=f"{desc} (stacked)", ignore_keys=IGNORE_KEYS)  # fmt: skip
        seconds = {}
        for s in settings:
            rec = read_result(out / STACKED_DIR, s["id"])
            seconds[s["id"]] = (rec["seconds"] if rec is not None else math.nan) / len(s["members"])
        _write_run_records(out, tasks, results, seconds)
    return [{"task": t, "history": results[_setting_id(t)]["runs"][t["id"]]["history"]} for t in tasks]
