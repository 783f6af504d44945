"""Tests of the command line (nnteleport.cli): help texts, experiment runs, demo hook, teleport check, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nnteleport.cli import main
from nnteleport.lab.experiments import EXPERIMENTS


@pytest.fixture
def fake(monkeypatch):
    mod = types.ModuleType("fake_cli_experiment")
    mod.DESCRIPTION = "Fake experiment for the CLI tests.\n\nIt only records its configuration."
    mod.DEFAULTS = {"epochs": 2, "lr": 0.1, "model": {"hidden": [8]}, "workers": 1}
    mod.calls = []

    def run(config, out, *, progress=True):
        mod.calls.append((config, Path(out), progress))
        (Path(out) / "results.json").write_text(json.dumps(config))
        return config

    mod.run = run
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setitem(EXPERIMENTS, "fake", mod.__name__)
    return mod


def run_cli(args, capsys):
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own --help / usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for word in ("experiment", "demo", "teleport", "examples:"):
        assert word in out


def test_experiment_list_and_help_list_every_name(fake, capsys):
    code, out, _ = run_cli(["experiment", "list"], capsys)
    assert code == 0
    for name in EXPERIMENTS:
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name
    assert "Fake experiment for the CLI tests." in out
    assert "It only records" not in out  # first line only
    code, out2, _ = run_cli(["experiment", "--help"], capsys)
    assert code == 0 and "--set KEY=VALUE" in out2 and "Fake experiment for the CLI tests." in out2


def test_experiment_name_help_shows_defaults(fake, capsys):
    code, out, _ = run_cli(["experiment", "fake", "--help"], capsys)
    assert code == 0
    assert "It only records its configuration." in out
    assert "epochs: 2" in out and "lr: 0.1" in out and "hidden: [8]" in out
    assert fake.calls == []  # help does not run it


def test_experiment_runs_with_config_set_workers(fake, capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 5\nlr: 0.5\n")
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        ["experiment", "fake", "--config", str(cfg), "--set", "lr=0.01", "--set", "model.hidden=[4, 4]",
         "--out", str(out_dir), "--workers", "3", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    ((config, out_path, progress),) = fake.calls
    assert config == {"epochs": 5, "lr": 0.01, "model": {"hidden": [4, 4]}, "workers": 3}
    assert out_path == out_dir and progress is False
    assert json.loads((out_dir / "results.json").read_text())["epochs"] == 5
    assert str(out_dir) in out


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["experiment", "no-such"], r"unknown experiment 'no-such'; choose one of: level-curves"),
        (["experiment", "fake", "--set", "epoch=3"], r"unknown key 'epoch'; allowed keys: epochs, lr, model"),
        (["experiment", "fake", "--set", "epochs=fast"], r"epochs='fast' has type str, expected int"),
        (["experiment", "fake", "--set", "novalue"], r"expected KEY=VALUE"),
        (["experiment", "fake", "--config", "/nonexistent/c.yaml"], r"config file '/nonexistent/c.yaml' not found"),
        (["experiment", "fake", "--workers", "0"], r"--workers must be >= 1"),
        (["teleport", "--input-shape", "3,x"], r"--input-shape '3,x'"),
    ],
)
def test_bad_input_one_line_exit_2(fake, capsys, args, pattern):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnteleport: error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in err


def test_workers_refused_for_experiment_without_workers(fake, capsys, monkeypatch):
    monkeypatch.setattr(fake, "DEFAULTS", {"epochs": 2})
    code, _, err = run_cli(["experiment", "fake", "--workers", "2"], capsys)
    assert code == 2 and "no parallel runs" in err


def test_experiment_without_name_lists_and_fails(fake, capsys):
    code, _, err = run_cli(["experiment"], capsys)
    assert code == 2 and "give an experiment NAME" in err and "fake" in err


def test_missing_experiment_module_is_a_clean_error(capsys, monkeypatch):
    monkeypatch.setitem(EXPERIMENTS, "ghost", "nnteleport.lab.experiments._no_such_module_")
    code, _, err = run_cli(["experiment", "ghost"], capsys)
    assert code == 2 and "not available" in err and "Traceback" not in err


def test_demo_calls_run_demo(capsys, monkeypatch, tmp_path):
    mod = types.ModuleType("nnteleport.lab.demo")
    calls = []

    def run_demo(out, progress=True):
        calls.append((out, progress))
        (out / "report.html").write_text("<html></html>")
        return out / "report.html"

    mod.run_demo = run_demo
    monkeypatch.setitem(sys.modules, "nnteleport.lab.demo", mod)
    code, out, _ = run_cli(["demo", "--out", str(tmp_path / "d"), "--no-progress"], capsys)
    assert code == 0
    assert calls == [(tmp_path / "d", False)] and isinstance(calls[0][0], Path)
    assert "report.html" in out


def test_demo_missing_module_message(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nnteleport.lab.demo", None)  # import raises ModuleNotFoundError
    code, _, err = run_cli(["demo", "--out", str(tmp_path)], capsys)
    assert code == 2 and "demo is not available" in err


def test_teleport_command_prints_report_and_roundoff_error(capsys):
    code, out, err = run_cli(["teleport", "--model", "mlp", "--input-shape", "1,8,8", "--cob-range", "0.9"], capsys)
    assert code == 0, err
    assert "Teleportation report" in out
    m = re.search(r"max \|f\(x\) - g\(x\)\|: ([0-9.e+-]+)", out)
    assert m is not None
    # float64 round-off: outputs O(1) through a few layers -> well below 1e-12
    assert float(m.group(1)) < 1e-12
    m = re.search(r"\|W - V\| / \|W\|: ([0-9.e+-]+)", out)
    assert float(m.group(1)) > 0.05  # it did move


def test_teleport_command_bad_model(capsys):
    code, _, err = run_cli(["teleport", "--model", "nope"], capsys)
    assert code == 2 and "unknown model 'nope'" in err


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "nnteleport", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage: nnteleport" in r.stdout
    r = subprocess.run([sys.executable, "-m", "nnteleport", "frobnicate"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "invalid choice" in r.stderr
