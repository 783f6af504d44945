"""Teleport schedules in the training loop (which CoB, how often, the optimizer state, the time spent), the
PathCond-style conditioning rescaling, and the ``teleport-schedule`` experiment on a tiny configuration."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnteleport
from nnteleport.engine.analysis import analyze
from nnteleport.engine.pathcond import path_kernel_diagonal, pathcond_cob, pathcond_criterion
from nnteleport.errors import InvalidValueError
from nnteleport.lab.data.datasets import TensorPairDataset
from nnteleport.lab.training import RecordHistory, StepTimer, Teleport, Trainer, load_checkpoint, train
from nnteleport.lab.training import teleport as teleport_mod

COBS = ["random", "best-of-n", "optimized", "balanced", "pathcond"]


def _data(n: int = 96, features: int = 8, classes: int = 3, seed: int = 0) -> tuple[TensorPairDataset, None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g, dtype=torch.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).long() + (x[:, 3] > 1).long()
    return TensorPairDataset(x, y.clamp_max(classes - 1)), None


def _mlp(seed: int = 0, act: type[nn.Module] = nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), act(), nn.Linear(16, 12), act(), nn.Linear(12, 3)).double()


class Probe:
    """Outputs of the model on a fixed batch at every epoch start and step end (no side effects)."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x, self.outputs = x, []

    def _record(self, trainer) -> None:
        with torch.no_grad():
            self.outputs.append(trainer.model(self.x).clone())

    def on_epoch_start(self, trainer) -> None:
        self._record(trainer)

    def on_step_end(self, trainer, step) -> None:
        self._record(trainer)


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class ParamProbe(Probe):
    def _record(self, trainer) -> None:
        self.outputs.append(_params(trainer.model))


# ----------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("cob", COBS)
def test_teleports_at_the_scheduled_steps_and_keep_the_function(cob):
    """Epoch 0 and after steps 4, 8, 12, 16 of 18 (never after the last): the outputs right before and after each
    teleport agree to float64 round-off, the weights move, and the records say where it happened."""
    train_ds, _ = _data()
    x0, y0 = train_ds.x[:32], train_ds.y[:32]
    before, after = Probe(x0), Probe(x0)
    pb, pa = ParamProbe(x0), ParamProbe(x0)
    tp = Teleport(x0, [0], seed=3, cob=cob, every=4, y=y0, reset_optimizer=False, transform_optimizer=True,
                  cob_range=0.5, cob_options={"steps": 5, "n": 4})  # fmt: skip
    trainer = Trainer(_mlp(), train_ds, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
                      batch_size=16, callbacks=[RecordHistory(), before, pb, tp, after, pa], seed=0)  # fmt: skip
    h = trainer.fit(3)
    assert [r["step"] for r in h.teleports] == [0, 4, 8, 12, 16]
    assert [r["at"] for r in h.teleports] == ["epoch", "step", "step", "step", "step"]
    assert all(r["cob"] == cob for r in h.teleports)
    # events: 3 epoch starts + 18 steps; the teleport after global step s is event index s + (epochs started)
    events = list(itertools.chain(*[["start"] + ["step"] * 6 for _ in range(3)]))
    step_of, s = [], 0
    for e in events:
        s += e == "step"
        step_of.append((e, s))
    moved = 0
    for i, (kind, s) in enumerate(step_of):
        teleported = (kind == "start" and s == 0) or (kind == "step" and s in (4, 8, 12, 16))
        ya, yb = after.outputs[i], before.outputs[i]
        assert torch.allclose(ya, yb, rtol=1e-10, atol=1e-12), (i, kind, s)
        moved += bool((pa.outputs[i] - pb.outputs[i]).abs().max() > 1e-9)
        if not teleported:
            assert torch.equal(pa.outputs[i], pb.outputs[i])
    assert moved >= 1 and (moved == 5 or cob in ("balanced", "pathcond"))  # a principled CoB may be a fixed point
    for r in h.teleports:
        assert abs(r["loss_after"] - r["loss_before"]) <= 1e-12 * max(1.0, abs(r["loss_before"]))


