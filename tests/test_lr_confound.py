"""The learning-rate confound: teleport-then-train equals training the original network with per-parameter
learning rates (nnteleport.lab.training.precondition), and the lr-confound experiment."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nnteleport
from nnteleport.engine.cob import expected_squared_ratio
from nnteleport.lab.training.precondition import (
    PreconditionedAdam,
    PreconditionedSGD,
    expected_abs_ratio,
    scale_factors,
    teleport_cob,
)

STEPS = 8


def _mlp(act: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 12), act(), nn.Linear(12, 4)).double()


def _batches(n: int = STEPS, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (32,), generator=g))
            for _ in range(n)]  # fmt: skip


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _setup(act: type[nn.Module]):
    W = _mlp(act)
    x = _batches(1)[0][0]
    cob = nnteleport.sample_cob(W, x, 0.9, "inter", generator=torch.Generator().manual_seed(3))
    V = nnteleport.teleport(W, x, cob)
    T = scale_factors(W, x, cob)
    return W, V, T


def _mapped_back(V: nn.Module, W: nn.Module, T: dict) -> float:
    """max |T^-1 V - W| / max |W| over all parameters."""
    pv, pw = dict(V.named_parameters()), dict(W.named_parameters())
    err = max(float((pv[n].detach() / T[n] - pw[n].detach()).abs().max()) for n in pw)
    return err / max(float(p.detach().abs().max()) for p in pw.values())


def test_scale_factors_are_the_engines_teleport() -> None:
    W, V, T = _setup(nn.Tanh)
    pv = dict(V.named_parameters())
    moved = 0
    for n, p in W.named_parameters():
        torch.testing.assert_close(pv[n], T[n] * p, rtol=1e-14, atol=0)
        moved += int((T[n] != 1).sum())
    assert moved > 0.9 * sum(p.numel() for p in W.parameters())  # not trivially 1


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["sgd", "momentum"])
@pytest.mark.parametrize("wd", [0.0, 0.01], ids=["nowd", "wd"])
def test_preconditioned_sgd_is_the_teleported_run(act, momentum, wd) -> None:
    W, V, T = _setup(act)
    batches = _batches()
    kw = {"lr": 0.05, "momentum": momentum, "weight_decay": wd}
    W0 = {n: p.detach().clone() for n, p in W.named_parameters()}
    _train(V, torch.optim.SGD(V.parameters(), **kw), batches)
    plain = _mlp(act)
    _train(plain, torch.optim.SGD(plain.parameters(), **kw), batches)
    _train(W, PreconditionedSGD.for_model(W, T, **kw), batches)
    moved = max(float((p.detach() - W0[n]).abs().max()) for n, p in W.named_parameters())
    assert moved > 1e-3  # the runs train
    assert _mapped_back(V, W, T) < 1e-13  # float64 round-off
    assert _mapped_back(V, plain, T) > 1e-3  # the control: plain SGD on W is another run


def test_preconditioned_sgd_weight_decay_is_not_preconditioned() -> None:
    """The L2 term on V becomes wd * W on W: preconditioning it too (T^-2 wd W) is a different run."""
    W, V, T = _setup(nn.ReLU)
    batches = _batches()
    kw = {"lr": 0.05, "momentum": 0.9}
    _train(V, torch.optim.SGD(V.parameters(), weight_decay=0.05, **kw), batches)
    opt = PreconditionedSGD.for_model(W, T, weight_decay=0.0, **kw)

    def step_with_l2_in_grad(model, batches):  # wd * W added before the preconditioning
        for x, y in batches:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            (loss + 0.025 * sum(p.pow(2).sum() for p in model.parameters())).backward()
            opt.step()

    step_with_l2_in_grad(W, batches)
    assert _mapped_back(V, W, T) > 1e-6


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
@pytest.mark.parametrize("wd", [0.0, 0.01], ids=["nowd", "wd"])
def test_preconditioned_adam_exact_eps_is_the_teleported_run(act, wd) -> None:
    W, V, T = _setup(act)
    batches = _batches()
    _train(V, torch.optim.Adam(V.parameters(), lr=1e-2, weight_decay=wd), batches)
    _train(W, PreconditionedAdam.for_model(W, T, lr=1e-2, weight_decay=wd, exact_eps=True), batches)
    # round-off, looser than SGD's: Adam's step lr * m / sqrt(v) does not shrink with the gradient, so the
    # relative round-off of small gradients (rescaled by T up to 19^2 here) reaches the weights undamped
    assert _mapped_back(V, W, T) < 1e-11


def test_preconditioned_adam_with_unit_scales_is_torch_adam() -> None:
    W = _mlp(nn.Tanh)
    ref = _mlp(nn.Tanh)
    batches = _batches()
    ones = {n: torch.ones_like(p) for n, p in W.named_parameters()}
    _train(W, PreconditionedAdam.for_model(W, ones, lr=1e-2, weight_decay=0.01), batches)
    _train(ref, torch.optim.Adam(ref.parameters(), lr=1e-2, weight_decay=0.01), batches)
    for p, q in zip(W.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("act", [nn.ReLU, nn.Tanh], ids=["relu", "tanh"])
def test_adam_teleport_is_per_parameter_lr_up_to_eps(act) -> None:
    """Without scaling eps the relation is approximate: the step differs by a relative
    |1 - |T|| eps / sqrt(v_hat) per element. Gradients here are ~1e-3..1e-1, so with eps = 1e-8 and |T| in
    [0.05, 19] the difference after 8 steps is below 1e-4 of how far the runs moved; with eps = 1e-1 (as large
    as the gradients) the approximation fails, which shows what the tolerance rests on."""
    for eps, ok in ((1e-8, True), (1e-1, False)):
        W, V, T = _setup(act)
        W0 = {n: p.detach().clone() for n, p in W.named_parameters()}
        batches = _batches()
        _train(V, torch.optim.Adam(V.parameters(), lr=1e-2, eps=eps), batches)
        _train(W, PreconditionedAdam.for_model(W, T, lr=1e-2, eps=eps), batches)
        pv = dict(V.named_parameters())
        err = max(float((pv[n].detach() / T[n] - p.detach()).abs().max()) for n, p in W.named_parameters())
        moved = max(float((p.detach() - W0[n]).abs().max()) for n, p in W.named_parameters())
        assert (err < 1e-4 * moved) is ok, (eps, err, moved)


def test_teleport_cob_is_the_training_teleports() -> None:
    from nnteleport.lab.training.teleport import Teleport

    W = _mlp(nn.ReLU)
    x = _batches(1)[0][0]
    V = _mlp(nn.ReLU)
    Teleport(x, [0], seed=5, cob_range=0.9, sampling="inter").move(V, 0)
    T = scale_factors(W, x, teleport_cob(W, x, seed=5, epoch=0, cob_range=0.9, sampling="inter"))
    for (n, p), q in zip(W.named_parameters(), V.parameters()):
        torch.testing.assert_close(q, T[n] * p, rtol=1e-14, atol=0)


def test_mean_factors() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = 0.1 + 1.8 * torch.rand(2, 400_000, generator=g, dtype=torch.float64)
    assert float((a / b).pow(2).mean()) == pytest.approx(expected_squared_ratio(0.9), rel=0.02)
    assert float((a / b).mean()) == pytest.approx(expected_abs_ratio(0.9), rel=0.01)
    assert expected_abs_ratio(0.9) == pytest.approx(math.log(19) / 1.8)


# --------------------------------------------------------------------------------------------------
# the experiment's statistics and a tiny run

from nnteleport.lab.experiments import lr_confound  # noqa: E402


def _h(losses):
    return {"train_loss": losses, "val_acc": [0.5] * len(losses), "iter_loss": losses}


def test_diverged_run_is_counted_and_cannot_win() -> None:
    tel = [lr_confound.run_stats(_h(v)) for v in ([1.0, 0.5], [1.0, None], [1.0, 0.2])]
    base = [lr_confound.run_stats(_h(v)) for v in ([1.0, 0.6], [1.0, 0.7], [1.0, None])]
    c = lr_confound.compare(tel, base)
    assert c["diverged_a"] == 1 and c["diverged_b"] == 1 and c["n"] == 3
    assert c["diff"]["n"] == 1 and c["diff"]["mean"] == pytest.approx(-0.1)
    assert c["a_wins"] == 2  # seed 0 and seed 2 (baseline diverged); seed 1 (teleport diverged) is a loss
    s = lr_confound.arm_summary(base)
    assert s["diverged"] == 1 and s["n"] == 3 and s["final"]["n"] == 2


def test_best_tuned_never_a_grid_point_with_a_diverged_seed() -> None:
    fam = [
        {"arm": "baseline", "kind": "plain", "lr": 0.01, "mult": 1.0},
        {"arm": "teleport", "kind": "teleport", "lr": 0.01},
        {"arm": "precond", "kind": "precond", "lr": 0.01},
        {"arm": "scalar-E", "kind": "plain", "lr": 0.067, "mult": 6.7},
        {"arm": "lr-x16", "kind": "plain", "lr": 0.16, "mult": 16.0},
    ]
    by = {
        "baseline": [_h([1.0, 0.8])] * 2,
        "teleport": [_h([1.0, 0.3])] * 2,
        "precond": [_h([1.0, 0.3])] * 2,
        "scalar-E": [_h([1.0, 0.4])] * 2,
        "lr-x16": [_h([1.0, 0.01]), _h([1.0, None])],  # best finite value, but one seed diverged
    }
    r = lr_confound.family_results(fam, by, "")
    assert r["best_tuned"]["arm"] == "scalar-E"
    assert r["arms"]["lr-x16"]["diverged"] == 1
    assert r["teleport_vs"]["best_tuned"]["diff"]["mean"] == pytest.approx(-0.1)
    assert r["equivalence_max_abs_loss_diff"]["precond"] == [0.0, 0.0]


def test_tiny_experiment_teleport_equals_precond(tmp_path) -> None:
    cfg = {"seeds": 2, "epochs": 2, "max_iters_per_epoch": 5, "hidden": [16, 16], "lr_multipliers": [4.0],
           "adam_lr_multipliers": [2.0], "activation": "tanh"}  # fmt: skip
    res = lr_confound.run(cfg, tmp_path, progress=False)
    assert res["num_runs"] == 2 * 11
    eq = res["families"]["sgd"]["equivalence_max_abs_loss_diff"]["precond"]
    assert len(eq) == 2 and max(eq) < 1e-10  # float64: the teleported run is the preconditioned one
    ex = res["families"]["adam"]["equivalence_max_abs_loss_diff"]["adam-exact"]
    assert max(ex) < 1e-8
    assert res["warnings"] == lr_confound.grid_warnings(res["families"])  # reported with the results
    sec, heads = lr_confound.report_section(res, tmp_path)
    assert all(f"WARNING: {w}" in sec.notes for w in res["warnings"])
    assert heads and heads[0].value
    assert sec.numbers and sec.verdict and all(f.path.is_file() for f in sec.figures)


def _grid_family(best: str) -> tuple[list[dict], dict[str, list[dict]]]:
    """An SGD family whose plain arm ``best`` has the lowest final loss."""
    fam = [
        {"arm": "baseline", "kind": "plain", "lr": 0.01, "mult": 1.0},
        {"arm": "teleport", "kind": "teleport", "lr": 0.01},
        {"arm": "precond", "kind": "precond", "lr": 0.01},
        {"arm": "scalar-E", "kind": "plain", "lr": 0.067, "mult": 6.7},
        {"arm": "lr-x32", "kind": "plain", "lr": 0.32, "mult": 32.0},
    ]
    by = {a["arm"]: [_h([1.0, 0.1 if a["arm"] == best else 0.5])] * 2 for a in fam}
    return fam, by


@pytest.mark.parametrize(("best", "edge"), [("lr-x32", "upper"), ("baseline", "lower"), ("scalar-E", None)])
def test_best_lr_at_a_grid_edge_is_a_warning(best, edge) -> None:
    fam, by = _grid_family(best)
    r = lr_confound.family_results(fam, by, "")
    assert r["best_tuned"]["arm"] == best and r["best_tuned"]["edge"] == edge
    assert r["best_tuned"]["at_grid_edge"] == (edge is not None)
    warnings = lr_confound.grid_warnings({"sgd": r})
    lines = lr_confound.verdict_lines({"families": {"sgd": r}, "warnings": warnings})
    if edge is None:
        assert warnings == [] and not any(line.startswith("WARNING") for line in lines)
    else:
        (w,) = warnings
        assert f"{edge} edge" in w and "lr_multipliers" in w
        assert ("past x32" if edge == "upper" else "below x1") in w
        assert lines[-1] == f"WARNING: {w}"
