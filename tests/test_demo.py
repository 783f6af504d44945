"""The demo report: a self-contained page with the experiments' numbers and figures, rendered by a real browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nnteleport.lab.demo import demo_configs, run_demo
from nnteleport.lab.experiments import DEMO_ATTRIBUTES, EXPERIMENTS, get_experiment
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.report_html import Headline, Section

ROOT = Path(__file__).resolve().parents[1]
PAPER_EXPERIMENTS = {
    "level-curves",
    "micro-teleport",
    "interpolation",
    "gradient-scale",
    "training",
    "pseudo-teleport",
    "mid-training",
    "weight-histograms",
    "feature-maps",
}

TINY_MLP = {"mlp": {"hidden": [16, 16]}}
TINY_TRAINING = {
    "model_kwargs": TINY_MLP,
    "lrs": [0.05],
    "seeds": 2,
    "epochs": 2,
    "max_iters_per_epoch": 4,
}
#: A tiny version of every experiment (seconds each), so that the report has all sections.
TINY = {
    "level-curves": {"models": ["mlp"], "model_kwargs": TINY_MLP, "num_teleports": 3, "num_examples": 16},
    "micro-teleport": {"models": ["mlp"], "datasets": ["digits"], "batch_sizes": [8], "num_samples": 6},
    "interpolation": {
        "model_kwargs": TINY_MLP,
        "batch_sizes": [32, 512],
        "epochs": 1,
        "num_alphas": 5,
        "eval_examples": 128,
        "cob_ranges": [0.5, 0.9],
    },
    "gradient-scale": {"models": ["mlp"], "cob_ranges": [0.3, 0.9], "num_teleports": 3},
    "training": {**TINY_TRAINING, "optimizers": ["sgd"]},
    "pseudo-teleport": {**TINY_TRAINING, "seeds": 1},
    "mid-training": {**TINY_TRAINING, "seeds": 1, "epochs": 3, "teleport_at": 2, "cob_ranges": [0.9]},
    "weight-histograms": {"model_kwargs": {"mlp": {"hidden": [32, 32]}}, "bins": 21},
    "feature-maps": {
        "max_iters_per_epoch": 4,
        "model": "vgg",
        "model_kwargs": {"vgg": {"width": 0.125, "config": "vgg11"}},
        "epochs": 1,
        "activations": ["tanh"],
        "layer": "features.2",
        "num_channels": 4,
    },
    "lr-confound": {"seeds": 2, "epochs": 2, "max_iters_per_epoch": 4, "hidden": [16, 16], "lr_multipliers": [4.0]},
    "teleport-schedule": {
        "models": ["mlp"],
        "model_kwargs": {"mlp": {"hidden": [8]}},
        "optimizers": ["sgd"],
        "seeds": 2,
        "epochs": 1,
        "max_iters_per_epoch": 4,
        "cobs": ["random", "pathcond"],
        "schedules": ["once"],
        "lr_multipliers": [2.0],
        "resnet_if_cifar": False,
        "workers": 1,
    },
    "gspace-lr-grid": {
        "methods": ["sgd", "gsgd-set1", "fixed-sgd"],
        "lrs": [1e-1, 1e-3],
        "epochs": 1,
        "train_size": 256,
        "val_size": 64,
        "hidden": [16, 16],
    },
    "fixed-value-grid": {
        "values": [0.1, 1.0],
        "lrs": [1e-1, 1e-2],
        "epochs": 1,
        "train_size": 256,
        "val_size": 64,
        "hidden": [16, 16],
    },
    "toy-surfaces": {"points": 21, "arrows": 5},
    "distance-training": {"epochs": 3, "warmup_epochs": 1, "checkpoint_every": 1, "train_size": 64, "val_size": 32},
}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    path = run_demo(out, progress=False, workers=1, configs=TINY)
    return out, path


def test_demo_covers_every_experiment():
    assert PAPER_EXPERIMENTS <= set(EXPERIMENTS)
    configs = demo_configs()
    assert list(configs) == list(EXPERIMENTS) == list(TINY)
    for name, cfg in configs.items():
        module = get_experiment(name)
        for attr in DEMO_ATTRIBUTES:
            assert hasattr(module, attr), f"{name} has no {attr}"
        assert {"DESCRIPTION", "DEFAULTS", "run", *DEMO_ATTRIBUTES} <= set(module.__all__)
        assert all(hasattr(module, a) for a in module.__all__), name
        assert isinstance(module.TITLE, str) and module.TITLE
        assert callable(module.report_section) and float(module.DEMO_SECONDS) > 0
        # the demo configuration changes existing keys only, with values that pass the experiment's checks
        validate_config(name, merge_config(module.DEFAULTS, cfg, source=f"{name} demo"))
    assert len({get_experiment(n).TITLE for n in EXPERIMENTS}) == len(EXPERIMENTS)


def test_report_has_a_section_per_experiment(tiny_report):
    out, path = tiny_report
    page = path.read_text(encoding="utf-8")
    assert "This experiment failed" not in page and "summary failed" not in page
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["experiments"]) == list(EXPERIMENTS)
    for name in EXPERIMENTS:
        assert page.count(f'<section id="{name}">') == 1, name
        assert f'href="#{name}"' in page  # in the navigation
        assert summary["experiments"][name]["status"] in ("good", "bad", "neutral")
        assert summary["experiments"][name]["verdict"], name
        folder = out / name.replace("-", "_")
        assert (folder / "results.json").is_file()
        # every figure a section names exists (and is embedded)
        module = get_experiment(name)
        section, heads = module.report_section(json.loads((folder / "results.json").read_text()), folder)
        assert isinstance(section, Section) and all(isinstance(h, Headline) for h in heads)
        assert section.title == module.TITLE and section.claim and section.numbers, name
        assert section.figures and all(f.path.is_file() for f in section.figures), name


def test_report_is_self_contained_and_has_the_numbers(tiny_report):
    out, path = tiny_report
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    # no external resources: every image is an embedded PNG, no scripts, no remote links
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    for s in srcs:
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert 'id="gradient-scale"' in page and 'id="weight-histograms"' in page
    assert "gradient-scale curve increasing in s" in page  # a headline card
    assert "(s²+3)/(3(1−s²))" in page
    assert 'id="coverage"' in page and "free neurons" in page
    # links to the results files are relative and point to existing files
    for link in re.findall(r'href="([^"#][^"]*)"', page):
        assert (out / link).is_file(), link
    summary = (out / "summary.json").read_text()
    assert '"gradient-scale"' in summary


def test_failed_experiment_is_shown_and_raised(tmp_path):
    bad = {"weight-histograms": {"parameters": "everything"}}
    with pytest.raises(RuntimeError, match="weight-histograms failed"):
        run_demo(tmp_path, progress=False, workers=1, experiments=["weight-histograms"], configs=bad, coverage=False)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "This experiment failed" in page and "&#x27;everything&#x27; is not allowed" in page  # HTML-escaped


def test_unknown_demo_experiment(tmp_path):
    with pytest.raises(ValueError, match="unknown demo experiment"):
        run_demo(tmp_path / "unused", experiments=["no-such-experiment"])
    assert not (tmp_path / "unused").exists()  # refused before anything ran


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tiny_report):
    out, path = tiny_report
    shot = out / "screenshot.png"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "render_report.sh"), str(path), str(shot)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    page_height = int(re.search(r"\((\d+) px\)", proc.stdout).group(1))
    # a page taller than Chromium's largest window (16384 px) comes in tiles screenshot.png, screenshot.2.png, ...
    tiles = [shot, *sorted(out.glob("screenshot.*.png"), key=lambda p: int(p.suffixes[0][1:]))]
    heights = []
    for tile in tiles:
        data = tile.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width == 1280 and height <= 16384
        heights.append(height)
        # not blank: a rendered report with figures compresses far worse than an empty page
        assert len(data) > 20_000, tile
    assert sum(heights) == page_height  # the whole page, not a window's worth
    assert len(tiles) == -(-page_height // 16384)


@pytest.mark.slow
def test_full_demo_runs_every_experiment(tmp_path):
    path = run_demo(tmp_path, progress=False)
    page = path.read_text(encoding="utf-8")
    for name in EXPERIMENTS:
        assert f'id="{name}"' in page
    assert "This experiment failed" not in page
