"""Statistics of paired training runs that cannot flatter an arm: divergence, progress and spread.

Used by the ``training``, ``pseudo-teleport`` and ``mid-training`` experiments. Two runs of one seed (an arm
and its baseline) share the initialisation and the batch order; every statistic is paired by seed.

Rules (issue #16, "statistics that cannot flatter"):

* **Divergence.** A run has *diverged* when any of its training losses (per iteration or per epoch) is NaN or
  infinite. A diverged run loses every paired comparison of its seed: its gap counts as ``-inf`` for the arm
  (``+inf`` when only the baseline diverged; ``0``, a tie, when both did). The reported statistic of a group is
  the **median over all seeds** with those infinities in, next to the wins / losses / ties across seeds and
  the mean +- sample std over the pairs in which both runs stayed finite (``n``; ``n_all`` is every seed), so a
  diverged run is counted and can only lower its arm's median. Groups are never dropped from the overall
  figure (:func:`overall`), however many of their runs diverged.
* **Speed-up** (baseline epochs / epochs the arm needs to reach the baseline's final training loss) is
  measured only when both runs of a seed *made progress*: their final training loss is at most
  ``1 - PROGRESS_FRACTION`` times their loss at the start (the validation loss before training, which is the
  loss of the initial -- or teleported -- network; else the first mini-batch's loss). Pairs without progress
  give no speed-up and are counted (``no_progress``); an arm that never reaches the target (or diverged)
  counts as speed-up 0 (it would need infinitely many epochs) and stays in the median; a diverged baseline
  counts as ``+inf``.
* **Curves** (:func:`aggregate`): the per-epoch mean and std are taken over the seeds whose value is finite at
  that epoch, with the count ``<name>_n`` beside them, so a diverged seed removes only itself, from the epoch
  where it diverged.

Infinite values cannot be written as JSON numbers (:func:`~nnteleport.lab.plotting.write_json` turns them into
``null``); the medians are therefore stored as the strings ``"+inf"`` / ``"-inf"`` when infinite
(:func:`as_float` reads them back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from nnteleport.lab.plotting import summary

__all__ = [
    "GROUP_KEYS",
    "PROGRESS_FRACTION",
    "aggregate",
    "as_float",
    "clearly",
    "diverged",
    "epochs_to_reach",
    "made_progress",
    "overall",
    "paired_gaps",
    "paired_summary",
    "start_loss",
]

GROUP_KEYS = ("model", "dataset", "activation", "optimizer", "lr")

#: A run made progress when its final training loss is at most ``(1 - PROGRESS_FRACTION)`` x its start loss.
PROGRESS_FRACTION = 0.1


def _key(task: Mapping[str, Any]) -> tuple:
    return tuple(task[k] for k in GROUP_KEYS)


def _float(v: Any) -> float:
    return as_float(v)


def _floats(vs: Iterable[Any]) -> list[float]:
    return [_float(v) for v in vs]


def as_float(v: Any) -> float:
    """A number of a results file as a float: ``None`` -> NaN, ``"+inf"`` / ``"-inf"`` -> infinities."""
    if v is None:
        return math.nan
    if isinstance(v, str):
        return {"+inf": math.inf, "inf": math.inf, "-inf": -math.inf}.get(v, math.nan)
    return float(v)


def _json_number(x: float) -> float | str:
    """``x``, or ``"+inf"`` / ``"-inf"`` (JSON has no infinities); NaN stays NaN (written as ``null``)."""
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return float(x)


# --------------------------------------------------------------------------------------------------
# one run


def diverged(history: Mapping[str, Any]) -> bool:
    """Whether a run diverged: any per-iteration or per-epoch training loss is NaN, infinite or missing."""
    losses = [*history.get("train_loss", []), *history.get("iter_loss", [])]
    return any(not math.isfinite(_float(v)) for v in losses)


def start_loss(history: Mapping[str, Any]) -> float:
    """The loss a run starts from: the validation loss before training (after a teleport at epoch 0), else
    the loss of its first mini-batch; NaN when neither is known."""
    v = _float((history.get("initial") or {}).get("val_loss"))
    if math.isfinite(v):
        return v
    it = history.get("iter_loss") or []
    return _float(it[0]) if it else math.nan


def made_progress(history: Mapping[str, Any], fraction: float = PROGRESS_FRACTION) -> bool:
    """Whether a finite run's final training loss fell to at most ``(1 - fraction)`` x :func:`start_loss`."""
    if diverged(history) or not history.get("train_loss"):
        return False
    start, final = start_loss(history), _float(history["train_loss"][-1])
    return math.isfinite(start) and final <= (1.0 - fraction) * start


