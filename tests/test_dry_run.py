"""``--dry-run`` (issue 17): the counts of every paper configuration, the datasets, the estimate, the CLI."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from nnteleport.cli import main
from nnteleport.lab.experiments import EXPERIMENTS, get_experiment
from nnteleport.lab.experiments.config import load_config
from nnteleport.lab.experiments.dry_run import Network, dry_run, format_dry_run, options_from_env, plan


def _seeds(cfg):
    return cfg["seeds"] if isinstance(cfg["seeds"], int) else len(cfg["seeds"])


def expected_runs(name: str, cfg: dict, cifar_present: bool = False) -> int:
    """The number of runs of a configuration, from its grid keys (written independently of the planner);
    ``cifar_present``: the optional CIFAR-10 group of teleport-schedule runs."""
    grid = len(cfg.get("models", [])) * len(cfg.get("datasets", [])) * len(cfg.get("activations", []))
    grid *= len(cfg.get("optimizers", [])) * len(cfg.get("lrs", [])) if "optimizers" in cfg else 1
    arms = {"training": 2, "pseudo-teleport": 3 if cfg.get("include_teleport") else 2,
            "mid-training": 1 + len(cfg.get("cob_ranges", []))}  # fmt: skip
    if name in arms:
        return grid * _seeds(cfg) * arms[name]
    if name == "lr-confound":
        plain = 4 + len(cfg["lr_multipliers"])  # baseline, teleport, precond, scalar-E, the multipliers
        adam = 5 + len(cfg["adam_lr_multipliers"]) if cfg["adam"] else 0
        return (plain + adam) * _seeds(cfg)
    if name == "gspace-lr-grid":
        return len(cfg["methods"]) * len(cfg["lrs"]) * _seeds(cfg)
    if name == "fixed-value-grid":
        return len(cfg["values"]) * len(cfg["lrs"]) * _seeds(cfg)
    if name == "distance-training":
        return len(cfg["models"]) * len(cfg["variants"]) * _seeds(cfg)
    if name == "interpolation":
        return 2 * (_seeds(cfg) if isinstance(cfg["seeds"], int) else len(cfg["seeds"]))
    if name == "level-curves":
        return len(cfg["models"]) * len(cfg["dtypes"])
    if name == "micro-teleport":
        return len(cfg["models"]) * len(cfg["datasets"]) * len(cfg["batch_sizes"])
    if name == "gradient-scale":
        return len(cfg["models"])
    if name == "teleport-schedule":  # per optimizer: none, each multiplier but x1, each CoB x schedule (+ reset)
        per_opt = 1 + sum(m != 1.0 for m in cfg["lr_multipliers"]) + len(cfg["cobs"]) * len(cfg["schedules"])
        per_opt += cfg["optimizer_state"] == "reset" and "every" in cfg["schedules"]
        groups = len(cfg["models"]) + int(bool(cfg["resnet_if_cifar"]) and cifar_present)
        return groups * len(cfg["optimizers"]) * per_opt * _seeds(cfg)
    if name == "feature-maps":
        return len(cfg["activations"])
    return {"weight-histograms": 1, "toy-surfaces": 0}[name]


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_paper_config_counts_match_the_grid(name, tmp_path):
    root = {"data_root": str(tmp_path)} if "data_root" in get_experiment(name).DEFAULTS else {}
    cfg = load_config(name, "paper", root, check_files=False)
    p = dry_run(name, cfg, timing=False)
    assert p.runs == expected_runs(name, cfg)
    assert sum(n.runs for n in p.networks) == p.runs or name in ("interpolation", "toy-surfaces")
    for ds, missing in p.datasets.items():  # an empty data folder: every dataset on disk is reported missing
        assert (missing is None) == (ds in ("digits", "mnist1d", "random")), (ds, missing)
    if "epochs" in cfg:
        assert p.epochs == cfg["epochs"]
    text = format_dry_run(p)
    assert f"runs: {p.runs}" in text and "not timed" in text


def _cifar_present(monkeypatch):
    from nnteleport.lab import data as data_mod

    monkeypatch.setattr(data_mod, "check_available", lambda name, root=None: None)


def test_teleport_schedule_paper_plan_with_and_without_cifar(monkeypatch, tmp_path):
    """Without CIFAR-10 the ResNet-18 group is skipped (and said so), unless the estimate assumes the data;
    with it: 50000 examples at batch 64 are 782 iterations per epoch, a teleport every 200 steps but the last."""
    cfg = load_config("teleport-schedule", "paper", {"data_root": str(tmp_path)}, check_files=False)
    assert (cfg["seeds"], cfg["epochs"], cfg["model_kwargs"]["resnet18"]["width"]) == (5, 20, 1.0)
    absent = plan("teleport-schedule", cfg)
    assert absent.runs == expected_runs("teleport-schedule", cfg) == 2 * 3 * 16 * 5
    assert absent.datasets["cifar10"] is not None and any("resnet18 on cifar10 skipped" in n for n in absent.notes)
    assumed = plan("teleport-schedule", cfg, assume_data=True)
    assert assumed.runs == expected_runs("teleport-schedule", cfg, cifar_present=True) == 3 * 3 * 16 * 5
    assert any("counted as if its files were there" in n for n in assumed.notes)
    _cifar_present(monkeypatch)
    p = plan("teleport-schedule", cfg)
    assert p.runs == assumed.runs and p.datasets["cifar10"] is None
    res = [n for n in p.networks if n.model == "resnet18"]
    assert sum(n.runs for n in res) == 3 * 16 * 5 and {n.iterations for n in res} == {20 * 782}
    assert {n.teleports for n in res} == {0, 1, (20 * 782 - 1) // 200}
    mnist = [n for n in p.networks if n.dataset == "mnist"]
    assert {n.iterations for n in mnist} == {20 * 938} and {n.examples_evaluated for n in mnist} == {2 * 10000}
    vgg = {n.model_kwargs["config"] == [64, "M", 128, "M", 256, "M"] for n in p.networks if n.model == "vgg"}
    assert vgg == {True}  # the experiment's cnn is built as this VGG
    by_cob = Counter()
    for n in p.networks:
        by_cob[n.teleport_cob if n.teleports else None] += n.runs
    assert by_cob == {None: 3 * 3 * 6 * 5, **{c: 3 * 3 * 2 * 5 for c in cfg["cobs"]}}


def test_teleport_schedule_plan_counts_what_a_run_does(tmp_path):
    """The planned steps and teleports of a small configuration are those of its real runs' histories."""
    from nnteleport.lab.experiments import teleport_schedule

    cfg = load_config("teleport-schedule", None, {
        "dataset": "random", "models": ["mlp"], "model_kwargs": {"mlp": {"hidden": [8]}}, "optimizers": ["sgd"],
        "seeds": 1, "epochs": 2, "max_iters_per_epoch": 5, "every_steps": 3, "cobs": ["random", "balanced"],
        "lr_multipliers": [2.0], "teleport_epoch": 1, "workers": 1, "device": "cpu"})  # fmt: skip
    p = plan("teleport-schedule", cfg)
    res = teleport_schedule.run(cfg, tmp_path, progress=False)
    hist = [json.loads(f.read_text())["result"]["history"] for f in sorted((tmp_path / "runs").glob("*/result.json"))]
    assert p.runs == res["num_runs"] == len(hist) == 6
    assert sorted((n.iterations, n.teleports) for n in p.networks for _ in range(n.runs)) == sorted(
        (len(h["iter_loss"]), len(h["teleports"])) for h in hist
    )
    assert {(n.teleports, n.teleport_cob) for n in p.networks if n.teleports} == {
        (1, "random"), (3, "random"), (1, "balanced"), (3, "balanced")}  # fmt: skip


