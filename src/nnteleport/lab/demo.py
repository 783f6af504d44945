"""The demo: a small version of every neural-teleportation experiment, and one HTML page to look at.

``run_demo(out)`` (CLI: ``nnteleport demo --out DIR``) runs the nine experiments of Armenta et al. (2023) at a
small scale on the embedded data (scikit-learn's 8x8 digits and random data; no download), each writing its
results, CSVs and PNGs to ``out/<experiment>/``, and then writes ``out/report.html``: headline numbers first
(function-preservation error, micro-teleportation angle, gradient-scale growth, early-loss gap of teleported
training with its spread across seeds, ...), then one section per experiment with the paper's claim, what was
measured, and the figures (embedded, so the page is self-contained). Whatever the numbers are, they are
reported as measured -- a claim that does not reproduce at this scale is shown as such.

The experiments run in ``workers`` processes (default 2), each with one intra-op thread; on two CPU cores the
whole demo takes a few minutes. ``out/summary.json`` holds the headline numbers.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
import platform
import time
import traceback
from pathlib import Path
from typing import Any

from nnteleport.errors import InvalidValueError
from nnteleport.lab.plotting import write_json
from nnteleport.lab.report_html import Figure, Headline, Section, render

__all__ = ["DEMO_CONFIGS", "run_demo"]

#: The demo's configuration of each experiment (small versions of their DEFAULTS), in report order.
DEMO_CONFIGS: dict[str, dict[str, Any]] = {
    "level-curves": {"num_teleports": 20, "num_examples": 32},
    "micro-teleport": {"models": ["mlp", "vgg", "resnet18"], "num_samples": 25},
    "gradient-scale": {"models": ["mlp", "vgg", "resnet18"], "num_teleports": 10},
    "training": {"seeds": 4, "epochs": 8, "workers": 1, "tensorboard": False},
    "pseudo-teleport": {
        "seeds": 3,
        "epochs": 6,
        "optimizers": ["sgd"],
        "lrs": [0.01],
        "workers": 1,
        "tensorboard": False,
    },
    "mid-training": {
        "models": ["mlp"],
        "seeds": 3,
        "epochs": 10,
        "teleport_at": 5,
        "workers": 1,
        "tensorboard": False,
    },
    "interpolation": {"epochs": 4, "num_alphas": 25, "eval_examples": 512},
    "weight-histograms": {},
    "feature-maps": {"epochs": 2},
}

TITLES = {
    "level-curves": "Loss level curves",
    "micro-teleport": "Micro-teleportation vs gradients",
    "interpolation": "Interpolation profiles (flatness)",
    "gradient-scale": "Gradient scaling with the CoB range",
    "training": "Training with vs without teleportation",
    "pseudo-teleport": "Pseudo-teleportation control",
    "mid-training": "Teleporting in the middle of training",
    "weight-histograms": "Weight histograms",
    "feature-maps": "Feature maps",
}


def _run_experiment(name: str, config: dict[str, Any], out: str) -> tuple[str, dict | None, float, str | None]:
    """Run experiment ``name`` into ``out`` (in a worker process); never raises."""
    import torch

    from nnteleport.lab.experiments import get_experiment

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
        Subset of :data:`DEMO_CONFIGS` to run (default: all nine).
    configs
        Per experiment, changes to its demo configuration (e.g. tiny settings in tests).
    coverage
        Add the table of what the engine teleports in each zoo model (``nnteleport.analyze``).

    Raises
    ------
    RuntimeError
        After writing the report, if an experiment failed (the report shows its error).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(DEMO_CONFIGS) if experiments is None else list(experiments)
    unknown = [n for n in names if n not in DEMO_CONFIGS]
    if unknown:
        raise InvalidValueError(f"unknown demo experiment(s) {unknown}; choose from: {', '.join(DEMO_CONFIGS)}")
    jobs = []
    for n in names:
        cfg = copy.deepcopy(DEMO_CONFIGS[n])
        cfg.update((configs or {}).get(n, {}))
        jobs.append((n, cfg, str(out / n.replace("-", "_"))))
    t0 = time.perf_counter()
    done: dict[str, tuple[dict | None, float, str | None]] = {}
    # longest first, so that two workers finish at about the same time
    order = sorted(
        jobs,
        key=lambda j: (
            ["training", "interpolation", "feature-maps", "micro-teleport"].index(j[0])
            if j[0] in ("training", "interpolation", "feature-maps", "micro-teleport")
            else 9
        ),
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="demo experiments", unit="exp")
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
                    f"{len(done)} of {len(jobs)} demo experiments finished, {n_running} stopped, {n_queued} not "
                    "started; run the demo again to write the report"
                ),
            )
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - t0
    report = _write_report(out, names, done, wall, workers, coverage=coverage)
    failed = [n for n in names if done[n][2] is not None]
    if failed:
        raise RuntimeError(f"demo: experiment(s) {', '.join(failed)} failed; see {report}")
    return report


def _torch_threads(n: int | None = None) -> int:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n if n is not None else 1)
    return before


# --------------------------------------------------------------------------------------------------
# formatting


def _sci(x: float | None, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}e}" if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4) else f"{x:.{digits + 2}g}"


def _pm(s: dict[str, Any] | None, digits: int = 3) -> str:
    if not s or s.get("mean") is None:
        return "n/a"
    m, sd = s["mean"], s.get("std")
    if m is None or not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}g} ± {sd:.2g}" if sd is not None else f"{m:.{digits}g}"


def _rel(out: Path, p: Path) -> str:
    return os.path.relpath(p, out)


# --------------------------------------------------------------------------------------------------
# one section per experiment


def _level_curves(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    models = res["models"]
    worst64 = (
        max(models[m]["float64"]["max_output_diff"] / max(1.0, models[m]["float64"]["max_abs_output"]) for m in models)
        if all("float64" in models[m] for m in models)
        else None
    )
    nums = []
    for m, v in models.items():
        for dt, s in v.items():
            nums.append(
                (
                    f"{m} ({dt}, {s['num_parameters']} params)",
                    f"max|Δout| {_sci(s['max_output_diff'])} (train mode {_sci(s['max_output_diff_train_mode'])}), "
                    f"max|ΔL| {_sci(s['abs_loss_diff']['max'])}, mean|W−V| {s['mean_abs_diff']['mean']:.3g} "
                    f"vs mean|W| {s['mean_abs_w']:.3g}",
                )
            )
    ok = worst64 is not None and worst64 < 1e-12
    cfg = res["config"]
    sec = Section(
        title=TITLES["level-curves"],
        anchor="level-curves",
        claim=(
            f"Paper (Sec. 4.2): teleporting an MLP 100 times (inter, s = 0.9) moves its weights by a mean |W−V| "
            f"of 0.08 (|W| ≈ 0.18) while the loss changes by ~1e-10. Here: {cfg['num_teleports']} teleports "
            f"of each zoo model, s = {cfg['cob_range']} ({cfg['sampling']}), on {cfg['num_examples']} "
            f"validation digits."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "level_curves.png",
                "Left: the weights move by as much as their own size. Right: the "
                "loss changes only by round-off (dotted lines: machine epsilon of each dtype; a difference "
                "of exactly 0 is drawn at 1e-20).",
            )
        ],
        verdict=("function preserved to float64 round-off" if ok else "function NOT preserved to round-off"),
        status="good" if ok else "bad",
    )
    head = Headline(
        "function preservation (float64)",
        _sci(worst64),
        f"max |f_W(x) − f_V(x)| / max(1, |f|), {len(models)} zoo models × {cfg['num_teleports']} "
        "teleports, s = 0.9 inter",
        "good" if ok else "bad",
    )
    return sec, [head]


def _micro(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    nums = [
        (
            "micro-teleport vs gradient (all)",
            f"{_pm(res['micro_vs_grad'], 8)}°, max |angle − 90°| {_sci(res['micro_vs_grad_max_deviation'])}°",
        ),
    ]
    for k, s in res["controls_std"].items():
        nums.append(
            (
                f"{k.replace('_', ' ')}: std of the angle",
                f"{s['mean']:.3g}° (max |angle − 90°| {res['controls_max_deviation'][k]:.3g}°)",
            )
        )
    for c in res["configs"]:
        nums.append(
            (
                f"{c['model']} / {c['dataset']} / batch {c['batch_size']} (D = {c['num_parameters']})",
                f"micro {c['micro_vs_grad']['mean']:.6f}° ± {c['micro_vs_grad']['std']:.1e}, "
                f"random-vs-random std {c['random_vs_random']['std']:.3f}° "
                f"(theory 57.3°/√D = {c['expected_random_std_deg']:.3f}°)",
            )
        )
    ok = res["micro_vs_grad_max_deviation"] < 0.1 and all(
        s["mean"] > 5 * res["micro_vs_grad"]["std"] for s in res["controls_std"].values()
    )
    cfg = res["config"]
    figs = [
        Figure(
            d / f"micro_teleport_{m}.png",
            f"{m}: angle histograms. Top row: micro-teleportation vector (s = {cfg['cob_range']}, "
            f"{cfg['sampling']}) vs the back-propagated mini-batch gradient — a spike at 90°. Other rows: the "
            "paper's controls with Gaussian random vectors, quasi-orthogonal but spread (same bins per "
            "column).",
        )
        for m in cfg["models"]
    ]
    sec = Section(
        title=TITLES["micro-teleport"],
        anchor="micro-teleport",
        claim=(
            "Paper (Sec. 4.3, Fig. 3, Conjecture 1): micro-teleportation vectors are perpendicular to "
            "back-propagated gradients for any batch size, on real and on random data, while random vectors "
            "are only quasi-orthogonal. Here: digits and random data, batch sizes "
            f"{cfg['batch_sizes']}, {cfg['num_samples']} samples per setting, {cfg['dtype']}."
        ),
        numbers=nums,
        figures=figs,
        verdict=(
            "90° within {:.1e}°, controls spread {:.2g}°–{:.2g}°".format(
                res["micro_vs_grad_max_deviation"],
                min(s["mean"] for s in res["controls_std"].values()),
                max(s["mean"] for s in res["controls_std"].values()),
            )
        ),
        status="good" if ok else "bad",
    )
    head = Headline(
        "mean micro-teleport angle",
        f"{res['micro_vs_grad']['mean']:.5f}°",
        f"max deviation {_sci(res['micro_vs_grad_max_deviation'])}°; random controls spread "
        f"(std) ≈ {min(s['mean'] for s in res['controls_std'].values()):.2g}°",
        "good" if ok else "bad",
    )
    return sec, [head]


def _gradient(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    nums = []
    for m, v in res["models"].items():
        nums.append(
            (
                m,
                f"increasing in s: {'yes' if v['increasing'] else 'no'} (Spearman {v['spearman']:.2f}, "
                f"strictly at every step: {'yes' if v.get('strictly_increasing') else 'no'}); "
                f"fit c·(E(s)−1): c = {v['fit_scale']:.3g}, R² = {v['fit_r2']:.2f}; "
                f"‖dV‖²/‖dW‖² ÷ E(s) in [{v['grad_ratio_sq_over_expected']['min']:.2f}, "
                f"{v['grad_ratio_sq_over_expected']['max']:.2f}]",
            )
        )
    n_inc = sum(v["increasing"] for v in res["models"].values())
    cfg = res["config"]
    sec = Section(
        title=TITLES["gradient-scale"],
        anchor="gradient-scale",
        claim=(
            "Paper (Sec. 5.1, Theorem 2, Fig. 5): the gradient of a teleported network is dV = τ_in·dW/τ_out, "
            "so |‖dW‖/‖W‖ − ‖dV‖/‖V‖| grows with the CoB range s, like E[τa²/τb²] = (s²+3)/(3(1−s²)). "
            f"Here: {cfg['num_teleports']} teleports per s ({cfg['sampling']}), one batch of "
            f"{cfg['batch_size']} digits, models at initialisation."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "gradient_scale.png",
                "Left: the paper's quantity (mean ± std over teleports) with a least-squares fit "
                "c·(E(s)−1) (dotted). Right: the gradient-norm ratio ‖dV‖²/‖dW‖² against the expectation "
                "(s²+3)/(3(1−s²)) (dashed); weights next to the (pinned) input and output layers scale "
                "by E[τ²] or E[1/τ²] only, so whole networks sit slightly below the curve.",
            )
        ],
        verdict=f"grows with s for {n_inc} of {len(res['models'])} models",
        status="good" if n_inc == len(res["models"]) else "bad",
    )
    head = Headline(
        "gradient-scale curve increasing in s",
        f"{n_inc} / {len(res['models'])} models",
        f"mean |‖dW‖/‖W‖ − ‖dV‖/‖V‖| increases over s = {cfg['cob_ranges'][0]}…{cfg['cob_ranges'][-1]} "
        "(Spearman ≥ 0.9, last point above the first)",
        "good" if n_inc == len(res["models"]) else "bad",
    )
    return sec, [head]


def _gap_rows(gaps: list[dict]) -> list[tuple[str, str]]:
    rows = []
    for g in gaps:
        label = f"{g['model']} / {g['activation']} / {g['optimizer']} / lr {g['lr']:g} — {g['arm']} vs {g['baseline']}"
        div = {k: v for k, v in g.get("diverged", {}).items() if v}
        rows.append(
            (
                label,
                f"gap epoch 1 {_pm(g['gap_first_epoch'])}, first {g['early_epochs']} epochs "
                f"{_pm(g['gap_early'])} (n = {g['gap_early']['n']} seeds); "
                + _speedup_text(g)
                + "; final val acc "
                + ", ".join(f"{a} {_pm(s, 3)}" for a, s in g["final_val_acc"].items())
                + (f"; diverged runs {div}" if div else ""),
            )
        )
    return rows


def _speedup_text(g: dict) -> str:
    s = g.get("speedup")
    if not s:
        return "speed-up n/a"
    missed = g.get("speedup_not_reached", 0)
    text = f"speed-up ×{_pm(s, 3)}" if s.get("n") else "speed-up n/a"
    return text + (f" ({missed} seed(s) never reached the baseline's final loss)" if missed else "")


def _training(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    ov = res["overall"]["gap_early"]
    ov1 = res["overall"]["gap_first_epoch"]
    all_gaps = [g["gap_early"]["mean"] for g in res["gaps"] if g["gap_early"]["mean"] is not None]
    spread = [g["gap_early"]["std"] for g in res["gaps"] if g["gap_early"]["std"] is not None]
    good = ov["clearly_positive"] > ov["groups"] / 2
    bad = ov["clearly_negative"] > 0 or ov["positive"] < ov["groups"] / 2
    figs = [
        Figure(
            d / p,
            ("Training loss" if "train_loss" in p else "Validation accuracy")
            + " per epoch, mean ± 2 std across seeds (the paper's shading); rows: learning rates, columns: "
            "optimizers. Orange: no teleport; blue: one teleport right after initialisation "
            f"(s = {cfg['cob_range']}, {cfg['sampling']}); both runs of a seed share the initialisation "
            "and batch order.",
        )
        for p in res["files"].get("plots", [])
    ]
    sec = Section(
        title=TITLES["training"],
        anchor="training",
        claim=(
            "Paper (Sec. 5.2, Figs. 6-8): one teleportation right after initialisation (s = 0.9, inter) "
            "accelerates gradient descent, with and without momentum. Here: "
            f"{', '.join(cfg['models'])} on {', '.join(cfg['datasets'])}, init {cfg['init']}, optimizers "
            f"{cfg['optimizers']}, learning rates {cfg['lrs']}, {cfg['seeds']} seeds, {cfg['epochs']} epochs, "
            f"L2 {cfg['weight_decay']}. Gap = baseline loss − teleported loss (positive: teleport ahead), "
            "paired by seed."
        ),
        numbers=_gap_rows(res["gaps"]),
        figures=figs,
        verdict=(
            f"teleported ahead early in {ov['positive']} of {ov['groups']} settings "
            f"({ov['clearly_positive']} by more than 2 std across seeds, {ov['clearly_negative']} clearly "
            "behind)"
        ),
        status="good" if good and not bad else ("bad" if bad else "neutral"),
    )
    value = f"{ov['mean_of_means']:+.3f}" if ov.get("mean_of_means") is not None else "n/a"
    head = Headline(
        "teleported training: early-loss gap",
        value,
        (
            f"mean over {ov['groups']} settings of (baseline − teleported) train loss, first "
            f"{res['gaps'][0]['early_epochs']} epochs; per-setting gaps {min(all_gaps):+.3f}…{max(all_gaps):+.3f}, "
            f"seed std up to {max(spread):.3f}; epoch-1 gap {ov1['mean_of_means']:+.3f}"
        )
        if all_gaps
        else "no data",
        "good" if good and not bad else ("bad" if bad else "neutral"),
    )
    heads = [head]
    speed = [g["speedup"] for g in res["gaps"] if g.get("speedup") and g["speedup"].get("n")]
    if speed:
        means = [s["mean"] for s in speed]
        missed = sum(g.get("speedup_not_reached", 0) for g in res["gaps"])
        heads.append(
            Headline(
                "speed-up of teleported training",
                f"×{min(means):.2f} … ×{max(means):.2f}",
                "baseline epochs ÷ epochs the teleported run needs to reach the baseline's final train loss, "
                f"per setting (mean over seeds; seed std up to {max(s['std'] for s in speed):.2f})"
                + (f"; {missed} run(s) never reached it" if missed else ""),
                "good" if min(means) > 1 and not missed else ("bad" if max(means) < 1 else "neutral"),
            )
        )
    return sec, heads


def _pseudo(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    figs = [
        Figure(
            d / p,
            ("Training loss" if "train_loss" in p else "Validation accuracy")
            + " per epoch, mean ± 2 std across seeds. Grey: pseudo-teleportation (a random jump of the "
            "same length as the teleport); blue: real teleport; orange: none.",
        )
        for p in res["files"].get("plots", [])
    ]
    ov = res["overall"]
    verdict = "; ".join(
        f"{a}: ahead early in {v['gap_early']['positive']}/{v['gap_early']['groups']} settings"
        if v["gap_early"]["groups"]
        else f"{a}: every run diverged"
        for a, v in ov.items()
    )
    pseudo_div = sum(g["diverged"].get("pseudo", 0) for g in res["gaps"] if g["arm"] == "pseudo")
    pseudo_helps = ov.get("pseudo", {}).get("gap_early", {}).get("clearly_positive", 0) > 0
    notes = [
        "Pseudo-teleportation (training.py): V = W + r·u with r = ‖W − τW‖ (the same CoB sample a real teleport "
        "would use) and u uniform on the unit sphere of the whole parameter vector; the function changes."
    ]
    if pseudo_div:
        notes.append(
            f"{pseudo_div} pseudo-teleported run(s) diverged (NaN loss): a random jump of the teleport's "
            "length is far outside the initialisation scale."
        )
    sec = Section(
        title=TITLES["pseudo-teleport"],
        anchor="pseudo-teleport",
        claim=(
            "Paper (Sec. 5.2, Fig. 9): moving the weights as far as a teleport would, but in a random "
            "direction, does not improve training. Here: "
            f"{', '.join(cfg['models'])} on {', '.join(cfg['datasets'])}, {cfg['optimizers']}, lr {cfg['lrs']}, "
            f"{cfg['seeds']} seeds, {cfg['epochs']} epochs."
        ),
        numbers=_gap_rows(res["gaps"]),
        figures=figs,
        notes=notes,
        verdict=verdict,
        status="bad" if pseudo_helps else "good",
    )
    return sec, []


def _mid(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    nums = [
        (
            f"{e['model']} / {e['optimizer']} / lr {e['lr']:g} — {e['arm']}",
            f"val-acc jump one epoch after the teleport {_pm(e['jump'])}, mean difference afterwards "
            f"{_pm(e['mean_diff_after'])}, final val acc {_pm(e['final_val_acc'])} vs {_pm(e['final_val_acc_none'])} "
            f"without (n = {e['n_seeds']})",
        )
        for e in res["effects"]
    ]
    figs = [
        Figure(
            d / p,
            ("Validation accuracy" if "val_acc" in p else "Training loss")
            + f" per epoch, mean ± 2 std across seeds; the dotted line marks the teleport after epoch "
            f"{cfg['teleport_at']} (s = {cfg['cob_ranges']}, {cfg['sampling']}); orange: no teleport.",
        )
        for p in res["files"].get("plots", [])
    ]
    jumps = [e["jump"]["mean"] for e in res["effects"]]
    sec = Section(
        title=TITLES["mid-training"],
        anchor="mid-training",
        claim=(
            "Paper (Figs. 11-12): a single teleport at epoch 30 (s = 0.7, 0.8, 0.9; lr 1e-4, CIFAR-10) makes "
            "the validation accuracy jump, more for larger s. Here (scaled down): teleport after epoch "
            f"{cfg['teleport_at']} of {cfg['epochs']}, {', '.join(cfg['models'])} on "
            f"{', '.join(cfg['datasets'])}, {cfg['optimizers']} lr {cfg['lrs']}, {cfg['seeds']} seeds; the "
            "optimizer state is reset at the teleport."
        ),
        numbers=nums,
        figures=figs,
        verdict=(
            "accuracy jump after the teleport: "
            + ", ".join(f"{e['arm']} {e['jump']['mean']:+.3f}" for e in res["effects"])
        ),
        status="good" if jumps and all(j > 0 for j in jumps) else "neutral",
    )
    return sec, []


def _interp(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    nums = [
        (
            name,
            f"train loss at A {_sci(p['loss_A'])}, at B {_sci(p['loss_B'])} (change under teleport "
            f"{_sci(p['endpoint_loss_change'])}); highest loss between A and B {_sci(p['max_train_loss_between'])}"
            f" (barrier {_sci(p['barrier'])}); mean over the segment {_sci(p['mean_train_loss'])}",
        )
        for name, p in res["profiles"].items()
    ]
    barriers = [p["max_train_loss_between"] for p in res["profiles"].values()]
    sharper = all(b2 >= b1 for b1, b2 in itertools.pairwise(barriers[1:])) and barriers[-1] > barriers[0]
    sec = Section(
        title=TITLES["interpolation"],
        anchor="interpolation",
        claim=(
            "Paper (Sec. 4.4, Fig. 4): on the segment between a small-batch (A) and a large-batch (B) "
            "network, teleporting both makes the 1D loss profile sharper, more so for larger s. Here: "
            f"{cfg['model']} trained {cfg['epochs']} epochs with batch sizes {cfg['batch_sizes']} from the same "
            f"initialisation; teleported with independent CoBs ({cfg['sampling']}) of range {cfg['cob_ranges']}."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "interpolation.png",
                "Loss (blue, log scale) and accuracy (orange) along θ(α) = (1−α)θ_A + αθ_B; dotted: train, "
                "solid: validation; green lines: the two trained networks (their values do not change "
                "under teleportation). Left: original pair; then teleported pairs with growing s.",
            )
        ],
        verdict=("profiles sharpen with s" if sharper else "no monotone sharpening with s at this scale"),
        status="good" if sharper else "neutral",
    )
    head = Headline(
        "landscape sharpening",
        f"{_sci(barriers[0])} → {_sci(barriers[-1])}",
        f"highest train loss between A and B: original → teleported with s = {cfg['cob_ranges'][-1]}",
        "good" if sharper else "neutral",
    )
    return sec, [head]


def _hist(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    nums = [
        ("weights", f"{res['before']['n']} ({cfg['parameters']})"),
        ("std before → after", f"{res['before']['std']:.4g} → {res['after']['std']:.4g} (× {res['std_ratio']:.2f})"),
        ("max |w| before → after", f"{res['before']['max_abs']:.4g} → {res['after']['max_abs']:.4g}"),
        ("kurtosis before → after", f"{res['before']['kurtosis']:.3g} → {res['after']['kurtosis']:.3g}"),
        ("share of weights outside the initialisation range", f"{100 * res['fraction_outside_init_range']:.2f} %"),
    ]
    sec = Section(
        title=TITLES["weight-histograms"],
        anchor="weight-histograms",
        claim=(
            "Paper (Fig. 10): an MLP with PyTorch's default uniform initialisation has weights in a narrow "
            "band; after one teleport (s = 0.9) they are much more broadly distributed. Here: "
            f"{cfg['model']} {cfg['model_kwargs'][cfg['model']].get('hidden', '')} on the digits' 64 inputs."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "weight_histograms.png",
                "Top: zoom on the initialisation range (dotted); bottom: the full range with log counts. "
                "Left: before, right: after teleportation.",
            )
        ],
        verdict=f"weights spread: std × {res['std_ratio']:.2f}",
        status="good" if res["std_ratio"] > 1 else "bad",
    )
    return sec, []


def _fmaps(res: dict, d: Path) -> tuple[Section, list[Headline]]:
    cfg = res["config"]
    nums = [
        (
            act,
            f"val acc {a['val_acc']:.3f}; max |Δoutput| {_sci(a['max_output_diff'])}; relative change of the "
            f"'{cfg['layer']}' maps {a['relative_feature_change']:.2f}; per-channel factor |τ| in "
            f"[{a['fitted_ratio_abs']['min']:.2f}, {a['fitted_ratio_abs']['max']:.2f}], sign-flipped channels "
            f"{a['negative_ratio_channels']}/{a['channels']}; residual of a_V = τ·a_W "
            f"{_sci(a['max_residual_of_scalar_fit'])}",
        )
        for act, a in res["activations"].items()
    ]
    notes = []
    if "relu" in res["activations"] and res["activations"]["relu"]["negative_ratio_channels"] == 0:
        notes.append(
            "With ReLU, the engine keeps τ > 0 on channels that pass through a functional F.relu (it "
            "cannot wrap a function call), so only rescaling is visible there; tanh modules are wrapped "
            "and their channels can flip sign."
        )
    sec = Section(
        title=TITLES["feature-maps"],
        anchor="feature-maps",
        claim=(
            "Paper (arXiv version, Fig. 2): teleportation changes the feature maps a network computes while "
            "keeping its function. In fact each hidden map becomes τ_c times the original (Eq. A9). Here: "
            f"{cfg['model']} trained {cfg['epochs']} epochs on {cfg['dataset']}, teleported with s = "
            f"{cfg['cob_range']} ({cfg['sampling']})."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "feature_maps.png",
                f"Output of '{cfg['layer']}' for validation images: rows alternate original / teleported; "
                "each map pair shares one symmetric colour scale (red > 0 > blue), so rescaling and sign "
                "flips show.",
            )
        ],
        notes=notes,
        verdict="features rescaled channel by channel, outputs unchanged",
        status="good" if all(a["max_residual_of_scalar_fit"] < 1e-3 for a in res["activations"].values()) else "bad",
    )
    return sec, []


_SUMMARIZERS = {
    "level-curves": _level_curves,
    "micro-teleport": _micro,
    "interpolation": _interp,
    "gradient-scale": _gradient,
    "training": _training,
    "pseudo-teleport": _pseudo,
    "mid-training": _mid,
    "weight-histograms": _hist,
    "feature-maps": _fmaps,
}


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
    sections: list[Section] = []
    headlines: list[Headline] = []
    summary: dict[str, Any] = {"wall_seconds": wall, "workers": workers, "experiments": {}}
    for name in names:
        res, sec_time, err = done[name]
        folder = out / name.replace("-", "_")
        if err is not None or res is None:
            sections.append(
                Section(
                    title=TITLES[name],
                    anchor=name,
                    claim="",
                    error=err,
                    seconds=sec_time,
                    verdict="failed",
                    status="bad",
                )
            )
            headlines.append(Headline(TITLES[name], "failed", "see its section", "bad"))
            summary["experiments"][name] = {"error": err, "seconds": sec_time}
            continue
        try:
            section, heads = _SUMMARIZERS[name](res, folder)
        except Exception as exc:  # a summary bug must not hide the other results
            section = Section(
                title=TITLES[name],
                anchor=name,
                claim="",
                verdict="summary failed",
                status="bad",
                error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}",
            )
            heads = []
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
        "Armenta et al., “Neural Teleportation”, Mathematics 11(2):480, 2023 — every experiment of the paper at a "
        "small scale on embedded data (scikit-learn digits, random data).",
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
