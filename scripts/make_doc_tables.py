"""Generate the tables of measured numbers in docs/*.md from results files (issue 16: numbers generated, not copied).

A generated table sits between two markers in a document::

    <!-- table: NAME FILE -->
    ... (the command that made the results file, the table, notes) ...
    <!-- /table -->

``NAME`` is a generator in :data:`TABLES`, ``FILE`` the results file (a ``results.json`` an experiment wrote,
copied into ``docs/data/``; paths relative to the repository root). Everything in a block is generated: the
command line (from the results' config), the table and its legend.

Usage (from the repository root)::

    python scripts/make_doc_tables.py            # print every block as generated
    python scripts/make_doc_tables.py --write    # rewrite the blocks in docs/*.md
    python scripts/make_doc_tables.py --check    # exit 1 if a block differs from what its results file gives

``tests/test_doc_tables.py`` fails when a documented table and this script's output differ in structure (the
header and the row labels); ``--check`` compares the numbers as well.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- table: (?P<name>\S+) (?P<file>\S+) -->\n(?P<body>.*?)<!-- /table -->", re.S)

#: Display names of the gspace-lr-grid methods, in table order.
METHOD_LABELS = {
    "sgd": "SGD",
    "adam": "Adam",
    "gsgd-thesis": "G-SGD (thesis init: diagonal skeleton, every mask entry +1)",
    "gadam-thesis": "G-Adam (thesis init, state kept)",
    "gadam-reset-thesis": "G-Adam (thesis init, reset each step: the thesis' wrapper)",
    "fixed-sgd-thesis": "Fixed-SGD (thesis: fixed weights +1)",
    "fixed-adam-thesis": "Fixed-Adam (thesis: fixed weights +1)",
    "gsgd": "G-SGD (skeleton kept)",
    "gadam": "G-Adam (skeleton kept, state kept)",
    "gadam-reset": "G-Adam (skeleton kept, reset each step)",
    "gsgd-set1": "G-SGD (skeleton set to sign(w))",
    "gadam-set1": "G-Adam (set sign(w), state kept)",
    "gadam-reset-set1": "G-Adam (set sign(w), reset each step)",
    "fixed-sgd": "Fixed-SGD (fixed weights sign(w))",
    "fixed-adam": "Fixed-Adam (fixed weights sign(w))",
    "fixed-sgd-not1": "Fixed-SGD not 1",
    "fixed-sgd-rescaled": "Fixed-SGD rescaled to ±1",
}


def loss(x: float | None) -> float:
    """A loss read from a results file: ``null`` is what ``write_json`` writes for a non-finite value; a mean /
    median loss is non-finite only when a seed diverged, so it reads as ``inf``."""
    return math.inf if x is None else float(x)


def fmt(x: float) -> str:
    """Three significant digits; ``inf`` for a diverged mean."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    if abs(x) >= 1e4:
        return f"{x:.1e}"
    if abs(x) >= 10:
        return f"{x:.0f}"
    return f"{x:.3f}" if abs(x) >= 1 else f"{x:#.3g}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def yaml_value(v: Any) -> str:
    """``v`` as the CLI's ``--set`` reads it back (YAML: a float needs a dot, ``1e-06`` would be a string)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        r = repr(v)
        return r.replace("e", ".0e") if "e" in r and "." not in r else r
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(yaml_value(u) for u in v) + "]"
    return str(v)


def command(name: str, cfg: dict[str, Any], defaults: dict[str, Any], file: str) -> str:
    """The command line that reproduces the results file: the experiment with every key that differs from the
    defaults passed as ``--set``."""
    sets = " ".join(f"--set '{k}={yaml_value(v)}'" for k, v in cfg.items() if k in defaults and v != defaults[k])
    out = "/tmp/" + Path(file).stem
    cmd = f"python -m nnteleport experiment {name} {sets} --out {out}".replace("  ", " ")
    return f"`{cmd}`, then `cp {out}/results.json {file}` and `python scripts/make_doc_tables.py --write`"


def _body(name: str, cfg: dict[str, Any], defaults: dict[str, Any], file: str, table: str, legend: str) -> str:
    return f"Generated from `{file}` by: {command(name, cfg, defaults, file)}.\n\n{table}\n{legend}"


def _lr_label(lr: str) -> str:
    return f"{float(lr):.0e}".replace("e-0", "e-")


def gspace_lr_grid(res: dict[str, Any], file: str, definition: str) -> str:
    """Best validation loss (mean over seeds) per method and learning rate; bold: the method's best rate;
    ``inf (k/n)``: k of n seeds diverged (the mean of a cell with a diverged seed is inf, never a mean over the
    survivors)."""
    from nnteleport.lab.experiments.gspace_lr_grid import BEST_DEFINITIONS, DEFAULTS

    suffix = "_incl_init" if definition == "incl_init" else ""
    key, std_key = "mean_best_val_loss" + suffix, "std_best_val_loss" + suffix
    cfg, grid = res["config"], res["grid"]
    lrs = list(next(iter(grid.values())).keys())
    header = ["method", *(_lr_label(lr) for lr in lrs)]
    rows = []
    for m in [m for m in METHOD_LABELS if m in grid] + [m for m in grid if m not in METHOD_LABELS]:
        vals = {lr: loss(grid[m][lr][key]) for lr in lrs}
        best = min(vals, key=lambda k: vals[k])
        cells = []
        for lr in lrs:
            c, v = grid[m][lr], vals[lr]
            s = fmt(v)
            if math.isfinite(v) and c.get(std_key) is not None and 0.001 <= v < 10:
                s += f" ± {c[std_key]:.2g}"
            if c.get("n_diverged"):
                s += f" ({c['n_diverged']}/{c.get('n_runs', cfg['seeds'])} div.)"
            cells.append(f"**{s}**" if lr == best and math.isfinite(v) else s)
        rows.append([METHOD_LABELS.get(m, m), *cells])
    legend = (
        f"Best validation loss, {BEST_DEFINITIONS[definition]}; mean over {cfg['seeds']} seeds, {cfg['epochs']} "
        f"epochs, {cfg['dataset']}, bias-free ReLU MLP {cfg['hidden']}, batch {cfg['batch_size']}, "
        f"{cfg.get('skeleton', 'greedy')} skeleton for the G-space methods that are not `-thesis`; `± s`: standard "
        "deviation over the seeds (finite seeds, shown for losses below 10); bold: the method's best rate; "
        "`(k/n div.)`: k of n seeds diverged ("
        + (
            "their best is the loss before training, so the mean stays finite"
            if definition == "incl_init"
            else "their loss is inf, so the mean is inf"
        )
        + "). Chance level ln 10 = 2.303.\n"
    )
    return _body("gspace-lr-grid", cfg, DEFAULTS, file, markdown(header, rows), legend)


def fixed_value_grid(res: dict[str, Any], file: str) -> str:
    """Median final validation loss per fixed value b (rows) and learning rate (columns)."""
    from nnteleport.lab.experiments.fixed_value_grid import DEFAULTS

    cfg = res["config"]
    lrs, values = cfg["lrs"], cfg["values"]
    cell = {(g["value"], g["lr"]): g for g in res["grid"]}
    best = {b: min(lrs, key=lambda lr: loss(cell[(b, lr)]["median_val_loss"])) for b in values}
    header = ["b", *(f"lr {lr:g}" for lr in lrs)]
    rows = []
    for b in values:
        cells = []
        for lr in lrs:
            g = cell[(b, lr)]
            v = loss(g["median_val_loss"])
            s = fmt(v)
            if g["n_diverged"]:
                s += f" ({g['n_diverged']}/{cfg['seeds']} div.)"
            cells.append(f"**{s}**" if lr == best[b] and math.isfinite(v) else s)
        rows.append([f"{b:g}", *cells])
    legend = (
        f"Median over {cfg['seeds']} seeds of the validation loss after {cfg['epochs']} epochs, Fixed-"
        f"{cfg['optimizer'].upper()}, mode `{cfg['mode']}`; bold: the best rate per b; `(k/n div.)`: k of n "
        "seeds diverged (counted as inf in the median).\n"
    )
    return _body("fixed-value-grid", cfg, DEFAULTS, file, markdown(header, rows), legend)


def lr_confound(res: dict[str, Any], file: str) -> str:
    """Final training loss per arm (mean ± std over seeds) for SGD and Adam, and the paired teleport - control
    differences (negative: teleport lower), with wins and diverged counts."""
    from nnteleport.lab.experiments.lr_confound import DEFAULTS

    cfg, fams = res["config"], res["families"]
    names = [f for f in ("sgd", "adam") if f in fams]

    def stat(d: dict[str, Any]) -> str:
        return f"{d['mean']:.3g} ± {d['std']:.2g}" if d.get("std") is not None else f"{d['mean']:.3g}"

    def arm_cell(fam: str, key: str) -> str:
        arms = fams[fam]["arms"]
        name = {"baseline": "baseline", "teleport": "teleport", "precond": "precond"}[key]
        name = name if fam == "sgd" else f"adam-{name}"
        a = arms.get(name)
        if a is None:
            return "—"
        s = stat(a["final"])
        return s + (f" ({a['diverged']}/{a['n']} div.)" if a.get("diverged") else "")

    def scalar_cell(fam: str) -> str:
        f = fams[fam]
        lr = next(g["lr"] for g in f["grid"] if g["arm"] == f["scalar_arm"])
        return f"{stat(f['arms'][f['scalar_arm']]['final'])} (lr {lr:.3g})"

    def best_cell(fam: str) -> str:
        b = fams[fam]["best_tuned"]
        edge = f", {b['edge']} grid edge" if b.get("edge") else ", grid edge" if b.get("at_grid_edge") else ""
        return f"{stat(fams[fam]['arms'][b['arm']]['final'])} (lr {b['lr']:.3g}{edge})"

    def vs_cell(fam: str, key: str) -> str:
        v = fams[fam]["teleport_vs"][key]
        div = v.get("diverged_a", 0) + v.get("diverged_b", 0)
        return f"{v['diff']['mean']:+.3g} ± {v['diff']['std']:.2g}, teleport lower {v['a_wins']}/{v['n']}" + (
            f" ({div} div.)" if div else ""
        )

    def equiv_cell(fam: str) -> str:
        eq = fams[fam]["equivalence_max_abs_loss_diff"]
        return "; ".join(f"{k}: {max(v):.1e}" for k, v in eq.items())

    rows = [
        ["baseline (lr)", *(arm_cell(f, "baseline") for f in names)],
        ["teleport (lr)", *(arm_cell(f, "teleport") for f in names)],
        ["preconditioned (lr)", *(arm_cell(f, "precond") for f in names)],
        ["max per-iteration loss difference to teleport", *(equiv_cell(f) for f in names)],
        ["plain at lr × mean factor", *(scalar_cell(f) for f in names)],
        ["best of the grid", *(best_cell(f) for f in names)],
        ["teleport − baseline", *(vs_cell(f, "baseline") for f in names)],
        ["teleport − matched mean lr", *(vs_cell(f, "matched_mean_lr") for f in names)],
        ["teleport − best-tuned", *(vs_cell(f, "best_tuned") for f in names)],
    ]
    header = ["arm", *(f"{f.upper() if f == 'sgd' else 'Adam'} final loss" for f in names)]
    legend = (
        f"Final training loss, mean ± std over {cfg['seeds']} seeds ({cfg['epochs']} epochs, {cfg['dataset']}, MLP "
        f"{cfg['hidden']} {cfg['activation']}, s = {cfg['cob_range']} {cfg['sampling']}, weight decay "
        f"{cfg['weight_decay']}, {cfg['dtype']}); differences paired by seed (negative: teleport lower); "
        "`(k/n div.)`: diverged seeds, counted, never averaged. Mean factors E(s) = "
        f"{res['E_sgd']:.3g} (SGD), {res['E_adam']:.3g} (Adam). Tuning grid: lr × 1, E(s) and "
        f"{', '.join(f'{m:g}' for m in cfg['lr_multipliers'])} (SGD); adam_lr × 1, E and "
        f"{', '.join(f'{m:g}' for m in cfg['adam_lr_multipliers'])} (Adam); {res['num_runs']} runs."
        + "".join(f" **Warning: {w}.**" for w in res.get("warnings", []))
        + "\n"
    )
    return _body("lr-confound", cfg, DEFAULTS, file, markdown(header, rows), legend)


# --------------------------------------------------------------------------------------------------
# distance-training (docs/distance.md)


def distance_training(res: dict[str, Any], file: str) -> str:
    """Per model and variant: final and snapshot-ensemble accuracy (mean ± std over seeds), member accuracy,
    disagreement, error correlation, distance travelled from the first checkpoint and the penalty's step-time
    ratio; diverged runs counted."""
    from nnteleport.lab.experiments.distance_training import DEFAULTS

    cfg = res["config"]
    names = {"resnet18": "ResNet-18", "mobilenetv2": "MobileNetV2", "mlp": "MLP"}

    def pm(row: dict[str, Any], key: str, digits: int = 3) -> str:
        m, s = row.get(key), row.get(f"{key}_std")
        if m is None:
            return "–"
        return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if s is not None and row["seeds"] > 1 else "")

    def num(v: Any, spec: str) -> str:
        return "–" if v is None else format(v, spec)

    header = ["model", "variant", "final acc", "ensemble acc", "mean member acc", "disagreement", "error corr.",
              "dist. from ckpt 1 (Euclid / invariant)", "step time with penalty / without"]  # fmt: skip
    order = {m: i for i, m in enumerate(cfg["models"])}, {v: i for i, v in enumerate(cfg["variants"])}
    rows = []
    for r in sorted(res["summary"], key=lambda r: (order[0].get(r["model"], 99), order[1].get(r["variant"], 99))):
        variant = r["variant"] + (f" ({r['diverged']}/{r['seeds']} div.)" if r.get("diverged") else "")
        over = r.get("overhead_ratio") if r["variant"].startswith("distance") else None
        rows.append([
            names.get(r["model"], r["model"]), variant, pm(r, "final_val_acc"), pm(r, "ensemble_acc"),
            num(r.get("mean_member_acc"), ".3f"), pm(r, "disagreement"), pm(r, "error_correlation", 2),
            f"{num(r.get('final_dist_first_ckpt'), '.1f')} / {num(r.get('final_inv_dist_first_ckpt'), '.1f')}",
            num(over, ".2f"),
        ])  # fmt: skip
    seeds = cfg["seeds"]
    legend = (
        f"Mean ± std over seeds {seeds} ({len(seeds)} seeds; {cfg['epochs']} epochs, {cfg['dataset']}, width "
        f"{cfg['width']}, batch {cfg['batch_size']}, lr {cfg['lr']}, momentum {cfg['momentum']}, L2 "
        f"{cfg['weight_decay']}; penalty `{cfg['kernel']}` sigma {cfg['sigma']}, strength {cfg['strength']}, "
        f"first checkpoint after epoch {cfg['warmup_epochs']}, then every {cfg['checkpoint_every']}; SGDR cycle "
        f"{cfg['sgdr_cycle']}); distances and member accuracy are means over seeds; `(k/n div.)`: runs whose final "
        "training loss is not finite (counted, their accuracies kept in the means). The step-time ratio is "
        "measured inside the runs on a shared machine: noisy.\n"
    )
    return _body("distance-training", cfg, DEFAULTS, file, markdown(header, rows), legend)


# --------------------------------------------------------------------------------------------------
# benchmarks (``python -m benchmarks.NAME --json docs/data/bench-NAME.json``: see benchmarks/_results.py)


def _bench_body(res: dict[str, Any], file: str, table: str, legend: str) -> str:
    m = res["machine"]
    cmd = res["command"]
    start, end = m.get("load_average_start"), m.get("load_average_end")
    la = lambda v: " / ".join(f"{x:.2f}" for x in v) if v else "unknown"  # noqa: E731
    load = f"load average (1 / 5 / 15 min) {la(start)} at the start, {la(end)} at the end"
    where = (
        f"{res['date'][:10]}, {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}, {m['torch_threads']} torch "
        f"thread(s), {load}"
    )
    loaded = max((v[0] for v in (start, end) if v), default=0.0) >= 1.0
    note = (
        "Measured on a loaded machine (the load average above: other processes, or the benchmark's own threads "
        "when it uses more than one): absolute times are inflated and noisy, only the ratios measured side by side "
        "within the run mean something."
        if loaded
        else "Measured on a quiet machine (load average below 1)."
    )
    head = (
        f"Generated from `{file}` ({where}) by: `OMP_NUM_THREADS={m.get('omp_num_threads') or 1} {cmd}`, then "
        "`python scripts/make_doc_tables.py --write`."
    )
    return f"{head}\n\n{table}\n{legend} {note}\n"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}x"


def bench_gspace(res: dict[str, Any], file: str) -> str:
    """Step and iteration of every G-space configuration against the plain optimizer; the targets met."""
    r, cfg = res["results"], res["config"]
    tgt = r["targets"]
    header = ["optimizer", "G-space chart", "step plain / G (us)", "step ratio", "iteration ratio",
              "ATen ops / step (plain, G)"]  # fmt: skip
    rows, met = [], []
    for opt, per in r["optimizers"].items():
        for label, c in per.items():
            ok = c["step_ratio"] <= tgt["step_ratio"] and c["iter_ratio"] <= tgt["iter_ratio"]
            met += [f"{opt} / {label}"] if ok else []
            rows.append([opt, label, f"{c['step_plain_us']:.1f} / {c['step_gspace_us']:.1f}",
                         _x(c["step_ratio"]), _x(c["iter_ratio"]),
                         f"{c['ops_plain']:.0f}, {c['ops_gspace']:.0f}"])  # fmt: skip
    n = sum(len(p) for p in r["optimizers"].values())
    legend = (
        f"Medians over {cfg['blocks']} interleaved blocks of {cfg['reps']} calls ({cfg['clock']} clock), the ratio "
        "being the median of the per-block ratios; kernels `unit skeleton` / `thesis chart`, `eager`: the PyTorch "
        f"path. Targets (issue 4: step <= {tgt['step_ratio']}x, iteration <= {tgt['iter_ratio']}x) met in this run "
        f"by {len(met)} of {n}: {', '.join(met) or 'none'}. One tiny ATen call cost {r['tiny_op_us']:.2f} us in "
        f"this run; loading the verified kernel library {r['kernel_load_ms']:.2f} ms (once per process). Kernels: "
        f"{r['native']}."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


def bench_fixing(res: dict[str, Any], file: str) -> str:
    """Plain vs fixed-weight step and iteration; the cost of a live handle to an unrelated optimizer."""
    r, cfg = res["results"], res["config"]
    header = ["optimizer", "plain step, no handle (us)", "plain step, a handle live on another model (us)",
              "fixed step (us)", "step ratio", "iteration ratio"]  # fmt: skip
    rows = [
        [name, f"{c['step_plain_no_hook_us']:.1f}", f"{c['step_plain_us']:.1f}", f"{c['step_fixed_us']:.1f}",
         _x(c["step_ratio"]), _x(c["iter_ratio"])]
        for name, c in r.items() if "setup_ms" not in c
    ]  # fmt: skip
    setup = ", ".join(f"{k} {c['setup_ms']:.0f} ms" for k, c in r.items() if "setup_ms" in c)
    legend = (
        f"Medians over {cfg['blocks']} interleaved blocks of {cfg['reps']} calls ({cfg['clock']} clock); the "
        "ratios (fixed / plain, median per-block ratio) are of the plain optimizer with the handle live. One-off "
        f"setup: {setup} (the first `hungarian` call includes importing scipy)."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


def bench_distance(res: dict[str, Any], file: str) -> str:
    """The checkpoint-distance penalty against the plain step, per number of checkpoints."""
    r, cfg = res["results"], res["config"]
    header = ["checkpoints", "plain step (ms)", "penalty fwd+bwd / plain step", "naive autograd loop / fused",
              "(step + penalty) / step"]  # fmt: skip
    rows = [
        [str(c["checkpoints"]), f"{c['plain_ms']:.1f}", f"{c['fused_ms'] / c['plain_ms']:.3f}",
         f"{c['naive_ms'] / c['fused_ms']:.2f}", f"{c['full_ms'] / c['plain_ms']:.2f}"]
        for c in r["rows"]
    ]  # fmt: skip
    plain = r["rows"][-1]["plain_ms"] if r["rows"] else math.nan
    per = r.get("marginal_ms_per_checkpoint")
    legend = (
        f"ResNet-18 (CIFAR size, width {cfg['width']}, {r['params'] / 1e6:.1f} M parameters), batch {cfg['batch']}, "
        f"SGD momentum, medians of {cfg['reps']} interleaved repetitions."
        + (f" Marginal cost per checkpoint: {per:.1f} ms = {per / plain:.3f} x the plain step." if per else "")
    )
    inv = r.get("invariant")
    if inv and "penalty_ms" in inv:
        legend += (
            f" Invariant penalty (1 checkpoint): {inv['penalty_ms'] / inv['plain_ms']:.3f} x the plain step "
            f"({inv['sweeps']} balancing sweep(s) per call)."
        )
    elif inv:
        legend += f" Invariant penalty: skipped ({inv['skipped']})."
    return _bench_body(res, file, markdown(header, rows), legend)


def bench_canonicalize(res: dict[str, Any], file: str) -> str:
    """``canonicalize`` on plain ReLU chains of growing depth: time, Newton steps, Gauss-Seidel for comparison."""
    r, cfg = res["results"], res["config"]
    header = ["depth", "canonicalize (s)", "ms / layer", "Newton steps", "Gauss-Seidel sweeps",
              "Gauss-Seidel solve (s)", "first analysis (s)"]  # fmt: skip
    rows = [
        [str(c["depth"]), f"{c['seconds']:.3f}", f"{c['per_layer_ms']:.2f}", str(c["newton_steps"]),
         "–" if c["gs_sweeps"] is None else str(c["gs_sweeps"]),
         "–" if c.get("gs_seconds") is None else f"{c['gs_seconds']:.2f}", f"{c['analysis_s']:.2f}"]
        for c in r["rows"]
    ]  # fmt: skip
    legend = (
        f"Width-16 ReLU MLPs, float64, median of {cfg['reps']} calls (the engine's analysis, cached after the first "
        f"call, timed separately); Gauss-Seidel (cold start, to 1e-10) up to depth {cfg['gs_max_depth']}."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


def bench_teleport(res: dict[str, Any], file: str) -> str:
    """A teleport with a cached analysis against one ``_foreach_mul_`` over the parameters (the floor)."""
    r, cfg = res["results"], res["config"]
    header = ["model", "parameters", "analysis (s)", "teleport (ms)", "_foreach_mul_ (ms)", "ratio",
              "teleport with copy (ms)", "retraces"]  # fmt: skip
    rows = [
        [m["model"], f"{m['params']:,}", f"{m['analysis_s']:.2f}", f"{m['teleport_ms']:.2f}",
         f"{m['foreach_mul_ms']:.2f}", _x(m["ratio"]),
         "–" if m["copy_teleport_ms"] is None else f"{m['copy_teleport_ms']:.2f}", str(m["retraces"])]
        for m in r["models"]
    ]  # fmt: skip
    legend = (
        f"Device {cfg['device']}, medians of {cfg['reps']} interleaved repetitions; `analysis`: the first call (fx "
        "trace and interpreted forwards, train and eval graphs); `ratio`: in-place teleport / floor (target at "
        f"most {r['target_ratio']:g}x); `retraces` during the repeated teleports (0: the analysis is reused)."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


# --------------------------------------------------------------------------------------------------
# any experiment: the numbers of its report section (``<!-- table: numbers:EXPERIMENT FILE -->``)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def experiment_numbers(res: dict[str, Any], file: str, experiment: str) -> str:
    """The measured numbers and the verdict of any experiment, as its ``report_section`` (the demo report's
    section) states them from the results file: one row per number."""
    from nnteleport.lab.experiments import get_experiment

    mod = get_experiment(experiment)
    sec, _ = mod.report_section(res, (ROOT / file).parent)
    rows = [[_cell(k), _cell(v)] for k, v in sec.numbers]
    legend = (
        f"The numbers of the experiment's report section (`report_section`, as in the demo report). Verdict "
        f"({sec.status}): {_cell(sec.verdict)}\n"
    )
    return _body(experiment, res["config"], mod.DEFAULTS, file, markdown(["quantity", "value"], rows), legend)


#: Table generators: name -> f(results, file) -> the block's body.
def bench_vmap(res: dict[str, Any], file: str) -> str:
    """Runs per minute of ``train_stacked`` (k members in one process) against k sequential ``train`` runs, with
    the measured arithmetic floor of the stacked runs and the ceiling it puts on the speed-up."""
    r, cfg = res["results"], res["config"]
    header = ["model", "k", "sequential runs/min", "stacked runs/min", "speed-up", "fwd+bwd floor, s (stacked / seq)",
              "ceiling"]  # fmt: skip
    rows = [[c["model"], str(c["k"]), f"{c['seq_runs_per_min']:.1f}", f"{c['vec_runs_per_min']:.1f}",
             _x(c["speedup"]), f"{c['floor_vec_s']:.3f} / {c['floor_seq_s']:.3f}", _x(c["ceiling"])]
            for c in r]  # fmt: skip
    mlp = [c for c in r if c["model"] == "mlp"]
    best = max((c["speedup"] for c in mlp), default=math.nan)
    ceiling = max((c["ceiling"] for c in mlp), default=math.nan)
    device = cfg.get("device", "cpu")
    where = "CPU" if device == "cpu" else "device"
    legend = (
        f"Digits, {cfg['epochs']} epochs per run, half baselines and half teleported at initialisation, "
        f"momentum SGD, on the {device}; medians of {cfg['reps']} interleaved repetitions, the speed-up being "
        "the median per-repetition ratio. Floor: the stacked runs' forward and backward passes alone (vmap, "
        "the same number of steps, no optimizer, loop, evaluation or teleport), and the sequential runs' "
        "passes alone; ceiling = sequential time / stacked floor, the most any vectorisation doing the same "
        "arithmetic could gain here. "
        f"Target (issue 17: at least 3x on the MLP): best MLP speed-up in this run {_x(best)}"
        f"{' (met)' if best >= 3 else ' (not met)'}; the MLP's ceiling in this run {_x(ceiling)}"
        f"{f' (the target is above it: out of reach on this {where})' if ceiling < 3 else ''}."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


def bench_epoch(res: dict[str, Any], file: str) -> str:
    """Seconds per CIFAR-10 epoch of the paper's networks, baseline and teleported, on one device."""
    r, cfg = res["results"], res["config"]
    header = ["network", "parameters", "s / iteration (baseline / teleported)", "s / epoch (baseline / teleported)",
              "teleported / baseline"]  # fmt: skip
    rows = [[c["network"], f"{c['parameters'] / 1e6:.2f} M",
             f"{c['baseline_s_per_iter']:.3g} / {c['teleported_s_per_iter']:.3g}",
             f"{c['baseline_s_per_epoch']:.0f} / {c['teleported_s_per_epoch']:.0f}", _x(c["ratio"])]
            for c in r]  # fmt: skip
    batch = cfg["batch"]
    scaled = f", scaled linearly from the timed batch {batch}" if batch != 64 else ""
    legend = (
        f"On the {cfg['resolved_device']}, float32, CIFAR-size random data, momentum SGD; one iteration = forward, "
        f"backward and optimizer step at batch {batch}; an epoch = 50 000 images at the paper config's batch 64"
        f"{scaled}; medians of {cfg['reps']} interleaved repetitions of {cfg['iters']} iterations. The teleported "
        "copy (inter, CoB range 0.9) trains with the activation wrappers tau f(x / tau)."
    )
    return _bench_body(res, file, markdown(header, rows), legend)


