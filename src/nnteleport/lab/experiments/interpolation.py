"""1D loss/accuracy profiles between two trained networks, before and after teleportation (Sec. 4.4, Fig. 4).

Following Keskar et al. (as the paper does), we train the same network twice from the same initialisation,
with a small batch (network A, paper: 8) and a large batch (network B, paper: 1024), and evaluate the loss and
accuracy of ``theta(alpha) = (1 - alpha) theta_A + alpha theta_B`` on a grid of ``alpha`` (A at 0, B at 1).
Then we teleport A and B with *independent* CoBs of range ``s`` (paper: 0.6, 0.9, 0.99) and draw the profile
between the teleported networks: the endpoints keep their loss (same functions), the path between them does
not -- the paper reports sharper profiles for larger ``s``.

Comparable endpoints: with the same number of epochs, B (batch 1024) takes ~1/128 of A's steps and the
profile would compare a trained network with an untrained one. With ``match_train_loss`` (default) A trains
``epochs`` epochs and B trains until its train loss (on the ``eval_examples`` examples the profiles use, eval
mode) is at most A's, checked after every epoch, within ``max_steps`` optimizer steps (rounded up to a whole
epoch); the steps both took and whether B reached A's loss are reported per seed, and a seed whose B did not
reach it is counted, not dropped. No learning-rate decay is applied (``lr_decay_epochs=()``).

Notes on choices the paper leaves open:

* sampling is ``"intra"`` by default: with ReLU and positive CoBs the teleported activations are unchanged, so
  every point of the segment is a network of the original architecture (with ``"inter"`` the two endpoints have
  different activation functions and the segment would mix them);
* the CoBs of A and B must differ: with one shared CoB the segment is the teleportation of the original
  segment (teleportation is linear in the weights for a fixed CoB) and the profile would not change at all;
* all floating-point state is interpolated (parameters and buffers such as BatchNorm running statistics).

Numbers reported per profile and seed: the loss at the endpoints (and their change under teleportation, which
must be round-off); ``barrier_linear`` = max over the grid points ``0 <= alpha <= 1`` of
``loss(alpha) - ((1 - alpha) loss_A + alpha loss_B)`` (the barrier over the whole segment, >= 0); the older
``barrier`` (highest train loss strictly between A and B minus the larger endpoint loss) and the mean train loss
over the grid. ``summary`` gives mean, std, min, max over the seeds; ``profiles`` keeps the first seed's numbers
(the format of earlier results).
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
from nnteleport.lab.devices import resolve_device
from nnteleport.lab.experiments.config import merge_config, validate_config
from nnteleport.lab.models import MODELS, build_model, default_kwargs
from nnteleport.lab.plotting import COLORS, new_figure, progress, save_figure, summary, write_csv, write_json
from nnteleport.lab.report_html import Figure, Headline, Section, sci

__all__ = [
    "CHOICES",
    "DEFAULTS",
    "DEMO",
    "DEMO_SECONDS",
    "DESCRIPTION",
    "TITLE",
    "barrier_linear",
    "interpolate",
    "plot",
    "report_section",
    "run",
    "seed_list",
]

DESCRIPTION = (
    "Train a network with a small and a large batch (paper: 8 and 1024; B trains until its train loss reaches "
    "A's, within a step cap), draw the 1D loss/accuracy profile along the segment between them, and between "
    "teleported versions with CoB range 0.6, 0.9, 0.99, over several seeds "
    "(train dotted, validation solid; Armenta et al. 2023, Sec. 4.4, Fig. 4)."
)

DEFAULTS: dict[str, Any] = {
    "model": "mlp",
    "model_kwargs": {name: default_kwargs(name) for name in MODELS},
    "dataset": "digits",
    "data_root": None,
    "augment": True,  # CIFAR train-split augmentation (crop + flip); no effect on the other datasets
    "batch_sizes": [8, 1024],  # network A, network B
    "epochs": 10,  # network A (and B without match_train_loss)
    "match_train_loss": True,  # B trains until its train loss is at most A's ...
    "max_steps": 5000,  # ... within this many optimizer steps (rounded up to a whole epoch)
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
    "seeds": 3,  # an integer n (seeds seed, ..., seed + n - 1) or a list of seeds
    "seed": 0,
    "device": "auto",  # auto | cpu | cuda | cuda:N (nnteleport.lab.devices)
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


def seed_list(cfg: dict[str, Any]) -> list[int]:
    """The seeds of a run: ``seeds`` as a list, or ``seed, ..., seed + seeds - 1`` for an integer."""
    seeds = cfg.get("seeds", 1)
    if isinstance(seeds, (list, tuple)):
        return [int(x) for x in seeds]
    return [int(cfg["seed"]) + i for i in range(int(seeds))]


def barrier_linear(alphas: Any, losses: Any) -> float:
    """``max over 0 <= alpha <= 1 of loss(alpha) - ((1 - alpha) loss(0) + alpha loss(1))`` on the grid
    (``alphas`` must contain 0 and 1); 0 when the profile never rises above the chord."""
    a = np.asarray(alphas, dtype=np.float64)
    v = np.asarray(losses, dtype=np.float64)
    ends = {x: v[a == x] for x in (0.0, 1.0)}
    if any(e.size != 1 for e in ends.values()):
        raise ValueError("barrier_linear: the grid must contain alpha = 0 and alpha = 1 once each")
    inside = (a >= 0.0) & (a <= 1.0)
    chord = (1.0 - a[inside]) * ends[0.0][0] + a[inside] * ends[1.0][0]
    return float(np.max(v[inside] - chord))


def _subset(ds: Any, n: int | None) -> Any:
    if n is None or n >= len(ds):
        return ds
    return torch.utils.data.Subset(ds, range(int(n)))


class _Reached(Exception):
    """Raised by :class:`_StopAtTrainLoss` to end B's training (the trainer has no early stop)."""