def epochs_to_reach(losses: Sequence[float], target: float) -> float:
    """First (fractional, 1-based) epoch at which the per-epoch loss curve reaches ``target``.

    ``losses[i]`` is the loss of epoch ``i + 1``; between two epochs the curve is interpolated linearly. NaN if
    the target is never reached (or not finite).
    """
    if not math.isfinite(target):
        return math.nan
    prev = None
    for i, v in enumerate(losses):
        if math.isfinite(v) and v <= target:
            if i == 0 or prev is None or prev == v:
                return float(i + 1)
            return i + (prev - target) / (prev - v)
        prev = v if math.isfinite(v) else None
    return math.nan


# --------------------------------------------------------------------------------------------------
# statistics


def paired_summary(values: Iterable[float]) -> dict[str, Any]:
    """Statistics of per-seed paired values in which a divergence is ``+inf`` / ``-inf`` (never NaN).

    ``mean``, ``std``, ``min``, ``max``, ``n``: over the finite values (as :func:`~nnteleport.lab.plotting.summary`);
    ``median``: over all ``n_all`` values, infinities included (``"+inf"`` / ``"-inf"`` when infinite);
    ``wins`` / ``losses`` / ``ties``: values > 0, < 0, == 0 (for a speed-up, compare with 1 yourself).
    """
    vals = [float(v) for v in values]
    if any(math.isnan(v) for v in vals):
        raise ValueError("paired_summary: NaN among the values; a divergence must be +inf or -inf")
    out: dict[str, Any] = summary(v for v in vals if math.isfinite(v))
    out["n_all"] = len(vals)
    out["median"] = _json_number(float(np.median(vals))) if vals else math.nan
    out["wins"] = sum(v > 0 for v in vals)
    out["losses"] = sum(v < 0 for v in vals)
    out["ties"] = sum(v == 0 for v in vals)
    return out


def clearly(s: Mapping[str, Any], sign: int) -> bool:
    """A gap "clearly" of ``sign``: every seed on that side (divergence included) and, over the finite
    pairs, the mean more than 2 sample standard deviations from 0."""
    n_all = s.get("n_all", s["n"])
    if not n_all:
        return False
    if "wins" in s and (s["wins"] if sign > 0 else s["losses"]) != n_all:
        return False
    if s["n"] == 0:
        return "wins" in s  # every seed won by divergence of the other arm; older results: no finite pair
    mean, std = as_float(s["mean"]), as_float(s["std"])
    return sign * mean > 2 * std


def _gap(b: float, a: float, b_div: bool, a_div: bool) -> float:
    """Baseline minus arm; a diverged run loses the comparison (both diverged: a tie)."""
    if a_div or b_div:
        return 0.0 if (a_div and b_div) else (-math.inf if a_div else math.inf)
    return b - a


def _speedup(hb: Mapping[str, Any], ha: Mapping[str, Any], fraction: float) -> tuple[str, float]:
    """``(outcome, value)`` of one pair; outcomes: ``measured``, ``not_reached`` (value 0), ``arm_diverged``
    (0), ``baseline_diverged`` (+inf), ``both_diverged`` and ``no_progress`` (no value: NaN)."""
    b_div, a_div = diverged(hb), diverged(ha)
    if a_div and b_div:
        return "both_diverged", math.nan
    if a_div:
        return "arm_diverged", 0.0
    if b_div:
        return "baseline_diverged", math.inf
    if not (made_progress(hb, fraction) and made_progress(ha, fraction)):
        return "no_progress", math.nan
    tb, ta = _floats(hb["train_loss"]), _floats(ha["train_loss"])
    reach = epochs_to_reach(ta, tb[-1])
    if not math.isfinite(reach):
        return "not_reached", 0.0
    return "measured", len(tb) / reach


