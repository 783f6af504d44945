"""A self-contained HTML report: headline numbers, then one section per experiment with figures and captions.

:func:`render` turns a list of :class:`Section` objects into one HTML page with inline CSS and the PNG figures
embedded as base64 ``data:`` URIs, so ``report.html`` can be mailed or opened from anywhere without its folder.
No JavaScript, no external resources (it renders the same in a headless browser without network).
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Figure", "Headline", "Section", "pm", "render", "sci"]


@dataclass
class Figure:
    """A PNG file and its caption."""

    path: Path
    caption: str


@dataclass
class Headline:
    """One number at the top of the page: ``label``, ``value`` (already formatted), a short ``note``, and
    ``status`` in ``{"good", "bad", "neutral"}`` (colours the card: claim reproduced or not)."""

    label: str
    value: str
    note: str = ""
    status: str = "neutral"


@dataclass
class Section:
    """One experiment: what the paper claims, what we measured (a table), figures, and notes.

    Each experiment module builds its own (``report_section``); the demo sets ``anchor`` (the experiment's CLI
    name), ``seconds`` and ``files``.
    """

    title: str
    claim: str = ""
    anchor: str = ""
    numbers: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verdict: str = ""
    status: str = "neutral"
    seconds: float | None = None
    error: str | None = None
    files: list[tuple[str, str]] = field(default_factory=list)  # (label, relative link)


def sci(x: float | None, digits: int = 2) -> str:
    """``x`` for a report table: scientific notation when tiny or huge (``3.30e-16``), else ``digits + 2``
    significant digits; ``"n/a"`` for ``None``, NaN and infinities."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}e}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4) else f"{x:.{digits + 2}g}"


def pm(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``"mean ± std"`` of a summary dict (``{"mean", "std", ...}``, see :func:`nnteleport.lab.plotting.summary`),
    ``"n/a"`` when it has no finite mean."""
    if not s or s.get("mean") is None:
        return "n/a"
    m, sd = s["mean"], s.get("std")
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}g} ± {sd:.2g}" if sd is not None else f"{m:.{digits}g}"


_CSS = """
body { font-family: -apple-system, 'Segoe UI', 'DejaVu Sans', Helvetica, Arial, sans-serif; margin: 0;
       background: #f4f5f7; color: #1d2330; line-height: 1.45; }
header { background: #17324d; color: #fff; padding: 28px 40px 22px; }
header h1 { margin: 0 0 6px; font-size: 28px; }
header p { margin: 2px 0; color: #cfdbe8; font-size: 14px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 28px 60px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 14px;
         margin: 8px 0 26px; }
.card { background: #fff; border-radius: 8px; padding: 14px 16px; border-left: 6px solid #9aa5b1;
        box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.card.good { border-left-color: #2e8b57; } .card.bad { border-left-color: #c0392b; }
.card .label { font-size: 13px; color: #55606e; text-transform: uppercase; letter-spacing: .03em; }
.card .value { font-size: 24px; font-weight: 600; margin: 4px 0; }
.card .note { font-size: 13px; color: #55606e; }
nav { background: #fff; border-radius: 8px; padding: 10px 16px; margin-bottom: 22px; font-size: 14px;
      box-shadow: 0 1px 3px rgba(0,0,0,.08); }
nav a { margin-right: 14px; color: #1b65a6; text-decoration: none; white-space: nowrap; }
section { background: #fff; border-radius: 8px; padding: 18px 24px 20px; margin-bottom: 22px;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
section h2 { margin: 0 0 6px; font-size: 21px; }
.claim { color: #3b4554; margin: 4px 0 12px; }
.verdict { display: inline-block; padding: 3px 10px; border-radius: 12px; font-size: 13px; font-weight: 600;
           background: #e8ebef; color: #3b4554; margin-bottom: 10px; }
.verdict.good { background: #dff3e7; color: #1e6b41; } .verdict.bad { background: #f8e0dd; color: #922b21; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 14px; }
td { padding: 4px 14px 4px 0; border-bottom: 1px solid #eceff3; vertical-align: top; }
td:first-child { color: #55606e; }
td.v { font-family: 'DejaVu Sans Mono', Menlo, Consolas, monospace; font-size: 13px; }
figure { margin: 12px 0 18px; }
figure img { max-width: 100%; border: 1px solid #e3e7ec; border-radius: 4px; }
figcaption { font-size: 13.5px; color: #3b4554; margin-top: 6px; max-width: 1000px; }
.notes { font-size: 13.5px; color: #3b4554; } .notes li { margin: 3px 0; }
.error { background: #fdecea; color: #922b21; padding: 10px 12px; border-radius: 6px; white-space: pre-wrap;
         font-family: monospace; font-size: 12px; }
.meta { font-size: 12.5px; color: #6b7685; }
.meta a { color: #1b65a6; }
footer { text-align: center; font-size: 12px; color: #6b7685; padding: 20px; }
"""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def _section(s: Section) -> str:
    e = html.escape
    parts = [f'<section id="{e(s.anchor)}">', f"<h2>{e(s.title)}</h2>", f'<p class="claim">{e(s.claim)}</p>']
    if s.verdict:
        parts.append(f'<div class="verdict {e(s.status)}">{e(s.verdict)}</div>')
    if s.error:
        parts.append(f'<div class="error">This experiment failed:\n{e(s.error)}</div>')
    if s.numbers:
        rows = "".join(f'<tr><td>{e(k)}</td><td class="v">{e(v)}</td></tr>' for k, v in s.numbers)
        parts.append(f"<table>{rows}</table>")
    for fig in s.figures:
        if Path(fig.path).is_file():
            parts.append(
                f'<figure><img src="{_img(fig.path)}" alt="{e(fig.caption[:80])}">'
                f"<figcaption>{e(fig.caption)}</figcaption></figure>"
            )
    if s.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{e(n)}</li>" for n in s.notes) + "</ul>")
    meta = []
    if s.seconds is not None:
        meta.append(f"ran in {s.seconds:.0f} s")
    meta += [f'<a href="{e(link)}">{e(label)}</a>' for label, link in s.files]
    if meta:
        parts.append(f'<p class="meta">{" · ".join(meta)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def render(
    path: Path,
    *,
    title: str,
    subtitle: list[str],
    headlines: list[Headline],
    sections: list[Section],
    extra_html: str = "",
    footer: str = "",
) -> Path:
    """Write the report page to ``path`` and return it.

    ``extra_html`` (trusted, produced by the caller) is inserted after the section list, e.g. a coverage table.
    """
    e = html.escape
    cards = "".join(
        f'<div class="card {e(h.status)}"><div class="label">{e(h.label)}</div>'
        f'<div class="value">{e(h.value)}</div><div class="note">{e(h.note)}</div></div>'
        for h in headlines
    )
    nav = " ".join(f'<a href="#{e(s.anchor)}">{e(s.title)}</a>' for s in sections)
    body = "\n".join(_section(s) for s in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title><style>{_CSS}</style></head>
<body>
<header><h1>{e(title)}</h1>{"".join(f"<p>{e(t)}</p>" for t in subtitle)}</header>
<main>
<div class="cards">{cards}</div>
<nav>{nav}</nav>
{body}
{extra_html}
</main>
<footer>{e(footer)}</footer>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
