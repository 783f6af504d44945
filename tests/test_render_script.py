"""scripts/render_report.sh captures the whole page (skipped without Chromium)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "render_report.sh"

pytestmark = pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")), reason="needs chromium"
)


def _png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_screenshot_is_as_tall_as_the_page(tmp_path):
    page = tmp_path / "report.html"
    page.write_text('<html><body style="margin:0"><div style="height:12845px;background:#eee">x</div></body></html>')
    res = subprocess.run(["bash", str(SCRIPT), str(page)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert _png_size(tmp_path / "report.png") == (1280, 12845)
    assert "(12845 px)" in res.stdout


def test_page_taller_than_chromium_can_capture_fails(tmp_path):
    page = tmp_path / "report.html"
    page.write_text('<html><body style="margin:0"><div style="height:20000px">x</div></body></html>')
    res = subprocess.run(["bash", str(SCRIPT), str(page)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "20000 px tall" in res.stderr