class _StopAtTrainLoss:
    """Callback: after every epoch, evaluate the train loss on ``data``; stop once it is at most ``target``.
    Keeps the steps taken, the last loss checked and the trainer's history (also when stopped)."""

    def __init__(self, target: float, data: Any) -> None:
        self.target, self.data = float(target), data
        self.steps, self.loss, self.reached, self.history = 0, math.nan, False, None

    def on_step_end(self, trainer: Any, step: Any) -> None:
        self.steps += 1

    def on_epoch_end(self, trainer: Any) -> None:
        from nnteleport.lab.training import evaluate

        self.loss = evaluate(trainer.model, self.data)[0]
        if self.loss <= self.target:
            self.reached = True
            raise _Reached

    def on_train_end(self, trainer: Any) -> None:
        self.history = trainer.history


def _train_pair(cfg: dict, data: Any, seed: int, train_eval: Any, show: bool) -> tuple[list, list, dict]:
    """Train A (``epochs`` epochs) and B (to A's train loss within ``max_steps``, or ``epochs`` epochs) from the
    same initialisation; returns the two models (eval mode), their histories and the training record."""
    from nnteleport.lab.training import evaluate, train

    kwargs = dict(cfg["model_kwargs"].get(cfg["model"], {}))
    common = {
        "optimizer": cfg["optimizer"], "lr": cfg["lr"], "weight_decay": cfg["weight_decay"], "lr_decay_epochs": (),
        "init": None if cfg["init"] == "default" else cfg["init"], "seed": seed, "progress": show,
        "device": resolve_device(cfg["device"]),
    }  # fmt: skip
    bs_a, bs_b = (int(b) for b in cfg["batch_sizes"])
    torch.manual_seed(seed)
    a = build_model(cfg["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
    hist_a = train(a, data, epochs=cfg["epochs"], batch_size=bs_a, desc=f"interpolation: A batch {bs_a}", **common)
    loss_a = evaluate(a, train_eval)[0]
    steps_per_epoch = {bs: math.ceil(len(data.train) / bs) for bs in (bs_a, bs_b)}
    torch.manual_seed(seed)
    b = build_model(cfg["model"], in_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
    record: dict[str, Any] = {"seed": seed, "loss_A": loss_a, "steps_A": cfg["epochs"] * steps_per_epoch[bs_a]}
    if cfg["match_train_loss"]:
        stop = _StopAtTrainLoss(loss_a, train_eval)
        epochs_b = max(1, math.ceil(int(cfg["max_steps"]) / steps_per_epoch[bs_b]))
        try:
            train(b, data, epochs=epochs_b, batch_size=bs_b, callbacks=[stop], eval_every=epochs_b,
                  desc=f"interpolation: B batch {bs_b}", **common)  # fmt: skip
        except _Reached:
            pass
        hist_b = stop.history
        record.update(steps_B=stop.steps, reached=stop.reached, step_cap=epochs_b * steps_per_epoch[bs_b])
    else:
        hist_b = train(b, data, epochs=cfg["epochs"], batch_size=bs_b, desc=f"interpolation: B batch {bs_b}", **common)
        record.update(steps_B=cfg["epochs"] * steps_per_epoch[bs_b], reached=None, step_cap=None)
    record["loss_B"] = evaluate(b, train_eval)[0]
    return [a.eval(), b.eval()], [hist_a.to_dict(), hist_b.to_dict()], record


def _profiles(rows: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Per-profile numbers of one seed from its rows of ``profiles.csv``."""
    out: dict[str, Any] = {}
    base = {r["alpha"]: r for r in rows if r["profile"] == "original"}
    for name in names:
        mine = sorted((r for r in rows if r["profile"] == name), key=lambda r: r["alpha"])
        inner = [r["train_loss"] for r in mine if 0.0 < r["alpha"] < 1.0]
        ends = {r["alpha"]: r for r in mine if r["alpha"] in (0.0, 1.0)}
        out[name] = {
            "loss_A": ends[0.0]["train_loss"],
            "loss_B": ends[1.0]["train_loss"],
            "val_acc_A": ends[0.0]["val_acc"],
            "val_acc_B": ends[1.0]["val_acc"],
            "endpoint_loss_change": max(abs(ends[x]["train_loss"] - base[x]["train_loss"]) for x in (0.0, 1.0)),
            "barrier_linear": barrier_linear([r["alpha"] for r in mine], [r["train_loss"] for r in mine]),
            "barrier": max(inner) - max(ends[0.0]["train_loss"], ends[1.0]["train_loss"]) if inner else math.nan,
            "max_train_loss_between": max(inner) if inner else math.nan,
            "mean_train_loss": float(np.mean([r["train_loss"] for r in mine])),
        }
    return out


def _one_seed(cfg: dict, data: Any, seed: int, show: bool) -> tuple[list, dict, list, dict]:
    from nnteleport.lab.training import evaluate

    train_eval = _subset(data.train, cfg["eval_examples"])
    val_eval = _subset(data.val, cfg["eval_examples"])
    nets, histories, record = _train_pair(cfg, data, seed, train_eval, show)
    x_example = data.example_batch(64)[0].to(resolve_device(cfg["device"]))
    gen = torch.Generator().manual_seed(seed)
    pairs: dict[str, tuple[torch.nn.Module, torch.nn.Module]] = {"original": (nets[0], nets[1])}
    for s in cfg["cob_ranges"]:
        pairs[f"s={s:g}"] = tuple(  # type: ignore[assignment]
            nnteleport.teleport(n, x_example, cob_range=s, sampling=cfg["sampling"], generator=gen).eval() for n in nets
        )
    alphas = np.linspace(cfg["alpha_min"], cfg["alpha_max"], int(cfg["num_alphas"]))
    alphas = np.unique(np.concatenate([alphas, [0.0, 1.0]]))
    rows: list[dict[str, Any]] = []
    points = [(name, float(a)) for name in pairs for a in alphas]
    for name, a in progress_bar(points, show):
        net = interpolate(*pairs[name], a)
        tl, ta = evaluate(net, train_eval)
        vl, va = evaluate(net, val_eval)
        rows.append(
            {"seed": seed, "profile": name, "alpha": a, "train_loss": tl, "train_acc": ta, "val_loss": vl,
             "val_acc": va}
        )  # fmt: skip
    return rows, _profiles(rows, list(pairs)), histories, record


def _sharpens(barriers: list[float]) -> bool:
    """Teleported barriers non-decreasing in ``s`` and the largest ``s`` above the original."""
    return all(b2 >= b1 for b1, b2 in itertools.pairwise(barriers[1:])) and barriers[-1] > barriers[0]


def run(config: dict, out: Path, *, progress: bool = True) -> dict:
    """Run the experiment (see the module docstring); writes ``results.json``, ``profiles.csv`` and a PNG."""
    cfg = merge_config(DEFAULTS, config or {}, source="interpolation")
    validate_config("interpolation", cfg)
    resolve_device(cfg["device"])
    if len(cfg["batch_sizes"]) != 2:
        raise ValueError(f"interpolation: batch_sizes must be two sizes [A, B], got {cfg['batch_sizes']!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(cfg["dataset"], cfg["data_root"], seed=cfg["seed"], augment=cfg["augment"])
    rows, per_seed, training = [], [], []
    for seed in seed_list(cfg):
        r, prof, hist, record = _one_seed(cfg, data, seed, progress)
        rows += r
        per_seed.append({"seed": seed, "profiles": prof, "histories": hist})
        training.append(record)
    names = list(per_seed[0]["profiles"])
    keys = ("barrier_linear", "barrier", "max_train_loss_between", "mean_train_loss", "loss_A", "loss_B")
    summ = {n: {k: summary(p["profiles"][n][k] for p in per_seed) for k in keys} for n in names}
    seed_sharp = [_sharpens([p["profiles"][n]["barrier_linear"] for n in names]) for p in per_seed]
    results = {
        "experiment": "interpolation",
        "config": cfg,
        "seeds": seed_list(cfg),
        "profiles": per_seed[0]["profiles"],
        "histories": {f"batch_{bs}": h for bs, h in zip(cfg["batch_sizes"], per_seed[0]["histories"])},
        "per_seed": [{"seed": p["seed"], "profiles": p["profiles"]} for p in per_seed],
        "training": training,
        "num_reached": sum(bool(t["reached"]) for t in training),
        "summary": summ,
        "sharpens_mean": _sharpens([summ[n]["barrier_linear"]["mean"] for n in names]),
        "num_seeds_sharpen": sum(seed_sharp),
        "files": {"csv": "profiles.csv", "plot": "interpolation.png"},
    }
    write_csv(out / "profiles.csv", rows)
    write_json(out / "results.json", results)
    plot(out)
    return results


def progress_bar(points: list, enabled: bool):
    return progress(points, enabled=enabled, desc="interpolation profiles", total=len(points))


def _mean_curve(curves: dict[Any, list[dict[str, Any]]], key: str) -> list[float]:
    """Point-wise mean of ``key`` over the seeds' profiles (rows sorted by alpha, the same grid)."""
    rows = list(curves.values())
    return [float(np.mean([r[i][key] for r in rows])) for i in range(len(rows[0]))]


def plot(out: Path) -> Path:
    """Draw ``interpolation.png`` from ``profiles.csv``: one panel per profile, loss (log) of every seed (thin)
    and their mean (thick), and the mean accuracy over the seeds (results without a seed column: one seed)."""
    from nnteleport.lab.plotting import read_csv

    out = Path(out)
    res = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "profiles.csv")
    names = list(res["profiles"])
    seeds = sorted({r.get("seed", 0) for r in rows})
    fig, axes = new_figure(1, len(names), size=(3.3, 3.0))
    bs = res["config"]["batch_sizes"]
    for j, name in enumerate(names):
        ax = axes[0, j]
        curves = {}
        for sd in seeds:
            mine = sorted(
                (r for r in rows if r["profile"] == name and r.get("seed", 0) == sd), key=lambda r: r["alpha"]
            )
            curves[sd] = mine
            a = [r["alpha"] for r in mine]
            if len(seeds) > 1:
                ax.plot(a, [r["train_loss"] for r in mine], color=COLORS["teleport"], linestyle=":", linewidth=0.6)
                ax.plot(a, [r["val_loss"] for r in mine], color=COLORS["teleport"], linewidth=0.6, alpha=0.5)
        a = [r["alpha"] for r in curves[seeds[0]]]

        ax.plot(
            a,
            _mean_curve(curves, "train_loss"),
            color=COLORS["teleport"],
            linestyle=":",
            linewidth=1.8,
            label="train loss",
        )
        ax.plot(a, _mean_curve(curves, "val_loss"), color=COLORS["teleport"], linewidth=1.8, label="val loss")
        ax.set_yscale("log")
        for x in (0.0, 1.0):
            ax.axvline(x, color="#2ca02c", linewidth=1)
        ax2 = ax.twinx()
        ax2.plot(a, _mean_curve(curves, "train_acc"), color=COLORS["baseline"], linestyle=":", label="train acc")
        ax2.plot(a, _mean_curve(curves, "val_acc"), color=COLORS["baseline"], label="val acc")
        ax2.set_ylim(0, 1.02)
        ax.set_title(name if name == "original" else f"teleported, {name}", fontsize=9)
        ax.set_xlabel(f"alpha (A: batch {bs[0]} at 0, B: batch {bs[1]} at 1)", fontsize=8)
        if j == 0:
            ax.set_ylabel(f"loss (log; thick: mean of {len(seeds)} seeds)", color=COLORS["teleport"])
            ax.legend(fontsize=7, loc="upper left")
        if j == len(names) - 1:
            ax2.set_ylabel("accuracy (mean over seeds)", color=COLORS["baseline"])
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
DEMO_SECONDS = 40


def _training_text(res: dict[str, Any]) -> str:
    """How A and B were trained, per seed (empty for results written before B was matched to A)."""
    tr = res.get("training")
    if not tr:
        return ""
    parts = []
    for t in tr:
        reach = "" if t["reached"] is None else (" (reached A's)" if t["reached"] else " (cap hit: did NOT reach A's)")
        parts.append(
            f"seed {t['seed']}: A {t['steps_A']} steps → {sci(t['loss_A'])}, B {t['steps_B']} steps → "
            f"{sci(t['loss_B'])}{reach}"
        )
    return "; ".join(parts)


def _spread(v: dict[str, float]) -> str:
    return f"{sci(v['mean'])} ± {sci(v['std'])} [{sci(v['min'])}, {sci(v['max'])}]"


def report_section(res: dict[str, Any], d: Path) -> tuple[Section, list[Headline]]:
    """The demo report's section from ``results`` (``d``: the output folder with the PNGs):
    the 1D profiles between A and B and their teleported pairs over the seeds; headline: the barrier (mean over
    seeds), original vs largest s."""
    cfg = res["config"]
    summ = res.get("summary")
    if summ:
        n = len(res["per_seed"])
        nums = [
            (
                name,
                f"barrier over the segment (max of loss − chord), over {n} seeds: {_spread(v['barrier_linear'])}; "
                f"train loss at A {_spread(v['loss_A'])}, at B {_spread(v['loss_B'])}; highest loss between A "
                f"and B {_spread(v['max_train_loss_between'])}; endpoint change under teleport (seed "
                f"{res['per_seed'][0]['seed']}) {sci(res['profiles'][name]['endpoint_loss_change'])}",
            )
            for name, v in summ.items()
        ]
        nums.append(("training", _training_text(res)))
        barriers = [v["barrier_linear"]["mean"] for v in summ.values()]
        sharper = bool(res["sharpens_mean"])
        seeds_txt = f"{res['num_seeds_sharpen']}/{n} seeds"
        reached = res["num_reached"] if cfg.get("match_train_loss") else None
    else:  # results written before the seeds and the matched training
        nums = [
            (name, f"train loss at A {sci(p['loss_A'])}, at B {sci(p['loss_B'])}; barrier {sci(p['barrier'])}")
            for name, p in res["profiles"].items()
        ]
        barriers = [p["max_train_loss_between"] for p in res["profiles"].values()]
        sharper = _sharpens(barriers)
        seeds_txt, reached, n = "1 seed", None, 1
    match = (
        f"A trained {cfg['epochs']} epochs; B until its train loss reached A's, within {cfg.get('max_steps')} steps "
        f"(reached in {reached}/{n} seeds)"
        if reached is not None
        else f"both trained {cfg['epochs']} epochs"
    )
    verdict = (
        f"barrier grows with s (mean over seeds; per seed: {seeds_txt})"
        if sharper
        else f"no monotone growth of the barrier with s (mean over seeds; monotone in {seeds_txt})"
    )
    if reached is not None and reached < n:
        verdict += f"; B did not reach A's train loss in {n - reached}/{n} seeds (endpoints not comparable there)"
    sec = Section(
        title=TITLE,
        claim=(
            "Paper (Sec. 4.4, Fig. 4): on the segment between a small-batch (A) and a large-batch (B) "
            "network, teleporting both makes the 1D loss profile sharper, more so for larger s. Here: "
            f"{cfg['model']} with batch sizes {cfg['batch_sizes']} from the same initialisation, {match}; "
            f"teleported with independent CoBs ({cfg['sampling']}) of range {cfg['cob_ranges']}."
        ),
        numbers=nums,
        figures=[
            Figure(
                d / "interpolation.png",
                "Loss (blue, log scale) and accuracy (orange) along θ(α) = (1−α)θ_A + αθ_B; dotted: train, "
                "solid: validation; thin: single seeds, thick: mean over seeds; green lines: the two trained "
                "networks (their values do not change under teleportation). Left: original pair; then "
                "teleported pairs with growing s.",
            )
        ],
        verdict=verdict,
        status="good" if sharper else "neutral",
    )
    head = Headline(
        "landscape sharpening",
        f"{sci(barriers[0])} → {sci(barriers[-1])}",
        f"barrier between A and B (mean over {n} seeds): original → teleported with s = {cfg['cob_ranges'][-1]}",
        "good" if sharper else "neutral",
    )
    return sec, [head]
