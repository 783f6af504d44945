"""gspace-lr-grid: SGD / Adam in weight space, in G-space and with fixed weights, over a grid of learning rates.

Jestädt (2025), Sec. 4.1-4.3, Figs. 4.1, 4.2, 4.4, 4.5, 4.6, 4.10: the thesis' bias-free ReLU MLP (four hidden
layers of 64), batch 64, no learning-rate decay; for every method and learning rate the best validation loss
over all epochs (mean over seeds), and the validation curves at each method's best rate.

Methods (``methods`` in the config):

* ``sgd``, ``adam`` -- plain ``torch.optim`` in weight space;
* ``gsgd``, ``gadam`` -- :class:`nnteleport.GSpaceOptimizer` (greedy skeleton, skeleton weights keep their values:
  the network function at initialisation is the same as for ``sgd``; the thesis' "constant path factor");
* ``gadam-reset`` -- G-Adam with the inner optimizer's state reset every step (the thesis' published wrapper
  builds a fresh optimizer each step, so Adam's moments never accumulate);
* ``gsgd-set1``, ``gadam-set1``, ``gadam-reset-set1`` -- the same after overwriting the skeleton weights with
  ``±1`` (Meng et al. / thesis convention, which changes the initial function);
* ``fixed-sgd``, ``fixed-adam`` -- :func:`nnteleport.fix_weights` (diagonal selection) after overwriting the fixed
  weights with ``±1`` (the thesis' default "Fixed"; changes the initial function);
* ``fixed-sgd-not1`` -- fixed weights keep their values ("Fixed not 1", Fig. 4.6);
* ``fixed-sgd-rescaled`` -- fixed weights set to ``±1`` by a function-preserving rescaling (``value=1.0``; the
  thesis' reparametrisation, Sec. 4.2.2);
* ``gsgd-thesis``, ``gadam-thesis``, ``gadam-reset-thesis`` -- the thesis' and Meng et al.'s protocol: the
  thesis' diagonal skeleton (Algorithm 1, whatever ``skeleton`` says) and *every* mask entry set to ``+1`` (not
  ``sign(w)``), the first layer's pred edges ``W_1[r, r]`` included (thesis Sec. 2.1: "if not mentioned
  otherwise, they are set to 1"), see :func:`set_thesis_init`;
* ``fixed-sgd-thesis``, ``fixed-adam-thesis`` -- weight fixing (diagonal selection) with the fixed weights set
  to ``+1`` (thesis Sec. 4.2.1: "Fixed weights are set to one").

Two "best validation loss" definitions, both in every grid cell: ``*_best_val_loss`` is the minimum over the
epochs' validation losses (ours; a diverging run shows how far it diverged, e.g. 3265, and a run that reaches
NaN counts as ``inf``), ``*_best_val_loss_incl_init`` also includes the loss before training (the thesis'
"best validation performance at any epoch", whose evaluation starts before the first epoch: a diverging run is
capped near the initial loss, ln 10 = 2.3). ``best_definition`` picks the one that chooses the best rates.

Default scale: scikit-learn's digits (embedded, 8x8 -> 64 inputs, standardised), 3 seeds, 10 epochs; the thesis
uses MNIST / CIFAR-10 (``dataset="mnist"``, ``"cifar10"`` with local files), 10 seeds and 150 epochs.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnteleport.errors import InvalidValueError
from nnteleport.gspace import GSpace, GSpaceOptimizer
from nnteleport.gspace.fixing import fix_weights
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.plotting import new_figure, progress, save_figure, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "METHODS",
    "TITLE",
    "load_tensors",
    "make_optimizer",
    "plot",
    "report_section",
    "run",
    "set_fixed_to_sign",
    "set_thesis_init",
    "thesis_masks",
    "thesis_mlp",
    "train_grid",
    "train_run",
]

DESCRIPTION = (
    "SGD, Adam, G-SGD, G-Adam (state kept / reset each step as in the thesis' wrapper), Fixed-SGD/Adam and "
    "Fixed-not-1 on the thesis' bias-free ReLU MLP over learning rates 1e-1..1e-5: best validation loss per "
    "learning rate and curves at the best rate (Jestädt 2025, Figs. 4.1, 4.2, 4.4-4.6, 4.10)."
)

METHODS = (
    "sgd",
    "adam",
    "gsgd",
    "gadam",
    "gadam-reset",
    "gsgd-set1",
    "gadam-set1",
    "gadam-reset-set1",
    "fixed-sgd",
    "fixed-adam",
    "fixed-sgd-not1",
    "fixed-sgd-rescaled",
    "gsgd-thesis",
    "gadam-thesis",
    "gadam-reset-thesis",
    "fixed-sgd-thesis",
    "fixed-adam-thesis",
)

#: The two definitions of a run's best validation loss (``best_definition`` in the config).
BEST_DEFINITIONS = {
    "epochs": "best over the epochs' validation losses (ours)",
    "incl_init": "best over the epochs and the loss before training (thesis)",
}

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": "data",
    "train_size": 0,  # 0: the whole split
    "val_size": 0,
    "hidden": [64, 64, 64, 64],
    "bias": False,
    "methods": list(METHODS),
    "lrs": [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    "seeds": 3,
    "epochs": 10,
    "batch_size": 64,
    "good_factor": 1.5,  # a learning rate is "good" if its loss is within this factor of the overall best
    "skeleton": "greedy",  # G-space skeleton selection: "greedy" (invariant, well conditioned) or "diagonal"
    "best_definition": "epochs",  # which best validation loss chooses best / good rates: "epochs" or "incl_init"
    "threads": 1,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
}


# ---------------------------------------------------------------------------------------------------------
# shared with fixed_value_grid
# ---------------------------------------------------------------------------------------------------------


def load_tensors(cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Flattened float32 train/val tensors and the number of classes, via :func:`nnteleport.lab.data.load_dataset`."""
    from nnteleport.lab.data import load_dataset

    kw: dict[str, Any] = {}
    if cfg.get("train_size"):
        kw["train_size"] = int(cfg["train_size"])
    if cfg.get("val_size"):
        kw["val_size"] = int(cfg["val_size"])
    bundle = load_dataset(cfg["dataset"], root=cfg.get("data_root", "data"), seed=0, **kw)

    def stack(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if hasattr(ds, "x") and hasattr(ds, "y"):
            return ds.x, ds.y
        if hasattr(ds, "get_batch"):
            return ds.get_batch(range(len(ds)), augment=False)
        xs, ys = zip(*(ds[i] for i in range(len(ds))))
        return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])

    xt, yt = stack(bundle.train)
    xv, yv = stack(bundle.val)
    flat = lambda x: x.reshape(len(x), -1).to(torch.float32)  # noqa: E731
    return flat(xt), yt.long(), flat(xv), yv.long(), bundle.num_classes


