"""Coverage goldens: what the engine frees on every model the tests build, recorded in ``coverage_goldens.json``.

The exactness tests catch a change that breaks a teleport; these catch one that silently teleports less (pins more
neurons, moves fewer parameters) -- or more -- than before. For each model they compare, with the recorded values,

* ``free_neurons`` and ``hidden_neurons`` of ``nt.analyze(model, x).report``,
* ``parameters_moving`` and ``parameters_total``,
* ``groups``: the number of free neuron groups of the plan.

Models: the hand-written engine models (``tests/engine_models.py``, ``hand_written_cases()``), the
``nnteleport.lab.models`` zoo of ``tests/test_teleport.py`` (``zoo_cases()``) and, only where torchvision is importable
(else skipped), the torchvision models of ``tests/test_torchvision.py`` (``CASES``).

When a change of coverage is intended, regenerate the goldens and commit the JSON with the change:

    NNTELEPORT_UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_coverage_goldens.py

The default ``.venv`` has no torchvision: that run rewrites the hand-written and zoo entries and keeps the
torchvision ones; refresh those by running the same command in an environment with torchvision (the goldens
record its version; under another version the torchvision entries are skipped rather than compared).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import nnteleport as nt
from tests.engine_models import hand_written_cases

GOLDENS = Path(__file__).with_name("coverage_goldens.json")
UPDATE = os.environ.get("NNTELEPORT_UPDATE_GOLDENS", "") not in ("", "0")
REGENERATE = "NNTELEPORT_UPDATE_GOLDENS=1 .venv/bin/python -m pytest tests/test_coverage_goldens.py"
FIELDS = ("free_neurons", "hidden_neurons", "parameters_moving", "parameters_total", "groups")


def _torchvision() -> Any:
    try:
        import torchvision
    except Exception:  # absent (the default environment), or built against another torch
        return None
    return torchvision


TV = _torchvision()


def _load() -> dict[str, Any]:
    if GOLDENS.exists():
        return json.loads(GOLDENS.read_text())
    return {"models": {}}


def _save(data: dict[str, Any]) -> None:
    data["about"] = f"coverage goldens of tests/test_coverage_goldens.py; regenerate with `{REGENERATE}`"
    data["models"] = dict(sorted(data["models"].items()))
    data = {"about": data.pop("about"), **data}
    GOLDENS.write_text(json.dumps(data, indent=1) + "\n")


def _measure(model: nn.Module, x: Any) -> dict[str, int]:
    plan = nt.analyze(model, x)
    r = plan.report
    return {
        "free_neurons": r.free_neurons,
        "hidden_neurons": r.hidden_neurons,
        "parameters_moving": r.parameters_moving,
        "parameters_total": r.parameters_total,
        "groups": len(plan.groups),
    }


def _check(key: str, got: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    data = _load()
    entry = {**got, **(extra or {})}
    if UPDATE:
        data["models"][key] = entry
        _save(data)
        return
    want = data["models"].get(key)
    assert want is not None, (
        f"no coverage golden for model {key!r}: a model was added to the tests. Record it with `{REGENERATE}`"
    )
    diffs = [f"{f}: golden {want.get(f)}, now {got[f]}" for f in FIELDS if want.get(f) != got[f]]
    assert not diffs, (
        f"coverage of model {key!r} changed ({'; '.join(diffs)}). If the change is intended (e.g. a rule now pins "
        f"a space it used to free, for exactness), regenerate the goldens with `{REGENERATE}` and commit "
        f"{GOLDENS.name} with the change; otherwise the change made the engine teleport "
        f"{'less' if got['free_neurons'] < want.get('free_neurons', 0) else 'differently'} than before."
    )


# ------------------------------------------------------------------------------------- hand-written and zoo models
def _engine_cases() -> list[tuple[str, nn.Module, torch.Tensor]]:
    from tests.test_teleport import zoo_cases

    return [(f"hand_written/{n}", m, x) for n, m, x in hand_written_cases()] + [
        (f"zoo/{n}", m, x) for n, m, x in zoo_cases()
    ]


ENGINE_CASES = _engine_cases()


@pytest.mark.parametrize("key,model,x", ENGINE_CASES, ids=[c[0] for c in ENGINE_CASES])
def test_coverage_golden(key, model, x):
    _check(key, _measure(model, x))


# ------------------------------------------------------------------------------------- torchvision (optional)
def _torchvision_cases() -> list[tuple[str, int]]:
    if TV is not None:
        from tests.test_torchvision import CASES  # imported only here: that module skips itself without torchvision

        return list(CASES)
    recorded = [k.split("/", 1)[1] for k in _load()["models"] if k.startswith("torchvision/")]
    return [(k.split("@")[0], int(k.split("@")[1])) for k in recorded]  # shown as skipped


TV_CASES = _torchvision_cases()


@pytest.mark.parametrize("name,size", TV_CASES, ids=[f"{n}@{s}" for n, s in TV_CASES])
def test_torchvision_coverage_golden(name, size):
    if TV is None:
        pytest.skip("torchvision is not installed (optional extra: pip install -e '.[vision]')")
    key = f"torchvision/{name}@{size}"
    want = _load()["models"].get(key, {})
    version = want.get("torchvision")
    if not UPDATE and version is not None and version.split("+")[0] != TV.__version__.split("+")[0]:
        pytest.skip(f"golden of {key} recorded with torchvision {version}, this is {TV.__version__}: {REGENERATE}")
    torch.manual_seed(0)
    model = getattr(TV.models, name)(weights=None, num_classes=10).double()  # as tests/test_torchvision.py
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    _check(key, _measure(model, x), {"torchvision": TV.__version__})


def test_goldens_list_exactly_the_models_of_the_tests():
    """A model removed from the tests (or renamed) must leave the goldens too (torchvision ones: where importable)."""
    data = _load()
    keys = {k for k, _, _ in ENGINE_CASES} | {f"torchvision/{n}@{s}" for n, s in TV_CASES}
    zoos = ("hand_written", "zoo", "torchvision") if TV is not None else ("hand_written", "zoo")
    stale = sorted(k for k in data["models"] if k.split("/")[0] in zoos and k not in keys)
    if UPDATE:
        for k in stale:
            del data["models"][k]
        _save(data)
        return
    assert not stale, f"coverage goldens of models the tests no longer build: {stale}; regenerate with `{REGENERATE}`"