def test_each_cob_choice_is_timed_as_itself(monkeypatch):
    from nnteleport.lab.training import teleport as teleport_mod

    seen = []
    real = teleport_mod.choose_cob

    def spy(kind, *a, **kw):
        seen.append(kind)
        return real(kind, *a, **kw)

    monkeypatch.setattr(teleport_mod, "choose_cob", spy)
    cfg = load_config("teleport-schedule", None, {
        "dataset": "random", "models": ["mlp"], "model_kwargs": {"mlp": {"hidden": [8]}}, "optimizers": ["sgd", "adam"],
        "seeds": 2, "epochs": 1, "cobs": ["random", "optimized", "balanced"], "optimize_steps": 2,
        "device": "cpu"})  # fmt: skip
    p = dry_run("teleport-schedule", cfg, iters=1)
    assert sorted(seen) == ["balanced"] * 2 + ["optimized"] * 2  # two calls (the second timed), once per choice
    tele = [n for n in p.networks if n.teleports]
    assert {n.teleport_cob for n in tele} == {"random", "optimized", "balanced"}
    assert all(math.isfinite(n.seconds_per_teleport) and n.seconds_per_teleport > 0 for n in tele)
    assert len({n.seconds_per_iteration for n in p.networks}) == 1  # one network: its iterations timed once
    assert "optimized" in format_dry_run(p)


