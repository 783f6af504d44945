"""Statistics that cannot flatter (issue #16): diverged runs are counted and lose, flat pairs give no speed-up,
curves show what exists, every arm resets its optimizer alike, the pseudo-teleport verdict covers every lr."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from nnteleport.lab.experiments import paired
from nnteleport.lab.experiments.paired import aggregate, overall, paired_gaps, paired_summary

NAN = float("nan")


def rec(arm, seed, losses, *, start=2.3026, lr=0.1, acc=0.5, opt="sgd"):
    """A synthetic run: per-epoch train losses (also the per-iteration ones), the loss before training."""
    task = {"model": "m", "dataset": "d", "activation": "relu", "optimizer": opt, "lr": lr, "arm": arm, "seed": seed}
    hist = {
        "train_loss": list(losses),
        "iter_loss": list(losses),
        "val_acc": [acc] * len(losses),
        "val_loss": list(losses),
        "train_acc": [acc] * len(losses),
        "initial": {"val_loss": start, "val_acc": 0.1},
    }
    return {"task": task, "history": hist}


def gaps_of(records, arm="x", **kw):
    (g,) = paired_gaps(records, baseline="none", arm_name=arm, early_epochs=2, early_iters=2, **kw)
    return g


def test_diverged_runs_are_counted_and_lose_their_seed():
    # 5 seeds: the arm is ahead by 0.5 in the two finite seeds and diverges (NaN / inf / None) in three
    records = []
    for s in range(5):
        records.append(rec("none", s, [2.0, 1.0]))
        bad = [[1.5, 0.5], [1.5, 0.5], [NAN, NAN], [1.0, math.inf], [None, None]][s]
        records.append(rec("x", s, bad))
    g = gaps_of(records)
    assert g["diverged"] == {"none": 0, "x": 3}
    for name in ("gap_first_epoch", "gap_early", "gap_iter_early"):
        s = g[name]
        assert (s["n_all"], s["n"], s["wins"], s["losses"]) == (5, 2, 2, 3)
        assert s["median"] == "-inf"  # 3 of 5 seeds lost: the median is a loss
    assert g["gap_early"]["mean"] == pytest.approx(0.5)  # the finite pairs, labelled as such (n = 2)
    assert g["final_train_loss"]["x"]["diverged"] == 3
    assert g["final_train_loss"]["x"]["median"] == "+inf"
    assert g["speedup_outcomes"]["arm_diverged"] == 3
    ov = overall([g], "gap_early")
    assert ov["groups"] == 1 and ov["positive"] == 0 and ov["negative"] == 1
    assert ov["clearly_positive"] == 0
    assert ov["diverged_runs"] == {"none": 0, "x": 3}
    from nnteleport.lab.experiments.training import diverged_text, gap_rows

    assert diverged_text(g) == "diverged: none 0/5, x 3/5"
    assert "x 3/5" in gap_rows([g])[0][1]


def test_divergence_never_improves_the_arm():
    base = [rec("none", s, [2.0, 1.0]) for s in range(3)]
    # seed 2 of the arm: a finite run far behind, or the same seed diverged
    behind = [rec("x", 0, [1.9, 0.9]), rec("x", 1, [1.9, 0.9]), rec("x", 2, [3.0, 2.9])]
    blown = [*behind[:2], rec("x", 2, [3.0, NAN])]
    g_behind, g_blown = gaps_of(base + behind), gaps_of(base + blown)
    for name in ("gap_first_epoch", "gap_early", "gap_iter_early"):
        assert paired.as_float(g_blown[name]["median"]) <= paired.as_float(g_behind[name]["median"])
        assert g_blown[name]["wins"] <= g_behind[name]["wins"]
    # the old statistic dropped the diverged seed and so made the arm look better (mean over finite only)
    assert g_blown["gap_early"]["n"] == 2 and g_blown["gap_early"]["n_all"] == 3
    assert g_blown["gap_early"]["losses"] == 1
    # when only the baseline diverges, the arm wins that seed
    g = gaps_of([rec("none", 0, [NAN, NAN]), rec("x", 0, [2.0, 1.0])])
    assert g["gap_early"]["median"] == "+inf" and g["speedup_outcomes"]["baseline_diverged"] == 1


def test_group_whose_runs_all_diverged_stays_in_the_overall_figure():
    ok = [rec("none", s, [2.0, 1.0]) for s in range(2)] + [rec("x", s, [1.5, 0.5]) for s in range(2)]
    lost = [rec("none", s, [2.0, 1.0], lr=0.01) for s in range(2)] + [
        rec("x", s, [NAN, NAN], lr=0.01) for s in range(2)
    ]
    gaps = paired_gaps(ok + lost, baseline="none", arm_name="x", early_epochs=2, early_iters=2)
    ov = overall(gaps, "gap_early")
    assert ov["groups"] == 2  # before: 1 (the all-diverged group had no finite mean and vanished)
    assert (ov["positive"], ov["negative"]) == (1, 1)
    assert ov["clearly_negative"] == 1
    assert ov["groups_with_diverged_runs"] == 1
    both = paired_gaps(
        [rec("none", 0, [NAN, NAN]), rec("x", 0, [NAN, NAN])],
        baseline="none",
        arm_name="x",
        early_epochs=2,
        early_iters=2,
    )
    assert overall(both)["groups"] == 1 and both[0]["gap_early"]["ties"] == 1


def test_flat_pair_gives_no_speedup():
    from nnteleport.lab.experiments.training import speedup_text

    # normal init, std 0.01: both arms stay at ln(10); before: x2.78
    flat = [rec("none", 0, [2.3026, 2.3024, 2.3023]), rec("x", 0, [2.3025, 2.3023, 2.3023])]
    g = gaps_of(flat)
    assert g["speedup_outcomes"]["no_progress"] == 1
    assert g["speedup"]["n_all"] == 0
    assert "no speed-up (no progress)" in speedup_text(g)
    # final 2.304 vs 2.302 (before: x4.0)
    g = gaps_of([rec("none", 0, [2.31, 2.305, 2.304, 2.304]), rec("x", 0, [2.302, 2.302, 2.302, 2.302])])
    assert g["speedup_outcomes"]["no_progress"] == 1 and g["speedup"]["n_all"] == 0
    # a pair that trains is measured: the arm reaches the baseline's final loss 1.0 at epoch 2 of 4
    g = gaps_of([rec("none", 0, [2.0, 1.6, 1.2, 1.0]), rec("x", 0, [1.5, 1.0, 0.8, 0.7])])
    assert g["speedup_outcomes"]["measured"] == 1
    assert g["speedup"]["median"] == pytest.approx(2.0)


def test_seeds_that_never_reach_the_target_are_counted_as_zero():
    records = []
    for s in range(3):
        records.append(rec("none", s, [2.0, 1.5, 1.0]))
        records.append(rec("x", s, [2.0, 1.0, 0.9] if s == 0 else [2.1, 1.8, 1.5]))
    g = gaps_of(records)
    assert g["speedup_outcomes"]["measured"] == 1 and g["speedup_outcomes"]["not_reached"] == 2
    assert g["speedup_not_reached"] == 2
    assert g["speedup"]["n_all"] == 3 and g["speedup"]["median"] == 0.0  # not dropped: x0 each
    assert g["speedup"]["mean"] == pytest.approx((3 / 2) / 3)


def test_made_progress_uses_the_start_loss():
    assert paired.made_progress({"train_loss": [2.0, 1.0], "iter_loss": [2.3], "initial": {"val_loss": 2.3}})
    assert not paired.made_progress({"train_loss": [2.3, 2.2], "iter_loss": [2.3], "initial": {"val_loss": 2.3}})
    # no initial evaluation: the first mini-batch's loss is the start
    assert paired.made_progress({"train_loss": [1.0], "iter_loss": [2.3, 1.0], "initial": {}})
    assert not paired.made_progress({"train_loss": [NAN], "iter_loss": [2.3, NAN], "initial": {}})


def test_paired_summary_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        paired_summary([1.0, NAN])
    s = paired_summary([1.0, -math.inf, 2.0])
    assert s["median"] == 1.0 and s["n"] == 2 and s["losses"] == 1


def test_curves_average_over_the_finite_seeds():
    records = [
        rec("x", 0, [3.0, 2.0, 1.0]),
        rec("x", 1, [3.0, NAN, NAN]),
        rec("x", 2, [3.0, 4.0, None]),
    ]
    rows = {r["epoch"]: r for r in aggregate(records)}
    assert rows[1]["train_loss_n"] == 3 and rows[1]["train_loss_mean"] == pytest.approx(3.0)
    assert rows[2]["train_loss_n"] == 2 and rows[2]["train_loss_mean"] == pytest.approx(3.0)
    assert rows[2]["train_loss_std"] == pytest.approx(math.sqrt(2.0))
    assert rows[3]["train_loss_n"] == 1 and rows[3]["train_loss_mean"] == pytest.approx(1.0)
    assert rows[3]["train_loss_std"] == 0.0 and rows[3]["n_seeds"] == 3
    assert rows[0]["val_loss_n"] == 3  # the evaluation before training
    # a seed that stopped early (shorter history) also drops out only where it has no value
    rows = {r["epoch"]: r for r in aggregate([rec("x", 0, [3.0, 2.0]), rec("x", 1, [3.0])])}
    assert rows[2]["train_loss_n"] == 1 and rows[2]["train_loss_mean"] == 2.0


def test_plots_draw_diverged_arms_and_mark_them_in_every_panel(tmp_path, monkeypatch):
    from nnteleport.lab.experiments import training
    from nnteleport.lab.plotting import write_csv

    records = []
    for lr in (0.1, 0.01):
        for opt in ("sgd", "momentum"):
            for s in range(3):
                records.append(rec("none", s, [2.0, 1.5, 1.0], lr=lr, opt=opt))
                diverging = [2.0, 1.2, NAN] if s < 2 else [2.0, 1.2, 0.8]
                records.append(rec("teleport", s, diverging, lr=lr, opt=opt))
    write_csv(tmp_path / "curves.csv", aggregate(records))
    figs = []
    monkeypatch.setattr(training, "save_figure", lambda fig, path: figs.append(fig) or path)
    training.plot_curves(tmp_path, "curves.csv", arms=["none", "teleport"])
    (fig,) = figs
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        labels = ax.get_legend_handles_labels()[1]
        assert "none (n=3)" in labels
        assert "teleport (n=3): 2/3 diverged from epoch 3" in labels
        curve = next(line for line in ax.get_lines() if line.get_label().startswith("teleport"))
        assert list(curve.get_xdata()) == [1, 2, 3]  # drawn to the end, over the finite seed at epoch 3
        assert ax.get_legend() is not None


def test_every_arm_resets_its_optimizer_at_the_teleport_epoch():
    from nnteleport.lab.experiments.mid_training import DEFAULTS
    from nnteleport.lab.experiments.training import arm, grid_tasks

    cfg = {**DEFAULTS, "seeds": 1, "models": ["mlp"]}
    arms = [arm("none"), arm("s=0.9", teleport_at=6, cob_range=0.9)]
    tasks = grid_tasks(cfg, arms)
    assert {t["arm"] for t in tasks} == {"none", "s=0.9"}
    assert all(t["reset_optimizer_at"] == [6] for t in tasks)


class _Spy:
    """Records, at the start of every epoch (after the standard callbacks), the optimizer's state size and lr."""

    def __init__(self):
        self.seen = {}

    def on_epoch_start(self, trainer):
        opt = trainer.optimizer
        self.seen[trainer.epoch] = (len(opt.state), opt.param_groups[0]["lr"])


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _data():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
    ds = torch.utils.data.TensorDataset(x, y)
    return ds, ds


