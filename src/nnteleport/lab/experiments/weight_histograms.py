"""Weight histograms before and after teleportation (Armenta et al. 2023, Sec. 5.2, Fig. 10).

An MLP with PyTorch's default (uniform) initialisation has weights in ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]``;
after one teleportation with CoB range 0.9 (``w_ab -> w_ab tau_b / tau_a``) the weights are much more broadly
distributed: factors ``1/tau_a`` up to ``1/(1 - s) = 10`` produce long tails (the paper's zooms). We draw both
histograms (linear and log counts), and record per-layer statistics (std, max |w|, kurtosis) before and after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nnteleport
from nnteleport.errors import InvalidValueError
from nnteleport.lab.data import load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import COLORS, new_figure, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section

__all__ = [
    "CHOICES",
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
    "Histograms of the weights of an MLP (PyTorch default uniform initialisation) before and after one "
    "teleportation with CoB range 0.9, with per-layer statistics (Armenta et al. 2023, Fig. 10)."
)

DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "dataset": "digits",
    "data_root": None,
    "cob_range": 0.9,
    "sampling": "inter",
    "parameters": "weights",  # "weights": tensors with >= 2 dims (no biases / BatchNorm); "all"
    "bins": 101,
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}

DEFAULTS["model_kwargs"]["mlp"]["hidden"] = [500, 500, 500, 500, 500]  # the paper's training MLP: 5 x 500

CHOICES: dict[str, list] = {
    "model": list(MODELS),
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "sampling": ["intra", "inter"],
    "parameters": ["weights", "all"],
}


def _stats(t: torch.Tensor) -> dict[str, float]:
    a = t.detach().double().flatten()
    centred = a - a.mean()
    var = centred.pow(2).mean()
    return {
        "n": int(a.numel()),
        "mean": a.mean().item(),
        "std": var.sqrt().item(),
        "max_abs": a.abs().max().item(),
        "kurtosis": (centred.pow(4).mean() / var.pow(2)).item() if var > 0 else float("nan"),
    }


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, CSVs and a PNG."""
    cfg = merge_config(DEFAULTS, config or {}, source="weight-histograms")
    validate_config("weight-histograms", cfg)
    device = resolve_device(cfg["device"])
    if cfg["parameters"] not in ("weights", "all"):
        raise InvalidValueError(f"weight-histograms: parameters must be 'weights' or 'all', got {cfg['parameters']!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"])
    x = data.example_batch(16)[0].to(device)
    torch.manual_seed(cfg["seed"])
    model = build_model(
        cfg["model"],
        in_shape=data.input_shape,
        num_classes=data.num_classes,
        **cfg["model_kwargs"].get(cfg["model"], {}),
    ).to(device)
    gen = torch.Generator().manual_seed(cfg["seed"])
    tele = nnteleport.teleport(model, x, cob_range=cfg["cob_range"], sampling=cfg["sampling"], generator=gen)

    def chosen(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in m.named_parameters() if cfg["parameters"] == "all" or p.dim() >= 2}

    before, after = chosen(model), chosen(tele)
    all_before = torch.cat([p.flatten() for p in before.values()]).double().cpu()
    all_after = torch.cat([p.flatten() for p in after.values()]).double().cpu()
    init_range = max(p.abs().max().item() for p in before.values())
    full_range = max(init_range, all_after.abs().max().item())
    hist_rows = []
    for view, lim in (("init_range", init_range), ("full_range", full_range)):
        edges = np.linspace(-lim, lim, cfg["bins"] + 1)
        h_before, _ = np.histogram(all_before.numpy(), bins=edges)
        h_after, _ = np.histogram(all_after.numpy(), bins=edges)
        hist_rows += [
            {
                "view": view,
                "bin_left": float(edges[i]),
                "bin_right": float(edges[i + 1]),
                "before": int(h_before[i]),
                "after": int(h_after[i]),
            }
            for i in range(len(h_before))
        ]
    layer_rows = []
    for name in before:
        b, a = _stats(before[name]), _stats(after[name])
        layer_rows.append(
            {
                "parameter": name,
                **{f"before_{k}": v for k, v in b.items()},
                **{f"after_{k}": v for k, v in a.items() if k != "n"},
            }
        )
    results = {
        "experiment": "weight-histograms",
        "config": cfg,
        "before": _stats(all_before),
        "after": _stats(all_after),
        "std_ratio": _stats(all_after)["std"] / _stats(all_before)["std"],
        "fraction_outside_init_range": float((all_after.abs() > init_range).double().mean()),
        "init_range": init_range,
        "layers": layer_rows,
        "files": {"csv": ["histogram.csv", "layers.csv"], "plot": "weight_histograms.png"},
    }
    write_csv(out / "histogram.csv", hist_rows)
    write_csv(out / "layers.csv", layer_rows)
    write_json(out / "results.json", results)
    plot(out)
    return results


def plot(out: Path) -> Path:
    """Draw ``weight_histograms.png`` from ``histogram.csv``: before | after, linear and log counts."""
    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "histogram.csv")
    fig, axes = new_figure(2, 2, size=(4.3, 2.4))
    for j, (key, color, title) in enumerate(
        [
            ("before", COLORS["baseline"], "before teleportation"),
            ("after", COLORS["teleport"], f"after teleportation (s={res['config']['cob_range']})"),
        ]
    ):
        for i, view in enumerate(("init_range", "full_range")):
            mine = [r for r in rows if r["view"] == view]
            left = np.array([r["bin_left"] for r in mine])
            width = np.array([r["bin_right"] - r["bin_left"] for r in mine])
            ax = axes[i, j]
            ax.bar(left, [r[key] for r in mine], width=width, align="edge", color=color)
            ax.axvline(-res["init_range"], color="k", linestyle=":", linewidth=0.8)
            ax.axvline(res["init_range"], color="k", linestyle=":", linewidth=0.8)
            if i == 1:
                ax.set_yscale("log")
                ax.set_xlabel("weight value (all weights, full range)")
            else:
                ax.set_xlabel("weight value (zoom on the initialisation range)")
        axes[0, j].set_title(f"{title}\nstd {res[key]['std']:.3g}, max |w| {res[key]['max_abs']:.3g}", fontsize=9)
    axes[0, 0].set_ylabel("count")
    axes[1, 0].set_ylabel("count (log)")
    return save_figure(fig, out / "weight_histograms.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Weight histograms"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 3


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    spread of the weights before and after the teleport."""
    cfg = res["config"]
    nums = [
        ("weights", f"{res['before']['n']} ({cfg['parameters']})"),
        ("std before → after", f"{res['before']['std']:.4g} → {res['after']['std']:.4g} (× {res['std_ratio']:.2f})"),
        ("max |w| before → after", f"{res['before']['max_abs']:.4g} → {res['after']['max_abs']:.4g}"),
        ("kurtosis before → after", f"{res['before']['kurtosis']:.3g} → {res['after']['kurtosis']:.3g}"),
        ("share of weights outside the initialisation range", f"{100 * res['fraction_outside_init_range']:.2f} %"),
    ]
    sec = Section(
        title=TITLE,
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