def thesis_mlp(in_dim: int, hidden: list[int], classes: int, bias: bool = False) -> nn.Sequential:
    """ReLU MLP ``in -> hidden... -> classes`` (the thesis' networks are bias-free), PyTorch default init."""
    widths = [in_dim, *hidden, classes]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@torch.no_grad()
def set_fixed_to_sign(model: nn.Module, masks: dict[str, torch.Tensor], value: float = 1.0) -> None:
    """Overwrite the masked weights with ``sign(w) * value`` (not function-preserving; the thesis' "set to 1")."""
    for name, mask in masks.items():
        p = model.get_parameter(name)
        s = torch.sign(p[mask])
        p[mask] = torch.where(s == 0, torch.ones_like(s), s) * value


def thesis_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The thesis' G-space mask (Algorithm 1, Meng et al.'s skeleton): the diagonal skeleton weights of layers
    ``2..L`` and the first layer's pred edges ``W_1[r, r mod inputs]`` (the free skeleton weights ``w_j``)."""
    gs = GSpace(model, skeleton="diagonal")
    masks = {k: v.clone() for k, v in gs.skeleton_masks.items()}
    first = gs.layers[0]
    name = f"{first.name}.weight"
    flat = masks[name].reshape(-1).clone()
    flat[gs.chart_state()["pred"][0]] = True
    masks[name] = flat.view_as(masks[name])
    return masks


@torch.no_grad()
def set_thesis_init(model: nn.Module, masks: dict[str, torch.Tensor], value: float = 1.0) -> None:
    """Overwrite every masked weight with ``+value`` (the thesis' and Meng et al.'s "set to 1": not ``sign(w)``,
    not function-preserving)."""
    for name, mask in masks.items():
        model.get_parameter(name)[mask] = value