def test_the_documented_paper_estimate_is_the_recorded_one():
    """The estimate table of docs/experiments.md: a row per experiment, the numbers of the recorded JSON."""
    root = Path(__file__).resolve().parents[1]
    data = json.loads((root / "docs" / "data" / "paper-estimate-cpu.json").read_text())
    block = (root / "docs" / "experiments.md").read_text().split("<!-- paper-estimate -->", 1)[1]
    block = block.split("<!-- /paper-estimate -->", 1)[0]
    assert [r["experiment"] for r in data["rows"]] == list(EXPERIMENTS)
    for r in data["rows"]:
        assert f"| `{r['experiment']}` | {r['runs']} | {r['epochs'] or '-'} | {r['device_hours']:.4g} |" in block
    assert data["total_device_hours"] == pytest.approx(sum(r["device_hours"] for r in data["rows"]))
    assert f"**{data['total_device_hours']:.4g}**" in block


def test_paper_training_grid_is_the_papers_720_curves_per_dataset_pair():
    """Sec. 5.2: 4 models x 2 datasets x 2 optimizers x 3 learning rates, 2 arms, 5 seeds, 100 epochs; CIFAR's
    50000 examples at batch 64 are 782 iterations per epoch."""
    p = plan("training", load_config("training", "paper", check_files=False))
    assert p.runs == 4 * 2 * 2 * 3 * 2 * 5 == 480
    assert {n.iterations for n in p.networks} == {100 * 782}
    assert sum(n.teleports * n.runs for n in p.networks) == 240


def test_estimate_is_runs_times_measured_times():
    n = Network("mlp", {}, "digits", 64, runs=3, iterations=100, examples_evaluated=640, teleports=2)
    n.seconds_per_iteration, n.seconds_per_teleport = 0.01, 0.5
    assert n.device_seconds() == pytest.approx(3 * (100 * 0.01 + 640 * 0.01 / (3 * 64) + 2 * 0.5))


def test_timed_dry_run_of_the_default_training_config():
    cfg = load_config("training", None, check_files=False)
    p = dry_run("training", cfg, iters=1)
    assert p.device == "cpu" or p.device.startswith("cuda")
    assert all(math.isfinite(n.seconds_per_iteration) and n.seconds_per_iteration > 0 for n in p.networks)
    assert all(n.seconds_per_teleport > 0 for n in p.networks if n.teleports)
    assert 0 < p.device_hours < 1
    assert "device-hours on" in format_dry_run(p)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_timed_dry_run_of_every_paper_config(name):
    cfg = load_config(name, "paper", check_files=False)
    p = dry_run(name, cfg, iters=1, batch=2)
    assert math.isfinite(p.device_hours) and (p.device_hours > 0) == (p.runs > 0)


def test_cli_dry_run_prints_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NNTELEPORT_DRY_RUN_ITERS", "1")
    assert main(["experiment", "training", "--dry-run", "--set", "seeds=2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "runs: 16, 12 epochs each" in out and "dataset digits: present" in out and "device-hours on cpu" in out
    assert not (tmp_path / "results").exists()


def test_cli_dry_run_of_a_paper_config_reports_missing_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.setenv("NNTELEPORT_DRY_RUN_TIMING", "0")
    assert main(["experiment", "training", "--config", "paper", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "runs: 480, 100 epochs each" in out and "dataset cifar10: MISSING" in out
    assert main(["experiment", "training", "--config", "paper"]) == 2  # a real run refuses before anything runs
    assert "cifar10" in capsys.readouterr().err


def test_dry_run_options_from_the_environment():
    assert options_from_env({}) == {"timing": True, "iters": 3, "batch": None}
    env = {"NNTELEPORT_DRY_RUN_TIMING": "0", "NNTELEPORT_DRY_RUN_ITERS": "2", "NNTELEPORT_DRY_RUN_BATCH": "4"}
    assert options_from_env(env) == {"timing": False, "iters": 2, "batch": 4}
    with pytest.raises(ValueError, match="NNTELEPORT_DRY_RUN_ITERS"):
        options_from_env({"NNTELEPORT_DRY_RUN_ITERS": "many"})


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_help_of_every_experiment_offers_device_config_paper_and_dry_run(name, capsys):
    assert main(["experiment", name, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "--device" in out and "paper" in out