SPEEDUP_OUTCOMES = ("measured", "not_reached", "arm_diverged", "baseline_diverged", "both_diverged", "no_progress")


def paired_gaps(
    records: Sequence[Mapping[str, Any]],
    *,
    baseline: str,
    arm_name: str,
    early_epochs: int,
    early_iters: int,
    progress_fraction: float = PROGRESS_FRACTION,
) -> list[dict[str, Any]]:
    """Per group: baseline minus ``arm_name`` losses, paired by seed (positive = the arm trains faster).

    See the module docstring for how diverged runs, flat runs and seeds that never reach the target count.
    """
    by: dict[tuple, dict[str, dict[int, Mapping[str, Any]]]] = {}
    for r in records:
        by.setdefault(_key(r["task"]), {}).setdefault(r["task"]["arm"], {})[r["task"]["seed"]] = r["history"]
    out = []
    for key, arms in by.items():
        if baseline not in arms or arm_name not in arms:
            continue
        seeds = sorted(set(arms[baseline]) & set(arms[arm_name]))
        first, early, it_early, last, acc_b, acc_a, loss_b, loss_a, speed = [], [], [], [], [], [], [], [], []
        outcomes = dict.fromkeys(SPEEDUP_OUTCOMES, 0)
        div = {baseline: 0, arm_name: 0, "both": 0}
        for s in seeds:
            hb, ha = arms[baseline][s], arms[arm_name][s]
            b_div, a_div = diverged(hb), diverged(ha)
            div[baseline] += b_div
            div[arm_name] += a_div
            div["both"] += b_div and a_div
            tb, ta = np.array(_floats(hb["train_loss"])), np.array(_floats(ha["train_loss"]))
            first.append(_gap(tb[0], ta[0], b_div, a_div))
            k = min(early_epochs, len(tb), len(ta))
            early.append(_gap(float(np.mean(tb[:k])), float(np.mean(ta[:k])), b_div, a_div))
            n = min(early_iters, len(hb["iter_loss"]), len(ha["iter_loss"]))
            ib, ia = _floats(hb["iter_loss"][:n]), _floats(ha["iter_loss"][:n])
            it_early.append(_gap(float(np.mean(ib)), float(np.mean(ia)), b_div, a_div))
            last.append(_gap(float(tb[-1]), float(ta[-1]), b_div, a_div))
            # a diverged run's accuracy is what it measured; a missing one counts as 0 (the worst)
            acc_b.append(_nan_to(_float(hb["val_acc"][-1]), 0.0))
            acc_a.append(_nan_to(_float(ha["val_acc"][-1]), 0.0))
            loss_b.append(math.inf if b_div else float(tb[-1]))
            loss_a.append(math.inf if a_div else float(ta[-1]))
            outcome, value = _speedup(hb, ha, progress_fraction)
            outcomes[outcome] += 1
            if not math.isnan(value):
                speed.append(value)
        row = dict(zip(GROUP_KEYS, key))
        row.update(
            {
                "arm": arm_name,
                "baseline": baseline,
                "n_seeds": len(seeds),
                # runs whose training loss became NaN/inf at any point; they lose their seed's comparisons
                "diverged": {baseline: div[baseline], arm_name: div[arm_name]},
                "diverged_both": div["both"],
                "gap_first_epoch": paired_summary(first),
                "gap_early": paired_summary(early),
                "gap_iter_early": paired_summary(it_early),
                "gap_final": paired_summary(last),  # final training loss, baseline minus arm
                "early_epochs": early_epochs,
                "early_iters": early_iters,
                # epochs of the baseline / epochs the arm needs to reach the baseline's final training loss
                "speedup": paired_summary(speed),
                "speedup_outcomes": outcomes,
                "speedup_not_reached": outcomes["not_reached"] + outcomes["arm_diverged"],
                "progress_fraction": progress_fraction,
                "final_train_loss": {baseline: _loss_summary(loss_b), arm_name: _loss_summary(loss_a)},
                "final_val_acc": {baseline: summary(acc_b), arm_name: summary(acc_a)},
            }
        )
        out.append(row)
    return out