def test_time_spent_teleporting_is_reported_as_a_share():
    h = train(_mlp(), _data(), epochs=2, batch_size=16, lr=0.05, lr_decay_epochs=(), teleport_at=0,
              teleport_every=5, teleport_cob="optimized", teleport_options={"steps": 3}, progress=False,
              callbacks=[StepTimer()])  # fmt: skip
    secs = h.timing["teleport_seconds"]
    assert len(secs) == len(h.teleports) == 3 and all(s > 0 for s in secs)  # epoch 0, after steps 5 and 10
    assert h.timing["teleport_seconds_total"] == pytest.approx(sum(secs))
    assert h.timing["teleport_time_share"] == pytest.approx(sum(secs) / sum(h.seconds))
    assert 0 < h.timing["teleport_time_share"] < 1
    steps = h.timing["step_seconds"]
    assert len(steps) == 12 and all(s > 0 for s in steps)
    # the step times leave the teleports out: steps + teleports fit in the epochs' wall time
    assert sum(steps) + sum(secs) <= sum(h.seconds)
    # timing does not enter the comparison of histories
    h2 = train(_mlp(), _data(), epochs=2, batch_size=16, lr=0.05, lr_decay_epochs=(), teleport_at=0,
               teleport_every=5, teleport_cob="optimized", teleport_options={"steps": 3}, progress=False)  # fmt: skip
    assert h2 == h and h2.timing != h.timing


def _identity_choice(monkeypatch):
    def choose(kind, model, x, y, loss_fn, **kw):
        return analyze(model, x).ones(), {}

    monkeypatch.setattr(teleport_mod, "choose_cob", choose)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_optimizer_state_is_treated_alike_in_every_arm(monkeypatch, optimizer):
    """With a teleport that moves nothing (tau = 1), "reset" every K steps equals the baseline that resets at the
    same steps (and differs from one that never resets); "transform" equals the baseline that never resets."""
    _identity_choice(monkeypatch)
    kw = dict(epochs=2, batch_size=16, optimizer=optimizer, lr=0.01, lr_decay_epochs=(), progress=False)
    tel = dict(teleport_every=4, teleport_cob="balanced")
    reset = train(_mlp(), _data(), optimizer_state_on_teleport="reset", **tel, **kw)
    control = train(_mlp(), _data(), reset_optimizer_every=4, **kw)
    plain = train(_mlp(), _data(), **kw)
    assert reset.iter_loss == control.iter_loss
    assert reset.iter_loss != plain.iter_loss
    transformed = train(_mlp(), _data(), optimizer_state_on_teleport="transform", **tel, **kw)
    assert transformed.iter_loss == plain.iter_loss
    assert len(reset.teleports) == len(transformed.teleports) == 2  # after steps 4 and 8 of 12


def test_optimized_cob_has_a_larger_gradient_norm_than_random():
    """Right after a teleport at initialisation (same seed, same range), the gradient-norm-optimized CoB gives a
    larger squared gradient norm on the teleport batch than the random one (measured independently here)."""
    train_ds, _ = _data()
    x, y = train_ds.x[:32], train_ds.y[:32]

    class GradNorm:
        def __init__(self):
            self.value = None

        def on_epoch_start(self, trainer):
            if trainer.epoch == 0:
                loss = F.cross_entropy(trainer.model(x), y)
                grads = torch.autograd.grad(loss, list(trainer.model.parameters()))
                self.value = float(sum(g.pow(2).sum() for g in grads))

    for seed in range(3):
        values = {}
        for cob in ("random", "optimized"):
            probe = GradNorm()
            tp = Teleport(x, [0], seed=seed, cob=cob, y=y, cob_range=0.9)
            Trainer(_mlp(seed), train_ds, optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.01),
                    batch_size=16, callbacks=[tp, probe], seed=seed, max_iters_per_epoch=1).fit(1)  # fmt: skip
            values[cob] = probe.value
        assert values["optimized"] > values["random"], (seed, values)


