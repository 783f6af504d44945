"""Experiment ``distance-training``: checkpoint-distance regularisation vs SGDR snapshot ensembles.

Von Bachmann (2020), Sec. 2.1: train normally for ``warmup_epochs``, then store a checkpoint and add the RBF
penalty ``strength * sum_c exp(-||theta - theta_c||^2 / (2 sigma^2))`` (a hill on every checkpoint), with a new
checkpoint every ``checkpoint_every`` epochs. Compared variants (same seed, initialisation and batch order):

* ``baseline`` -- plain SGD with momentum (snapshots taken at the checkpoint epochs, for a snapshot ensemble
  of plain training);
* ``distance`` -- the penalty on the raw parameters;
* ``distance_invariant`` -- the penalty between balanced representatives of the rescaling orbits
  (``invariant=True``), so that sliding along the symmetry orbit does not count as moving away;
* ``sgdr`` -- cosine annealing with warm restarts (Loshchilov & Hutter), snapshot at every cycle end
  (Huang et al.'s snapshot ensemble, the thesis' baseline for diverse ensembles).

Recorded: learning curves, final accuracy, the snapshot ensemble's accuracy, its diversity (pairwise
disagreement, correlation of errors), the Euclidean and the rescaling-invariant distance from the first
checkpoint epoch, and the overhead of the penalty per training step. Settings of the thesis (Sec. 2.2.4): SGD
momentum 0.9, lr 1e-2, batch 128, L2 1e-3.
"""

from __future__ import annotations

import csv
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnteleport.distance import CheckpointDistance, CheckpointSchedule, Kernel
from nnteleport.ensembles import SnapshotEnsemble, diversity_report, sgdr_scheduler, sgdr_snapshot_epochs
from nnteleport.errors import InvalidValueError
from nnteleport.lab.data import DatasetName, load_dataset
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.experiments.sweep import run_sweep
from nnteleport.lab.models import MODELS, build_model
from nnteleport.lab.plotting import new_figure, save_figure, to_jsonable, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci
from nnteleport.lab.training import History, train

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "report_section",
    "run",
]

DESCRIPTION = (
    "Checkpoint-distance regularisation (von Bachmann 2020): baseline vs distancing from checkpoints (plain "
    "and rescaling-invariant RBF penalty) vs SGDR, on ResNet-18 and MobileNetV2 (small widths) and the "
    "embedded 8x8 digits by default; learning curves, final and snapshot-ensemble accuracy, ensemble "
    "diversity (disagreement, error correlation), distance travelled and the penalty's overhead per step."
)

DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "data_root": "data",
    "train_size": 0,  # 0: the whole split
    "val_size": 0,
    "models": ["resnet18", "mobilenetv2"],
    "width": 0.25,
    "variants": ["baseline", "distance", "distance_invariant", "sgdr"],
    "epochs": 20,
    "batch_size": 128,
    "lr": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-3,
    "warmup_epochs": 6,
    "checkpoint_every": 4,
    "kernel": "rbf",
    "sigma": 2.0,
    "strength": 2.0,
    "sgdr_cycle": 4,
    "sgdr_mult": 1,
    "seeds": [0, 1, 2],  # spread across seeds in every summary (the documented table came from 3 seeds)
    "max_iters_per_epoch": 0,  # 0: no limit
    "overhead_reps": 5,
    "threads": 1,  # torch CPU threads of every run, whatever `workers` (the numbers do not depend on workers)
    "workers": 2,  # parallel runs (one process each); finished runs are read back, interrupted ones resume
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices); not part of a run's identity
}

_VARIANTS = ("baseline", "distance", "distance_invariant", "sgdr")
CHOICES: dict[str, list] = {
    "variants": list(_VARIANTS),
    "models": list(MODELS),
    "dataset": [d.value for d in DatasetName],
    "kernel": [k.value for k in Kernel],
}