def _nan_to(x: float, value: float) -> float:
    return value if math.isnan(x) else x


def _loss_summary(losses: Sequence[float]) -> dict[str, Any]:
    """Final losses: mean/std/min/max over the finite runs, ``diverged`` the others, ``median`` over all with a
    diverged run as ``+inf`` (the worst)."""
    out: dict[str, Any] = summary(v for v in losses if math.isfinite(v))
    out["diverged"] = sum(not math.isfinite(v) for v in losses)
    out["n_all"] = len(losses)
    out["median"] = _json_number(float(np.median(losses))) if losses else math.nan
    return out


def overall(gaps: Sequence[Mapping[str, Any]], name: str = "gap_early") -> dict[str, Any]:
    """Across groups (all of them, whatever diverged): how many have a positive median gap, how many are
    clearly ahead / behind (:func:`clearly`), the medians' median, and how many groups had diverged runs."""
    medians = [as_float(g[name].get("median", g[name]["mean"])) for g in gaps]
    means = [g[name]["mean"] for g in gaps if math.isfinite(as_float(g[name]["mean"]))]
    known = [m for m in medians if not math.isnan(m)]
    return {
        "metric": name,
        "groups": len(gaps),
        "positive": sum(m > 0 for m in known),
        "negative": sum(m < 0 for m in known),
        "clearly_positive": sum(clearly(g[name], +1) for g in gaps),
        "clearly_negative": sum(clearly(g[name], -1) for g in gaps),
        "groups_with_diverged_runs": sum(any(g.get("diverged", {}).values()) for g in gaps),
        "diverged_runs": _count_diverged(gaps),
        "median_of_medians": _json_number(float(np.median(known))) if known else math.nan,
        "mean_of_means": float(np.mean(means)) if means else math.nan,  # over the groups with a finite pair
        "per_group": summary(m for m in known if math.isfinite(m)),
    }


def _count_diverged(gaps: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Diverged runs per arm over ``gaps`` (a baseline shared by several arms is counted once per group)."""
    out: dict[str, int] = {}
    for g in gaps:
        for k, v in g.get("diverged", {}).items():
            out[k] = out.get(k, 0) + int(v)
    return out


# --------------------------------------------------------------------------------------------------
# curves


def aggregate(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per-epoch mean and sample std across the seeds that are finite there, one row per (group, arm, epoch).

    ``<name>_n`` is the number of finite seeds behind ``<name>_mean`` (``n_seeds`` all of them), so a diverged
    seed drops out only where its value is not finite. Epoch 0 holds the validation loss/accuracy before
    training (after a teleport at 0); ``train_loss`` is the mean over the mini-batches of epoch ``e - 1`` for
    ``e >= 1`` (NaN at 0).
    """
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault((*_key(r["task"]), r["task"]["arm"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        n_ep = max(len(r["history"]["train_loss"]) for r in recs)
        curves = {}
        for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
            arr = np.full((len(recs), n_ep + 1), math.nan)
            for i, r in enumerate(recs):
                vals = _floats(r["history"][name][:n_ep])
                arr[i, 1 : 1 + len(vals)] = vals
                if name.startswith("val"):
                    arr[i, 0] = _float((r["history"].get("initial") or {}).get(name))
            curves[name] = arr
        for e in range(n_ep + 1):
            row = dict(zip((*GROUP_KEYS, "arm"), key))
            row["epoch"] = e
            row["n_seeds"] = len(recs)
            for name, arr in curves.items():
                col = arr[:, e][np.isfinite(arr[:, e])]
                row[f"{name}_mean"] = float(np.mean(col)) if col.size else math.nan
                row[f"{name}_std"] = float(np.std(col, ddof=1)) if col.size > 1 else (0.0 if col.size else math.nan)
                row[f"{name}_n"] = int(col.size)
            rows.append(row)
    return rows
