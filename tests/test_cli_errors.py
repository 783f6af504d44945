"""Every user error of ``nnteleport experiment`` is one line on stderr naming the culprit, exit status 2, and
comes before any run starts (no run folder, no results)."""

from __future__ import annotations

import json

import pytest

from nnteleport.cli import main


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("nnteleport: error: "), err
    for n in needles:
        assert n in lines[0], lines[0]


TINY = ["--set", "epochs=1", "--set", "seeds=1", "--set", "lrs=[0.01]", "--set", "optimizers=[sgd]"]


@pytest.mark.parametrize(
    ("experiment", "sets", "needles"),
    [
        ("training", ["cob_range=0"], ["cob_range=0.0 must be a number in (0, 1)"]),
        ("training", ["cob_range=1.5"], ["cob_range=1.5 must be a number in (0, 1)"]),
        ("training", ["epochs=-1"], ["epochs=-1 must be an integer >= 1"]),
        ("training", ["epochs=0"], ["epochs=0 must be an integer >= 1"]),
        ("training", ["batch_size=0"], ["batch_size=0 must be an integer >= 1"]),
        ("training", ["lrs=[-0.1]"], ["lrs[0]=-0.1", "must be a finite number > 0"]),
        ("training", ["weight_decay=-1e-3"], ["weight_decay=-0.001 must be a finite number >= 0"]),
        ("training", ["lrs=[]"], ["lrs=[] is empty"]),
        ("training", ["seeds=0"], ["seeds=0 must be an integer >= 1"]),
        ("training", ["lrs=[.nan]"], ["lrs[0] is not a finite number"]),
        ("interpolation", ["lr=-0.01"], ["lr=-0.01 must be a finite number > 0"]),
        ("micro-teleport", ["batch_sizes=[0]"], ["batch_sizes[0]=0", "must be an integer >= 1"]),
        ("micro-teleport", ["num_samples=-1"], ["num_samples=-1 must be an integer >= 1"]),
        ("mid-training", ["teleport_at=40"], ["teleport_at=40 must be in [1, epochs - 1]"]),
        ("distance-training", ["strength=.nan"], ["strength is not a finite number"]),
        ("distance-training", ["seeds=[]"], ["seeds=[] must be an integer >= 1"]),
    ],
)
def test_bad_values_one_line_exit_2_before_any_run(experiment, sets, needles, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["experiment", experiment, "--no-progress", "--out", str(out)]
    for s in sets:
        args += ["--set", s]
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, f"experiment {experiment!r}", *needles)
    assert not out.exists() or not any(out.iterdir())


def test_missing_dataset_is_named_before_any_run(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["experiment", "training", "--no-progress", "--out", str(out), "--set", "datasets=[mnist]",
            "--set", f"data_root={tmp_path / 'nodata'}", *TINY]  # fmt: skip
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, "mnist: file 'train-images-idx3-ubyte[.gz]' not found", "download=True")
    assert not (out / "runs").exists()


def test_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = run_cli(["experiment", "toy-surfaces", "--no-progress", "--out", str(f)], capsys)
    assert_one_line_error(code, err, f"--out {f}: exists and is not a folder")


def test_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nlrs: [0.1, 0.2\nseeds: 1\n")
    code, _, err = run_cli(["experiment", "training", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, f"{cfg}: not valid YAML: line 3, column 6:")


def test_yaml_duplicate_key_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 2\nseeds: 1\nepochs: 5\n")
    code, _, err = run_cli(["experiment", "training", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert_one_line_error(code, err, "duplicate key 'epochs' (first given on line 1)", "line 3")


def _tiny_sweep(out, *extra):
    return ["experiment", "training", "--no-progress", "--workers", "1", "--out", str(out), *TINY,
            "--set", "tensorboard=false", "--set", "max_iters_per_epoch=2", "--set", "model_kwargs.mlp.hidden=[8]",
            *extra]  # fmt: skip


def test_changed_config_into_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(_tiny_sweep(out), capsys)
    assert code == 0, err
    before = (out / "results.json").read_bytes()
    code, _, err = run_cli(_tiny_sweep(out, "--set", "weight_decay=0.01"), capsys)
    assert_one_line_error(code, err, "holds a result of another config", "weight_decay: stored 0.0005, now 0.01",
                          "Nothing was run")  # fmt: skip
    assert (out / "results.json").read_bytes() == before  # the old results are not rewritten with the new config
    # the same config again reuses the finished runs
    code, _, err = run_cli(_tiny_sweep(out), capsys)
    assert code == 0 and (out / "results.json").read_bytes() == before


def test_corrupt_run_result_names_the_file(tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(_tiny_sweep(out), capsys)[0] == 0
    victim = sorted(out.glob("runs/*/result.json"))[0]
    victim.write_text('{"id": ')
    code, _, err = run_cli(_tiny_sweep(out), capsys)
    assert_one_line_error(code, err, f"{victim}: cannot read the run result", "delete the file to recompute")
    json.loads(sorted(out.glob("runs/*/result.json"))[1].read_text())  # the others untouched


def test_debug_switch_shows_the_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNTELEPORT_DEBUG", "1")
    from nnteleport.errors import NNTeleportError

    with pytest.raises(NNTeleportError, match="epochs=0"):
        main(["experiment", "training", "--out", str(tmp_path / "o"), "--set", "epochs=0"])
    monkeypatch.delenv("NNTELEPORT_DEBUG")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "NNTELEPORT_DEBUG=1" in capsys.readouterr().out


def test_teleport_command_bad_cob_range(capsys):
    code, _, err = run_cli(["teleport", "--cob-range", "1.5"], capsys)
    assert_one_line_error(code, err, "--cob-range must be in (0, 1)")
