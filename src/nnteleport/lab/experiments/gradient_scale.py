"""Back-propagated gradients of a teleported network scale with the CoB range (Armenta et al. 2023, Sec. 5.1).

Theorem 2 of the paper: ``dV = tau_in * dW / tau_out`` per weight, so the squared gradient picks up factors
``tau_a^2 / tau_b^2`` whose expectation for ``tau ~ U[1 - s, 1 + s]`` (and for the inter-landscape mixture, since
only squares enter) is

    E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2)),

growing without bound as ``s -> 1``. For each model and each CoB range ``s`` we teleport the same network
``num_teleports`` times (paper: 20) and record, on one fixed batch,

* the paper's Fig. 5 quantity ``|‖dW‖/‖W‖ - ‖dV‖/‖V‖|`` (mean +- std over the teleports);
* the same difference with its sign, ``‖dV‖/‖V‖ - ‖dW‖/‖W‖`` (positive: the normalised gradient grows under
  teleportation), and how many teleports made it smaller -- the absolute value hides that for BatchNorm nets the
  normalised gradient goes *down* (``‖V‖`` grows with the CoB while BatchNorm keeps ``‖dV‖`` in check);
* the gradient-norm ratio ``‖dV‖^2 / ‖dW‖^2``, drawn against the expectation above. Weights touching the
  input or output layer (pinned CoB 1) only pick up ``E[tau^2] = 1 + s^2/3`` or ``E[1/tau^2] = 1/(1 - s^2)``,
  so the measured ratio of a whole network sits near, not on, the curve. Per ``s`` we report the measured mean
  ratio divided by ``E(s)`` (:func:`nnteleport.engine.cob.expected_squared_ratio`).

The "fit" reported is the least-squares scale ``c`` in ``|...| ~ c * (E(s) - 1)`` and its R^2. The curve "increases
with s" when Spearman's rank correlation between ``s`` and the mean is at least 0.9 and the last point is above the
first (with a few teleports per point, neighbouring small-``s`` points can swap by noise); ``strictly_increasing``
is reported as well.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nnteleport
from nnteleport.engine.cob import expected_squared_ratio
from nnteleport.lab.data import load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.level_curves import parse_dtype
from nnteleport.lab.experiments.micro_teleport import flat_grad
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import (
    COLORS,
    band,
    new_figure,
    progress,
    save_figure,
    summary,
    write_csv,
    write_json,
)
from nnteleport.lab.report_html import Figure, Headline, Section

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "expected_ratio",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Normalised gradient change |‖dW‖/‖W‖ - ‖dV‖/‖V‖| against the CoB range s (num_teleports teleports per "
    "point, mean +- std), with the expectation (s^2+3)/(3(1-s^2)) of the squared gradient scaling overlaid "
    "(Armenta et al. 2023, Sec. 5.1, Fig. 5)."
)

DEFAULTS: dict[str, Any] = {
    "models": ["mlp", "vgg", "resnet18", "densenet"],
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "dataset": "digits",
    "data_root": None,
    "batch_size": 64,
    "cob_ranges": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    "num_teleports": 20,
    "sampling": "inter",
    "dtype": "float32",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}


CHOICES: dict[str, list] = {
    "models": list(MODELS),
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "sampling": ["intra", "inter"],
    "dtype": ["float32", "float64"],
}


def expected_ratio(s: float | np.ndarray) -> float | np.ndarray:
    """``E[tau_a^2 / tau_b^2] = (s^2 + 3) / (3 (1 - s^2))`` for independent ``tau ~ U[1 - s, 1 + s]``
    (:func:`nnteleport.engine.cob.expected_squared_ratio`, element-wise over an array of ``s``)."""
    arr = np.asarray(s, dtype=np.float64)
    out = np.vectorize(expected_squared_ratio, otypes=[np.float64])(arr)
    return float(out) if out.ndim == 0 else out


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, two CSVs and a PNG."""
    cfg = merge_config(DEFAULTS, config or {}, source="gradient-scale")
    validate_config("gradient-scale", cfg)
    device = resolve_device(cfg["device"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(cfg["dtype"])
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"])
    x, y = data.example_batch(cfg["batch_size"], split="train")
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    rows: list[dict[str, Any]] = []
    curves: list[dict[str, Any]] = []
    per_model: dict[str, Any] = {}
    for name in cfg["models"]:
        torch.manual_seed(cfg["seed"])
        kwargs = dict(cfg["model_kwargs"].get(name, {}))
        model = build_model(name, in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
        model = model.to(device=device, dtype=dtype).train()
        w_norm = torch.cat([p.detach().flatten() for p in model.parameters()]).double().norm().item()
        dw_norm = flat_grad(model, x, y).double().norm().item()
        gen = torch.Generator().manual_seed(cfg["seed"])
        for s, i in _bar(cfg, progress, name):
            tele = nnteleport.teleport(model, x, cob_range=s, sampling=cfg["sampling"], generator=gen).train()
            v_norm = torch.cat([p.detach().flatten() for p in tele.parameters()]).double().norm().item()
            dv_norm = flat_grad(tele, x, y).double().norm().item()
            rows.append(
                {
                    "model": name,
                    "cob_range": s,
                    "teleport": i,
                    "w_norm": w_norm,
                    "dw_norm": dw_norm,
                    "v_norm": v_norm,
                    "dv_norm": dv_norm,
                    "abs_diff_normalized": abs(dw_norm / w_norm - dv_norm / v_norm),
                    "signed_diff_normalized": dv_norm / v_norm - dw_norm / w_norm,
                    "v_norm_ratio": v_norm / w_norm,
                    "grad_ratio_sq": (dv_norm / dw_norm) ** 2,
                }
            )
        for s in cfg["cob_ranges"]:
            curves.append(curve_point([r for r in rows if r["model"] == name and r["cob_range"] == s], name, s))
        mc = [c for c in curves if c["model"] == name]
        s_arr = np.array([c["cob_range"] for c in mc])
        m_arr = np.array([c["abs_diff_mean"] for c in mc])
        basis = expected_ratio(s_arr) - 1.0
        scale = float(basis @ m_arr / (basis @ basis))
        ss_res = float(((m_arr - scale * basis) ** 2).sum())
        ss_tot = float(((m_arr - m_arr.mean()) ** 2).sum())
        order = np.argsort(s_arr)
        ratio = np.array([c["grad_ratio_sq_mean"] for c in mc])
        per_model[name] = {
            "w_norm": w_norm,
            "dw_norm": dw_norm,
            "increasing": bool(_spearman(s_arr, m_arr) >= 0.9 and m_arr[order][-1] > m_arr[order][0]),
            "strictly_increasing": bool(np.all(np.diff(m_arr[order]) > 0)),
            "spearman": _spearman(s_arr, m_arr),
            "fit_scale": scale,
            "fit_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "grad_ratio_sq_over_expected": {
                "min": float((ratio / expected_ratio(s_arr)).min()),
                "max": float((ratio / expected_ratio(s_arr)).max()),
            },
            "signed": signed_summary(mc),
        }
    results = {
        "experiment": "gradient-scale",
        "config": cfg,
        "models": per_model,
        "all_increasing": all(m["increasing"] for m in per_model.values()),
        "files": {"csv": ["teleports.csv", "curves.csv"], "plot": "gradient_scale.png"},
    }
    write_csv(out / "teleports.csv", rows)
    write_csv(out / "curves.csv", curves)
    write_json(out / "results.json", results)
    plot(out)
    return results


def curve_point(mine: list[dict[str, Any]], name: str, s: float) -> dict[str, Any]:
    """One row of ``curves.csv`` from the teleports ``mine`` of model ``name`` at CoB range ``s``: the paper's
    absolute difference, the signed difference (with the count of teleports where it is negative) and the
    squared gradient-norm ratio against ``E(s)``."""
    d = summary(r["abs_diff_normalized"] for r in mine)
    g = summary(r["signed_diff_normalized"] for r in mine)
    q = summary(r["grad_ratio_sq"] for r in mine)
    v = summary(r["v_norm_ratio"] for r in mine)
    e = float(expected_ratio(s))
    return {
        "model": name,
        "cob_range": s,
        "abs_diff_mean": d["mean"],
        "abs_diff_std": d["std"],
        "signed_diff_mean": g["mean"],
        "signed_diff_std": g["std"],
        "num_down": sum(r["signed_diff_normalized"] < 0 for r in mine),
        "num_teleports": len(mine),
        "v_norm_ratio_mean": v["mean"],
        "grad_ratio_sq_mean": q["mean"],
        "grad_ratio_sq_std": q["std"],
        "expected_ratio": e,
        "grad_ratio_sq_over_expected": q["mean"] / e,
    }


def signed_summary(mc: list[dict[str, Any]]) -> dict[str, Any]:
    """The signed change of one model over its curve ``mc``: teleports where the normalised gradient went down
    (per ``s`` and in all), and at the largest ``s`` the mean signed change, ``‖V‖/‖W‖`` and ratio / ``E(s)``."""
    last = max(mc, key=lambda c: c["cob_range"])
    down, total = sum(c["num_down"] for c in mc), sum(c["num_teleports"] for c in mc)
    return {
        "num_down": down,
        "num_teleports": total,
        "num_down_by_s": {f"{c['cob_range']:g}": c["num_down"] for c in mc},
        "direction": "down" if down == total else "up" if down == 0 else "mixed",
        "largest_s": last["cob_range"],
        "num_down_at_largest_s": last["num_down"],
        "num_teleports_at_largest_s": last["num_teleports"],
        "signed_diff_mean_at_largest_s": last["signed_diff_mean"],
        "signed_diff_std_at_largest_s": last["signed_diff_std"],
        "v_norm_ratio_at_largest_s": last["v_norm_ratio_mean"],
        "grad_ratio_sq_over_expected_at_largest_s": last["grad_ratio_sq_over_expected"],
    }


def _bar(cfg: dict, enabled: bool, name: str):
    pairs = list(itertools.product(cfg["cob_ranges"], range(cfg["num_teleports"])))
    return progress(pairs, enabled=enabled, desc=f"gradient-scale {name}", total=len(pairs))


def plot(out: Path) -> Path:
    """Draw ``gradient_scale.png`` from ``curves.csv``: the paper's Fig. 5, the signed change and the
    gradient-norm ratio (curves written before the signed change was recorded get two panels)."""
    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    curves = read_csv(out / "curves.csv")
    models = list(res["models"])
    signed = all("signed_diff_mean" in c for c in curves)
    fig, axes = new_figure(1, 3 if signed else 2, size=(5.0, 3.5))
    r_ax = axes[0, 2] if signed else axes[0, 1]
    s_fine = np.linspace(min(c["cob_range"] for c in curves), max(c["cob_range"] for c in curves), 200)
    for k, m in enumerate(models):
        mc = sorted((c for c in curves if c["model"] == m), key=lambda c: c["cob_range"])
        s = [c["cob_range"] for c in mc]
        color = COLORS["grid"][k % len(COLORS["grid"])]
        band(
            axes[0, 0],
            s,
            [c["abs_diff_mean"] for c in mc],
            [c["abs_diff_std"] for c in mc],
            k=1.0,
            color=color,
            label=m,
        )
        axes[0, 0].plot(
            s_fine,
            res["models"][m]["fit_scale"] * (expected_ratio(s_fine) - 1),
            color=color,
            linestyle=":",
            linewidth=1,
        )
        if signed:
            band(
                axes[0, 1],
                s,
                [c["signed_diff_mean"] for c in mc],
                [c["signed_diff_std"] for c in mc],
                k=1.0,
                color=color,
                label=m,
            )
        band(
            r_ax,
            s,
            [c["grad_ratio_sq_mean"] for c in mc],
            [c["grad_ratio_sq_std"] for c in mc],
            k=1.0,
            color=color,
            label=m,
        )
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel("CoB range s")
    axes[0, 0].set_ylabel("|‖dW‖/‖W‖ − ‖dV‖/‖V‖|  (mean ± std)")
    axes[0, 0].set_title("normalised gradient change (dotted: c·(E(s)−1) fit)", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    if signed:
        axes[0, 1].axhline(0.0, color="k", linewidth=0.8)
        axes[0, 1].set_yscale("symlog", linthresh=1e-4)
        axes[0, 1].set_xlabel("CoB range s")
        axes[0, 1].set_ylabel("‖dV‖/‖V‖ − ‖dW‖/‖W‖  (mean ± std)")
        axes[0, 1].set_title("signed change (< 0: normalised gradient went down)", fontsize=9)
        axes[0, 1].legend(fontsize=8)
    r_ax.plot(s_fine, expected_ratio(s_fine), color="k", linestyle="--", label="E(s) = (s²+3)/(3(1−s²))")
    r_ax.set_yscale("log")
    r_ax.set_xlabel("CoB range s")
    r_ax.set_ylabel("‖dV‖² / ‖dW‖²  (mean ± std)")
    r_ax.set_title(f"gradient-norm ratio vs expectation ({res['config']['sampling']})", fontsize=9)
    r_ax.legend(fontsize=8)
    return save_figure(fig, out / "gradient_scale.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Gradient scaling with the CoB range"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "models": ["mlp", "vgg", "resnet18"],
    "num_teleports": 10,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 19


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    growth of the gradient-scale gap with s per model; headline: how many models grow."""
    nums = []
    for m, v in res["models"].items():
        nums.append(
            (
                m,
                f"increasing in s: {'yes' if v['increasing'] else 'no'} (Spearman {v['spearman']:.2f}, "
                f"strictly at every step: {'yes' if v.get('strictly_increasing') else 'no'}); "
                f"fit c·(E(s)−1): c = {v['fit_scale']:.3g}, R² = {v['fit_r2']:.2f}; "
                f"‖dV‖²/‖dW‖² ÷ E(s) in [{v['grad_ratio_sq_over_expected']['min']:.2f}, "
                f"{v['grad_ratio_sq_over_expected']['max']:.2f}]" + _signed_text(v.get("signed")),
            )
        )
    n_inc = sum(v["increasing"] for v in res["models"].values())
    cfg = res["config"]
    sigs = {m: v["signed"] for m, v in res["models"].items() if "signed" in v}
    down = [m for m, g in sigs.items() if g["num_down_at_largest_s"] == g["num_teleports_at_largest_s"]]
    signed_verdict = (
        f"; at s = {max(cfg['cob_ranges']):g} the normalised gradient goes down (signed change < 0) in every "
        f"teleport for {', '.join(down)}"
        if down
        else ""
    )
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Sec. 5.1, Theorem 2, Fig. 5): the gradient of a teleported network is dV = τ_in·dW/τ_out, "
            "so |‖dW‖/‖W‖ − ‖dV‖/‖V‖| grows with the CoB range s, like E[τa²/τb²] = (s²+3)/(3(1−s²)). "
            f"Here: {cfg['num_teleports']} teleports per s ({cfg['sampling']}), one batch of "
            f"{cfg['batch_size']} digits, models at initialisation. The paper's |…| hides the sign: we report "
            "the signed change ‖dV‖/‖V‖ − ‖dW‖/‖W‖ and the raw ratio ‖dV‖²/‖dW‖² against E(s) beside it."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "gradient_scale.png",
                "Left: the paper's quantity (mean ± std over teleports) with a least-squares fit "
                "c·(E(s)−1) (dotted). Middle: the same difference with its sign (below 0: the normalised "
                "gradient went down). Right: the gradient-norm ratio ‖dV‖²/‖dW‖² against the expectation "
                "(s²+3)/(3(1−s²)) (dashed); weights next to the (pinned) input and output layers scale "
                "by E[τ²] or E[1/τ²] only, so whole networks sit slightly below the curve.",
            )
        ],
        verdict=f"|…| grows with s for {n_inc} of {len(res['models'])} models{signed_verdict}",
        status="good" if n_inc == len(res["models"]) else "bad",
    )
    head = Headline(
        "gradient-scale curve increasing in s",
        f"{n_inc} / {len(res['models'])} models",
        f"mean |‖dW‖/‖W‖ − ‖dV‖/‖V‖| increases over s = {cfg['cob_ranges'][0]}…{cfg['cob_ranges'][-1]} "
        "(Spearman ≥ 0.9, last point above the first)",
        "good" if n_inc == len(res["models"]) else "bad",
    )
    heads = [head]
    if all("signed" in v for v in res["models"].values()):
        n_down = sum(v["signed"]["num_down_at_largest_s"] for v in res["models"].values())
        n_all = sum(v["signed"]["num_teleports_at_largest_s"] for v in res["models"].values())
        heads.append(
            Headline(
                "normalised gradient goes down",
                f"{n_down} / {n_all} teleports",
                f"‖dV‖/‖V‖ < ‖dW‖/‖W‖ at s = {max(cfg['cob_ranges'])}, all models"
                + (f" (every teleport of {', '.join(down)})" if down else ""),
                "neutral",
            )
        )
    return sec, heads


def _signed_text(sig: dict[str, Any] | None) -> str:
    """The signed-change part of a model's line in the report (empty for results without it)."""
    if not sig:
        return ""
    return (
        f"; signed ‖dV‖/‖V‖ − ‖dW‖/‖W‖ at s = {sig['largest_s']:g}: {sig['signed_diff_mean_at_largest_s']:+.3g} "
        f"± {sig['signed_diff_std_at_largest_s']:.2g}, down in {sig['num_down_at_largest_s']}/"
        f"{sig['num_teleports_at_largest_s']} teleports ({sig['num_down']}/{sig['num_teleports']} over all s), "
        f"‖V‖/‖W‖ = {sig['v_norm_ratio_at_largest_s']:.3g}, ‖dV‖²/‖dW‖² ÷ E(s) = "
        f"{sig['grad_ratio_sq_over_expected_at_largest_s']:.2f}"
    )