class _SGDR:
    """SGD with momentum whose learning rate follows SGDR per iteration (``train`` sets it per epoch only).

    Wraps :func:`nnteleport.ensembles.sgdr_scheduler` (``CosineAnnealingWarmRestarts``), stepped with the
    fractional epoch ``it / iters`` before every update: ``lr = lr0 (1 + cos(pi * T_cur / T_i)) / 2``.
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float, cycle: int, mult: int, iters: int) -> None:
        self.inner = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
        self.scheduler = sgdr_scheduler(self.inner, cycle, mult)
        self.iters, self.it = iters, 0

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.scheduler.step(self.it / self.iters)
        self.inner.step()
        self.it += 1

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "scheduler": self.scheduler.state_dict(), "it": self.it}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.it = int(state["it"])


class _EpochHook:
    """End-of-epoch callback: checkpoints, snapshots, schedule steps and distance tracking."""

    def __init__(
        self,
        variant: str,
        dist: CheckpointDistance | None,
        tracker: CheckpointDistance,
        inv_tracker: CheckpointDistance | None,
        ensemble: SnapshotEnsemble,
        ckpt_epochs: list[int],
        snapshot_epochs: list[int],
    ) -> None:
        self.variant, self.dist, self.tracker, self.inv_tracker = variant, dist, tracker, inv_tracker
        self.ensemble, self.ckpt_epochs, self.snapshot_epochs = ensemble, set(ckpt_epochs), set(snapshot_epochs)
        self.first = min(ckpt_epochs) if ckpt_epochs else None

    def __call__(self, model: nn.Module, epoch: int, history: History) -> None:
        done = epoch + 1
        if done == self.first:
            self.tracker.add_checkpoint()
            if self.inv_tracker is not None:
                self.inv_tracker.add_checkpoint()
        extra = history.extra
        extra.setdefault("dist_first_ckpt", []).append(
            float(self.tracker.distances()[0]) if len(self.tracker) else math.nan
        )
        extra.setdefault("inv_dist_first_ckpt", []).append(
            float(self.inv_tracker.distances()[0])
            if self.inv_tracker is not None and len(self.inv_tracker)
            else math.nan
        )
        if self.dist is not None:
            if done in self.ckpt_epochs:
                self.dist.add_checkpoint()
            self.dist.step()
        if done in self.snapshot_epochs:
            self.ensemble.add_snapshot(model)


def _stack(ds, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(ds) if limit is None else min(limit, len(ds))
    xs, ys = zip(*(ds[i] for i in range(n)))
    return torch.stack(xs), torch.stack([torch.as_tensor(y) for y in ys])


def _overhead(
    model: nn.Module, dist: CheckpointDistance, x: torch.Tensor, y: torch.Tensor, reps: int
) -> dict[str, float]:
    """Median time of a training step with and without the penalty (interleaved), on a copy of the state."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model is not changed
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def step(with_penalty: bool) -> float:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        if with_penalty:
            loss = loss + dist()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    step(False), step(True)
    plain, pen = [], []
    for _ in range(reps):
        plain.append(step(False))
        pen.append(step(True))
    p, q = statistics.median(plain), statistics.median(pen)
    return {"plain_step_ms": 1e3 * p, "penalty_step_ms": 1e3 * q, "ratio": q / p, "checkpoints": len(dist)}


