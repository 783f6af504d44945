"""Micro-teleportation vectors are perpendicular to back-propagated gradients (Armenta et al. 2023, Sec. 4.3).

A micro-teleportation ``V = tau(W)`` with a tiny CoB range (``s = 0.001``, intra-landscape) stays on the loss
level set through ``W``, so ``V - W`` is tangent to it and must be orthogonal to the gradient of the loss --
computed on *any* batch, of any size, of real or random data. For each model, dataset and batch size we draw
``num_samples`` pairs (mini-batch gradient ``dW``, micro-teleportation vector ``V - W``) and, as the paper's
controls, two Gaussian random vectors ``r1, r2`` of the same dimension, and histogram the angles

* ``micro_vs_grad``: ``angle(V - W, dW)`` -- the paper's Dirac delta at 90 degrees;
* ``micro_vs_random``: ``angle(V - W, r1)``; ``grad_vs_random``: ``angle(dW, r1)``; ``random_vs_random``:
  ``angle(r1, r2)`` -- quasi-orthogonal in high dimension but spread by about ``57.3 / sqrt(D)`` degrees.

The loss is plain cross-entropy (no L2 term: with weight decay the conjecture is false, as the paper notes).
Gradients are taken in training mode (BatchNorm with batch statistics), as in training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import nnteleport
from nnteleport.lab.data import load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.level_curves import parse_dtype
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import (
    COLORS,
    angle_deg,
    new_figure,
    progress,
    save_figure,
    summary,
    write_csv,
    write_json,
)
from nnteleport.lab.report_html import Figure, Headline, Section, pm, sci

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "flat_grad",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Angles between micro-teleportation vectors (CoB range 0.001, intra) and back-propagated mini-batch "
    "gradients, against three random-vector controls, for several models, real and random data and batch "
    "sizes 8 and 64 (Armenta et al. 2023, Sec. 4.3, Fig. 3)."
)

DEFAULTS: dict[str, Any] = {
    "models": ["mlp", "vgg", "resnet18", "densenet"],
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "datasets": ["digits", "random"],  # "random": N(0, 1) inputs shaped like the first real dataset
    "data_root": None,
    "batch_sizes": [8, 64],
    "num_samples": 40,  # per model, dataset and batch size (paper: 100)
    "cob_range": 0.001,
    "sampling": "intra",
    "dtype": "float64",
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}

DEFAULTS["model_kwargs"]["mlp"]["hidden"] = [128]  # the paper's MLP here: one hidden layer of 128 neurons

CHOICES: dict[str, list] = {
    "models": list(MODELS),
    "datasets": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "sampling": ["intra", "inter"],
    "dtype": ["float32", "float64"],
}

KINDS = ("micro_vs_grad", "micro_vs_random", "grad_vs_random", "random_vs_random")
LABELS = {
    "micro_vs_grad": "micro-teleport vs gradient",
    "micro_vs_random": "micro-teleport vs random",
    "grad_vs_random": "gradient vs random",
    "random_vs_random": "random vs random",
}


def flat_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient of the mean cross-entropy on ``(x, y)``, flattened over ``model.parameters()`` in order."""
    params = [p for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def _batch(ds: Any, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Examples ``idx`` of ``ds`` stacked (without augmentation for image datasets)."""
    from nnteleport.lab.data import ImageDataset

    if isinstance(ds, ImageDataset):
        return ds.get_batch(idx, augment=False)
    xs, ys = zip(*(ds[i] for i in idx))
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


def _datasets(cfg: dict) -> dict[str, Any]:
    real = [d for d in cfg["datasets"] if d != "random"]
    bundles = {d: load_dataset(d, cfg["data_root"], seed=cfg["seed"]) for d in real}
    if "random" in cfg["datasets"]:
        ref = bundles[real[0]] if real else None
        opts = {"input_shape": ref.input_shape, "num_classes": ref.num_classes} if ref else {}
        bundles["random"] = load_dataset("random", seed=cfg["seed"], **opts)
    return {d: bundles[d] for d in cfg["datasets"]}


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``angles.csv`` and PNGs."""
    cfg = merge_config(DEFAULTS, config or {}, source="micro-teleport")
    validate_config("micro-teleport", cfg)
    device = resolve_device(cfg["device"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dtype = parse_dtype(cfg["dtype"])
    bundles = _datasets(cfg)
    rows: list[dict[str, Any]] = []
    configs: list[dict[str, Any]] = []
    for name in cfg["models"]:
        for ds_name, data in bundles.items():
            torch.manual_seed(cfg["seed"])
            kwargs = dict(cfg["model_kwargs"].get(name, {}))
            model = build_model(name, in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
            model = model.to(device=device, dtype=dtype).train()
            dim = sum(p.numel() for p in model.parameters())
            for bs in cfg["batch_sizes"]:
                gen = torch.Generator().manual_seed(cfg["seed"] + 7919 * bs)
                angles: dict[str, list[float]] = {k: [] for k in KINDS}
                for i in _bar(cfg, progress, name, ds_name, bs):
                    idx = torch.randperm(len(data.train), generator=gen)[:bs].tolist()  # type: ignore[arg-type]
                    x, y = _batch(data.train, idx)
                    x, y = x.to(device=device, dtype=dtype), y.to(device)
                    grad = flat_grad(model, x, y)
                    micro = nnteleport.micro_teleport(
                        model, x, cob_range=cfg["cob_range"], sampling=cfg["sampling"], generator=gen
                    )
                    r1 = torch.randn(dim, generator=gen, dtype=torch.float64).to(device)
                    r2 = torch.randn(dim, generator=gen, dtype=torch.float64).to(device)
                    row = {
                        "model": name,
                        "dataset": ds_name,
                        "batch_size": bs,
                        "sample": i,
                        "micro_vs_grad": angle_deg(micro, grad),
                        "micro_vs_random": angle_deg(micro, r1),
                        "grad_vs_random": angle_deg(grad, r1),
                        "random_vs_random": angle_deg(r1, r2),
                    }
                    rows.append(row)
                    for k in KINDS:
                        angles[k].append(row[k])
                configs.append(
                    {
                        "model": name,
                        "dataset": ds_name,
                        "batch_size": bs,
                        "num_parameters": dim,
                        "expected_random_std_deg": 57.29577951308232 / dim**0.5,
                        **{k: summary(angles[k]) for k in KINDS},
                        "micro_vs_grad_max_deviation": max(abs(a - 90.0) for a in angles["micro_vs_grad"]),
                    }
                )
    micro = [r["micro_vs_grad"] for r in rows]
    results = {
        "experiment": "micro-teleport",
        "config": cfg,
        "configs": configs,
        "micro_vs_grad": summary(micro),
        "micro_vs_grad_max_deviation": max(abs(a - 90.0) for a in micro),
        "controls_std": {k: summary(c[k]["std"] for c in configs) for k in KINDS[1:]},
        "controls_max_deviation": {k: max(abs(r[k] - 90.0) for r in rows) for k in KINDS[1:]},
        "files": {"csv": "angles.csv", "plots": [f"micro_teleport_{m}.png" for m in cfg["models"]]},
    }
    write_csv(out / "angles.csv", rows)
    write_json(out / "results.json", results)
    plot(out)
    return results


def _bar(cfg: dict, enabled: bool, name: str, ds_name: str, bs: int):
    n = cfg["num_samples"]
    return progress(range(n), enabled=enabled, desc=f"micro-teleport {name} {ds_name} b={bs}", total=n)


def plot(out: Path) -> list[Path]:
    """One PNG per model from ``angles.csv``: rows = the four angle kinds, columns = dataset x batch size.

    Each column shares its bins, so the micro-teleport/gradient histogram (a spike at 90 degrees) is drawn on
    the scale of the random controls.
    """
    import numpy as np

    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "angles.csv")
    paths = []
    colors = [COLORS["teleport"], COLORS["grid"][3], COLORS["baseline"], COLORS["grid"][2]]
    for model in res["config"]["models"]:
        cols = [(c["dataset"], c["batch_size"]) for c in res["configs"] if c["model"] == model]
        fig, axes = new_figure(len(KINDS), len(cols), size=(2.9, 1.55), sharex="col")
        for j, (ds, bs) in enumerate(cols):
            mine = [r for r in rows if r["model"] == model and r["dataset"] == ds and r["batch_size"] == bs]
            half = max(max(abs(r[k] - 90.0) for r in mine) for k in KINDS) * 1.05 or 1.0
            bins = np.linspace(90 - half, 90 + half, 62)  # odd bin count: 90 is a bin centre
            for i, kind in enumerate(KINDS):
                ax = axes[i, j]
                ax.hist([r[kind] for r in mine], bins=bins, color=colors[i])
                ax.axvline(90.0, color="k", linewidth=0.6, linestyle=":")
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(LABELS[kind].replace(" vs ", "\nvs "), fontsize=8)
                if i == 0:
                    ax.set_title(f"{ds}, batch {bs}", fontsize=9)
                if i == len(KINDS) - 1:
                    ax.set_xlabel("angle (degrees)")
        fig.suptitle(f"{model}: micro-teleportation (s={res['config']['cob_range']}) vs gradient and controls")
        paths.append(save_figure(fig, out / f"micro_teleport_{model}.png"))
    return paths


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Micro-teleportation vs gradients"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "models": ["mlp", "vgg", "resnet18"],
    "num_samples": 25,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 44


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    angles of micro-teleportation vectors to gradients and the random controls; headline: the mean angle."""
    nums = [
        (
            "micro-teleport vs gradient (all)",
            f"{pm(res['micro_vs_grad'], 8)}°, max |angle − 90°| {sci(res['micro_vs_grad_max_deviation'])}°",
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
        title=TITLE,
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
        f"max deviation {sci(res['micro_vs_grad_max_deviation'])}°; random controls spread "
        f"(std) ≈ {min(s['mean'] for s in res['controls_std'].values()):.2g}°",
        "good" if ok else "bad",
    )
    return sec, [head]
