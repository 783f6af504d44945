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
        edge = ", grid edge" if b.get("at_grid_edge") else ""
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
        f"{res['E_sgd']:.3g} (SGD), {res['E_adam']:.3g} (Adam).\n"
    )
    return _body("lr-confound", cfg, DEFAULTS, file, markdown(header, rows), legend)


#: Table generators: name -> f(results, file) -> the block's body.
TABLES: dict[str, Callable[[dict[str, Any], str], str]] = {
    "gspace-lr-grid": lambda r, f: gspace_lr_grid(r, f, "epochs"),
    "gspace-lr-grid-incl-init": lambda r, f: gspace_lr_grid(r, f, "incl_init"),
    "fixed-value-grid": fixed_value_grid,
    "lr-confound": lr_confound,
}


def generate(name: str, file: str, root: Path = ROOT) -> str:
    if name not in TABLES:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    res = json.loads((root / file).read_text())
    return TABLES[name](res, file)


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(name, file, body)`` of every generated block in a document."""
    return [(m["name"], m["file"], m["body"]) for m in BLOCK.finditer(text)]


def table_structure(body: str) -> list[tuple[str, ...]]:
    """The structure of every markdown table in ``body``: its header row and each row's label (first cell)."""
    out: list[tuple[str, ...]] = []
    lines = body.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = tuple(c.strip() for c in lines[i].strip("|").split("|"))
            labels = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                labels.append(lines[i].strip("|").split("|")[0].strip())
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