def _run_one(cfg: dict[str, Any], data, model_name: str, variant: str, seed: int, progress: bool) -> dict[str, Any]:
    torch.manual_seed(seed)
    kw = {"width": float(cfg["width"])} if model_name in ("vgg", "resnet18", "mobilenetv2") else {}
    device = resolve_device(cfg.get("device", "auto"))
    model = build_model(model_name, in_shape=data.input_shape, num_classes=data.num_classes, **kw).to(device)
    x_ex, y_ex = (t.to(device) for t in _stack(data.train, cfg["batch_size"]))
    epochs = int(cfg["epochs"])
    schedule = CheckpointSchedule(int(cfg["warmup_epochs"]), int(cfg["checkpoint_every"]))
    ckpt_epochs = [e for e in schedule.checkpoint_epochs(epochs) if e < epochs]
    if variant == "sgdr":
        snapshot_epochs = sgdr_snapshot_epochs(int(cfg["sgdr_cycle"]), int(cfg["sgdr_mult"]), epochs)
    else:
        snapshot_epochs = sorted(set(ckpt_epochs) | {epochs})

    dist = None
    if variant in ("distance", "distance_invariant"):
        dist = CheckpointDistance(
            model,
            kernel=cfg["kernel"],
            sigma=float(cfg["sigma"]),
            strength=float(cfg["strength"]),
            invariant=variant == "distance_invariant",
            example_input=x_ex,
        )
    tracker = CheckpointDistance(model, strength=0.0)
    inv_tracker = None
    try:
        inv_tracker = CheckpointDistance(model, strength=0.0, invariant=True, example_input=x_ex)
    except Exception:  # the invariant distance is optional for the tracking (engine may not support the model)
        inv_tracker = None
    ensemble = SnapshotEnsemble(model)
    hook = _EpochHook(variant, dist, tracker, inv_tracker, ensemble, ckpt_epochs, snapshot_epochs)
    max_iters = int(cfg["max_iters_per_epoch"]) or None
    n_train = len(data.train)
    iters = math.ceil(n_train / int(cfg["batch_size"]))
    if max_iters is not None:
        iters = min(iters, max_iters)
    optimizer: Any = "momentum"
    if variant == "sgdr":

        def optimizer(m: nn.Module) -> _SGDR:
            return _SGDR(m, cfg["lr"], cfg["momentum"], int(cfg["sgdr_cycle"]), int(cfg["sgdr_mult"]), iters)

    t0 = time.perf_counter()
    history = train(
        model,
        (data.train, data.val),
        epochs=epochs,
        batch_size=int(cfg["batch_size"]),
        optimizer=optimizer,
        lr=float(cfg["lr"]),
        momentum=float(cfg["momentum"]),
        weight_decay=float(cfg["weight_decay"]),
        lr_decay_epochs=(),
        penalty=dist,
        callbacks=[hook],
        seed=seed,
        progress=progress,
        desc=f"{model_name}/{variant}/seed{seed}",
        max_iters_per_epoch=max_iters,
    )
    seconds = time.perf_counter() - t0
    x_val, y_val = (t.to(device) for t in _stack(data.val))
    probs = ensemble.member_probs(x_val, batch_size=512)
    report = diversity_report(probs, y_val)
    result = {
        "model": model_name,
        "variant": variant,
        "seed": seed,
        "final_val_acc": history.val_acc[-1],
        "final_train_loss": history.train_loss[-1],
        "best_val_acc": max(v for v in history.val_acc if not math.isnan(v)),
        "ensemble": {k: v for k, v in report.items() if k not in ("disagreement", "error_correlation")},
        "disagreement": report["disagreement"],
        "error_correlation": report["error_correlation"],
        "checkpoint_epochs": ckpt_epochs if dist is not None else [],
        "snapshot_epochs": snapshot_epochs,
        "train_seconds": seconds,
        "history": {
            "epoch": history.epoch,
            "train_loss": history.train_loss,
            "train_acc": history.train_acc,
            "val_loss": history.val_loss,
            "val_acc": history.val_acc,
            "lr": history.lr,
            "penalty": history.penalty,
            "seconds": history.seconds,
            "dist_first_ckpt": history.extra.get("dist_first_ckpt", []),
            "inv_dist_first_ckpt": history.extra.get("inv_dist_first_ckpt", []),
        },
    }
    if dist is not None and len(dist):
        result["overhead"] = _overhead(model, dist, x_ex, y_ex.long(), int(cfg["overhead_reps"]))
        result["final_kernel_values"] = (
            torch.exp(-dist.distances().square() / (2 * dist.sigma**2)).tolist() if dist.kernel.value == "rbf" else None
        )
    return result