TABLES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "gspace-lr-grid": lambda r, f: gspace_lr_grid(r, f, "epochs"),
    "gspace-lr-grid-incl-init": lambda r, f: gspace_lr_grid(r, f, "incl_init"),
    "fixed-value-grid": fixed_value_grid,
    "lr-confound": lr_confound,
    "distance-training": distance_training,
    "bench-gspace": bench_gspace,
    "bench-fixing": bench_fixing,
    "bench-distance": bench_distance,
    "bench-canonicalize": bench_canonicalize,
    "bench-teleport": bench_teleport,
    "bench-vmap": bench_vmap,
    "bench-epoch": bench_epoch,
}


def generate(name: str, file: str, root: Path = ROOT) -> str:
    """The body of block ``name`` (a key of :data:`TABLES`, or ``numbers:EXPERIMENT``) from results ``file``."""
    if name not in TABLES and not name.startswith("numbers:"):
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}, numbers:EXPERIMENT")
    res = json.loads((root / file).read_text())
    if name.startswith("numbers:"):
        return experiment_numbers(res, file, name.removeprefix("numbers:"))
    return TABLES[name](res, file)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(name, file, body)`` of every generated block in a document."""
    return [(m["name"], m["file"], m["body"]) for m in BLOCK.finditer(text)]


def _cells(line: str) -> list[str]:
    """The cells of a markdown table row (``\\|`` inside a cell is not a separator)."""
    t = line.strip().removeprefix("|")
    t = t[:-1] if t.endswith("|") and not t.endswith("\\|") else t
    return [c.strip() for c in re.split(r"(?<!\\)\|", t)]


def table_structure(body: str) -> list[tuple[str, ...]]:
    """The structure of every markdown table in ``body``: its header row and each row's label (first cell)."""
    out: list[tuple[str, ...]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = tuple(_cells(lines[i]))
            labels = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                labels.append(_cells(lines[i])[0])
                i += 1
            out.append((*header, "::", *labels))
        else:
            i += 1
    return out


def rewrite(text: str, root: Path = ROOT) -> str:
    return BLOCK.sub(
        lambda m: f"<!-- table: {m['name']} {m['file']} -->\n{generate(m['name'], m['file'], root)}<!-- /table -->",
        text,
    )


def docs(root: Path = ROOT) -> list[Path]:
    return sorted((root / "docs").glob("*.md"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite the blocks in docs/*.md")
    ap.add_argument("--check", action="store_true", help="exit 1 if a block differs from its results file")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    bad = 0
    for path in docs():
        text = path.read_text()
        new = rewrite(text)
        if args.write and new != text:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
        elif args.check and new != text:
            print(f"{path.relative_to(ROOT)}: a generated table differs from its results file")
            bad += 1
        elif not args.write and not args.check:
            for name, file, _ in blocks(text):
                print(f"<!-- table: {name} {file} -->\n{generate(name, file)}<!-- /table -->\n")
    return 1 if bad else 0


def teleport_schedule(res: dict[str, Any], file: str) -> str:
    """Per arm (CoB choice x schedule), over the (model, optimizer) groups: how often it is clearly better / worse
    than the no-teleport baseline at the same lr and than the best-tuned no-teleport lr (final training loss and
    loss at the wall-clock budget), the median over groups of the paired median gaps, the time share and the
    gradient-norm growth at the first teleport."""
    from nnteleport.lab.experiments.paired import as_float
    from nnteleport.lab.experiments.teleport_schedule import DEFAULTS

    cfg, groups, ov = res["config"], res["groups"], res["overall"]

    def med(values: list[float]) -> str:
        vals = [v for v in values if not math.isnan(v)]
        return fmt(float(sorted(vals)[len(vals) // 2])) if vals else "—"

    rows = []
    for arm, o in ov.items():
        cs = [g["comparisons"][arm] for g in groups if arm in g["comparisons"]]
        ratio = [
            as_float(c["first_grad_norm_sq_after"]["mean"]) / as_float(c["first_grad_norm_sq_before"]["mean"])
            for c in cs
        ]
        n = o["groups"]
        rows.append([
            arm,
            f"{o['same_lr_better']}/{n} · {o['same_lr_worse']}/{n}",
            f"{o['tuned_better']}/{n} · {o['tuned_worse']}/{n}",
            med([as_float(c["vs_tuned"]["gap_final"]["median"]) for c in cs]),
            f"{o['wall_tuned_better']}/{n} · {o['wall_tuned_worse']}/{n}",
            med([as_float(c["wall_vs_tuned"]["median"]) for c in cs]),
            f"{100 * o['time_share_mean']:.0f}%",
            med(ratio),
            str(o["diverged_runs"]),
        ])  # fmt: skip
    header = ["arm", "vs same lr: better · worse", "vs tuned lr: better · worse", "median gap vs tuned",
              "wall budget vs tuned: better · worse", "median wall gap vs tuned", "time teleporting",
              "grad² after / before (1st)", "diverged runs"]  # fmt: skip
    tuned = ", ".join(f"{g['model']}/{g['optimizer']}: {g['best_tuned']['arm']}"
                      + (" (grid edge)" if g["best_tuned"]["at_grid_edge"] else "") for g in groups)  # fmt: skip
    legend = (
        f"{len(groups)} groups ({', '.join(dict.fromkeys(g['model'] for g in groups))} on {cfg['dataset']} x "
        f"{', '.join(cfg['optimizers'])}), {cfg['seeds']} seeds, {cfg['epochs']} epochs, teleport once at epoch "
        f"{cfg['teleport_epoch']} or every {cfg['every_steps']} steps, s = {cfg['cob_range']} {cfg['sampling']}, "
        f'optimizer state {cfg["optimizer_state"]}, {cfg["dtype"]}. "better · worse": groups where the arm is '
        "clearly lower / higher (every seed on that side and the mean paired gap beyond 2 std); gaps are baseline "
        "minus arm, median over seeds, then the median over groups (positive: the arm is lower; -inf: it "
        "diverged). Final training loss at the step budget; wall budget: the median training time of the "
        "same-lr baseline (teleport time counted). Best-tuned lrs: "
        + tuned
        + (". " + "; ".join(res["skipped"]) if res.get("skipped") else "")
        + ".\n"
    )
    return _body("teleport-schedule", cfg, DEFAULTS, file, markdown(header, rows), legend)


TABLES["teleport-schedule"] = teleport_schedule

if __name__ == "__main__":
    raise SystemExit(main())