def test_reset_optimizer_at_clears_the_state_and_keeps_the_schedule():
    from nnteleport.lab.training import train

    spy, plain = _Spy(), _Spy()
    kw = dict(epochs=4, batch_size=8, optimizer="momentum", lr=0.1, lr_decay_epochs=[2], progress=False)
    h_reset = train(_net(), _data(), reset_optimizer_at=[2], callbacks=[spy], **kw)
    h_plain = train(_net(), _data(), callbacks=[plain], **kw)
    assert plain.seen[2][0] > 0 and spy.seen[2][0] == 0  # fresh momentum buffers at epoch 2
    assert spy.seen[3][0] > 0
    assert spy.seen[2][1] == pytest.approx(0.01) and spy.seen[3][1] == pytest.approx(0.01)  # decay survives
    # identical before the reset, different after (momentum matters)
    assert h_reset.train_loss[:2] == h_plain.train_loss[:2]
    assert h_reset.train_loss[2] != h_plain.train_loss[2]
    with pytest.raises(ValueError, match="reset_optimizer_at"):
        train(_net(), _data(), reset_optimizer_at=[4], **kw)


def test_baseline_reset_matches_the_teleport_arms_reset(monkeypatch):
    """With a teleport that moves nothing (the identity), the teleported arm equals a baseline that resets at
    the same epoch, not one that keeps its momentum: the arms differ only by the teleport."""
    from nnteleport.lab.training import teleport as teleport_mod
    from nnteleport.lab.training import train

    monkeypatch.setattr(teleport_mod, "_teleport_fn", lambda: lambda model, x, **kw: model)
    kw = dict(epochs=3, batch_size=8, optimizer="momentum", lr=0.1, progress=False, lr_decay_epochs=())
    tele = train(_net(), _data(), teleport_at=1, **kw)
    reset = train(_net(), _data(), reset_optimizer_at=[1], **kw)
    keep = train(_net(), _data(), **kw)
    assert tele.train_loss == pytest.approx(reset.train_loss, rel=1e-6, abs=1e-7)
    assert tele.train_loss[1:] != pytest.approx(keep.train_loss[1:], rel=1e-6, abs=1e-7)


