"""The demo: a small version of every experiment, and one HTML page to look at.

``run_demo(out)`` (CLI: ``nnteleport demo --out DIR``) runs every experiment of the registry
(:data:`nnteleport.lab.experiments.EXPERIMENTS`: the nine of Armenta et al. (2023), the three G-space / weight-fixing
experiments of Jestädt (2025) and von Bachmann's (2020) checkpoint-distance training) at a small scale on the
embedded data (scikit-learn's 8x8 digits and random data; no download), each writing its results, CSVs and PNGs
to ``out/<experiment>/``, and then writes ``out/report.html``: headline numbers first (function-preservation
error, micro-teleportation angle, gradient-scale growth, early-loss gap of teleported training with its spread
across seeds, ...), then one section per experiment with the claim, what was measured, and the figures
(embedded, so the page is self-contained). Whatever the numbers are, they are reported as measured -- a claim
that does not reproduce at this scale is shown as such.

The demo knows nothing about the experiments: each experiment module owns its small configuration (``DEMO``,
changes to its ``DEFAULTS``; ``DEMO_SECONDS``, its rough cost) and its section of the report
(``TITLE``, ``report_section(results, folder) -> (Section, [Headline])``); see
:mod:`nnteleport.lab.experiments`.

The experiments run in ``workers`` processes (default 2), each with one intra-op thread, the longest first; on
two CPU cores the whole demo takes a few minutes. ``out/summary.json`` holds the headline numbers.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from nnteleport.errors import InvalidValueError
from nnteleport.lab.experiments import EXPERIMENTS, get_experiment
from nnteleport.lab.plotting import write_json
from nnteleport.lab.report_html import Headline, Section, render

__all__ = ["demo_configs", "run_demo"]


def demo_configs(names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The demo's configuration of each experiment (its module's ``DEMO``), in the registry's (report) order.

    Raises
    ------
    InvalidValueError
        A name that is not a registered experiment.
    """
    names = list(EXPERIMENTS) if names is None else list(names)
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise InvalidValueError(f"unknown demo experiment(s) {unknown}; choose from: {', '.join(EXPERIMENTS)}")
    return {n: copy.deepcopy(get_experiment(n).DEMO) for n in names}


def _run_experiment(name: str, config: dict[str, Any], out: str) -> tuple[str, dict | None, float, str | None]:
    """Run experiment ``name`` into ``out`` (in a worker process); never raises."""
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    try:
        results = get_experiment(name).run(copy.deepcopy(config), Path(out), progress=False)
        return name, results, time.perf_counter() - t0, None
    except Exception as exc:  # shown in the report
        return name, None, time.perf_counter() - t0, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def run_demo(
    out: Path,
    *,
    progress: bool = True,
    workers: int = 2,
    experiments: list[str] | None = None,
    configs: dict[str, dict[str, Any]] | None = None,
    coverage: bool = True,
) -> Path:
    """Run the demo into folder ``out`` and return the path of ``out/report.html``.

    Parameters
    ----------
    out
        Output folder (created); each experiment writes to ``out/<experiment>/``.
    progress
        Show a progress bar over the experiments.
    workers
        Processes running experiments side by side (1: all in this process).
    experiments
        Names of the experiments to run (default: every registered experiment, see :func:`demo_configs`).
    configs
        Per experiment, changes to its demo configuration (e.g. tiny settings in tests).
    coverage
        Add the table of what the engine teleports in each zoo model (``nnteleport.analyze``).

    Raises
    ------
    InvalidValueError
        An unknown experiment name (before anything runs).
    RuntimeError
        After writing the report, if an experiment failed (the report shows its error).
    """
    out = Path(out)
    base = demo_configs(experiments)
    out.mkdir(parents=True, exist_ok=True)
    names = list(base)
    jobs = []
    for n in names:
        cfg = base[n]
        cfg.update((configs or {}).get(n, {}))
        jobs.append((n, cfg, str(out / n.replace("-", "_"))))
    # longest first, so that the workers finish at about the same time
    order = sorted(jobs, key=lambda j: -float(getattr(get_experiment(j[0]), "DEMO_SECONDS", 0)))
    t0 = time.perf_counter()
    done = _run_jobs(order, workers, progress)
    wall = time.perf_counter() - t0
    report = _write_report(out, names, done, wall, workers, coverage=coverage)
    failed = [n for n in names if done[n][2] is not None]
    if failed:
        raise RuntimeError(f"demo: experiment(s) {', '.join(failed)} failed; see {report}")
    return report


def _run_jobs(
    order: list[tuple[str, dict[str, Any], str]], workers: int, progress: bool
) -> dict[str, tuple[dict | None, float, str | None]]:
    """Run the ``(name, config, folder)`` jobs in this order, in ``workers`` processes (1: in this one);
    returns ``{name: (results or None, seconds, error or None)}``."""
    done: dict[str, tuple[dict | None, float, str | None]] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(order), desc="demo experiments", unit="exp")
    running: list[str] = []

    def show() -> None:
        if bar is not None:
            bar.set_postfix_str(("running " + ", ".join(running)) if running else "", refresh=True)

    def finished(name: str, res: dict | None, sec: float, err: str | None) -> None:
        done[name] = (res, sec, err)
        if name in running:
            running.remove(name)
        if bar is not None:
            bar.update(1)
        show()

    try:
        if workers <= 1:
            threads = _torch_threads()
            try:
                for job in order:
                    running[:] = [job[0]]
                    show()
                    finished(*_run_experiment(*job))
            finally:
                _torch_threads(threads)
        else:
            from nnteleport.lab._atomic import remove_tmp_files
            from nnteleport.lab.experiments.workers import run_jobs

            folders = {j[0]: j[2] for j in order}

            def on_start(name: str) -> None:
                running.append(name)
                show()

            def on_done(name: str, ok: bool, payload: Any) -> None:
                if ok:
                    finished(*payload)
                else:  # the worker process died
                    finished(name, None, math.nan, payload)

            run_jobs(
                [(j[0], _run_experiment, j) for j in order],
                workers=workers,
                threads=1,
                on_done=on_done,
                on_start=on_start,
                cleanup=lambda name, pid: remove_tmp_files(folders[name], pid),
                describe_stop=lambda n_running, n_queued: (
                    f"{len(done)} of {len(order)} demo experiments finished, {n_running} stopped, {n_queued} not "
                    "started; run the demo again to write the report"
                ),
            )
    finally:
        if bar is not None:
            bar.close()
    return done


