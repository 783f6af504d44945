"""Tests of nnteleport.lab.experiments.sweep: parallel runs, atomic result files, resume, errors, aggregation."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnteleport.errors import ConfigMismatchError, CorruptFileError, NNTeleportError, OutputInUseError, RunsFailedError
from nnteleport.lab.experiments.sweep import (
    aggregate,
    config_sha256,
    grid,
    group_by,
    read_result,
    result_path,
    run_sweep,
)


def square_run(config: dict, run_dir: Path) -> dict:
    """Module-level (picklable) run: records its process, a call marker and when it ran."""
    t0 = time.time()
    (run_dir / f"called.{os.getpid()}").write_text("x")
    if config.get("fail"):
        raise ValueError(f"run {config['id']} asked to fail")
    if config.get("die"):
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    if config.get("sleep"):
        time.sleep(config["sleep"])
    x = config["x"]
    return {"y": x * x, "curve": [x, x + config["seed"], None], "pid": os.getpid(), "arr": np.arange(2),
            "t": [t0, time.time()], "threads": torch.get_num_threads()}  # fmt: skip


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
    assert os.getpid() not in pids and len(pids) == 2  # two worker processes, each running several runs
    # at most 2 at once
    events = sorted([(r["t"][0], 1) for r in res.values()] + [(r["t"][1], -1) for r in res.values()])
    assert max(itertools.accumulate(e for _, e in events)) <= 2
    for r in runs:
        assert result_path(tmp_path, r["id"]).is_file()


def test_failed_runs_reported_others_kept(tmp_path):
    runs = [{"id": "ok", "x": 2, "seed": 0}, {"id": "bad", "x": 1, "seed": 0, "fail": True}]
    with pytest.raises(RunsFailedError, match=r"1 of 2 runs failed.*bad.*asked to fail.*error.txt"):
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


# --------------------------------------------------------------------------------------------------
# run identity: a changed config never reuses a result


def test_changed_config_is_refused_naming_the_keys(tmp_path):
    runs = [{"id": "a", "x": 2, "seed": 0, "epochs": 5, "model": {"width": 8}}]
    run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    rec = read_result(tmp_path, "a")
    assert rec["config_sha256"] == config_sha256(runs[0])
    changed = [{**runs[0], "epochs": 2, "model": {"width": 16}}]
    with pytest.raises(ConfigMismatchError, match=r"runs/a .*epochs: stored 5, now 2; model.width: stored 8, now 16"):
        run_sweep(square_run, changed, tmp_path, workers=1, progress=False)
    assert len(list((tmp_path / "runs" / "a").glob("called.*"))) == 1  # refused before running anything
    assert read_result(tmp_path, "a")["config"]["epochs"] == 5  # and the old result is untouched
    # the same config is reused, not recomputed
    assert run_sweep(square_run, runs, tmp_path, workers=1, progress=False)["a"]["y"] == 4
    assert len(list((tmp_path / "runs" / "a").glob("called.*"))) == 1


def test_refusal_comes_before_any_other_run(tmp_path):
    runs = [{"id": "a", "x": 1, "seed": 0}]
    run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    more = [{"id": "new", "x": 3, "seed": 0}, {"id": "a", "x": 5, "seed": 0}]
    with pytest.raises(ConfigMismatchError, match="x: stored 1, now 5"):
        run_sweep(square_run, more, tmp_path, workers=1, progress=False)
    assert not (tmp_path / "runs" / "new").exists()


def test_ignored_keys_do_not_change_the_identity(tmp_path):
    runs = [{"id": "a", "x": 2, "seed": 0, "workers": 1}]
    run_sweep(square_run, runs, tmp_path, workers=1, progress=False, ignore_keys=["workers"])
    again = [{**runs[0], "workers": 4}]
    assert run_sweep(square_run, again, tmp_path, workers=1, progress=False, ignore_keys=["workers"])["a"]["y"] == 4
    assert len(list((tmp_path / "runs" / "a").glob("called.*"))) == 1


def test_started_run_of_another_config_is_refused(tmp_path):
    # an interrupted run leaves config.json (and its checkpoint) behind, but no result
    runs = [{"id": "a", "x": 2, "seed": 0, "fail": True}]
    with pytest.raises(RunsFailedError):
        run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert (tmp_path / "runs" / "a" / "config.json").is_file()
    with pytest.raises(ConfigMismatchError, match=r"started run .*x: stored 2, now 3"):
        run_sweep(square_run, [{**runs[0], "x": 3}], tmp_path, workers=1, progress=False)


def test_legacy_record_without_hash_is_checked_by_its_config(tmp_path):
    p = result_path(tmp_path, "a")
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"id": "a", "config": {"id": "a", "x": 2, "seed": 0, "lr": 0.1}, "result": {"y": 4}}))
    with pytest.raises(ConfigMismatchError, match=r"lr: stored 0\.1, now 0\.5"):
        run_sweep(square_run, [{"id": "a", "x": 2, "seed": 0, "lr": 0.5}], tmp_path, workers=1, progress=False)


def test_corrupt_or_edited_result_names_the_file(tmp_path):
    runs = [{"id": "a", "x": 2, "seed": 0}]
    run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    p = result_path(tmp_path, "a")
    rec = json.loads(p.read_text())
    rec["config"]["x"] = 7  # the config edited, its hash not
    p.write_text(json.dumps(rec))
    with pytest.raises(CorruptFileError, match=r"runs/a/result.json: its config does not match"):
        run_sweep(square_run, [{**runs[0], "x": 7}], tmp_path, workers=1, progress=False)
    p.write_text('{"id": "a", "conf')
    with pytest.raises(CorruptFileError, match=r"runs/a/result.json: cannot read the run result") as e:
        run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert isinstance(e.value, NNTeleportError) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------
# workers: failures stay local, numbers do not depend on the parallelism


def test_killed_worker_fails_only_its_own_run(tmp_path):
    runs = [{"id": f"x={x}", "x": x, "seed": 0, "die": x == 1} for x in range(6)]
    with pytest.raises(RunsFailedError, match=r"1 of 6 runs failed.*x=1.*killed by SIGKILL"):
        run_sweep(square_run, runs, tmp_path, workers=2, progress=False)
    for x in (0, 2, 3, 4, 5):
        assert read_result(tmp_path, f"x={x}")["result"]["y"] == x * x  # the lost worker was replaced
    assert "SIGKILL" in (tmp_path / "runs" / "x=1" / "error.txt").read_text()
    assert not list(tmp_path.rglob("*.tmp"))


def test_stale_error_file_removed_by_a_successful_rerun(tmp_path):
    runs = [{"id": "a", "x": 2, "seed": 0, "fail": True}]
    with pytest.raises(RunsFailedError):
        run_sweep(square_run, runs, tmp_path, workers=1, progress=False)
    assert (tmp_path / "runs" / "a" / "error.txt").is_file()
    # the failure came from the code, not from the config: fix the code (here: the flag is not part of the
    # identity) and run again
    run_sweep(square_run, [{**runs[0], "fail": False}], tmp_path, workers=1, progress=False, ignore_keys=["fail"])
    assert not (tmp_path / "runs" / "a" / "error.txt").exists()


def test_threads_per_run_do_not_depend_on_workers(tmp_path):
    runs = grid({"x": [1, 2, 3]}, seeds=[0])
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # the CLI's process has all cores
    try:
        one = run_sweep(square_run, runs, tmp_path / "w1", workers=1, progress=False)
        assert torch.get_num_threads() == 2  # restored after the in-process runs
    finally:
        torch.set_num_threads(before)
    two = run_sweep(square_run, runs, tmp_path / "w2", workers=2, progress=False)
    assert [r["threads"] for r in one.values()] == [1, 1, 1]
    assert [r["threads"] for r in two.values()] == [1, 1, 1]


def test_second_process_on_the_same_out_is_refused(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from nnteleport.lab.experiments.workers import out_lock\n"
         "with out_lock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(60)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputInUseError, match=rf"{tmp_path} is in use by nnteleport process {holder.pid}"):
            run_sweep(square_run, [{"id": "a", "x": 1, "seed": 0}], tmp_path, workers=1, progress=False)
        assert not (tmp_path / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run_sweep(square_run, [{"id": "a", "x": 1, "seed": 0}], tmp_path, workers=1, progress=False)["a"]["y"] == 1
