"""The learning-rate confound of "teleportation speeds up training": control arms.

Teleporting once at initialisation by ``T`` (``V = T W``, ``T = tau_out / tau_in`` per element) and then training
with SGD is *exactly* SGD on the original network with per-parameter rates ``lr (tau_in / tau_out)^2`` (the
weight decay not preconditioned); with Adam, up to ``eps``, per-parameter rates ``lr |tau_in / tau_out|``
(:mod:`nnteleport.lab.training.precondition`). The mean SGD factor is ``E(s) = (s^2 + 3) / (3 (1 - s^2))`` (6.7 at
``s = 0.9``), the mean Adam factor ``ln((1 + s) / (1 - s)) / (2 s)`` (1.64). So a teleported run may be faster
only because its learning rate is larger. Arms per seed, all from the same initialisation and batch order:

* ``baseline`` (``lr``), ``teleport`` (teleport at 0, ``lr``), ``precond`` (the preconditioned optimizer on the
  original network: must equal ``teleport``, measured as the largest per-iteration loss difference);
* ``scalar-E`` (plain, ``lr * E(s)``: the mean learning rate matched) and ``lr-x<m>`` (plain, ``lr * m`` over
  ``lr_multipliers``, bracketing ``E(s)``): the best-tuned baseline is the grid point (``lr``, ``lr * E`` and the
  grid) with the lowest mean final training loss, an arm with a diverged seed ranked last;
* with ``adam``: the same for Adam at ``adam_lr`` (``adam-precond``: rates ``lr / |T|``, ``eps`` unscaled -- the
  approximate relation; ``adam-exact``: ``eps * |T|`` too -- exact), ``adam-scalar`` at ``adam_lr * E|tau_a /
  tau_b|`` and the grid ``adam_lr_multipliers``.

Reported, paired by seed: final training loss (mean over the last epoch's mini-batches) and the mean training
loss over all epochs, teleport minus each control (negative: teleport better), how many seeds teleport wins,
diverged runs counted per arm (``k/n diverged``), never dropped silently. A best-tuned rate at an edge of its
grid (not bracketed) is a warning in ``results["warnings"]`` and in the verdict.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np

from nnteleport.engine.cob import expected_squared_ratio
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.plotting import COLORS, new_figure, save_figure, summary, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section
from nnteleport.lab.training.precondition import expected_abs_ratio

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "compare",
    "report_section",
    "run",
    "tasks",
]

DESCRIPTION = (
    "The learning-rate confound: teleport-then-SGD is SGD with per-parameter rates lr (tau_in/tau_out)^2. "
    "Baseline, teleported and preconditioned SGD (equal, as a check), SGD at lr * E(s) and a learning-rate "
    "grid bracketing it; the same for Adam (rates lr |tau_in/tau_out|, up to eps); several seeds."
)

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": None,
    "hidden": [64, 64, 64],
    "activation": "relu",
    "init": "kaiming",
    "optimizer": "sgd",  # sgd | momentum
    "lr": 0.01,
    "lr_multipliers": [2.0, 4.0, 8.0, 16.0, 32.0, 64.0],  # brackets the best (x16-x32 at the defaults)
    "adam": True,
    "adam_lr": 0.001,
    "adam_lr_multipliers": [0.5, 2.0, 4.0, 8.0, 16.0],  # brackets the best (x8 at the defaults)
    "seeds": 3,
    "epochs": 6,
    "batch_size": 64,
    "weight_decay": 0.0005,
    "cob_range": 0.9,
    "sampling": "inter",
    "dtype": "float64",  # the equivalence check is at float64 round-off
    "max_iters_per_epoch": None,
    "workers": 1,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices); not part of a run's identity
}

CHOICES: dict[str, list] = {
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist"],
    "activation": ["relu", "leaky_relu", "tanh", "elu"],
    "init": ["kaiming", "xavier", "normal", "default"],
    "optimizer": ["sgd", "momentum"],
    "sampling": ["intra", "inter"],
    "dtype": ["float32", "float64"],
}


def _arm(name: str, family: str, kind: str, lr: float, **extra: Any) -> dict[str, Any]:
    return {"arm": name, "family": family, "kind": kind, "lr": float(lr), **extra}


def arms(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The arms of ``cfg`` (see the module docstring); ``kind`` is plain / teleport / precond / exact."""
    s, lr, opt = float(cfg["cob_range"]), float(cfg["lr"]), cfg["optimizer"]
    out = [
        _arm("baseline", opt, "plain", lr, mult=1.0),
        _arm("teleport", opt, "teleport", lr),
        _arm("precond", opt, "precond", lr),
        _arm("scalar-E", opt, "plain", lr * expected_squared_ratio(s), mult=expected_squared_ratio(s)),
    ]
    out += [_arm(f"lr-x{m:g}", opt, "plain", lr * m, mult=float(m)) for m in cfg["lr_multipliers"]]
    if cfg["adam"]:
        a, e = float(cfg["adam_lr"]), expected_abs_ratio(s)
        out += [
            _arm("adam-baseline", "adam", "plain", a, mult=1.0),
            _arm("adam-teleport", "adam", "teleport", a),
            _arm("adam-precond", "adam", "precond", a),
            _arm("adam-exact", "adam", "exact", a),
            _arm("adam-scalar", "adam", "plain", a * e, mult=e),
        ]
        out += [_arm(f"adam-lr-x{m:g}", "adam", "plain", a * m, mult=float(m)) for m in cfg["adam_lr_multipliers"]]
    return out


