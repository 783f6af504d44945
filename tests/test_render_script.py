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


def test_page_taller_than_chromium_can_capture_comes_in_tiles(tmp_path):
    """20000 px: a 16384 px tile and a 3616 px one, the second showing the page's bottom (a red band), not its top."""
    page = tmp_path / "report.html"
    page.write_text(
        '<html><body style="margin:0"><div style="height:19900px;background:#fff">x</div>'
        '<div style="height:100px;background:#f00"></div></body></html>'
    )
    res = subprocess.run(["bash", str(SCRIPT), str(page)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "(20000 px)" in res.stdout and "2 tiles" in res.stdout
    heights = []
    for name in ("report.png", "report.2.png"):
        data = (tmp_path / name).read_bytes()
        heights.append(int.from_bytes(data[20:24], "big"))
    assert heights == [16384, 20000 - 16384]
    assert not (tmp_path / "report.3.png").exists()
    assert _bottom_row_is_red(tmp_path / "report.2.png") and not _bottom_row_is_red(tmp_path / "report.png")


def _bottom_row_is_red(png) -> bool:
    """Decode the last row of an 8-bit RGB(A) PNG (zlib + PNG row filters) and check its first pixel is red."""
    import struct
    import zlib

    data = png.read_bytes()
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    prev = bytearray(stride)
    for r in range(height):
        f, row = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1 : (r + 1) * (stride + 1)])
        for i in range(stride):
            a = row[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                row[i] = (row[i] + a) & 255
            elif f == 2:
                row[i] = (row[i] + b) & 255
            elif f == 3:
                row[i] = (row[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                row[i] = (row[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = row
    return tuple(prev[:3]) == (255, 0, 0)
