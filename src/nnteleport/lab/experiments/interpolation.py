"""1D loss/accuracy profiles between two trained networks, before and after teleportation (Sec. 4.4, Fig. 4).

Following Keskar et al. (as the paper does), we train the same network twice from the same initialisation,
with a small batch (network A, paper: 8) and a large batch (network B, paper: 1024), and evaluate the loss and
accuracy of ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` on a grid of ``alpha`` (A at 0, B at 1).
Then we teleport A and B with *independent* CoBs of range ``s`` (paper: 0.6, 0.9, 0.99) and draw the profile
between the teleported networks: the endpoints keep their loss (same functions), the path between them does
not -- the paper reports sharper profiles for larger ``s``.

Notes on choices the paper leaves open:

* sampling is ``"intra"`` by default: with ReLU and positive CoBs the teleported activations are unchanged, so
  every point of the segment is a network of the original architecture (with ``"inter"`` the two endpoints have
  different activation functions and the segment would mix them);
* the CoBs of A and B must differ: with one shared CoB the segment is the teleportation of the original
  segment (teleportation is linear in the weights for a fixed CoB) and the profile would not change at all;
* all floating-point state is interpolated (parameters and buffers such as BatchNorm running statistics).

Numbers reported per profile: the loss at the endpoints (and their change under teleportation, which must be
round-off), the highest train loss strictly between A and B (``barrier``) and the mean train loss over the grid.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

import nnteleport
from nnteleport.lab.data import load_dataset
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import COLORS, new_figure, progress, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "interpolate",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Train a network with a small and a large batch (paper: 8 and 1024), draw the 1D loss/accuracy profile "
    "along the segment between them, and between teleported versions with CoB range 0.6, 0.9, 0.99 "
    "(train dotted, validation solid; Armenta et al. 2023, Sec. 4.4, Fig. 4)."
)

DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "dataset": "digits",
    "data_root": None,
    "batch_sizes": [8, 1024],  # network A, network B
    "epochs": 10,
    "optimizer": "momentum",
    "lr": 0.01,
    "weight_decay": 0.0005,
    "init": "kaiming",
    "cob_ranges": [0.6, 0.9, 0.99],
    "sampling": "intra",
    "alpha_min": -0.5,
    "alpha_max": 1.5,
    "num_alphas": 41,
    "eval_examples": 1024,  # examples of each split the profiles are evaluated on (None: all)
    "seed": 0,
}
DEFAULTS["model_kwargs"]["mlp"]["hidden"] = [128, 128, 128, 128, 128]  # paper: 5 hidden layers (of 500)

CHOICES: dict[str, list] = {
    "model": list(MODELS),
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "optimizer": ["sgd", "momentum", "adam"],
    "init": ["kaiming", "xavier", "normal", "default"],
    "sampling": ["intra", "inter"],
}


def interpolate(a: torch.nn.Module, b: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of ``a`` whose floating-point state is ``(1 - alpha) a + alpha b`` (same architecture)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        raise ValueError("cannot interpolate: the two models have different state_dict keys")
    mixed = {k: (torch.lerp(sa[k], sb[k], alpha) if sa[k].is_floating_point() else sa[k].clone()) for k in sa}
    out = copy.deepcopy(a)
    out.load_state_dict(mixed)
    return out


def _subset(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    return torch.utils.data.Subset(ds, range(int(n)))


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``profiles.csv`` and a PNG."""
    from nnteleport.lab.training import evaluate, train

    cfg = merge_config(DEFAULTS, config or {}, source="interpolation")
    validate_config("interpolation", cfg)
    if len(cfg["batch_sizes"]) != 2:
        raise ValueError(f"interpolation: batch_sizes must be two sizes [A, B], got {cfg['batch_sizes']!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"])
    kwargs = dict(cfg["model_kwargs"].get(cfg["model"], {}))

    nets, histories = [], []
    for bs in cfg["batch_sizes"]:
        torch.manual_seed(cfg["seed"])
        model = build_model(cfg["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
        hist = train(
            model,
            data,
            epochs=cfg["epochs"],
            batch_size=int(bs),
            optimizer=cfg["optimizer"],
            lr=cfg["lr"],
            weight_decay=cfg["weight_decay"],
            init=None if cfg["init"] == "default" else cfg["init"],
            seed=cfg["seed"],
            progress=progress,
            desc=f"interpolation: train batch {bs}",
        )
        nets.append(model.eval())
        histories.append(hist.to_dict())

    x_example, _ = data.example_batch(64)
    gen = torch.Generator().manual_seed(cfg["seed"])
    pairs: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {"original": (nets[0], nets[1])}
    for s in cfg["cob_ranges"]:
        pairs[f"s={s:g}"] = tuple(  # type: ignore[assignment]
            nnteleport.teleport(n, x_example, cob_range=s, sampling=cfg["sampling"], generator=gen).eval() for n in nets
        )
    train_eval = _subset(data.train, cfg["eval_examples"])
    val_eval = _subset(data.val, cfg["eval_examples"])
    alphas = np.linspace(cfg["alpha_min"], cfg["alpha_max"], int(cfg["num_alphas"]))
    alphas = np.unique(np.concatenate([alphas, [0.0, 1.0]]))
    rows: list[dict[str, Any]] = []
    points = [(name, float(a)) for name in pairs for a in alphas]
    for name, a in progress_bar(points, progress):
        net = interpolate(*pairs[name], a)
        tl, ta = evaluate(net, train_eval)
        vl, va = evaluate(net, val_eval)
        rows.append({"profile": name, "alpha": a, "train_loss": tl, "train_acc": ta, "val_loss": vl, "val_acc": va})

    profiles: dict[str, Any] = {}
    base = {r["alpha"]: r for r in rows if r["profile"] == "original"}
    for name in pairs:
        mine = [r for r in rows if r["profile"] == name]
        inner = [r["train_loss"] for r in mine if 0.0 < r["alpha"] < 1.0]
        ends = {r["alpha"]: r for r in mine if r["alpha"] in (0.0, 1.0)}
        profiles[name] = {
            "loss_A": ends[0.0]["train_loss"],
            "loss_B": ends[1.0]["train_loss"],
            "val_acc_A": ends[0.0]["val_acc"],
            "val_acc_B": ends[1.0]["val_acc"],
            "endpoint_loss_change": max(abs(ends[x]["train_loss"] - base[x]["train_loss"]) for x in (0.0, 1.0)),
            "barrier": max(inner) - max(ends[0.0]["train_loss"], ends[1.0]["train_loss"]) if inner else math.nan,
            "max_train_loss_between": max(inner) if inner else math.nan,
            "mean_train_loss": float(np.mean([r["train_loss"] for r in mine])),
        }
    results = {
        "experiment": "interpolation",
        "config": cfg,
        "profiles": profiles,
        "histories": {f"batch_{bs}": h for bs, h in zip(cfg["batch_sizes"], histories)},
        "files": {"csv": "profiles.csv", "plot": "interpolation.png"},
    }
    write_csv(out / "profiles.csv", rows)
    write_json(out / "results.json", results)
    plot(out)
    return results


def progress_bar(points: list, enabled: bool):
    return progress(points, enabled=enabled, desc="interpolation profiles", total=len(points))


def plot(out: Path) -> Path:
    """Draw ``interpolation.png`` from ``profiles.csv``: one panel per profile, loss (log) and accuracy."""
    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "profiles.csv")
    names = list(res["profiles"])
    fig, axes = new_figure(1, len(names), size=(3.3, 3.0))
    bs = res["config"]["batch_sizes"]
    for j, name in enumerate(names):
        mine = sorted((r for r in rows if r["profile"] == name), key=lambda r: r["alpha"])
        a = [r["alpha"] for r in mine]
        ax = axes[0, j]
        ax.plot(a, [r["train_loss"] for r in mine], color=COLORS["teleport"], linestyle=":", label="train loss")
        ax.plot(a, [r["val_loss"] for r in mine], color=COLORS["teleport"], label="val loss")
        ax.set_yscale("log")
        for x in (0.0, 1.0):
            ax.axvline(x, color="#2ca02c", linewidth=1)
        ax2 = ax.twinx()
        ax2.plot(a, [r["train_acc"] for r in mine], color=COLORS["baseline"], linestyle=":", label="train acc")
        ax2.plot(a, [r["val_acc"] for r in mine], color=COLORS["baseline"], label="val acc")
        ax2.set_ylim(0, 1.02)
        ax.set_title(name if name == "original" else f"teleported, {name}", fontsize=9)
        ax.set_xlabel(f"alpha (A: batch {bs[0]} at 0, B: batch {bs[1]} at 1)", fontsize=8)
        if j == 0:
            ax.set_ylabel("loss (log)", color=COLORS["teleport"])
            ax.legend(fontsize=7, loc="upper left")
        if j == len(names) - 1:
            ax2.set_ylabel("accuracy", color=COLORS["baseline"])
            ax2.legend(fontsize=7, loc="lower right")
    return save_figure(fig, out / "interpolation.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Interpolation profiles (flatness)"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "epochs": 4,
    "num_alphas": 25,
    "eval_examples": 512,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 13


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    the 1D profiles between A and B and their teleported pairs; headline: the barrier, original vs largest s."""
    cfg = res["config"]
    nums = [
        (
            name,
            f"train loss at A {sci(p['loss_A'])}, at B {sci(p['loss_B'])} (change under teleport "
            f"{sci(p['endpoint_loss_change'])}); highest loss between A and B {sci(p['max_train_loss_between'])}"
            f" (barrier {sci(p['barrier'])}); mean over the segment {sci(p['mean_train_loss'])}",
        )
        for name, p in res["profiles"].items()
    ]
    barriers = [p["max_train_loss_between"] for p in res["profiles"].values()]
    sharper = all(b2 >= b1 for b1, b2 in itertools.pairwise(barriers[1:])) and barriers[-1] > barriers[0]
    sec = Section(
        title=TITLE,
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
        f"{sci(barriers[0])} → {sci(barriers[-1])}",
        f"highest train loss between A and B: original → teleported with s = {cfg['cob_ranges'][-1]}",
        "good" if sharper else "neutral",
    )
    return sec, [head]