def test_pseudo_teleport_verdict_reports_every_learning_rate():
    from nnteleport.lab.experiments.pseudo_teleport import DEMO, pseudo_verdict

    assert DEMO["lrs"] == [0.01, 0.001]
    records = []
    for s in range(3):
        for lr in (0.01, 0.001):
            records.append(rec("none", s, [2.0, 1.5, 1.33], lr=lr))
        records.append(rec("pseudo", s, [NAN, NAN, NAN], lr=0.01))
        # at lr 1e-3 the random jump starts far behind and ends far below the baseline (as measured: 0.03 vs 1.33)
        records.append(rec("pseudo", s, [60.0, 0.1, 0.03], lr=0.001))
    gaps = paired_gaps(records, baseline="none", arm_name="pseudo", early_epochs=2, early_iters=2)
    text = pseudo_verdict(gaps)
    assert "lr 0.01:" in text and "lr 0.001:" in text
    assert "diverged 3/3" in text and "ahead early in 0/3" in text and "lower at the end in 3/3" in text
    assert "+0.03" in text or "0.03 vs" in text  # the final losses are in the verdict
    from nnteleport.lab.experiments.pseudo_teleport import report_section

    res = {
        "config": {"models": ["m"], "datasets": ["d"], "optimizers": ["sgd"], "lrs": [0.01, 0.001], "seeds": 3,
                   "epochs": 3},
        "gaps": gaps,
        "overall": {},
        "files": {},
    }  # fmt: skip
    sec, _ = report_section(res, Path("."))
    assert sec.status == "bad"  # a random jump ending clearly below the baseline is a failed control, said so
    assert "lr 0.001" in sec.verdict