def _sweep_run(task: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """One (model, variant, seed) run; module-level so that the sweep's worker processes can pickle it."""
    data = load_dataset(
        task["dataset"],
        task["data_root"],
        seed=int(task["seed"]),
        train_size=int(task["train_size"]) or None,
        val_size=int(task["val_size"]) or None,
    )
    return _run_one(task, data, task["model"], task["variant"], int(task["seed"]), False)


_SPREAD = ("final_val_acc", "ensemble_acc", "disagreement", "error_correlation", "final_train_loss")


def _summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (model, variant): the mean over seeds of every number (over the runs where it is finite), the
    sample std / min / max of the main ones (``<name>_std`` ...), and ``diverged``: the runs whose final
    training loss is not finite (counted; their accuracies stay in the means, as measured)."""
    rows = []
    keys = sorted({(r["model"], r["variant"]) for r in runs}, key=lambda k: (k[0], _VARIANTS.index(k[1])))
    getters = {
        "final_val_acc": lambda r: r["final_val_acc"],
        "best_val_acc": lambda r: r["best_val_acc"],
        "ensemble_members": lambda r: r["ensemble"]["members"],
        "mean_member_acc": lambda r: r["ensemble"]["mean_member_accuracy"],
        "ensemble_acc": lambda r: r["ensemble"]["ensemble_accuracy"],
        "ensemble_nll": lambda r: r["ensemble"]["ensemble_nll"],
        "disagreement": lambda r: r["ensemble"]["mean_disagreement"],
        "error_correlation": lambda r: r["ensemble"]["mean_error_correlation"],
        "final_dist_first_ckpt": lambda r: r["history"]["dist_first_ckpt"][-1],
        "final_inv_dist_first_ckpt": lambda r: r["history"]["inv_dist_first_ckpt"][-1],
        "overhead_ratio": lambda r: r.get("overhead", {}).get("ratio"),
        "train_seconds": lambda r: r["train_seconds"],
        "final_train_loss": lambda r: r["final_train_loss"],
    }
    for model, variant in keys:
        rs = [r for r in runs if r["model"] == model and r["variant"] == variant]
        row: dict[str, Any] = {"model": model, "variant": variant, "seeds": len(rs)}
        row["diverged"] = sum(not _finite(r.get("final_train_loss")) for r in rs)
        for name, get in getters.items():
            vals = [float(v) for v in (_safe(get, r) for r in rs) if _finite(v)]
            row[name] = statistics.fmean(vals) if vals else math.nan
            if name in _SPREAD:
                row[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else math.nan)
                row[f"{name}_min"] = min(vals) if vals else math.nan
                row[f"{name}_max"] = max(vals) if vals else math.nan
        rows.append(row)
    return rows


def _safe(get: Any, r: dict[str, Any]) -> Any:
    try:
        return get(r)
    except (KeyError, IndexError, TypeError):
        return None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plot(out: Path, results: dict[str, Any]) -> None:
    """Draw ``curves.png`` (learning curves, distances) and ``ensembles.png`` from ``results`` (no pyplot state)."""
    runs = results["runs"]
    models = list(dict.fromkeys(r["model"] for r in runs))
    variants = [v for v in _VARIANTS if any(r["variant"] == v for r in runs)]
    colors = dict(zip(_VARIANTS, ["tab:gray", "tab:blue", "tab:green", "tab:orange"]))
    panels = [
        ("val_acc", "validation accuracy"),
        ("train_loss", "train loss"),
        ("dist_first_ckpt", "||theta - theta(first ckpt)||"),
        ("inv_dist_first_ckpt", "invariant distance from first ckpt"),
    ]
    fig, axes = new_figure(len(models), len(panels), size=(4.2, 3.2), layout="tight")
    for i, model in enumerate(models):
        for j, (key, label) in enumerate(panels):
            ax = axes[i][j]
            for v in variants:
                for r in runs:
                    if r["model"] == model and r["variant"] == v:
                        h = r["history"]
                        ys = [math.nan if y is None else y for y in h[key]]
                        ax.plot([e + 1 for e in h["epoch"]], ys, color=colors[v], alpha=0.85,
                                label=v if r["seed"] == runs[0]["seed"] else None)  # fmt: skip
            ax.set_title(f"{model}: {label}", fontsize=9)
            ax.set_xlabel("epoch")
            if key == "train_loss":
                ax.set_yscale("log")
        axes[i][0].legend(fontsize=7)
    save_figure(fig, out / "curves.png", dpi=120)

    summary = results["summary"]
    fig, axes = new_figure(1, 3, size=(13 / 3, 3.6), layout="tight")
    axes = axes[0]
    width = 0.8 / max(1, len(variants))
    for k, (key, label) in enumerate(
        [
            ("ensemble_acc", "snapshot-ensemble accuracy"),
            ("disagreement", "mean pairwise disagreement"),
            ("error_correlation", "mean error correlation"),
        ]
    ):
        ax = axes[k]
        for vi, v in enumerate(variants):
            vals = [next((s[key] for s in summary if s["model"] == m and s["variant"] == v), math.nan) for m in models]
            vals = [math.nan if x is None else x for x in vals]
            ax.bar([mi + vi * width for mi in range(len(models))], vals, width, color=colors[v], label=v)
        if key == "ensemble_acc":
            for vi, v in enumerate(variants):
                vals = [next((s["final_val_acc"] for s in summary if s["model"] == m and s["variant"] == v), math.nan)
                        for m in models]  # fmt: skip
                ax.scatter([mi + vi * width for mi in range(len(models))], vals, color="k", marker="_", s=200,
                           zorder=3, label="single final model" if vi == 0 else None)  # fmt: skip
            finite = [s[key] for s in summary if s[key] is not None and not math.isnan(s[key])]
            if finite:
                ax.set_ylim(max(0.0, min(finite) - 0.1), 1.0)
        ax.set_xticks([mi + width * (len(variants) - 1) / 2 for mi in range(len(models))], models)
        ax.set_title(label, fontsize=9)
    axes[0].legend(fontsize=7)
    save_figure(fig, out / "ensembles.png", dpi=120)


def run(config: dict[str, Any], out: Path, *, progress: bool = True) -> dict[str, Any]:
    """Run the experiment with ``config`` (keys of :data:`DEFAULTS`), writing results, CSVs and plots to ``out``."""
    cfg = merge_config(DEFAULTS, config or {}, source="distance-training")
    validate_config("distance-training", cfg)
    resolve_device(cfg["device"])
    if "sgdr" in cfg["variants"] and not sgdr_snapshot_epochs(int(cfg["sgdr_cycle"]), int(cfg["sgdr_mult"]),
                                                               int(cfg["epochs"])):  # fmt: skip
        raise InvalidValueError(
            f"distance-training: sgdr_cycle={cfg['sgdr_cycle']} is longer than epochs={cfg['epochs']}: SGDR would "
            "end without a snapshot; use sgdr_cycle <= epochs or drop the 'sgdr' variant"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # a run's config: the shared settings and its own model, variant and seed (not the lists of the grid, so
    # that adding a seed or a model does not change the identity of the runs already done)
    shared = {k: v for k, v in cfg.items() if k not in ("models", "variants", "seeds", "workers")}
    tasks = [
        {**shared, "id": f"{model_name}-{variant}-seed{seed}", "model": model_name, "variant": variant,
         "seed": int(seed)}
        for seed in cfg["seeds"]
        for model_name in cfg["models"]
        for variant in cfg["variants"]
    ]  # fmt: skip
    done = run_sweep(_sweep_run, tasks, out, workers=int(cfg["workers"]), threads=int(cfg["threads"]),
                     progress=progress, desc="distance-training", ignore_keys=("device",))  # fmt: skip
    runs = [done[t["id"]] for t in tasks]
    results = to_jsonable({"config": cfg, "runs": runs, "summary": _summary(runs)})  # NaN -> None, as in the file
    write_json(out / "results.json", results, indent=1)
    with open(out / "curves.csv", "w", newline="") as f:
        w = csv.writer(f)
        cols = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "penalty", "seconds", "dist_first_ckpt",
                "inv_dist_first_ckpt"]  # fmt: skip
        w.writerow(["model", "variant", "seed", "epoch", *cols])
        for r in results["runs"]:
            h = r["history"]
            for i, e in enumerate(h["epoch"]):
                w.writerow([r["model"], r["variant"], r["seed"], e + 1, *(h[c][i] for c in cols)])
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results["summary"][0]))
        w.writeheader()
        w.writerows(results["summary"])
    _plot(out, results)
    return results


# --------------------------------------------------------------------------------------------------
# the demo (nnteleport.lab.demo): a small configuration and the report section

#: Title of this experiment's section in the demo report.
TITLE = "Distance from checkpoints vs SGDR snapshot ensembles"

#: The demo's configuration: changes to :data:`DEFAULTS` (the MLP, six epochs, a checkpoint every two).
DEMO: dict[str, Any] = {
    "models": ["mlp"],
    "epochs": 6,
    "warmup_epochs": 2,
    "checkpoint_every": 2,
    "sgdr_cycle": 2,
    "workers": 1,
}

#: About how long :data:`DEMO` takes on one core, in seconds (the demo starts the longest experiments first).
DEMO_SECONDS = 18  # 3 seeds


def _f3(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _seed_wins(runs: list[dict[str, Any]], model: str, variant: str) -> tuple[int, int]:
    """``(seeds where variant's ensemble disagreement exceeds the baseline's of the same seed, seeds compared)``;
    a run without the number (diverged, missing) loses its seed."""

    def dis(v: str) -> dict[int, Any]:
        return {r["seed"]: _safe(lambda r: r["ensemble"]["mean_disagreement"], r) for r in runs
                if r["model"] == model and r["variant"] == v}  # fmt: skip

    mine, base = dis(variant), dis("baseline")
    seeds = sorted(set(mine) & set(base))
    wins = sum(_finite(mine[s]) and (not _finite(base[s]) or mine[s] > base[s]) for s in seeds)
    return wins, len(seeds)


def _spread(s: dict[str, Any], name: str) -> str:
    """``"0.951 ± 0.004 [0.946, 0.955]"`` (mean ± std [min, max] over seeds); only the mean for older results."""
    if s.get(f"{name}_std") is None or s.get(f"{name}_min") is None:
        return _f3(s[name])
    return f"{_f3(s[name])} ± {_f3(s[name + '_std'])} [{_f3(s[name + '_min'])}, {_f3(s[name + '_max'])}]"


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs): per model and
    variant the final and snapshot-ensemble accuracy, the ensemble's diversity, the distance travelled and
    the penalty's overhead; the verdict compares the disagreement of the distanced ensembles with plain
    training's."""
    cfg, summary = res["config"], res["summary"]
    nums = [
        (
            f"{s['model']} / {s['variant']} (seeds {s['seeds']})",
            f"final acc {_spread(s, 'final_val_acc')}; snapshot ensemble acc {_spread(s, 'ensemble_acc')} "
            f"({sci(s['ensemble_members'])} members, mean member {_f3(s['mean_member_acc'])}); disagreement "
            f"{_spread(s, 'disagreement')}, error correlation {_spread(s, 'error_correlation')}; distance from the "
            f"first checkpoint {sci(s['final_dist_first_ckpt'])} (rescaling-invariant "
            f"{sci(s['final_inv_dist_first_ckpt'])})"
            + (f"; step with penalty × {s['overhead_ratio']:.2f}" if s["overhead_ratio"] is not None else "")
            + (f"; diverged {s['diverged']}/{s['seeds']}" if s.get("diverged") else ""),
        )
        for s in summary
    ]
    by = {(s["model"], s["variant"]): s for s in summary}
    more_diverse, compared, every_seed = 0, 0, 0
    for (model, variant), s in by.items():
        base = by.get((model, "baseline"))
        if variant.startswith("distance") and base and None not in (s["disagreement"], base["disagreement"]):
            compared += 1
            more_diverse += s["disagreement"] > base["disagreement"]
            wins, n = _seed_wins(res.get("runs", []), model, variant)
            every_seed += n > 1 and wins == n
    sec = Section(
        title=TITLE,
        claim=(
            "Von Bachmann (2020), Sec. 2.1: after a warm-up, a penalty with a hill on every stored checkpoint "
            "(RBF, strength · Σ_c exp(−‖θ − θ_c‖² / (2σ²))) pushes training away from where it has been, so "
            "that the snapshots of one run form a more diverse ensemble than those of plain training; compared "
            "with SGDR snapshot ensembles (Huang et al.). Here: "
            f"{', '.join(cfg['models'])} on {cfg['dataset']}, {cfg['epochs']} epochs, checkpoints from epoch "
            f"{cfg['warmup_epochs']} every {cfg['checkpoint_every']}, σ = {cfg['sigma']}, strength "
            f"{cfg['strength']}, SGDR cycle {cfg['sgdr_cycle']}, seeds {cfg['seeds']}."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "curves.png",
                "Per model: validation accuracy, training loss (log), and the Euclidean and rescaling-invariant "
                "distance from the first checkpoint per epoch, for each variant.",
            ),
            Figure(
                d / "ensembles.png",
                "Snapshot-ensemble accuracy (bars; black ticks: the single final model), mean pairwise "
                "disagreement and mean error correlation of the members, per model and variant.",
            ),
        ],
        verdict=(
            f"distanced ensembles more diverse (mean disagreement over seeds {cfg['seeds']}) than plain "
            f"training's in {more_diverse} of {compared} comparisons, {every_seed} of them in every seed "
            "(paired by seed)"
            if compared
            else "no distanced variant to compare"
        ),
        status="good" if compared and more_diverse == compared else "neutral",
    )
    return sec, []
