"""Sweeps on Ray (issue 17): the same results as the local back-end, the same resume, GPUs as Ray resources.

The Ray tests run a real local Ray instance (2 CPUs, and 2 *logical* GPUs so that the GPU requests are
scheduled and checked without a GPU); they skip when Ray is not installed. The checks of settings and of the
missing extra need no Ray. The default suite runs the resume test (about 10 s with the start of Ray); the
training runs on both back-ends, the GPU requests and the killed command are marked slow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from nnteleport.cli import main
from nnteleport.errors import Interrupted, InvalidValueError, MissingExtraError
from nnteleport.lab.experiments import EXPERIMENTS
from nnteleport.lab.experiments.backends import SweepBackend, current_backend, use_backend
from nnteleport.lab.experiments.sweep import read_result, result_path, run_sweep

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

# a tiny `training` sweep: 2 seeds x 2 arms (baseline, teleported)
TRAINING = [
    "models=[mlp]", "optimizers=[sgd]", "lrs=[0.01]", "seeds=2", "epochs=2", "tensorboard=false",
    "model_kwargs.mlp.hidden=[16]", "max_iters_per_epoch=4",
]  # fmt: skip


def marked_run(config: dict, run_dir: Path) -> dict:
    """A run that leaves one ``called.*`` marker per call and, while ``config["hold"]`` names an existing file,
    waits (a run that is still going when the sweep is interrupted)."""
    (run_dir / f"called.{os.getpid()}.{time.monotonic_ns()}").write_text("x")
    hold = config.get("hold")
    deadline = time.monotonic() + 120
    while hold and Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    import torch

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {"y": config["x"] ** 2 + 0.1, "threads": torch.get_num_threads(), "pid": os.getpid(), "gpus": gpus}


def _calls(out: Path, run_id: str) -> int:
    return len(list((out / "runs" / run_id).glob("called.*")))


# --------------------------------------------------------------------------------------------------
# without Ray


def test_backend_settings_are_checked():
    assert current_backend() == SweepBackend("local")
    assert SweepBackend("ray", gpus_per_run=1).gpus_per_run == 1.0
    with pytest.raises(InvalidValueError, match="unknown sweep backend 'slurm'; choose one of: 'local', 'ray'"):
        SweepBackend("slurm")
    with pytest.raises(InvalidValueError, match=r"gpus_per_run=-0\.5 must be a finite number >= 0"):
        SweepBackend("ray", gpus_per_run=-0.5)
    with pytest.raises(InvalidValueError, match="needs backend 'ray'"):
        SweepBackend("local", address="auto")
    with pytest.raises(InvalidValueError, match="needs backend 'ray'"):
        SweepBackend("local", gpus_per_run=1)
    with use_backend("ray") as b:
        assert current_backend() is b and b.name == "ray" and b.address is None
    assert current_backend().name == "local"


def test_missing_ray_is_one_line_before_any_run(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails
    runs = [{"id": "a", "x": 1}]
    with pytest.raises(MissingExtraError) as info:
        run_sweep(marked_run, runs, tmp_path, backend="ray", progress=False)
    assert str(info.value).endswith("pip install 'nnteleport[ray]'") and "\n" not in str(info.value)
    assert not (tmp_path / "runs").exists()
    assert main(["experiment", "training", "--backend", "ray", "--out", str(tmp_path / "o")]) == 2


def test_a_result_that_did_not_reach_this_machine_is_written_by_the_driver(tmp_path, monkeypatch):
    """Ray back-end with an output folder the worker node does not share: the record the task returned is written
    here, so the finished run is not lost (Ray replaced by a stand-in that returns the record without the file)."""
    from nnteleport.lab.experiments import ray_backend, sweep

    def fake_run_jobs_ray(jobs, *, on_done, **kw):
        for key, _fn, args in jobs:
            _, config, _out, sha = args
            record = {"format": 2, "id": key, "config": config, "config_sha256": sha, "result": {"y": 1.5}}
            on_done(key, True, (key, record, None))  # written on another node: not in this out

    monkeypatch.setattr(ray_backend, "run_jobs_ray", fake_run_jobs_ray)
    monkeypatch.setattr(ray_backend, "prepare", lambda *a: None)
    monkeypatch.setattr(ray_backend, "require_ray", lambda: None)
    runs = [{"id": "a", "x": 1}]
    assert run_sweep(marked_run, runs, tmp_path, backend="ray", progress=False) == {"a": {"y": 1.5}}
    assert read_result(tmp_path, "a")["result"] == {"y": 1.5}
    assert _calls(tmp_path, "a") == 0  # the stand-in ran nothing here
    assert run_sweep(marked_run, runs, tmp_path, workers=1, progress=False) == {"a": {"y": 1.5}}  # read back
    assert _calls(tmp_path, "a") == 0 and sweep.result_path(tmp_path, "a").is_file()


def test_importing_the_sweeps_does_not_import_ray():
    code = (
        "import sys, nnteleport.cli, nnteleport.lab.experiments.sweep, nnteleport.lab.experiments.training\n"
        "import nnteleport.lab.experiments.backends\n"
        "print('ray' in sys.modules)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_cli_backend_flags_on_every_experiment(capsys):
    for name in EXPERIMENTS:
        assert main(["experiment", name, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--backend {local,ray}" in text and "--ray-address ADDR" in text and "--gpus-per-run G" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["training", "--ray-address", "auto"], "--ray-address needs --backend ray"),
        (["training", "--gpus-per-run", "1"], "--gpus-per-run needs --backend ray"),
        (["level-curves", "--backend", "ray"], "runs no sweep of independent runs"),
    ],
)
def test_cli_refuses_ray_settings_that_do_not_apply(args, message, capsys, tmp_path):
    assert main(["experiment", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "runs").exists()


# --------------------------------------------------------------------------------------------------
# a real local Ray instance


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    path = os.pathsep.join([str(ROOT / "src"), str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=2,
        num_gpus=2,  # logical GPUs: scheduled like real ones (CUDA_VISIBLE_DEVICES), none needed
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()


def _training_tasks() -> list[dict]:
    from nnteleport.lab.experiments import training
    from nnteleport.lab.experiments.config import load_config

    cfg = load_config("training", overrides=TRAINING)
    arms = [training.arm("none"), training.arm("teleport", teleport_at=0, cob_range=0.9, sampling="inter")]
    return training.grid_tasks(cfg, arms)


def _histories(out: Path) -> dict[str, dict]:
    res = {}
    for p in sorted(out.glob("runs/*/result.json")):
        h = json.loads(p.read_text())["result"]["history"]
        h.pop("seconds"), h.pop("timing")  # wall times
        res[p.parent.name] = h
    return res


@pytest.mark.slow  # 10-20 s: the resume test below (default suite) compares with the local back-end too
def test_ray_training_runs_match_the_local_backend(local_ray, tmp_path):
    from nnteleport.lab.experiments.training import train_one

    tasks = _training_tasks()
    assert len(tasks) == 4
    run_sweep(train_one, tasks, tmp_path / "local", workers=1, progress=False)
    res = run_sweep(train_one, tasks, tmp_path / "ray", backend="ray", progress=False)
    assert _histories(tmp_path / "ray") == _histories(tmp_path / "local")
    assert len({res[t["id"]]["history"]["train_loss"][-1] for t in tasks}) == 4  # four different runs
    # again, on either back-end: nothing re-runs, nothing changes
    before = {p: p.read_bytes() for p in (tmp_path / "ray").glob("runs/*/result.json")}
    run_sweep(train_one, tasks, tmp_path / "ray", backend="ray", progress=False)
    run_sweep(train_one, tasks, tmp_path / "ray", workers=1, progress=False)
    assert {p: p.read_bytes() for p in (tmp_path / "ray").glob("runs/*/result.json")} == before


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env.pop("NNTELEPORT_DEBUG", None)
    sets = [a for kv in TRAINING for a in ("--set", kv.replace("epochs=2", "epochs=6"))]
    return subprocess.Popen([sys.executable, "-m", "nnteleport", "experiment", "training", "--no-progress", *sets,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip


@pytest.mark.slow
def test_ray_cli_killed_driver_resumes_to_the_local_results(tmp_path):
    """The whole command on Ray (its own local instance), killed with SIGKILL mid-way, then run again: the
    finished runs are kept as they were, the others complete, and every file matches the local back-end's."""
    pytest.importorskip("ray")
    ref, out = tmp_path / "local", tmp_path / "ray"
    proc = _cli("--out", str(ref), "--workers", "2")
    assert proc.wait(timeout=600) == 0, proc.communicate()
    proc = _cli("--out", str(out), "--backend", "ray")
    deadline = time.monotonic() + 300
    while not list(out.glob("runs/*/result.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started
    proc.wait(timeout=60)
    kept = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("runs/*/result.json")}
    assert 0 < len(kept) < 4, "kill it mid-way"
    proc = _cli("--out", str(out), "--backend", "ray")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in kept} == kept  # not re-run, not rewritten
    assert _histories(out) == _histories(ref)
    assert (out / "results.json").read_bytes() == (ref / "results.json").read_bytes()