def test_mid_training_jump_counts_diverged_runs():
    from nnteleport.lab.experiments.mid_training import _diff

    assert _diff(0.9, 0.8, False, False) == pytest.approx(0.1)
    assert _diff(0.9, 0.8, True, False) == -math.inf
    assert _diff(0.1, 0.8, False, True) == math.inf
    assert _diff(0.1, 0.8, True, True) == 0.0


def test_distance_training_summary_has_spread_and_diverged():
    from nnteleport.lab.experiments.distance_training import DEFAULTS, _summary

    assert len(DEFAULTS["seeds"]) >= 3

    def run(seed, acc, loss):
        return {
            "model": "m",
            "variant": "baseline",
            "seed": seed,
            "final_val_acc": acc,
            "best_val_acc": acc,
            "final_train_loss": loss,
            "ensemble": {"members": 2, "mean_member_accuracy": acc, "ensemble_accuracy": acc,
                         "ensemble_nll": 1.0, "mean_disagreement": 0.1 * seed, "mean_error_correlation": 0.5},
            "history": {"dist_first_ckpt": [1.0], "inv_dist_first_ckpt": [1.0]},
            "train_seconds": 1.0,
        }  # fmt: skip

    (row,) = _summary([run(0, 0.9, 0.1), run(1, 0.8, 0.2), run(2, 0.1, None)])
    assert row["seeds"] == 3 and row["diverged"] == 1
    assert row["final_val_acc"] == pytest.approx(0.6)
    assert row["final_val_acc_min"] == 0.1 and row["final_val_acc_max"] == 0.9
    assert row["disagreement_std"] == pytest.approx(0.1)


def test_distance_training_verdict_pairs_seeds():
    from nnteleport.lab.experiments.distance_training import _seed_wins

    def run(variant, seed, dis):
        return {"model": "m", "variant": variant, "seed": seed, "ensemble": {"mean_disagreement": dis}}

    runs = [run("baseline", 0, 0.1), run("baseline", 1, 0.3), run("distance", 0, 0.2), run("distance", 1, 0.31),
            run("distance_invariant", 0, None), run("distance_invariant", 1, 0.5)]  # fmt: skip
    assert _seed_wins(runs, "m", "distance") == (2, 2)
    assert _seed_wins(runs, "m", "distance_invariant") == (1, 2)  # the missing value loses its seed
