"""fixed-value-grid: median validation loss of Fixed-SGD over a grid of fixed-weight value x learning rate.

Jestädt (2025), Sec. 4.2.3, Fig. 4.7: the fixed weights (one outgoing weight per hidden neuron, diagonal
selection) are given the value ``±b``; each cell is the median validation loss over seeds after a short training
(the thesis: 5 runs, 20 iterations of its training loop -- it calls them iterations; we use ``epochs``); runs that
reach NaN / inf count as ``inf``.

``mode="set"`` overwrites the fixed weights with ``sign(w) * b`` (ours, which changes the initial function);
``mode="set-thesis"`` overwrites them with ``+b`` (the thesis' protocol, Sec. 4.2.1: "Fixed weights are set to
one", here to ``b``); ``mode="rescale"`` reaches ``±b`` by a function-preserving rescaling
(``fix_weights(value=b)``), which isolates the effect of the parametrisation from that of a different initial function.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnteleport.errors import InvalidValueError
from nnteleport.gspace.fixing import fix_weights
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.gspace_lr_grid import set_fixed_to_sign, set_thesis_init, train_grid
from nnteleport.lab.plotting import new_figure, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Fixed-SGD with the fixed weights set to ±b: median validation loss over a grid of b x learning rate "
    "(Jestädt 2025, Sec. 4.2.3, Fig. 4.7); mode 'set' (overwrite with sign(w) b), 'set-thesis' (overwrite with +b, "
    "the thesis) or 'rescale' (function-preserving)."
)

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": "data",
    "train_size": 0,
    "val_size": 0,
    "hidden": [64, 64, 64, 64],
    "bias": False,
    "values": [0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
    "lrs": [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4],
    "mode": "set",
    "optimizer": "sgd",
    "seeds": 3,
    "epochs": 3,
    "batch_size": 64,
    "threads": 1,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}

MODES = ("set", "set-thesis", "rescale")
OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def _builder(value: float, lr: float, mode: str, opt_cls: type[torch.optim.Optimizer]):
    def build(model: torch.nn.Module):
        if mode in ("set", "set-thesis"):
            first = fix_weights(model)
            first.remove()
            if mode == "set":
                set_fixed_to_sign(model, first.masks, value)
            else:
                set_thesis_init(model, first.masks, value)
            handle = fix_weights(model)
        else:
            handle = fix_weights(model, value=value)
        return opt_cls(model.parameters(), lr=lr), handle

    return build


def run(config: dict[str, Any], out: Path, *, progress: bool = True) -> dict[str, Any]:
    cfg = merge_config(DEFAULTS, config or {}, source="fixed-value-grid")
    validate_config("fixed-value-grid", cfg)
    resolve_device(cfg["device"])  # train_grid puts the data and the networks there
    if cfg["mode"] not in MODES:
        raise InvalidValueError(f"mode={cfg['mode']!r}; choose one of: {', '.join(MODES)}")
    if cfg["optimizer"] not in OPTIMIZERS:
        raise InvalidValueError(f"optimizer={cfg['optimizer']!r}; choose one of: {', '.join(OPTIMIZERS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(b, lr, s) for b in cfg["values"] for lr in cfg["lrs"] for s in range(int(cfg["seeds"]))]

    def spec(job: tuple[float, float, int]) -> tuple[str, float, int, Any, dict[str, Any]]:
        b, lr, seed = job
        build = _builder(float(b), float(lr), cfg["mode"], OPTIMIZERS[cfg["optimizer"]])
        return "fixed", lr, seed, build, {"value": b, "lr": lr, "seed": seed}

    runs = train_grid(cfg, jobs, spec, desc="fixed-value-grid", progress_bar=progress)
    for r in runs:
        r["final_val_loss"] = r["val_loss"][-1]
    grid = []
    for b in cfg["values"]:
        for lr in cfg["lrs"]:
            finals = [r["final_val_loss"] for r in runs if r["value"] == b and r["lr"] == lr]
            grid.append(
                {
                    "value": b,
                    "lr": lr,
                    "median_val_loss": float(np.median(finals)),
                    "n_diverged": sum(not math.isfinite(f) for f in finals),
                }
            )
    best = min(grid, key=lambda g: g["median_val_loss"])
    per_value_best = {repr(b): min(g["median_val_loss"] for g in grid if g["value"] == b) for b in cfg["values"]}
    results = {
        "config": cfg,
        "grid": grid,
        "best": best,
        "best_per_value": per_value_best,
        "best_lr_per_value": {
            repr(b): min((g for g in grid if g["value"] == b), key=lambda g: g["median_val_loss"])["lr"]
            for b in cfg["values"]
        },
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    write_json(out / "results.json", results)
    write_csv(out / "grid.csv", grid)
    plot(results, out)
    return results


def plot(results: dict[str, Any], out: Path) -> None:
    cfg = results["config"]
    values, lrs = cfg["values"], cfg["lrs"]
    M = np.full((len(values), len(lrs)), np.nan)
    for g in results["grid"]:
        v = g["median_val_loss"]
        M[values.index(g["value"]), lrs.index(g["lr"])] = np.log10(v) if math.isfinite(v) else np.nan
    fig, axes = new_figure(1, 1, size=(5.0, 3.8))
    ax = axes[0, 0]
    cmap = __import__("matplotlib").colormaps["viridis"].with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(M), cmap=cmap, aspect="auto", origin="lower")
    ax.set_xticks(range(len(lrs)), [f"{lr:g}" for lr in lrs], fontsize=7)
    ax.set_yticks(range(len(values)), [f"{v:g}" for v in values], fontsize=7)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("fixed-weight value b")
    ax.set_title(f"log10 median val. loss ({cfg['mode']}, {cfg['optimizer']}; white: diverged)", fontsize=8)
    fig.colorbar(im, ax=ax)
    save_figure(fig, out / "fixed_value_grid.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Fixed-weight value vs learning rate"

#: The demo's configuration: changes to :data:`DEFAULTS` (the whole grid, one seed).
DEMO: dict[str, Any] = {"seeds": 1}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 3


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNG): per fixed value
    ``b`` the best learning rate and its median validation loss; the verdict says whether the best rate moves
    with ``b``."""
    cfg = res["config"]
    nums = []
    for b in cfg["values"]:
        cells = [g for g in res["grid"] if g["value"] == b]
        diverged = sum(g["n_diverged"] > 0 for g in cells)
        nums.append(
            (
                f"b = {b:g}",
                f"best lr {res['best_lr_per_value'][repr(b)]:g}: median validation loss "
                f"{sci(res['best_per_value'][repr(b)])}; cells with diverged runs {diverged} of {len(cells)}",
            )
        )
    best, best_lrs = res["best"], set(res["best_lr_per_value"].values())
    sec = Section(
        title=TITLE,
        claim=(
            "Thesis (Jestädt 2025, Sec. 4.2.3, Fig. 4.7): with the fixed weights set to ±b, the value b and the "
            "learning rate interact -- the best rate depends on b. Here: Fixed-"
            f"{cfg['optimizer'].upper()}, mode {cfg['mode']!r}, b in {cfg['values']}, learning rates {cfg['lrs']}, "
            f"median of {cfg['seeds']} seed(s) after {cfg['epochs']} epochs, bias-free ReLU MLP {cfg['hidden']} "
            f"on {cfg['dataset']}."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "fixed_value_grid.png",
                "log10 of the median validation loss per fixed value b (rows) and learning rate (columns); "
                "white: every run diverged.",
            )
        ],
        verdict=(
            f"best cell b = {best['value']:g}, lr {best['lr']:g} (median loss {sci(best['median_val_loss'])}); "
            + (
                f"the best rate moves with b ({len(best_lrs)} different rates)"
                if len(best_lrs) > 1
                else "the same best rate for every b"
            )
        ),
        status="good" if len(best_lrs) > 1 else "neutral",
    )
    return sec, []