def make_optimizer(
    method: str, model: nn.Module, lr: float, skeleton: str = "greedy"
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimizer of ``method`` (and the FixedWeights handle, or None); ``skeleton`` for G-space methods."""
    handle = None
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr), None
    if method == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr), None
    if method in ("gsgd-thesis", "gadam-thesis", "gadam-reset-thesis"):
        set_thesis_init(model, thesis_masks(model))
        base = method.removesuffix("-thesis")
        cls = torch.optim.SGD if base == "gsgd" else torch.optim.Adam
        reset = base == "gadam-reset"
        return GSpaceOptimizer(model, cls, lr=lr, skeleton="diagonal", reset_state_each_step=reset), None
    if method in ("fixed-sgd-thesis", "fixed-adam-thesis"):
        first = fix_weights(model, select="diagonal")
        first.remove()
        set_thesis_init(model, first.masks)
        handle = fix_weights(model, select="diagonal")
        cls = torch.optim.Adam if method == "fixed-adam-thesis" else torch.optim.SGD
        return cls(model.parameters(), lr=lr), handle
    if method.startswith("g"):
        base = method.removesuffix("-set1")
        if base not in ("gsgd", "gadam", "gadam-reset"):
            raise InvalidValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        if method.endswith("-set1"):
            set_fixed_to_sign(model, GSpace(model, skeleton=skeleton).skeleton_masks)
        cls = torch.optim.SGD if base == "gsgd" else torch.optim.Adam
        reset = base == "gadam-reset"
        return GSpaceOptimizer(model, cls, lr=lr, skeleton=skeleton, reset_state_each_step=reset), None
    if method in ("fixed-sgd", "fixed-adam"):
        first = fix_weights(model)
        first.remove()
        set_fixed_to_sign(model, first.masks)
        handle = fix_weights(model)
    elif method == "fixed-sgd-not1":
        handle = fix_weights(model)
    elif method == "fixed-sgd-rescaled":
        handle = fix_weights(model, value=1.0)
    else:
        raise InvalidValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    cls = torch.optim.Adam if method == "fixed-adam" else torch.optim.SGD
    return cls(model.parameters(), lr=lr), handle


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    out = model(x)
    loss = F.cross_entropy(out, y).item()
    acc = (out.argmax(1) == y).float().mean().item()
    return loss, acc


def train_run(
    method: str,
    lr: float,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int],
    hidden: list[int],
    bias: bool,
    epochs: int,
    batch_size: int,
    *,
    build: Any = None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train one network; validation loss / accuracy after every epoch (``inf`` / NaN after divergence) and
    before training (``val_loss_init``, after the method's initialisation: the thesis' first evaluation).

    ``build(model) -> (optimizer, handle)`` overrides :func:`make_optimizer` (used by fixed-value-grid).
    ``device``: where the network is trained (default: the data's device); the data must be there already.
    On the CPU a non-finite mini-batch loss ends the epoch at once; on an accelerator the check waits until the
    epoch's end (no synchronisation per step) and gives the same record: the NaN has reached the weights, so
    the epoch's validation loss is not finite either.
    """
    xt, yt, xv, yv, classes = data
    torch.manual_seed(seed)
    model = thesis_mlp(xt.shape[1], hidden, classes, bias).to(xt.device if device is None else device)
    sync_each_step = xt.device.type == "cpu"
    opt, handle = build(model) if build is not None else make_optimizer(method, model, lr)
    init_loss = evaluate(model, xv, yv)[0]
    gen = torch.Generator().manual_seed(10_000 + seed)
    losses: list[float] = []
    accs: list[float] = []
    diverged = False
    try:
        for _ in range(epochs):
            perm = torch.randperm(len(xt), generator=gen).to(xt.device)
            finite = torch.ones((), dtype=torch.bool, device=xt.device)
            for i in range(0, len(xt), batch_size):
                idx = perm[i : i + batch_size]
                opt.zero_grad()
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                if sync_each_step:
                    if not torch.isfinite(loss):
                        diverged = True
                        break
                else:
                    finite &= torch.isfinite(loss)
                loss.backward()
                opt.step()
            if not sync_each_step and not bool(finite):
                diverged = True
            vl, va = evaluate(model, xv, yv) if not diverged else (math.inf, math.nan)
            if not math.isfinite(vl):
                diverged = True
            if diverged:
                losses += [math.inf] * (epochs - len(losses))
                accs += [math.nan] * (epochs - len(accs))
                break
            losses.append(vl)
            accs.append(va)
    except ValueError:  # a G-space chart can become singular (zero skeleton product) when training blows up
        diverged = True
        losses += [math.inf] * (epochs - len(losses))
        accs += [math.nan] * (epochs - len(accs))
    finally:
        if handle is not None:
            handle.remove()
    return {"val_loss": losses, "val_acc": accs, "diverged": diverged, "val_loss_init": init_loss}


# ---------------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def run(config: dict[str, Any], out: Path, *, progress: bool = True) -> dict[str, Any]:
    cfg = merge_config(DEFAULTS, config or {}, source="gspace-lr-grid")
    validate_config("gspace-lr-grid", cfg)
    resolve_device(cfg["device"])
    for m in cfg["methods"]:
        if m not in METHODS:
            raise InvalidValueError(f"unknown method {m!r} in 'methods'; choose from {', '.join(METHODS)}")
    if cfg["best_definition"] not in BEST_DEFINITIONS:
        raise InvalidValueError(
            f"best_definition={cfg['best_definition']!r}; choose one of: {', '.join(BEST_DEFINITIONS)}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(m, lr, s) for m in cfg["methods"] for lr in cfg["lrs"] for s in range(int(cfg["seeds"]))]

    def spec(job: tuple[str, float, int]) -> tuple[str, float, int, Any, dict[str, Any]]:
        method, lr, seed = job
        build = lambda model: make_optimizer(method, model, lr, cfg["skeleton"])  # noqa: E731
        return method, lr, seed, build, {"method": method, "lr": lr, "seed": seed}

    runs = train_grid(cfg, jobs, spec, desc="gspace-lr-grid", progress_bar=progress)
    results = summarise(cfg, runs)
    results["seconds"] = time.perf_counter() - t0
    write_outputs(results, out)
    plot(results, out)
    return results


def train_grid(
    cfg: dict[str, Any], jobs: list[Any], spec: Callable[[Any], tuple], *, desc: str, progress_bar: bool = True
) -> list[dict[str, Any]]:
    """Train one network per job (shared by gspace-lr-grid and fixed-value-grid), data loaded once, with
    ``cfg["threads"]`` torch threads (restored afterwards). ``spec(job) -> (method, lr, seed, build, record)``:
    the arguments of :func:`train_run` and the fields that identify the run in the returned records."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg["threads"]))
    try:
        device = resolve_device(cfg.get("device", "auto"))
        xt, yt, xv, yv, classes = load_tensors(cfg)
        data = (xt.to(device), yt.to(device), xv.to(device), yv.to(device), classes)  # resident: they are small
        runs = []
        for job in progress(jobs, enabled=progress_bar, desc=desc, total=len(jobs)):
            method, lr, seed, build, record = spec(job)
            r = train_run(
                method, lr, seed, data, cfg["hidden"], cfg["bias"], int(cfg["epochs"]), int(cfg["batch_size"]),
                build=build,
            )  # fmt: skip
            runs.append({**record, **r})
    finally:
        torch.set_num_threads(threads)
    return runs


def best_val_loss(run: dict[str, Any], definition: str = "epochs") -> float:
    """A run's best validation loss: min over the epochs (``"epochs"``, ours) or over the epochs and the loss
    before training (``"incl_init"``, the thesis'; records without ``val_loss_init`` fall back to the epochs)."""
    if definition not in BEST_DEFINITIONS:
        raise InvalidValueError(f"best_definition={definition!r}; choose one of: {', '.join(BEST_DEFINITIONS)}")
    vals = list(run["val_loss"])
    if definition == "incl_init" and "val_loss_init" in run:
        vals.append(run["val_loss_init"])
    vals = [v if not math.isnan(v) else math.inf for v in vals]
    return min(vals) if vals else math.inf


def _cell(rs: list[dict[str, Any]], definition: str) -> dict[str, float]:
    """Mean (inf if any seed is inf: a diverged seed is never dropped), median and spread over seeds."""
    best = [best_val_loss(r, definition) for r in rs]
    finite = [b for b in best if math.isfinite(b)]
    return {
        "mean": _mean(best) if len(finite) == len(best) else math.inf,
        "median": float(np.median(best)) if best else math.nan,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0,
    }


def summarise(cfg: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Best validation loss per (method, lr), both definitions: min per run, mean (and median) over seeds;
    ``cfg["best_definition"]`` chooses the best / good rates and the curves."""
    key = "_incl_init" if cfg.get("best_definition", "epochs") == "incl_init" else ""
    grid: dict[str, dict[str, Any]] = {}
    for m in cfg["methods"]:
        grid[m] = {}
        for lr in cfg["lrs"]:
            rs = [r for r in runs if r["method"] == m and r["lr"] == lr]
            ours, thesis = _cell(rs, "epochs"), _cell(rs, "incl_init")
            grid[m][repr(lr)] = {
                "mean_best_val_loss": ours["mean"],
                "median_best_val_loss": ours["median"],
                "std_best_val_loss": ours["std"],
                "mean_best_val_loss_incl_init": thesis["mean"],
                "median_best_val_loss_incl_init": thesis["median"],
                "std_best_val_loss_incl_init": thesis["std"],
                "n_runs": len(rs),
                "n_diverged": sum(r["diverged"] for r in rs),
                "best_val_acc": _mean([max(a for a in r["val_acc"] if math.isfinite(a)) for r in rs if
                                       any(math.isfinite(a) for a in r["val_acc"])]),
            }  # fmt: skip
    sel = f"mean_best_val_loss{key}"
    overall = min(v[sel] for g in grid.values() for v in g.values())
    best_lr, good = {}, {}
    for m, g in grid.items():
        lr_key = min(g, key=lambda k: g[k][sel])
        best_lr[m] = float(lr_key)
        good[m] = [float(k) for k, v in g.items() if v[sel] <= cfg["good_factor"] * overall]
    curves: dict[str, dict[str, list[float]]] = {}
    for m in cfg["methods"]:
        rs = [r for r in runs if r["method"] == m and r["lr"] == best_lr[m]]
        arr = np.array([r["val_loss"] for r in rs], dtype=float)
        with np.errstate(invalid="ignore"):
            curves[m] = {"lr": best_lr[m], "mean": arr.mean(0).tolist(), "std": arr.std(0).tolist()}
    findings = {
        "best_definition": cfg.get("best_definition", "epochs"),
        "overall_best_val_loss": overall,
        "good_lr_count": {m: len(v) for m, v in good.items()},
        "best_lr": best_lr,
        "best_val_loss": {m: grid[m][repr(best_lr[m])]["mean_best_val_loss"] for m in grid},
        "best_val_loss_incl_init": {m: grid[m][repr(best_lr[m])]["mean_best_val_loss_incl_init"] for m in grid},
    }
    return {"config": cfg, "grid": grid, "good_lrs": good, "curves": curves, "findings": findings, "runs": runs}


def write_outputs(results: dict[str, Any], out: Path) -> None:
    write_json(out / "results.json", results)
    rows = []
    for m, g in results["grid"].items():
        for lr, v in g.items():
            rows.append({"method": m, "lr": float(lr), **v})
    write_csv(out / "lr_grid.csv", rows)
    crow = []
    for m, c in results["curves"].items():
        for e, (mu, sd) in enumerate(zip(c["mean"], c["std"])):
            crow.append({"method": m, "lr": c["lr"], "epoch": e + 1, "val_loss_mean": mu, "val_loss_std": sd})
    write_csv(out / "curves_best_lr.csv", crow)


PANELS = {
    "lr_grid_gspace.png": ("G-space, skeleton kept (Fig. 4.1)", ["sgd", "adam", "gsgd", "gadam", "gadam-reset"]),
    "lr_grid_gspace_set1.png": ("G-space, skeleton set to ±1 (Fig. 4.1)", ["sgd", "adam", "gsgd-set1",
                                                                          "gadam-set1", "gadam-reset-set1"]),
    "lr_grid_fixed.png": ("Weight fixing (Figs. 4.4, 4.6)", ["sgd", "adam", "fixed-sgd", "fixed-adam",
                                                             "fixed-sgd-not1", "fixed-sgd-rescaled"]),
    "lr_grid_compare.png": ("SGD vs G-SGD vs Fixed-SGD (Fig. 4.10)", ["sgd", "gsgd", "gsgd-set1", "fixed-sgd"]),
    "lr_grid_thesis.png": ("Thesis init: every mask entry +1 (Figs. 4.1, 4.4, 4.10)", ["sgd", "adam", "gsgd-thesis",
                           "gadam-thesis", "gadam-reset-thesis", "fixed-sgd-thesis", "fixed-adam-thesis"]),
}  # fmt: skip


def plot(results: dict[str, Any], out: Path) -> None:
    """Loss-vs-learning-rate panels and curves at the best rate, drawn from ``results``."""
    grid = results["grid"]
    for fname, (title, methods) in PANELS.items():
        methods = [m for m in methods if m in grid]
        if not methods:
            continue
        fig, axes = new_figure(1, 2, size=(4.6, 3.4))
        ax, ax2 = axes[0, 0], axes[0, 1]
        for m in methods:
            lrs = [float(k) for k in grid[m]]
            vals = [grid[m][k]["mean_best_val_loss"] for k in grid[m]]
            ys = [v if math.isfinite(v) else np.nan for v in vals]
            ax.plot(lrs, ys, marker="o", label=m)
            c = results["curves"][m]
            ys2 = [v if math.isfinite(v) else np.nan for v in c["mean"]]
            ax2.plot(range(1, len(ys2) + 1), ys2, label=f"{m} (lr={c['lr']:g})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("best validation loss (mean over seeds)")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("validation loss at best lr")
        ax2.set_yscale("log")
        ax2.legend(fontsize=7)
        save_figure(fig, out / fname)


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "G-space and weight fixing over learning rates"

#: The demo's configuration: changes to :data:`DEFAULTS` (every method and rate, one seed, three epochs).
DEMO: dict[str, Any] = {"seeds": 1, "epochs": 3}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 11


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs): per method the
    best learning rate, its best validation loss and the number of good rates (within ``good_factor`` of the
    overall best)."""
    cfg, grid, f = res["config"], res["grid"], res["findings"]
    nums = [
        (
            m,
            f"best lr {f['best_lr'][m]:g}: best validation loss {sci(f['best_val_loss'][m])} over the epochs, "
            f"{sci(f.get('best_val_loss_incl_init', {}).get(m, math.nan))} with the loss before training "
            f"(thesis; mean over {cfg['seeds']} seed(s)); good rates {res['good_lrs'][m] or 'none'}; diverged "
            f"runs {sum(v['n_diverged'] for v in g.values())} of {sum(v.get('n_runs', 0) for v in g.values())}",
        )
        for m, g in grid.items()
    ]
    best = min(grid, key=lambda m: math.inf if f["best_val_loss"][m] is None else f["best_val_loss"][m])
    figs = [
        Figure(
            d / fname,
            f"{title}. Left: best validation loss over the epochs (mean over seeds) against the learning rate; "
            "right: validation loss per epoch at each method's best rate (log scales; diverged runs are missing).",
        )
        for fname, (title, methods) in PANELS.items()
        if any(m in grid for m in methods)
    ]
    sec = Section(
        title=TITLE,
        claim=(
            "Thesis (Jestädt 2025, Ch. 4, Figs. 4.1-4.6, 4.10): optimising in G-space (the path values of a ReLU "
            "net, G-SGD / G-Adam) or with one fixed weight per neuron removes the rescaling symmetry and should "
            "make training less sensitive to the learning rate; G-Adam as published (state reset each step) "
            "underperforms Adam, Fixed-SGD with the fixed weights set to 1 beats SGD. The '-thesis' methods use the "
            "thesis' initialisation (every mask entry +1), '-set1' / 'fixed-sgd' ours (sign(w)). Best rates "
            f"chosen by: {BEST_DEFINITIONS[f.get('best_definition', 'epochs')]}. Here: bias-free ReLU MLP "
            f"{cfg['hidden']} on {cfg['dataset']}, learning rates {cfg['lrs']}, {cfg['seeds']} seed(s), "
            f"{cfg['epochs']} epochs, batch {cfg['batch_size']}, {cfg['skeleton']} skeleton."
        ),
        numbers=nums,
        figures=figs,
        verdict=(
            f"best: {best} (lr {f['best_lr'][best]:g}, loss {sci(f['best_val_loss'][best])}); good rates per "
            "method: " + ", ".join(f"{m} {n}" for m, n in f["good_lr_count"].items())
        ),
        status="neutral",
    )
    return sec, []