def test_resume_replays_non_random_teleports_exactly(tmp_path):
    """A tanh net (activation wrappers) teleported by balanced CoBs every 5 steps: a run interrupted after epoch 1
    resumes to the same history and weights as an uninterrupted one."""
    kw = dict(epochs=4, batch_size=16, optimizer="momentum", lr=0.05, lr_decay_epochs=(), teleport_at=0,
              teleport_every=5, teleport_cob="balanced", optimizer_state_on_teleport="transform", seed=4,
              progress=False)  # fmt: skip
    ref_model = _mlp(act=nn.Tanh)
    ref = train(ref_model, _data(), **kw)

    class Interrupt(Exception):
        pass

    def crash_at_2(model, epoch, history):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(_mlp(act=nn.Tanh), _data(), checkpoint_dir=tmp_path, callbacks=[crash_at_2], **kw)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1
    model = _mlp(act=nn.Tanh)
    resumed = train(model, _data(), checkpoint_dir=tmp_path, **kw)
    assert resumed == ref
    sa, sb = model.state_dict(), ref_model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any("tau" in k for k in sa)  # wrappers were rebuilt


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"teleport_cob": "sideways", "teleport_at": 0}, "teleport_cob"),
        ({"teleport_every": 0}, "teleport_every"),
        ({"reset_optimizer_every": 2.5}, "reset_optimizer_every"),
        ({"teleport_at": 0, "teleport_options": {"stepz": 3}}, "stepz"),
        ({"teleport_at": 0, "pseudo_teleport": True, "teleport_cob": "optimized"}, "pseudo_teleport"),
    ],
)
def test_bad_schedule_options_are_refused_up_front(kw, match):
    with pytest.raises(InvalidValueError, match=match):
        train(_mlp(), _data(), epochs=1, progress=False, **kw)


# ----------------------------------------------------------------------------------------------- pathcond


def _path_diag_reference(model: nn.Module) -> dict[str, torch.Tensor]:
    """``G_e`` by enumerating every path of a Linear-ReLU chain (inputs and biases start paths), float64."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    names = {id(p): n for n, p in model.named_parameters()}
    out = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    sizes = [linears[0].in_features] + [lin.out_features for lin in linears]
    for start in range(len(linears) + 1):  # 0: an input; s >= 1: the bias of layer s - 1
        for seq in itertools.product(*[range(n) for n in sizes[start:]]):
            edges = []
            if start >= 1:
                edges.append((names[id(linears[start - 1].bias)], (seq[0],)))
            for j, lin in enumerate(linears[start:]):
                edges.append((names[id(lin.weight)], (seq[j + 1], seq[j])))
            params = dict(model.named_parameters())
            sq = [float(params[n].detach()[idx]) ** 2 for n, idx in edges]
            for k, (n, idx) in enumerate(edges):
                out[n][idx] += math.prod(v for j, v in enumerate(sq) if j != k)
    return out


def test_path_kernel_diagonal_matches_path_enumeration():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    G = path_kernel_diagonal(model, torch.randn(2, 3, dtype=torch.float64))
    ref = _path_diag_reference(model)
    for n in ref:
        assert torch.allclose(G[n], ref[n], rtol=1e-12, atol=1e-15), n


def _criterion_reference(model: nn.Module, u: torch.Tensor, plan) -> torch.Tensor:
    """``log mean G' - mean log G'`` from the enumerated diagonal and ``G'_e = G_e (t_in / t_out)^2``."""
    ref = _path_diag_reference(model)
    t = torch.cat([torch.ones(1, dtype=torch.float64), torch.exp(u)])
    vals = []
    for n, g in ref.items():
        o, i = plan.param_scale_indices.get(n, (None, None))
        ratio = torch.ones_like(g) if o is None else (t[o] / (t[i] if i is not None else 1.0)).expand(g.shape)
        vals.append((g / ratio**2).reshape(-1))
    v = torch.cat(vals)
    v = v[v > 0]
    return torch.log(v.mean()) - torch.log(v).mean()