def _torch_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to ``n`` (default 1); return the number before."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n if n is not None else 1)
    return before


def _rel(out: Path, p: Path) -> str:
    return os.path.relpath(p, out)


def _coverage_html() -> str:
    """A table of the engine's coverage on the zoo (what the teleportation touches), from ``analyze``."""
    import html

    import torch

    import nnteleport
    from nnteleport.lab.models import MODELS, build_model

    rows = []
    for name in MODELS:
        try:
            torch.manual_seed(0)
            model = build_model(name, in_shape=(1, 8, 8), num_classes=10)
            rep = nnteleport.analyze(model, torch.randn(2, 1, 8, 8)).report
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td class='v'>{rep.parameters_total}</td>"
                f"<td class='v'>{rep.free_neurons} / {rep.hidden_neurons} ({100 * rep.coverage:.1f} %)</td>"
                f"<td class='v'>{rep.parameters_moving} ({100 * rep.parameter_coverage:.1f} %)</td>"
                f"<td class='v'>{len(rep.groups)}</td><td class='v'>{len(rep.wrapper_sites)}</td></tr>"
            )
        except Exception as exc:  # the page still renders
            rows.append(f"<tr><td>{html.escape(name)}</td><td colspan='5'>{html.escape(str(exc))}</td></tr>")
    return (
        '<section id="coverage"><h2>What the engine teleports (zoo models, 8x8 input)</h2>'
        '<p class="claim">From <code>nnteleport.analyze(model, x).report</code>: hidden neurons with a free CoB '
        "(the rest are pinned to 1, e.g. BatchNorm inputs so that the statistics are untouched), parameters "
        "that move, CoB groups, and activation sites that need the wrapper τ·f(x/τ).</p>"
        "<table><tr><td>model</td><td>parameters</td><td>free neurons</td><td>moving parameters</td>"
        "<td>groups</td><td>wrapped activations</td></tr>" + "".join(rows) + "</table></section>"
    )


def _write_report(out: Path, names: list[str], done: dict, wall: float, workers: int, *, coverage: bool = True) -> Path:
    """Write ``out/summary.json`` and ``out/report.html`` from the finished experiments (``done``, see
    :func:`_run_jobs`): one section per experiment, by its module's ``report_section``."""
    sections: list[Section] = []
    headlines: list[Headline] = []
    summary: dict[str, Any] = {"wall_seconds": wall, "workers": workers, "experiments": {}}
    for name in names:
        res, sec_time, err = done[name]
        folder = out / name.replace("-", "_")
        module = get_experiment(name)
        if err is not None or res is None:
            sections.append(
                Section(title=module.TITLE, anchor=name, error=err, seconds=sec_time, verdict="failed", status="bad")
            )
            headlines.append(Headline(module.TITLE, "failed", "see its section", "bad"))
            summary["experiments"][name] = {"error": err, "seconds": sec_time}
            continue
        try:
            section, heads = module.report_section(res, folder)
        except Exception as exc:  # a summary bug must not hide the other results
            section = Section(
                title=module.TITLE,
                verdict="summary failed",
                status="bad",
                error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
            )
            heads = []
        section.anchor = name
        section.seconds = sec_time
        section.files = [("results.json", _rel(out, folder / "results.json"))] + [
            (p.name, _rel(out, p)) for p in sorted(folder.glob("*.csv"))
        ]
        sections.append(section)
        headlines += heads
        summary["experiments"][name] = {
            "seconds": sec_time,
            "verdict": section.verdict,
            "status": section.status,
            "headlines": [{"label": h.label, "value": h.value, "note": h.note, "status": h.status} for h in heads],
        }
    coverage_html = ""
    if coverage:
        try:
            coverage_html = _coverage_html()
        except Exception as exc:
            coverage_html = f"<section><h2>Engine coverage</h2><div class='error'>{exc}</div></section>"
    import torch

    subtitle = [
        "Every experiment of nnteleport at a small scale on embedded data (scikit-learn digits, random data): "
        "Armenta et al., “Neural Teleportation”, Mathematics 11(2):480, 2023; Jestädt, scale-invariant "
        "parameter spaces for ReLU networks (2025); von Bachmann, distance from checkpoints (2020).",
        f"Ran in {wall:.0f} s with {workers} worker process(es) on {os.cpu_count()} CPU core(s); "
        f"torch {torch.__version__}, Python {platform.python_version()}, {platform.platform(terse=True)}.",
        "Each section: the paper's claim, the numbers measured here (reported as measured), the figures, and "
        "links to the results files. `nnteleport experiment NAME` runs any of them at full default scale.",
    ]
    write_json(out / "summary.json", summary)
    return render(
        out / "report.html",
        title="nnteleport — neural teleportation demo report",
        subtitle=subtitle,
        headlines=headlines,
        sections=sections,
        extra_html=coverage_html,
        footer="Generated by nnteleport.lab.demo.run_demo; figures embedded as PNG; no external resources.",
    )