def tasks(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One run per arm and seed."""
    keys = ("dataset", "data_root", "hidden", "activation", "init", "epochs", "batch_size", "weight_decay",
            "cob_range", "sampling", "dtype", "max_iters_per_epoch", "device")  # fmt: skip
    out = []
    for seed in range(int(cfg["seeds"])):
        for a in arms(cfg):
            t = {**{k: cfg[k] for k in keys}, **a, "seed": seed}
            t["id"] = f"{a['arm']}_seed{seed}"
            out.append(t)
    return out


@functools.lru_cache(maxsize=4)
def _data(name: str, root: str | None):
    from nnteleport.lab.data import load_dataset

    return load_dataset(name, root, seed=0)


def _precond_factory(task: dict[str, Any], x: Any):
    """``optimizer(model)`` of the precond / exact arms: ``T`` of the CoB the teleport arm samples."""
    from nnteleport.lab.training.precondition import (
        PreconditionedAdam,
        PreconditionedSGD,
        scale_factors,
        teleport_cob,
    )

    def make(model):
        cob = teleport_cob(model, x, seed=task["seed"], epoch=0, cob_range=task["cob_range"],
                           sampling=task["sampling"])  # fmt: skip
        T = scale_factors(model, x, cob)
        wd = task["weight_decay"]
        if task["family"] == "adam":
            return PreconditionedAdam.for_model(model, T, lr=task["lr"], weight_decay=wd,
                                                exact_eps=task["kind"] == "exact")  # fmt: skip
        mom = 0.9 if task["family"] == "momentum" else 0.0
        return PreconditionedSGD.for_model(model, T, lr=task["lr"], momentum=mom, weight_decay=wd)

    return make


def train_one(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train one arm for one seed; ``{"history": ...}``."""
    import torch

    from nnteleport.lab.models import build_model
    from nnteleport.lab.training import CHECKPOINT_NAME, train
    from nnteleport.lab.training.batches import example_batch

    data = _data(task["dataset"], task["data_root"])
    dtype = getattr(torch, task["dtype"])
    device = resolve_device(task.get("device", "auto"))
    torch.manual_seed(task["seed"])
    model = build_model("mlp", in_shape=data.input_shape, num_classes=data.num_classes,
                        hidden=list(task["hidden"]), activation=task["activation"]).to(device, dtype)  # fmt: skip
    optimizer: Any = task["family"]
    weight_decay = task["weight_decay"]
    if task["kind"] in ("precond", "exact"):
        x = example_batch(data.train, task["batch_size"]).to(device=device, dtype=dtype)
        optimizer, weight_decay = _precond_factory(task, x), 0.0  # the decay is the optimizer's
    history = train(
        model, data, epochs=task["epochs"], batch_size=task["batch_size"], optimizer=optimizer, lr=task["lr"],
        weight_decay=weight_decay, lr_decay_epochs=(), init=None if task["init"] == "default" else task["init"],
        teleport_at=0 if task["kind"] == "teleport" else None, cob_range=task["cob_range"],
        sampling=task["sampling"], seed=task["seed"], checkpoint_dir=run_dir, progress=False,
        max_iters_per_epoch=task["max_iters_per_epoch"],
    )  # fmt: skip
    (Path(run_dir) / CHECKPOINT_NAME).unlink(missing_ok=True)
    return {"history": history.to_dict()}


# --------------------------------------------------------------------------------------------------
# statistics


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def run_stats(history: dict[str, Any]) -> dict[str, float]:
    """``final`` (last epoch's mean training loss), ``mean`` (over all epochs), ``val_acc``; NaN if diverged."""
    tl = [_f(v) for v in history["train_loss"]]
    ok = bool(tl) and all(math.isfinite(v) for v in tl)
    return {
        "final": tl[-1] if ok else math.nan,
        "mean": float(np.mean(tl)) if ok else math.nan,
        "val_acc": _f(history["val_acc"][-1]) if ok and history["val_acc"] else math.nan,
    }


def arm_summary(stats: list[dict[str, float]]) -> dict[str, Any]:
    """Over seeds: ``final``/``mean``/``val_acc`` summaries of the finite runs, ``diverged`` and ``n`` (all)."""
    div = sum(not math.isfinite(s["final"]) for s in stats)
    out: dict[str, Any] = {"n": len(stats), "diverged": div}
    for k in ("final", "mean", "val_acc"):
        out[k] = summary([s[k] for s in stats if math.isfinite(s[k])])
    return out


def _rank_value(summ: dict[str, Any]) -> float:
    """The value a grid point is tuned by: mean final loss; an arm with any diverged seed ranks last."""
    return math.inf if summ["diverged"] or not summ["final"]["n"] else summ["final"]["mean"]


def compare(a: list[dict[str, float]], b: list[dict[str, float]], key: str = "final") -> dict[str, Any]:
    """Paired by seed, ``a - b`` of ``key`` (negative: ``a`` lower). Seeds where either run diverged are counted
    in ``diverged_a`` / ``diverged_b`` and not in the differences; ``a_wins`` counts seeds with ``a`` lower (a
    seed where only ``b`` diverged counts as a win of ``a``, and vice versa)."""
    diffs, wins, div_a, div_b = [], 0, 0, 0
    for sa, sb in zip(a, b):
        fa, fb = math.isfinite(sa[key]), math.isfinite(sb[key])
        div_a += not fa
        div_b += not fb
        if fa and fb:
            diffs.append(sa[key] - sb[key])
            wins += sa[key] < sb[key]
        elif fa:
            wins += 1
    return {"diff": summary(diffs), "a_wins": wins, "n": len(a), "diverged_a": div_a, "diverged_b": div_b}


def equivalence(h1: dict[str, Any], h2: dict[str, Any]) -> float:
    """Largest absolute per-iteration training-loss difference of two runs (NaN if either diverged)."""
    x, y = np.array([_f(v) for v in h1["iter_loss"]]), np.array([_f(v) for v in h2["iter_loss"]])
    n = min(len(x), len(y))
    d = np.abs(x[:n] - y[:n])
    return float(d.max()) if n and np.isfinite(d).all() else math.nan


def grid_edge(best_lr: float, lrs: list[float]) -> str | None:
    """``"upper"`` / ``"lower"`` when ``best_lr`` is the largest / smallest of the grid's rates ``lrs`` (the
    optimum is then not bracketed: a wider grid may find a better baseline), else ``None``."""
    if best_lr >= max(lrs):
        return "upper"
    return "lower" if best_lr <= min(lrs) else None


def grid_warnings(families: dict[str, dict[str, Any]]) -> list[str]:
    """One warning per optimizer family whose best-tuned learning rate lies at an edge of its grid."""
    out = []
    for fam, fr in families.items():
        b = fr["best_tuned"]
        if b.get("edge"):
            key = "adam_lr_multipliers" if fam == "adam" else "lr_multipliers"
            mult = next(g["mult"] for g in fr["grid"] if g["arm"] == b["arm"])
            out.append(
                f"{fam}: the best-tuned lr {b['lr']:g} (x{mult:g}) is at the {b['edge']} edge of the grid, so the "
                f"tuned baseline is not bracketed and its gap to teleport is a bound; extend `{key}` "
                f"{'past' if b['edge'] == 'upper' else 'below'} x{mult:g}"
            )
    return out


def family_results(family_arms: list[dict[str, Any]], by_arm: dict[str, list[dict]], prefix: str) -> dict:
    """Summaries, the tuned grid and the comparisons of one optimizer family (``prefix`` "" or "adam-")."""
    stats = {a["arm"]: [run_stats(h) for h in by_arm[a["arm"]]] for a in family_arms}
    summ = {name: arm_summary(s) for name, s in stats.items()}
    grid = sorted((a for a in family_arms if a["kind"] == "plain"), key=lambda a: a["lr"])
    best = min(grid, key=lambda a: (_rank_value(summ[a["arm"]]), a["lr"]))
    tel, base = f"{prefix}teleport", f"{prefix}baseline"
    scalar = "adam-scalar" if prefix else "scalar-E"
    checks = {
        name: [equivalence(h1, h2) for h1, h2 in zip(by_arm[tel], by_arm[name])]
        for name in (f"{prefix}precond", "adam-exact" if prefix else None)
        if name
    }
    vs = {
        "baseline": compare(stats[tel], stats[base]),
        "matched_mean_lr": compare(stats[tel], stats[scalar]),
        "best_tuned": compare(stats[tel], stats[best["arm"]]),
        "baseline_mean_loss": compare(stats[tel], stats[base], "mean"),
        "matched_mean_lr_mean_loss": compare(stats[tel], stats[scalar], "mean"),
        "best_tuned_mean_loss": compare(stats[tel], stats[best["arm"]], "mean"),
    }
    return {
        "arms": summ,
        "grid": [{"arm": a["arm"], "lr": a["lr"], "mult": a["mult"], **summ[a["arm"]]} for a in grid],
        # at the edge of the grid the tuned baseline is a lower bound on what tuning gives: widen the grid
        "best_tuned": {
            "arm": best["arm"],
            "lr": best["lr"],
            "at_grid_edge": best["lr"] in (grid[0]["lr"], grid[-1]["lr"]),
            "edge": grid_edge(best["lr"], [a["lr"] for a in grid]),
        },
        "scalar_arm": scalar,
        "equivalence_max_abs_loss_diff": checks,
        "teleport_vs": vs,
    }


# --------------------------------------------------------------------------------------------------
# the experiment


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``arms.csv`` and a plot."""
    from nnteleport.lab.experiments.sweep import run_sweep

    cfg = merge_config(DEFAULTS, config or {}, source="lr-confound")
    validate_config("lr-confound", cfg)
    resolve_device(cfg["device"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ts = tasks(cfg)
    res = run_sweep(train_one, ts, out, workers=max(1, int(cfg["workers"])), progress=progress, desc="lr-confound",
                    ignore_keys=("device",))  # fmt: skip
    by_arm: dict[str, list[dict]] = {}
    for t in ts:
        by_arm.setdefault(t["arm"], []).append(res[t["id"]]["history"])
    all_arms = arms(cfg)
    fams = {"sgd": family_results([a for a in all_arms if a["family"] != "adam"], by_arm, "")}
    if cfg["adam"]:
        fams["adam"] = family_results([a for a in all_arms if a["family"] == "adam"], by_arm, "adam-")
    s = float(cfg["cob_range"])
    results = {
        "experiment": "lr-confound",
        "config": cfg,
        "num_runs": len(ts),
        "E_sgd": expected_squared_ratio(s),
        "E_adam": expected_abs_ratio(s),
        "families": fams,
        "warnings": grid_warnings(fams),
        "files": {"csv": ["arms.csv"], "runs": "runs/"},
    }
    rows = []
    for fam, fr in fams.items():
        for a in all_arms:
            if a["arm"] in fr["arms"]:
                sm = fr["arms"][a["arm"]]
                rows.append({"family": fam, "arm": a["arm"], "kind": a["kind"], "lr": a["lr"], "n": sm["n"],
                             "diverged": sm["diverged"], "final_mean": sm["final"]["mean"],
                             "final_std": sm["final"]["std"], "mean_loss_mean": sm["mean"]["mean"],
                             "val_acc_mean": sm["val_acc"]["mean"]})  # fmt: skip
    write_csv(out / "arms.csv", rows)
    results["files"]["plots"] = [_plot(out, results).name]
    write_json(out / "results.json", results)
    return results


def _plot(out: Path, res: dict[str, Any]) -> Path:
    fams = res["families"]
    fig, axes = new_figure(1, len(fams), size=(4.2 * len(fams), 3.2))
    for ax, (fam, fr) in zip(axes[0], fams.items()):
        g = [r for r in fr["grid"] if r["final"]["n"]]
        lrs = np.array([r["lr"] for r in g])
        mu = np.array([r["final"]["mean"] for r in g])
        sd = np.array([r["final"]["std"] for r in g])
        ax.errorbar(lrs, mu, yerr=2 * sd, color=COLORS["baseline"], marker="o", capsize=3, label="plain, lr grid")
        for r in fr["grid"]:
            if r["diverged"]:
                ax.annotate(f"{r['diverged']}/{r['n']} div.", (r["lr"], np.nanmax(mu) if len(mu) else 1.0),
                            fontsize=7, rotation=90)  # fmt: skip
        tel = fr["arms"]["adam-teleport" if fam == "adam" else "teleport"]
        lr0 = min(r["lr"] for r in fr["grid"] if r["mult"] == 1.0)
        if tel["final"]["n"]:
            ax.errorbar([lr0], [tel["final"]["mean"]], yerr=[2 * tel["final"]["std"]], color=COLORS["teleport"],
                        marker="s", capsize=3, label=f"teleport at lr {lr0:g}")  # fmt: skip
        sc = next(r for r in fr["grid"] if r["arm"] == fr["scalar_arm"])
        ax.axvline(sc["lr"], color="#555555", ls="--", lw=1, label="lr x mean factor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("final training loss")
        ax.set_title(fam)
        ax.legend(fontsize=7)
    return save_figure(fig, out / "lr_confound.png")


# --------------------------------------------------------------------------------------------------
# the demo

#: Title of this experiment's section in the demo report.
TITLE = "Learning-rate confound: teleport vs matched learning rates"

#: The demo's configuration: changes to :data:`DEFAULTS`.
DEMO: dict[str, Any] = {"seeds": 3, "epochs": 4, "workers": 1}

#: About how long :data:`DEMO` takes on one core, in seconds.
DEMO_SECONDS = 60


def _fmt_cmp(c: dict[str, Any]) -> str:
    d = c["diff"]
    txt = f"{d['mean']:+.4f} ± {d['std']:.4f}" if d["n"] else "n/a"
    div = f", diverged {c['diverged_a']}/{c['n']} vs {c['diverged_b']}/{c['n']}" if c["diverged_a"] or c[
        "diverged_b"] else ""  # fmt: skip
    return f"{txt} (teleport lower in {c['a_wins']}/{c['n']} seeds{div})"


def verdict_lines(res: dict[str, Any]) -> list[str]:
    """One line per family: the answer, with the numbers; then a ``WARNING:`` line per grid edge."""
    lines = []
    for fam, fr in res["families"].items():
        vs, best = fr["teleport_vs"], fr["best_tuned"]
        beats_base = vs["baseline"]["a_wins"] == vs["baseline"]["n"] and vs["baseline"]["diff"]["n"] > 0
        beats_best = vs["best_tuned"]["a_wins"] == vs["best_tuned"]["n"] and vs["best_tuned"]["diff"]["n"] > 0
        lines.append(
            f"{fam}: teleport {'beats' if beats_base else 'does not beat'} the baseline at the same lr in every seed; "
            f"{'beats' if beats_best else 'does not beat'} the best-tuned baseline ({best['arm']}, lr "
            f"{best['lr']:g}): final-loss difference {_fmt_cmp(vs['best_tuned'])}; against the matched mean lr "
            f"({fr['scalar_arm']}): {_fmt_cmp(vs['matched_mean_lr'])}"
        )
    return lines + [f"WARNING: {w}" for w in res.get("warnings", grid_warnings(res["families"]))]


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section: the comparisons per family, the equivalence check and the verdict."""
    cfg = res["config"]
    numbers = []
    for fam, fr in res["families"].items():
        for name, c in fr["teleport_vs"].items():
            numbers.append((f"{fam}: teleport − {name.replace('_', ' ')}", _fmt_cmp(c)))
        for arm_name, vals in fr["equivalence_max_abs_loss_diff"].items():
            finite = [v for v in vals if v is not None and math.isfinite(v)]
            numbers.append((f"{fam}: max |loss(teleport) − loss({arm_name})| over iterations",
                            f"{max(finite):.2e}" if finite else "diverged"))  # fmt: skip
    figs = [Figure(d / p, "Final training loss (mean ± 2 std over seeds) against the learning rate of the plain "
                   "runs; square: the teleported run at the base lr; dashed: base lr × mean factor.")
            for p in res["files"].get("plots", [])]  # fmt: skip
    lines = verdict_lines(res)
    sgd = res["families"]["sgd"]["teleport_vs"]["best_tuned"]
    beats = sgd["a_wins"] == sgd["n"] and sgd["diff"]["n"] > 0
    sec = Section(
        title=TITLE,
        claim=(
            "Teleport-then-SGD is SGD with per-parameter rates lr (τ_in/τ_out)² (mean factor "
            f"E(s) = (s²+3)/(3(1−s²)) = {res['E_sgd']:.2f} at s = {cfg['cob_range']}); Adam: rates lr |τ_in/τ_out| "
            f"up to eps (mean {res['E_adam']:.2f}). Does teleportation beat a tuned learning rate? MLP "
            f"{cfg['hidden']} ({cfg['activation']}) on {cfg['dataset']}, {cfg['seeds']} seeds, {cfg['epochs']} epochs."
        ),
        numbers=numbers,
        figures=figs,
        notes=lines,
        verdict="; ".join(lines),
        status="good" if beats else "bad",
    )
    head = Headline("teleport vs best-tuned SGD lr", _fmt_cmp(sgd).split(" (")[0], "final train loss, paired",
                    "good" if beats else "bad")  # fmt: skip
    return sec, [head]
