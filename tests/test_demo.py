"""The demo report: a self-contained page with the experiments' numbers and figures, rendered by a real browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nnteleport.lab.demo import DEMO_CONFIGS, run_demo
from nnteleport.lab.experiments import EXPERIMENTS

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

TINY = {
    "gradient-scale": {"models": ["mlp"], "cob_ranges": [0.3, 0.9], "num_teleports": 3},
    "weight-histograms": {"model_kwargs": {"mlp": {"hidden": [32, 32]}}, "bins": 21},
}


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    path = run_demo(out, progress=False, workers=1, experiments=list(TINY), configs=TINY)
    return out, path


def test_demo_covers_every_experiment_of_the_paper():
    assert set(DEMO_CONFIGS) == PAPER_EXPERIMENTS
    assert PAPER_EXPERIMENTS <= set(EXPERIMENTS)


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


def test_unknown_demo_experiment():
    with pytest.raises(ValueError, match="unknown demo experiment"):
        run_demo(Path("unused"), experiments=["toy-surfaces"])


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
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    page_height = int(re.search(r"\((\d+) px\)", proc.stdout).group(1))
    assert (width, height) == (1280, page_height)  # the whole page, not a window's worth
    # the page is not blank: a rendered report with figures compresses far worse than an empty page
    assert len(data) > 100_000


@pytest.mark.slow
def test_full_demo_runs_every_experiment(tmp_path):
    path = run_demo(tmp_path, progress=False)
    page = path.read_text(encoding="utf-8")
    for name in DEMO_CONFIGS:
        assert f'id="{name}"' in page
    assert "This experiment failed" not in page