def test_pathcond_reaches_the_minimum_of_the_criterion_and_keeps_the_function():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    with torch.no_grad():
        model[2].weight[:, 0] *= 6.0  # a badly conditioned start
    x = torch.randn(16, 3, dtype=torch.float64)
    plan = analyze(model, x)
    res = pathcond_cob(model, x, tol=1e-12, max_sweeps=500)
    assert all(b <= a + 1e-13 for a, b in zip(res.trace, res.trace[1:]))  # monotone
    assert res.initial == pytest.approx(float(_criterion_reference(model, torch.zeros(plan.num_free), plan)), rel=1e-10)
    assert res.value < res.initial - 1e-3
    # a direct minimisation of the independent reference, from the identity
    u = torch.zeros(plan.num_free, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([u], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16,
                            line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        f = _criterion_reference(model, u, plan)
        f.backward()
        return f

    opt.step(closure)
    direct = float(_criterion_reference(model, u.detach(), plan))
    assert res.value == pytest.approx(direct, abs=1e-9)
    u_ours = torch.log(plan.flat(res.cob))
    assert float(_criterion_reference(model, u_ours, plan)) == pytest.approx(res.value, abs=1e-12)
    teleported = nnteleport.teleport(model, x, cob=res.cob)
    assert torch.allclose(teleported(x), model(x), rtol=1e-12, atol=1e-13)
    assert pathcond_criterion(teleported, x) == pytest.approx(res.value, abs=1e-10)


def test_pathcond_on_a_cnn_with_batchnorm_and_a_bounded_range():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    ).double()  # fmt: skip
    model.eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    res = pathcond_cob(model, x, cob_range=0.5)
    flat = analyze(model, x).flat(res.cob)
    assert bool(((flat >= 0.5 - 1e-12) & (flat <= 1.5 + 1e-12)).all())
    assert res.value < res.initial
    teleported = nnteleport.teleport(model, x, cob=res.cob)
    assert torch.allclose(teleported(x), model(x), rtol=1e-11, atol=1e-12)
    assert model.training is False and all(not m.training for m in model.modules())  # modes restored


def test_pathcond_refuses_a_network_without_a_path_lifting():
    model = _mlp(act=nn.Tanh)
    with pytest.raises(InvalidValueError, match="positively homogeneous"):
        pathcond_cob(model, torch.randn(2, 8, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------- experiment


def test_experiment_runs_on_a_tiny_config(tmp_path):
    from nnteleport.lab.experiments import EXPERIMENTS, teleport_schedule

    assert list(EXPERIMENTS).index("teleport-schedule") == list(EXPERIMENTS).index("lr-confound") + 1
    cfg = {"models": ["mlp"], "model_kwargs": {"mlp": {"hidden": [8]}}, "optimizers": ["momentum"], "seeds": 2,
           "epochs": 1, "max_iters_per_epoch": 6, "cobs": ["random", "optimized"], "every_steps": 3,
           "lr_multipliers": [2.0], "workers": 1, "resnet_if_cifar": False, "optimize_steps": 3,
           "optimizer_state": "reset"}  # fmt: skip
    res = teleport_schedule.run(cfg, tmp_path, progress=False)
    assert res["num_runs"] == 2 * (2 + 1 + 4)  # none, lr-x2, none-reset-every, 2 cobs x 2 schedules
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["experiment"] == "teleport-schedule" and saved["verdict"]
    (g,) = saved["groups"]
    assert set(g["comparisons"]) == {"random-once", "random-every", "optimized-once", "optimized-every"}
    assert g["comparisons"]["random-every"]["baseline"] == "none-reset-every"
    c = g["comparisons"]["optimized-every"]
    for k in ("vs_same_lr", "vs_tuned", "wall_vs_same_lr", "wall_vs_tuned", "time_share", "teleports_per_run"):
        assert k in c
    assert c["teleports_per_run"]["mean"] == 1  # after step 3 of 6 (not after the last)
    assert 0 < c["time_share"]["mean"] < 1
    assert c["max_abs_loss_change_at_teleport"] < 1e-5  # float32: the function is kept
    assert g["best_tuned"]["arm"] in ("none", "lr-x2")
    for name in ("comparisons.csv", "curves_steps.csv", "curves_wall.csv", "teleport_schedule_mlp.png"):
        assert (tmp_path / name).is_file(), name
    sec, heads = teleport_schedule.report_section(saved, tmp_path)
    assert sec.verdict and sec.numbers and all(f.path.is_file() for f in sec.figures) and heads
    assert set(saved["overall"]) == set(g["comparisons"])


def test_cli_configuration_and_the_resnet_when_cifar_is_present(monkeypatch):
    from nnteleport.errors import MissingFileError
    from nnteleport.lab import data as data_mod
    from nnteleport.lab.experiments import teleport_schedule
    from nnteleport.lab.experiments.config import load_config, validate_config

    cfg = load_config("teleport-schedule", None, ["model_kwargs.cnn.channels=[8]", "optimizers=[adam]"])
    validate_config("teleport-schedule", cfg)

    def absent(name, root=None):
        raise MissingFileError(f"{name} is not there")

    monkeypatch.setattr(data_mod, "check_available", absent)
    groups, notes = teleport_schedule.model_groups(cfg)
    assert groups == [("mlp", "digits"), ("cnn", "digits")] and "skipped" in notes[0]
    monkeypatch.setattr(data_mod, "check_available", lambda name, root=None: None)
    ids = [t["id"] for t in teleport_schedule.tasks(cfg)]
    assert "resnet18_adam_pathcond-every_seed2" in ids and "cnn_adam_none_seed0" in ids
    with pytest.raises(InvalidValueError, match="every_steps"):
        validate_config("teleport-schedule", {**cfg, "every_steps": 0})
