"""Tests of nnteleport.experiments.sweep: parallel runs, atomic result files, resume, errors, aggregation."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from nnteleport.experiments.sweep import aggregate, grid, group_by, read_result, result_path, run_sweep


def square_run(config: dict, run_dir: Path) -> dict:
    """Module-level (picklable) run: records its process and a call marker."""
    (run_dir / f"called.{os.getpid()}").write_text("x")
    if config.get("fail"):
        raise ValueError(f"run {config['id']} asked to fail")
    x = config["x"]
    return {"y": x * x, "curve": [x, x + config["seed"], None], "pid": os.getpid(), "arr": np.arange(2)}


def test_grid_ids_and_configs():
    runs = grid({"lr": [0.1, 0.001], "opt": ["sgd"]}, seeds=[0, 1], base={"epochs": 3})
    assert [r["id"] for r in runs] == [
        "lr=0.1,opt=sgd,seed=0",
        "lr=0.1,opt=sgd,seed=1",
        "lr=0.001,opt=sgd,seed=0",
        "lr=0.001,opt=sgd,seed=1",
    ]
    assert runs[3] == {"epochs": 3, "lr": 0.001, "opt": "sgd", "seed": 1, "id": "lr=0.001,opt=sgd,seed=1"}


def test_sequential_run_resume_and_results(tmp_path):
    runs = [{"id": f"x={x}", "x": x, "seed": 0} for x in range(3)]
    res = run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert list(res) == ["x=0", "x=1", "x=2"]
    assert [res[k]["y"] for k in res] == [0, 1, 4]
    assert res["x=2"]["arr"] == [0, 1]  # numpy converted
    rec = read_result(tmp_path, "x=1")
    assert rec["config"] == runs[1] and rec["seconds"] >= 0
    # no temporary files left behind
    assert not [p for p in tmp_path.rglob("*.tmp")]
    # resume: finished runs are not called again, new ones are
    runs.append({"id": "x=7", "x": 7, "seed": 0})
    res2 = run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert res2["x=7"]["y"] == 49
    for x in (0, 1, 2, 7):
        assert len(list((tmp_path / "runs" / f"x={x}").glob("called.*"))) == 1


def test_parallel_processes(tmp_path):
    runs = grid({"x": [1, 2, 3, 4]}, seeds=[0])
    res = run_sweep(square_run, runs, tmp_path, workers=2, progress=False)
    assert sorted(r["y"] for r in res.values()) == [1, 4, 9, 16]
    pids = {r["pid"] for r in res.values()}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # ran in (at most 2) worker processes
    for r in runs:
        assert result_path(tmp_path, r["id"]).is_file()


def test_failed_runs_reported_others_kept(tmp_path):
    runs = [{"id": "ok", "x": 2, "seed": 0}, {"id": "bad", "x": 1, "seed": 0, "fail": True}]
    with pytest.raises(RuntimeError, match=r"1 of 2 runs failed.*bad.*asked to fail"):
        run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert read_result(tmp_path, "ok")["result"]["y"] == 4
    assert "asked to fail" in (tmp_path / "runs" / "bad" / "error.txt").read_text()
    res = run_sweep(square_run, runs, tmp_path, workers=1, progress=False, raise_on_error=False)
    assert list(res) == ["ok"]


def test_bad_run_lists(tmp_path):
    with pytest.raises(ValueError, match="no 'id'"):
        run_sweep(square_run, [{"x": 1}], tmp_path, progress=False)
    with pytest.raises(ValueError, match="duplicate run id 'a'"):
        run_sweep(square_run, [{"id": "a"}, {"id": "a"}], tmp_path, progress=False)
    with pytest.raises(ValueError, match="folder name"):
        run_sweep(square_run, [{"id": "a/b"}], tmp_path, progress=False)
    with pytest.raises(ValueError, match="workers"):
        run_sweep(square_run, [{"id": "a", "x": 1, "seed": 0}], tmp_path, workers=0, progress=False)


def test_aggregate_mean_std_against_numpy():
    rng = np.random.default_rng(0)
    curves = rng.normal(size=(5, 7))
    results = [{"h": {"loss": c.tolist()}, "final": float(c[-1])} for c in curves]
    agg = aggregate(results, ["h.loss", "final"])
    np.testing.assert_allclose(agg["h.loss"]["mean"], curves.mean(0), rtol=1e-14)
    np.testing.assert_allclose(agg["h.loss"]["std"], curves.std(0, ddof=1), rtol=1e-12)
    assert agg["h.loss"]["n"] == [5] * 7
    np.testing.assert_allclose(agg["final"]["mean"], [curves[:, -1].mean()], rtol=1e-14)


def test_aggregate_ragged_and_missing_values():
    agg = aggregate([{"c": [1.0, None, 3.0]}, {"c": [3.0, 4.0]}, {"c": [float("nan")]}], ["c"])
    assert agg["c"]["mean"] == [2.0, 4.0, 3.0]
    assert agg["c"]["n"] == [2, 1, 1]
    assert agg["c"]["std"][0] == pytest.approx(math.sqrt(2.0)) and agg["c"]["std"][1] == 0.0
    json.dumps(agg)  # JSON-ready
    with pytest.raises(KeyError, match="'d'"):
        aggregate([{"c": [1]}], ["d"])


def test_group_by_drops_seed():
    runs = grid({"lr": [0.1, 0.01]}, seeds=[0, 1, 2])
    results = {r["id"]: {"v": r["seed"] + (10 if r["lr"] == 0.1 else 0)} for r in runs}
    groups = group_by(runs, results, ["lr"])
    assert groups == {(0.1,): [{"v": 10}, {"v": 11}, {"v": 12}], (0.01,): [{"v": 0}, {"v": 1}, {"v": 2}]}
