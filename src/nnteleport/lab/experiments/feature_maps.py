"""Feature maps of a trained conv net before and after teleportation (arXiv version of the paper, Sec. 2.3).

The paper trains two ResNet-18 on MNIST, one with ReLU and one with tanh activations, teleports them and shows
that the feature maps change a lot although the network function does not. The maths says exactly how: every
hidden feature map ``c`` of the teleported network is the original one multiplied by its CoB factor,
``a_V[c] = tau_c * a_W[c]`` (Eq. A9) -- rescaled and, with inter-landscape sampling, possibly sign-flipped.

We train the model (default: the small ResNet-18 on the embedded 8x8 digits), teleport it, read the output of
module ``layer`` (default ``"layer1"``, the first residual stage) with forward hooks on both networks and draw the
first ``num_channels`` maps of ``num_images`` validation images with a shared, symmetric colour scale per map
(red positive, blue negative), so both the rescaling and the sign flips are visible. Reported: the output
difference (function preservation), the relative change of the feature maps, and how well each teleported map
is a scalar multiple of the original one (the fitted per-channel ratios and the residual).
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
from nnteleport.lab.plotting import new_figure, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

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
    "Train a conv net (default: small ResNet-18 with ReLU and with tanh), teleport it (CoB range 0.9, inter) "
    "and show its feature maps before and after: same outputs, rescaled and sign-flipped features "
    "(Armenta et al., arXiv version, Sec. 2.3, Fig. 2)."
)

DEFAULTS: dict[str, Any] = {
    "model": "resnet18",
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "activations": ["relu", "tanh"],
    "dataset": "digits",  # paper: MNIST
    "data_root": None,
    "epochs": 3,
    "batch_size": 64,
    "optimizer": "momentum",
    "lr": 0.01,
    "max_iters_per_epoch": None,  # cap on the iterations of each epoch (quick runs)
    "layer": "layer1",  # module whose output is shown (a name from model.named_modules())
    "cob_range": 0.9,
    "sampling": "inter",
    "num_images": 2,
    "num_channels": 8,
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}

CHOICES: dict[str, list] = {
    "model": ["vgg", "resnet18", "densenet", "mobilenetv2"],
    "dataset": ["digits", "mnist1d", "random", "mnist", "fashion-mnist", "cifar10", "cifar100"],
    "optimizer": ["sgd", "momentum", "adam"],
    "sampling": ["intra", "inter"],
}


def features(model: torch.nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(output of module layer, model output)`` for input ``x`` (eval mode, no grad)."""
    modules = dict(model.named_modules())
    if layer not in modules:
        some = ", ".join(n for n in list(modules)[1:12])
        raise InvalidValueError(f"feature-maps: model has no module {layer!r}; some of its modules: {some}, ...")
    grabbed: list[torch.Tensor] = []
    handle = modules[layer].register_forward_hook(lambda _m, _i, o: grabbed.append(o.detach()))
    try:
        model.eval()
        with torch.no_grad():
            y = model(x)
    finally:
        handle.remove()
    return grabbed[-1], y


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``channels.csv``, ``maps.npz``, PNG."""
    from nnteleport.lab.training import evaluate, train

    cfg = merge_config(DEFAULTS, config or {}, source="feature-maps")
    validate_config("feature-maps", cfg)
    device = resolve_device(cfg["device"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"])
    x_val, _ = data.example_batch(cfg["num_images"], split="val")
    x_example, _ = data.example_batch(64)
    per_act: dict[str, Any] = {}
    channel_rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {"images": x_val.numpy()}
    x_val, x_example = x_val.to(device), x_example.to(device)
    for act in cfg["activations"]:
        torch.manual_seed(cfg["seed"])
        kwargs = {**cfg["model_kwargs"].get(cfg["model"], {}), "activation": act}
        model = build_model(cfg["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
        model = model.to(device)
        features(model, cfg["layer"], x_val)  # fails early, naming the modules, when the layer does not exist
        train(
            model,
            data,
            epochs=cfg["epochs"],
            batch_size=cfg["batch_size"],
            optimizer=cfg["optimizer"],
            lr=cfg["lr"],
            max_iters_per_epoch=cfg["max_iters_per_epoch"],
            seed=cfg["seed"],
            progress=progress,
            desc=f"feature-maps: train ({act})",
        )
        _, val_acc = evaluate(model, data.val)
        gen = torch.Generator().manual_seed(cfg["seed"])
        tele = nnteleport.teleport(
            model, x_example, cob_range=cfg["cob_range"], sampling=cfg["sampling"], generator=gen
        )
        f_w, y_w = features(model, cfg["layer"], x_val)
        f_v, y_v = features(tele, cfg["layer"], x_val)
        fw = f_w.double().transpose(0, 1).flatten(1)  # (channels, images * spatial)
        fv = f_v.double().transpose(0, 1).flatten(1)
        ratio = (fw * fv).sum(1) / fw.pow(2).sum(1).clamp_min(1e-300)  # least-squares tau_c per channel
        resid = (fv - ratio[:, None] * fw).norm(dim=1) / fv.norm(dim=1).clamp_min(1e-300)
        rel = (fv - fw).norm(dim=1) / fw.norm(dim=1).clamp_min(1e-300)
        for c in range(fw.shape[0]):
            channel_rows.append(
                {
                    "activation": act,
                    "channel": c,
                    "fitted_ratio": ratio[c].item(),
                    "residual": resid[c].item(),
                    "relative_change": rel[c].item(),
                }
            )
        live = fw.norm(dim=1) > 0
        per_act[act] = {
            "val_acc": val_acc,
            "max_output_diff": (y_w - y_v).abs().max().item(),
            "max_abs_output": y_w.abs().max().item(),
            "relative_feature_change": ((fv - fw).norm() / fw.norm()).item(),
            "channels": int(fw.shape[0]),
            "dead_channels": int((~live).sum()),
            "negative_ratio_channels": int((ratio[live] < 0).sum()),
            "fitted_ratio_abs": {"min": ratio[live].abs().min().item(), "max": ratio[live].abs().max().item()},
            "max_residual_of_scalar_fit": resid[live].max().item() if live.any() else float("nan"),
        }
        k = min(cfg["num_channels"], f_w.shape[1])
        arrays[f"{act}_original"] = f_w[:, :k].cpu().numpy()
        arrays[f"{act}_teleported"] = f_v[:, :k].cpu().numpy()
    np.savez_compressed(out / "maps.npz", **arrays)
    write_csv(out / "channels.csv", channel_rows)
    results = {
        "experiment": "feature-maps",
        "config": cfg,
        "activations": per_act,
        "files": {"csv": "channels.csv", "arrays": "maps.npz", "plot": "feature_maps.png"},
    }
    write_json(out / "results.json", results)
    plot(out)
    return results


def plot(out: Path) -> Path:
    """Draw ``feature_maps.png`` from ``maps.npz``: per activation and image, original row over teleported row."""
    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    maps = np.load(out / "maps.npz")
    images = maps["images"]
    acts = res["config"]["activations"]
    n_img = images.shape[0]
    k = maps[f"{acts[0]}_original"].shape[1]
    rows = [(a, i, kind) for a in acts for i in range(n_img) for kind in ("original", "teleported")]
    fig, axes = new_figure(len(rows), k + 1, size=(0.95, 0.95))
    for r, (act, i, kind) in enumerate(rows):
        fmap = maps[f"{act}_{kind}"][i]
        other = maps[f"{act}_{'teleported' if kind == 'original' else 'original'}"][i]
        ax = axes[r, 0]
        if kind == "original":
            img = images[i]
            ax.imshow(img.reshape(-1, img.shape[-1]) if img.ndim > 1 else img[None], cmap="gray")
            ax.set_title(f"{act}, image {i}", fontsize=6)
        else:
            ax.axis("off")
        for c in range(k):
            ax = axes[r, c + 1]
            vmax = max(np.abs(fmap[c]).max(), np.abs(other[c]).max()) or 1.0
            m = fmap[c] if fmap[c].ndim == 2 else fmap[c][None]
            ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            if r == 0:
                ax.set_title(f"ch {c}", fontsize=6)
            if c == 0:
                ax.set_ylabel(kind, fontsize=6)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"{res['config']['model']} '{res['config']['layer']}' feature maps: original vs teleported "
        f"(s={res['config']['cob_range']}, {res['config']['sampling']})",
        fontsize=8,
    )
    return save_figure(fig, out / "feature_maps.png", dpi=130)


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Feature maps"

#: The demo's configuration: changes to :data:`DEFAULTS` (small, seconds on one core).
DEMO: dict[str, Any] = {
    "epochs": 2,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 10


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    per-channel factor of the feature maps and the residual of the fit a_V = tau a_W."""
    cfg = res["config"]
    nums = [
        (
            act,
            f"val acc {a['val_acc']:.3f}; max |Δoutput| {sci(a['max_output_diff'])}; relative change of the "
            f"'{cfg['layer']}' maps {a['relative_feature_change']:.2f}; per-channel factor |τ| in "
            f"[{a['fitted_ratio_abs']['min']:.2f}, {a['fitted_ratio_abs']['max']:.2f}], sign-flipped channels "
            f"{a['negative_ratio_channels']}/{a['channels']}; residual of a_V = τ·a_W "
            f"{sci(a['max_residual_of_scalar_fit'])}",
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
        title=TITLE,
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
