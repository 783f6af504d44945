"""Tiny-scale run of the ``distance-training`` experiment: files, shapes of the results, schedule logic."""

from __future__ import annotations

import csv
import json
import math

import pytest

from nnteleport.lab.experiments import distance_training as dt
from nnteleport.lab.experiments import get_experiment

TINY = {
    "models": ["mlp"],
    "epochs": 3,
    "warmup_epochs": 1,
    "checkpoint_every": 1,
    "sgdr_cycle": 1,
    "train_size": 64,
    "val_size": 32,
    "batch_size": 32,
    "overhead_reps": 1,
    "sigma": 0.5,
    "strength": 0.5,
    "workers": 1,
    "seeds": [0],
}


def test_registered():
    assert get_experiment("distance-training") is dt
    assert set(dt.DEFAULTS["variants"]) == {"baseline", "distance", "distance_invariant", "sgdr"}
    assert dt.DESCRIPTION


@pytest.mark.parametrize(
    "models", [["mlp"], pytest.param(["resnet18", "mobilenetv2"], marks=pytest.mark.slow)], ids=["mlp", "zoo"]
)
def test_tiny_run_writes_results(tmp_path, models):
    results = dt.run({**TINY, "models": models, "width": 0.125}, tmp_path, progress=False)
    for name in ("results.json", "curves.csv", "summary.csv", "curves.png", "ensembles.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"]))
    runs = {r["variant"]: r for r in results["runs"] if r["model"] == models[0]}
    assert set(runs) == {"baseline", "distance", "distance_invariant", "sgdr"}
    for variant, r in runs.items():
        h = r["history"]
        assert len(h["val_acc"]) == len(h["dist_first_ckpt"]) == 3
        assert 0.0 <= r["ensemble"]["ensemble_accuracy"] <= 1.0
        # snapshot ensembles: checkpoint epochs + the final epoch, or SGDR cycle ends
        expected_snaps = [1, 2, 3]
        assert r["snapshot_epochs"] == expected_snaps and r["ensemble"]["members"] == 3, variant
        assert h["dist_first_ckpt"][0] == pytest.approx(0.0, abs=1e-6)  # tracked from epoch 1 on
        assert h["dist_first_ckpt"][2] > 0
    for variant in ("distance", "distance_invariant"):
        r = runs[variant]
        assert r["checkpoint_epochs"] == [1, 2]
        pen = r["history"]["penalty"]
        assert pen[0] == 0.0 and pen[1] > 0 and pen[2] > 0  # no checkpoint during epoch 1
        assert r["overhead"]["checkpoints"] == 2 and r["overhead"]["ratio"] > 0
    # SGDR with one-epoch cycles: the recorded (last) lr of every epoch is near the cycle's minimum
    lrs = runs["sgdr"]["history"]["lr"]
    iters = math.ceil(64 / 32)
    expected = 0.01 * (1 + math.cos(math.pi * (iters - 1) / iters)) / 2
    assert lrs == pytest.approx([expected] * 3, rel=1e-12)
    with open(tmp_path / "curves.csv") as f:
        assert len(list(csv.DictReader(f))) == len(models) * 4 * 3
    # finished runs are read back, not recomputed
    again = dt.run({**TINY, "models": models, "width": 0.125}, tmp_path, progress=False)
    assert again["summary"] == results["summary"]


def test_bad_config():
    with pytest.raises(ValueError, match="unknown key 'nope'"):
        dt.run({"nope": 1}, None, progress=False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'swa' is not allowed; choose from: baseline"):
        dt.run({"variants": ["swa"]}, None, progress=False)  # type: ignore[arg-type]


def test_sgdr_without_a_completed_cycle_is_refused_before_any_run(tmp_path):
    """epochs < sgdr_cycle: SGDR would end without a snapshot; the config is refused up front (it used to fail
    each SGDR run after its training, with "SnapshotEnsemble: no snapshots yet")."""
    with pytest.raises(ValueError, match=r"distance-training: sgdr_cycle=4 .* epochs=3"):
        dt.run({"epochs": 3, "sgdr_cycle": 4, "variants": ["baseline", "sgdr"]}, tmp_path, progress=False)
    assert not (tmp_path / "runs").exists()