def test_ray_interrupted_sweep_resumes_only_the_missing_runs(local_ray, tmp_path):
    out, hold = tmp_path / "out", tmp_path / "hold"
    hold.write_text("x")
    runs = [{"id": f"x={x}", "x": x, **({"hold": str(hold)} if x >= 2 else {})} for x in range(4)]
    held = ["x=2", "x=3"]

    def interrupt_when_two_finished_and_two_running() -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if all(result_path(out, f"x={x}").is_file() for x in (0, 1)) and all(_calls(out, r) for r in held):
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_when_two_finished_and_two_running, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with pytest.raises(Interrupted, match=r"2 of 4 runs finished.*2 unfinished Ray task\(s\) cancelled.*resume"):
        run_sweep(marked_run, runs, out, backend="ray", progress=False)
    assert time.monotonic() - t0 < 60
    watcher.join()
    finished = {r: result_path(out, r).read_bytes() for r in ("x=0", "x=1")}
    hold.unlink()  # a task that outlived the interruption would now finish and write its result
    time.sleep(1.5)
    assert not any(result_path(out, r).exists() for r in held), "a cancelled Ray task kept running"
    assert not list(out.rglob("*.tmp"))

    res = run_sweep(marked_run, runs, out, backend="ray", progress=False)
    assert [res[f"x={x}"]["y"] for x in range(4)] == [0.1, 1.1, 4.1, 9.1]
    assert {r: result_path(out, r).read_bytes() for r in finished} == finished  # nothing finished changed
    assert [_calls(out, f"x={x}") for x in range(4)] == [1, 1, 2, 2]  # only the missing runs ran again
    assert {res[r]["threads"] for r in res} == {1}
    assert {res[r]["gpus"] for r in res} <= {"", None}  # a run that asks for no GPU sees none
    ref = run_sweep(marked_run, [{k: v for k, v in r.items() if k != "hold"} for r in runs], tmp_path / "ref",
                    workers=1, progress=False)  # fmt: skip
    assert {k: v["y"] for k, v in res.items()} == {k: v["y"] for k, v in ref.items()}


@pytest.mark.slow  # GPU-shaped tasks start new Ray workers (torch imports): 10 s
def test_ray_gpus_per_run_are_ray_resources(local_ray, tmp_path):
    runs = [{"id": f"x={x}", "x": x} for x in range(4)]
    res = run_sweep(marked_run, runs[:2], tmp_path / "half", backend=SweepBackend("ray", gpus_per_run=0.5),
                    progress=False)  # fmt: skip
    assert {res[r]["gpus"] for r in res} <= {"0", "1"}  # each run sees one (logical) GPU, shared by two runs
    with pytest.raises(InvalidValueError, match=r"no node for a run of 1 CPU thread.*and 4 GPU"):
        run_sweep(marked_run, runs, tmp_path / "four", backend=SweepBackend("ray", gpus_per_run=4), progress=False)
    with pytest.raises(InvalidValueError, match="no node for a run of 3 CPU thread"):
        run_sweep(marked_run, runs, tmp_path / "three", backend="ray", threads=3, progress=False)
    assert not (tmp_path / "four" / "runs").exists() and not (tmp_path / "three" / "runs").exists()
    assert read_result(tmp_path / "half", "x=1")["result"]["y"] == 1.1
