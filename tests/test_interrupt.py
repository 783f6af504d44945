"""Interrupting a real ``nnteleport experiment`` process with real signals: it stops within seconds, workers
included, cancels the queued runs, keeps what finished, leaves no temporary files, and the same command resumes
to the same results as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")

ARGS = [
    "experiment", "training", "--no-progress", "--workers", "2",
    "--set", "models=[mlp]", "--set", "optimizers=[sgd]", "--set", "lrs=[0.01]", "--set", "seeds=4",
    "--set", "epochs=8", "--set", "tensorboard=false", "--set", "model_kwargs.mlp.hidden=[64, 64]",
]  # fmt: skip
N_RUNS = 8  # 4 seeds x 2 arms
STOP_WITHIN_S = 10.0


def _cli(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("NNTELEPORT_DEBUG", None)
    # its own process group, like a job in a terminal (Ctrl-C goes to the whole group)
    return subprocess.Popen(
        [sys.executable, "-m", "nnteleport", *ARGS, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _children(pid: int) -> set[int]:
    try:
        return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def _finished(out: Path) -> list[Path]:
    return sorted(out.glob("runs/*/result.json"))


def _histories(out: Path) -> dict[str, dict]:
    res = {}
    for p in _finished(out):
        h = json.loads(p.read_text())["result"]["history"]
        h.pop("seconds")  # wall times differ between identical runs
        h.pop("timing")
        res[p.parent.name] = h
    return res


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    proc = _cli(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert len(_finished(out)) == N_RUNS
    return out


@pytest.mark.parametrize(
    ("sig", "to_group", "status"),
    [
        (signal.SIGINT, True, 130),
        pytest.param(signal.SIGTERM, False, 143, marks=pytest.mark.slow),  # the same machinery: 30 s more
    ],
    ids=["ctrl-c-to-the-process-group", "sigterm-to-the-parent"],
)
def test_signal_stops_the_sweep_and_the_same_command_resumes_identically(reference, tmp_path, sig, to_group, status):
    out = tmp_path / "out"
    proc = _cli(out)
    workers: set[int] = set()
    deadline = time.monotonic() + 300
    # wait until some runs are finished and others are running in the workers
    while not (_finished(out) and list(out.glob("runs/*/checkpoint.pt"))):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        workers |= _children(proc.pid)
        time.sleep(0.02)
    workers |= _children(proc.pid)
    assert len(workers) >= 2  # the two worker processes (and multiprocessing's resource tracker)
    t0 = time.monotonic()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - t0
    assert stopped_after < STOP_WITHIN_S, err
    assert proc.returncode == status, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run the same command again to resume" in lines[0], err
    assert f"interrupted by {sig.name}" in lines[0] and "queued run(s) cancelled" in lines[0]
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)], "worker processes outlived the interrupted command"
    assert len(_finished(out)) < N_RUNS  # the queued runs were cancelled, not trained
    assert not list(out.rglob("*.tmp")), "temporary files left behind"
    assert not (out / "results.json").exists()

    proc = _cli(out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert _histories(out) == _histories(reference)
    assert (out / "results.json").read_bytes() == (reference / "results.json").read_bytes()


def test_killing_the_parent_leaves_no_orphan_workers(tmp_path):
    out = tmp_path / "out"
    proc = _cli(out)
    deadline = time.monotonic() + 300
    workers: set[int] = set()
    while len(workers) < 2 or not list(out.glob("runs/*/config.json")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        workers |= _children(proc.pid)
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # no handler runs: the workers must notice on their own
    proc.communicate(timeout=60)
    t0 = time.monotonic()
    while [p for p in workers if _alive(p)] and time.monotonic() - t0 < STOP_WITHIN_S:
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)]


def stubborn_run(config: dict, run_dir: Path) -> dict:
    """A run whose process ignores SIGTERM (as a run stuck in a C call would be, for the grace period)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (run_dir / "started").write_text(str(os.getpid()))
    time.sleep(120)
    return {}


def test_second_ctrl_c_exits_at_once(tmp_path):
    script = (
        "import sys\nfrom tests.test_interrupt import stubborn_run\n"
        "from nnteleport.lab.experiments.sweep import run_sweep\n"
        "run_sweep(stubborn_run, [{'id': f'r{i}'} for i in range(3)], sys.argv[1], workers=2, progress=False)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=root, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("runs/*/started"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = {int(p.read_text()) for p in tmp_path.glob("runs/*/started")}
    os.killpg(proc.pid, signal.SIGINT)  # the workers ignore SIGTERM: the parent waits for them (grace period)
    time.sleep(1.0)
    assert proc.poll() is None
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 2.0
    assert proc.returncode == 130 and "second SIGINT: stopped at once" in err, err
    time.sleep(0.3)
    assert not [p for p in workers if _alive(p)]


def test_ctrl_c_stops_the_demo_with_its_workers(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("NNTELEPORT_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "nnteleport", "demo", "--no-progress", "--out", str(tmp_path)],
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 3:  # two workers and multiprocessing's resource tracker
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        workers |= _children(proc.pid)
        time.sleep(0.05)
    time.sleep(2.0)  # the experiments are running
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < STOP_WITHIN_S
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "demo experiments finished" in lines[0], err
    time.sleep(0.5)
    assert not [p for p in workers if _alive(p)]
    assert not list(tmp_path.rglob("*.tmp"))
