"""Loss level curves: teleport a model many times; it moves far in weight space, its loss does not change.

Armenta et al. 2023, Sec. 4.2: an MLP teleported 100 times with inter-landscape sampling and CoB range 0.9
moves by a mean ``|W - V|`` of 0.08 (against a mean ``|W|`` of 0.18) while the loss changes by ~1e-10.

For each model and dtype we draw ``num_teleports`` CoBs, teleport the *same* model ``W`` to ``V`` each time and
record, on a fixed batch of validation data (eval mode; BatchNorm uses its running statistics):

* ``mean_abs_diff = mean(|W - V|)`` over all parameters, next to ``mean_abs_w = mean(|W|)``;
* ``abs_loss_diff = |L(W) - L(V)|`` (cross-entropy);
* ``max_output_diff = max |f_W(x) - f_V(x)|`` over the batch and the logits, in eval mode and in train mode
  (batch statistics), the function-preservation error.

BatchNorm running statistics are first set to the statistics of the measured batch (``calibrate_bn``): with
PyTorch's initial running statistics (mean 0, variance 1) a deep network such as MobileNetV2 at initialisation
lets the signal vanish in eval mode, its outputs are then just the last bias and the eval-mode check would be
vacuous.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import nnteleport
from nnteleport.errors import InvalidValueError
from nnteleport.lab.data import load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import (
    COLORS,
    new_figure,
    progress,
    save_figure,
    summary,
    write_csv,
    write_json,
)
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "calibrate_bn",
    "parse_dtype",
    "plot",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Teleport each model num_teleports times (paper: 100, inter-landscape, CoB range 0.9) and record the mean "
    "weight change |W - V| against |W|, the loss difference |L(W) - L(V)| and the largest output difference "
    "(function-preservation error) in float32 and float64 (Armenta et al. 2023, Sec. 4.2)."
)

DEFAULTS: dict[str, Any] = {
    "models": ["mlp", "vgg", "resnet18", "densenet", "mobilenetv2"],
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},  # options of build_model, per model
    "dataset": "digits",
    "data_root": None,
    "num_examples": 32,  # validation examples the loss and outputs are measured on
    "train_mode_teleports": 10,  # of the teleports, how many are also checked in train mode (BN batch stats)
    "calibrate_bn": True,  # set BatchNorm running statistics to those of the measured batch first
    "num_teleports": 100,
    "cob_range": 0.9,
    "sampling": "inter",
    "dtypes": ["float32", "float64"],
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}

CHOICES: dict[str, list] = {
    "models": list(MODELS),
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "sampling": ["intra", "inter"],
    "dtypes": ["float32", "float64", "bfloat16"],
}

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    """``"float32"`` -> ``torch.float32`` etc.; a ``ValueError`` lists the allowed names."""
    if name not in _DTYPES:
        raise InvalidValueError(f"unknown dtype {name!r}; choose one of: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def calibrate_bn(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set every BatchNorm's running mean/variance to the statistics of batch ``x`` (one train-mode forward)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    was_training = model.training
    model.train()
    with torch.no_grad():
        model(x)
    model.train(was_training)
    for m, mom in zip(bns, saved):
        m.momentum = mom


def _outputs(model: torch.nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    model = copy.deepcopy(model) if train else model  # train-mode forwards update BN running stats
    model.train(train)
    with torch.no_grad():
        return model(x)


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``teleports.csv``, a PNG."""
    cfg = merge_config(DEFAULTS, config or {}, source="level-curves")
    validate_config("level-curves", cfg)
    device = resolve_device(cfg["device"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"])
    x_all, y_all = data.example_batch(cfg["num_examples"], split="val")

    rows: list[dict[str, Any]] = []
    per_model: dict[str, dict[str, Any]] = {}
    for name in cfg["models"]:
        per_model[name] = {}
        for dtype_name in cfg["dtypes"]:
            dtype = parse_dtype(dtype_name)
            torch.manual_seed(cfg["seed"])
            kwargs = dict(cfg["model_kwargs"].get(name, {}))
            model = build_model(name, in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
            model = model.to(device=device, dtype=dtype).eval()
            x, y = x_all.to(device=device, dtype=dtype), y_all.to(device)
            if cfg["calibrate_bn"]:
                calibrate_bn(model, x)
            w = torch.cat([p.detach().flatten() for p in model.parameters()]).to(torch.float64)
            out_w = _outputs(model, x, train=False)
            out_w_train = _outputs(model, x, train=True)
            loss_w = F.cross_entropy(out_w.to(torch.float64), y).item()
            gen = torch.Generator().manual_seed(cfg["seed"])
            for i in _progress(cfg, progress, name, dtype_name):
                tele = nnteleport.teleport(
                    model, x, cob_range=cfg["cob_range"], sampling=cfg["sampling"], generator=gen
                ).eval()
                v = torch.cat([p.detach().flatten() for p in tele.parameters()]).to(torch.float64)
                out_v = _outputs(tele, x, train=False)
                out_v_train = _outputs(tele, x, train=True) if i < cfg["train_mode_teleports"] else None
                loss_v = F.cross_entropy(out_v.to(torch.float64), y).item()
                rows.append(
                    {
                        "model": name,
                        "dtype": dtype_name,
                        "teleport": i,
                        "mean_abs_w": w.abs().mean().item(),
                        "mean_abs_v": v.abs().mean().item(),
                        "mean_abs_diff": (w - v).abs().mean().item(),
                        "loss_w": loss_w,
                        "loss_v": loss_v,
                        "abs_loss_diff": abs(loss_w - loss_v),
                        "max_output_diff": (out_w - out_v).abs().max().item(),
                        "max_output_diff_train_mode": (
                            (out_w_train - out_v_train).abs().max().item() if out_v_train is not None else None
                        ),
                        "max_abs_output": out_w.abs().max().item(),
                    }
                )
            mine = [r for r in rows if r["model"] == name and r["dtype"] == dtype_name]
            per_model[name][dtype_name] = {
                "num_parameters": int(w.numel()),
                "mean_abs_w": mine[0]["mean_abs_w"],
                "loss_w": loss_w,
                "mean_abs_diff": summary(r["mean_abs_diff"] for r in mine),
                "abs_loss_diff": summary(r["abs_loss_diff"] for r in mine),
                "max_output_diff": max(r["max_output_diff"] for r in mine),
                "max_output_diff_train_mode": max(
                    (r["max_output_diff_train_mode"] for r in mine if r["max_output_diff_train_mode"] is not None),
                    default=None,
                ),
                "max_abs_output": mine[0]["max_abs_output"],
            }

    results = {
        "experiment": "level-curves",
        "config": cfg,
        "models": per_model,
        "max_output_diff": {d: max(per_model[m][d]["max_output_diff"] for m in per_model) for d in cfg["dtypes"]},
        "max_abs_loss_diff": {
            d: max(per_model[m][d]["abs_loss_diff"]["max"] for m in per_model) for d in cfg["dtypes"]
        },
        "files": {"csv": "teleports.csv", "plot": "level_curves.png"},
    }
    write_csv(out / "teleports.csv", rows)
    write_json(out / "results.json", results)
    plot(out)
    return results


def _progress(cfg: dict, enabled: bool, name: str, dtype_name: str):
    return progress(
        range(cfg["num_teleports"]),
        enabled=enabled,
        desc=f"level-curves {name} {dtype_name}",
        total=cfg["num_teleports"],
    )


def plot(out: Path) -> Path:
    """Draw ``level_curves.png`` from ``results.json``: weight change vs weight size, loss changes (log)."""
    import json

    res = json.loads((Path(out) / "results.json").read_text())
    models = list(res["models"])
    dtypes = res["config"]["dtypes"]
    fig, axes = new_figure(1, 2, size=(5.2, 3.4))
    ax = axes[0, 0]
    ref = dtypes[-1]
    xs = range(len(models))
    w = [res["models"][m][ref]["mean_abs_w"] for m in models]
    d = [res["models"][m][ref]["mean_abs_diff"]["mean"] for m in models]
    e = [res["models"][m][ref]["mean_abs_diff"]["std"] for m in models]
    ax.bar([i - 0.2 for i in xs], w, width=0.4, color=COLORS["grid"][2], label="mean |W|")
    ax.bar([i + 0.2 for i in xs], d, width=0.4, yerr=e, color=COLORS["teleport"], label="mean |W - V|")
    ax.set_xticks(list(xs), models, rotation=20)
    ax.set_ylabel("mean absolute value")
    ax.set_title(f"weights move ({res['config']['num_teleports']} teleports, s={res['config']['cob_range']})")
    ax.legend(fontsize=8)

    ax = axes[0, 1]
    eps = {"float32": 2.0**-23, "float64": 2.0**-52, "bfloat16": 2.0**-7}
    for j, dt in enumerate(dtypes):
        for i, m in enumerate(models):
            s = res["models"][m][dt]
            lo, hi, mean = s["abs_loss_diff"]["min"], s["abs_loss_diff"]["max"], s["abs_loss_diff"]["mean"]
            pos = i + (j - (len(dtypes) - 1) / 2) * 0.25
            ax.errorbar(
                [pos],
                [max(mean, 1e-20)],
                yerr=[[max(mean - max(lo, 1e-20), 0)], [hi - mean]],
                fmt="o",
                color=COLORS["grid"][j],
                label=dt if i == 0 else None,
                capsize=3,
            )
        if dt in eps:
            ax.axhline(eps[dt], color=COLORS["grid"][j], linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(list(xs), models, rotation=20)
    ax.set_ylabel("|L(W) - L(V)|  (mean, min-max)")
    ax.set_title("loss does not (dotted: machine epsilon)")
    ax.legend(fontsize=8)
    return save_figure(fig, Path(out) / "level_curves.png")


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Loss level curves"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "num_teleports": 20,
    "num_examples": 32,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 27


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    function preservation per model and dtype; headline: the worst float64 output error."""
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
                    f"max|Δout| {sci(s['max_output_diff'])} (train mode {sci(s['max_output_diff_train_mode'])}), "
                    f"max|ΔL| {sci(s['abs_loss_diff']['max'])}, mean|W−V| {s['mean_abs_diff']['mean']:.3g} "
                    f"vs mean|W| {s['mean_abs_w']:.3g}",
                )
            )
    ok = worst64 is not None and worst64 < 1e-12
    cfg = res["config"]
    sec = Section(
        title=TITLE,
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
        sci(worst64),
        f"max |f_W(x) − f_V(x)| / max(1, |f|), {len(models)} zoo models × {cfg['num_teleports']} "
        "teleports, s = 0.9 inter",
        "good" if ok else "bad",
    )
    return sec, [head]
