"""Tests of nnteleport.lab.training: optimizers, schedule, teleport/pseudo-teleport, determinism, exact resume."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nnteleport.errors import ConfigMismatchError, InvalidValueError, UnsafeFileError
from nnteleport.lab.data import load_dataset
from nnteleport.lab.training import History, evaluate, load_checkpoint, train
from nnteleport.lab.training import teleport as teleport_mod


def mlp(in_features: int = 64, hidden: int = 16, classes: int = 10, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=128, val_size=64)


def fake_teleport(model, x, *, cob_range, sampling, generator, inplace):
    """Reference teleport of ``Flatten-Linear-ReLU-Linear`` (positive CoB on the hidden layer, Eq. 3 of the
    paper): W1 <- diag(t) W1, b1 <- t b1, W2 <- W2 diag(1/t), t ~ U[1 - s, 1 + s]. Function-preserving."""
    assert inplace and x.ndim >= 2
    lin1, lin2 = model[1], model[3]
    t = 1 + cob_range * (2 * torch.rand(lin1.out_features, generator=generator, dtype=torch.float64) - 1)
    t = t.to(lin1.weight.dtype)
    with torch.no_grad():
        lin1.weight.mul_(t[:, None])
        lin1.bias.mul_(t)
        lin2.weight.div_(t[None, :])
    return model


@pytest.fixture
def fake_engine(monkeypatch):
    monkeypatch.setattr(teleport_mod, "_teleport_fn", lambda: fake_teleport)


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- basics


def test_history_shapes_and_json_roundtrip(digits):
    h = train(mlp(), digits, epochs=3, batch_size=32, lr=0.05, progress=False, eval_every=2)
    assert h.epoch == [0, 1, 2]
    assert len(h.train_loss) == len(h.val_acc) == len(h.lr) == 3
    assert h.iters_per_epoch == [4, 4, 4] and len(h.iter_loss) == 12
    assert math.isnan(h.val_loss[0]) and not math.isnan(h.val_loss[1]) and not math.isnan(h.val_loss[2])
    assert "val_loss" in h.initial
    # epoch mean = batch-size-weighted mean of the iteration losses (128 = 4 x 32)
    assert h.train_loss[0] == pytest.approx(sum(h.iter_loss[:4]) / 4, rel=1e-12)
    import json

    h2 = History.from_dict(json.loads(json.dumps(h.to_dict())))
    assert h2 == h


def test_one_sgd_step_matches_float64_reference(digits):
    # full batch, one iteration, L2 weight decay: W1 = W0 - lr (dL/dW0 + wd W0)
    model = mlp().double()
    ref = copy.deepcopy(model)
    x = digits.train.x.double()
    y = digits.train.y
    lr, wd = 0.1, 0.01
    train(model, (digits.train, None), epochs=1, batch_size=128, lr=lr, weight_decay=wd, progress=False)
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    for p, p0, g in zip(model.parameters(), ref.parameters(), grads):
        expected = p0.detach() - lr * (g + wd * p0.detach())
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-14)  # float64 round-off


def test_lr_decay_schedule(digits):
    h = train(mlp(), digits, epochs=5, batch_size=64, lr=0.1, lr_decay_epochs=(2, 4), lr_decay_gamma=0.5,
              progress=False)  # fmt: skip
    assert h.lr == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025], rel=1e-15)


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_builtin_optimizers_reduce_loss(digits, opt):
    lr = 0.01 if opt == "adam" else 0.1
    h = train(mlp(), digits, epochs=4, batch_size=16, optimizer=opt, lr=lr, progress=False)
    assert h.train_loss[-1] < h.train_loss[0]


def test_bad_options_raise_with_allowed_values(digits):
    with pytest.raises(ValueError, match="'sgd', 'momentum', 'adam'"):
        train(mlp(), digits, epochs=1, optimizer="rmsprop", progress=False)
    with pytest.raises(ValueError, match="'reset', 'keep'"):
        train(mlp(), digits, epochs=1, optimizer_state_on_teleport="forget", progress=False)
    with pytest.raises(ValueError, match="'kaiming', 'xavier', 'normal', 'default'"):
        train(mlp(), digits, epochs=1, init="he", progress=False)
    with pytest.raises(ValueError, match="teleport_at"):
        train(mlp(), digits, epochs=2, teleport_at=5, progress=False)
    with pytest.raises(ValueError, match="pseudo_teleport"):
        train(mlp(), digits, epochs=2, pseudo_teleport=True, progress=False)


def test_callable_optimizer_and_explicit_l2_equal_builtin(digits):
    wd = 0.05
    a, b = mlp().double(), mlp().double()
    train(a, digits, epochs=2, batch_size=32, lr=0.1, weight_decay=wd, progress=False)
    train(b, digits, epochs=2, batch_size=32, weight_decay=wd, progress=False,
          optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))  # fmt: skip
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)  # same maths, different op order
    with pytest.raises(ValueError, match="lacks 'zero_grad'"):
        train(mlp(), digits, epochs=1, optimizer=lambda m: object(), progress=False)


def test_penalty_enters_loss_and_is_recorded(digits):
    c = 0.02
    a, b = mlp().double(), mlp().double()

    def penalty(m):
        return c * sum(p.pow(2).sum() for p in m.parameters())

    ha = train(a, digits, epochs=2, batch_size=32, lr=0.1, penalty=penalty, progress=False)
    train(b, digits, epochs=2, batch_size=32, lr=0.1, weight_decay=2 * c, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert all(v > 0 for v in ha.penalty)


def test_callbacks_see_model_epoch_history(digits):
    calls = []

    def cb(model, epoch, history):
        calls.append((epoch, len(history.train_loss)))
        norm2 = sum(p.detach().norm() ** 2 for p in model.parameters())
        history.extra.setdefault("norm", []).append(float(norm2))

    h = train(mlp(), digits, epochs=3, batch_size=64, callbacks=[cb], progress=False)
    assert calls == [(0, 1), (1, 2), (2, 3)]
    assert len(h.extra["norm"]) == 3


def test_init_is_seeded(digits):
    a, b = mlp(seed=1), mlp(seed=2)
    train(a, digits, epochs=0, init="kaiming", seed=7, progress=False)
    train(b, digits, epochs=0, init="kaiming", seed=7, progress=False)
    assert state_equal(a, b)


def test_dtype_and_evaluate(digits):
    model = mlp()
    h = train(model, digits, epochs=1, batch_size=64, dtype=torch.float64, progress=False)
    assert next(model.parameters()).dtype == torch.float64
    vl, va = evaluate(model, digits.val)
    assert vl == pytest.approx(h.val_loss[-1], rel=1e-12) and va == h.val_acc[-1]
    # independent reference
    with torch.no_grad():
        out = model(digits.val.x.double())
    assert vl == pytest.approx(float(F.cross_entropy(out, digits.val.y)), rel=1e-12)


# ----------------------------------------------------------------------------- determinism and resume


def test_two_runs_identical(digits, fake_engine):
    kw = dict(epochs=3, batch_size=16, optimizer="momentum", lr=0.05, weight_decay=1e-3, teleport_at=1,
              seed=3, progress=False)  # fmt: skip
    a, b = mlp(), mlp()
    ha, hb = train(a, digits, **kw), train(b, digits, **kw)
    assert ha == hb and state_equal(a, b)
    hc = train(mlp(), digits, **{**kw, "seed": 4})
    assert hc != ha


class CountingPenalty:
    """A stateful penalty (its state must survive a resume)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, model):
        self.calls += 1
        return 1e-4 * self.calls * sum(p.pow(2).sum() for p in model.parameters())

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, d):
        self.calls = d["calls"]


def test_interrupted_run_resumes_bit_identical(digits, fake_engine, tmp_path):
    kw = dict(epochs=4, batch_size=16, optimizer="momentum", lr=0.05, weight_decay=1e-3, teleport_at=[0, 2],
              seed=11, progress=False, max_iters_per_epoch=5)  # fmt: skip
    ref_model = mlp()
    ref = train(ref_model, digits, penalty=CountingPenalty(), **kw)

    class Interrupt(Exception):
        pass

    def crash_at_2(model, epoch, history):
        if epoch == 2:
            raise Interrupt  # dies during epoch 2, after the epoch-1 checkpoint

    with pytest.raises(Interrupt):
        train(mlp(), digits, penalty=CountingPenalty(), checkpoint_dir=tmp_path, callbacks=[crash_at_2], **kw)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    model = mlp()  # a fresh process rebuilds the model, with the same seed
    pen = CountingPenalty()
    resumed = train(model, digits, penalty=pen, checkpoint_dir=tmp_path, **kw)
    assert resumed == ref
    assert state_equal(model, ref_model)
    assert pen.calls == 4 * 5
    # a finished run returns its history without training
    again = train(mlp(), digits, penalty=CountingPenalty(), checkpoint_dir=tmp_path, **kw)
    assert again == ref


def test_resume_with_augmentation_and_more_epochs(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "data" / "cifar-10-batches-py"  # tiny CIFAR-10 in its real pickle format
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), b"labels": rng.integers(0, 10, 4).tolist()}
        (folder / f).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", tmp_path / "data")

    def net():
        return mlp(3 * 32 * 32, 8, 10, seed=0)

    kw = dict(batch_size=8, optimizer="adam", lr=1e-3, seed=2, progress=False)
    full_model = net()
    full = train(full_model, data, epochs=3, **kw)
    part = train(net(), data, epochs=1, checkpoint_dir=tmp_path / "ck", **kw)
    assert part.train_loss == full.train_loss[:1]
    model = net()
    cont = train(model, data, epochs=3, checkpoint_dir=tmp_path / "ck", **kw)
    assert cont == full and state_equal(model, full_model)


def test_checkpoint_of_other_settings_is_refused(digits, tmp_path):
    train(mlp(), digits, epochs=1, lr=0.1, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0\.1 vs now 0\.2"):
        train(mlp(), digits, epochs=2, lr=0.2, checkpoint_dir=tmp_path, progress=False)


def test_tensorboard_event_files_survive_resume(digits, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    class Interrupt(Exception):
        pass

    def crash(model, epoch, history):
        if epoch == 2:
            raise Interrupt

    kw = dict(epochs=4, batch_size=32, progress=False, tensorboard_dir=tmp_path / "tb", checkpoint_dir=tmp_path)
    with pytest.raises(Interrupt):
        train(mlp(), digits, callbacks=[crash], **kw)
    h = train(mlp(), digits, **kw)
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    events = acc.Scalars("loss/train")
    # one value per epoch (the epoch-2 values of the interrupted run were purged), at iteration steps
    assert [e.step for e in events] == [3, 7, 11, 15]
    assert [e.value for e in events] == pytest.approx(h.train_loss, rel=1e-6)  # stored as float32
    assert len(acc.Scalars("loss/train_iter")) == len(h.iter_loss) == 16


# ----------------------------------------------------------------------------- teleportation in training


def test_teleport_at_init_preserves_function_and_is_recorded(digits, fake_engine):
    model = mlp().double()
    base = copy.deepcopy(model)
    h = train(model, digits, epochs=1, lr=0.0, teleport_at=0, cob_range=0.9, progress=False)
    vl0, _ = evaluate(base, digits.val)
    assert h.initial["val_loss"] == pytest.approx(vl0, rel=1e-13)  # float64: function preserved
    (rec,) = h.teleports
    assert rec["epoch"] == 0 and rec["kind"] == "teleport" and rec["cob_range"] == 0.9
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    flat0 = torch.cat([p.detach().flatten() for p in base.parameters()])
    assert rec["distance"] == pytest.approx(float((flat - flat0).norm()), rel=1e-12)
    assert rec["weight_norm"] == pytest.approx(float(flat0.norm()), rel=1e-12)
    assert rec["distance"] > 0.1 * rec["weight_norm"]  # sigma = 0.9 moves far


def test_pseudo_teleport_same_radius_random_direction(digits, fake_engine):
    # lr = 0: the weights after training are the weights right after the (pseudo-)teleport
    base = mlp().double()
    real, pseudo = copy.deepcopy(base), copy.deepcopy(base)
    kw = dict(epochs=1, lr=0.0, teleport_at=0, cob_range=0.9, seed=5, progress=False)
    hr = train(real, digits, **kw)
    hp = train(pseudo, digits, pseudo_teleport=True, **kw)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    r_real = float((flat(real) - flat(base)).norm())
    r_pseudo = float((flat(pseudo) - flat(base)).norm())
    assert hp.teleports[0]["kind"] == "pseudo"
    assert r_pseudo == pytest.approx(r_real, rel=1e-12)  # same sphere radius |W - tau W|
    assert hp.teleports[0]["distance"] == pytest.approx(r_real, rel=1e-12)
    # but not the same point and not the same function
    cos = float(torch.dot(flat(pseudo) - flat(base), flat(real) - flat(base))) / r_real**2
    assert abs(cos) < 0.5
    assert abs(hp.initial["val_loss"] - hr.initial["val_loss"]) > 1e-3


def test_optimizer_state_policy_on_teleport(digits, fake_engine):
    # identity teleport (cob_range 0): "keep" changes nothing; "reset" zeroes the momentum buffers, which
    # changes a momentum run but not a plain SGD run (no state)
    kw = dict(epochs=3, batch_size=32, lr=0.05, seed=1, progress=False)
    runs = {}
    for opt in ("momentum", "sgd"):
        for policy in (None, "keep", "reset"):
            m = mlp().double()
            extra = {} if policy is None else dict(teleport_at=1, cob_range=0.0, optimizer_state_on_teleport=policy)
            train(m, digits, optimizer=opt, **kw, **extra)
            runs[opt, policy] = m
    assert state_equal(runs["momentum", "keep"], runs["momentum", None])
    assert not state_equal(runs["momentum", "reset"], runs["momentum", None])
    assert state_equal(runs["sgd", "reset"], runs["sgd", None])


def test_real_engine_teleport_at_init_preserves_function(digits):
    model = mlp().double()
    base = copy.deepcopy(model)
    h = train(model, digits, epochs=1, lr=0.0, teleport_at=0, cob_range=0.9, sampling="inter", progress=False)
    vl0, _ = evaluate(base, digits.val)
    assert h.initial["val_loss"] == pytest.approx(vl0, rel=1e-12)
    assert h.teleports[0]["distance"] > 0
    with torch.no_grad():
        x = digits.val.x.double()
        assert float((model(x) - base(x)).abs().max()) < 1e-10


def test_real_engine_resume_after_teleport_with_activation_wrappers(digits, tmp_path):
    # tanh is not positively homogeneous: the engine wraps the activations (tau * tanh(x / tau)); a resumed
    # run must rebuild that structure before loading the checkpoint
    from nnteleport.lab.models import build_model

    def net():
        torch.manual_seed(0)
        return build_model("mlp", in_shape=(1, 8, 8), num_classes=10, hidden=(16, 16), activation="tanh")

    kw = dict(epochs=3, batch_size=32, optimizer="momentum", lr=0.05, teleport_at=1, cob_range=0.5, seed=2,
              progress=False)  # fmt: skip
    ref_model = net()
    ref = train(ref_model, digits, **kw)

    class Interrupt(Exception):
        pass

    def crash(model, epoch, history):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(net(), digits, checkpoint_dir=tmp_path, callbacks=[crash], **kw)
    model = net()
    resumed = train(model, digits, checkpoint_dir=tmp_path, **kw)
    assert resumed == ref and state_equal(model, ref_model)
    assert any("tau" in k for k in model.state_dict())  # the wrappers are there


def test_real_engine_pseudo_teleport_radius(digits):
    base = mlp().double()
    real, pseudo = copy.deepcopy(base), copy.deepcopy(base)
    kw = dict(epochs=1, lr=0.0, teleport_at=0, cob_range=0.9, seed=5, progress=False)
    train(real, digits, **kw)
    hp = train(pseudo, digits, pseudo_teleport=True, **kw)
    flat = lambda m: torch.cat([p.detach().flatten() for p in m.parameters()])  # noqa: E731
    r_real = float((flat(real) - flat(base)).norm())
    assert float((flat(pseudo) - flat(base)).norm()) == pytest.approx(r_real, rel=1e-12)
    assert hp.teleports[0]["distance"] == pytest.approx(r_real, rel=1e-12)


def test_evaluate_never_augments(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for f in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8), b"labels": rng.integers(0, 10, 3).tolist()}
        (folder / f).write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", tmp_path)
    assert data.train.augment
    model = mlp(3 * 32 * 32, 4, 10)
    torch.manual_seed(0)
    a = evaluate(model, data.train)
    torch.manual_seed(1)
    b = evaluate(model, data.train)
    x, y = data.train.get_batch(range(len(data.train)), augment=False)
    with torch.no_grad():
        ref = float(F.cross_entropy(model(x), y))
    assert a == b and a[0] == pytest.approx(ref, rel=1e-6)  # float32 mean over 15 examples


def test_checkpoint_distance_penalty_and_callback_resume(digits, tmp_path):
    # the checkpoint-distance regulariser as penalty + a callback that stores a checkpoint every epoch: the
    # penalty's checkpoints are part of the training checkpoint, so an interrupted run resumes exactly
    from nnteleport.distance import CheckpointDistance

    def setup():
        m = mlp()
        dist = CheckpointDistance(m, sigma=1.0, strength=0.05)

        def store(model, epoch, history):
            dist.add_checkpoint()
            dist.step()

        return m, dist, store

    kw = dict(epochs=3, batch_size=32, lr=0.05, seed=4, progress=False)
    m_ref, d_ref, cb_ref = setup()
    ref = train(m_ref, digits, penalty=d_ref, callbacks=[cb_ref], **kw)
    assert len(d_ref) == 3 and ref.penalty[0] == 0.0 and all(v > 0 for v in ref.penalty[1:])  # no checkpoint yet at 0

    class Interrupt(Exception):
        pass

    def crash(model, epoch, history):
        if epoch == 2:
            raise Interrupt

    m1, d1, cb1 = setup()
    with pytest.raises(Interrupt):
        train(m1, digits, penalty=d1, callbacks=[cb1, crash], checkpoint_dir=tmp_path, **kw)
    m2, d2, cb2 = setup()
    resumed = train(m2, digits, penalty=d2, callbacks=[cb2], checkpoint_dir=tmp_path, **kw)
    assert resumed == ref and state_equal(m2, m_ref) and len(d2) == 3


def test_gspace_optimizer_as_callable(digits):
    # an optimizer-like object wrapping a torch optimizer (G-space SGD with momentum) through the factory API
    from nnteleport.gspace import GSpaceOptimizer

    def factory(model):
        return GSpaceOptimizer(model, torch.optim.SGD, lr=0.02, momentum=0.9)

    kw = dict(epochs=3, batch_size=32, optimizer=factory, seed=6, progress=False, lr_decay_epochs=(2,))
    a, b = mlp().double(), mlp().double()
    ha, hb = train(a, digits, **kw), train(b, digits, **kw)
    assert not state_equal(a, mlp().double())  # it trained
    assert ha == hb and state_equal(a, b)  # deterministic
    assert ha.lr == pytest.approx([0.02, 0.02, 0.002], rel=1e-15)  # the schedule drives the inner optimizer


def test_gspace_optimizer_resumes_exactly(digits, tmp_path):
    from nnteleport.gspace import GSpaceOptimizer

    def factory(model):
        return GSpaceOptimizer(model, torch.optim.SGD, lr=0.02, momentum=0.9)

    kw = dict(epochs=3, batch_size=32, optimizer=factory, seed=6, progress=False)
    m_ref = mlp().double()
    ref = train(m_ref, digits, **kw)

    class Interrupt(Exception):
        pass

    def crash(model, epoch, history):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(mlp().double(), digits, callbacks=[crash], checkpoint_dir=tmp_path, **kw)
    m2 = mlp().double()
    resumed = train(m2, digits, checkpoint_dir=tmp_path, **kw)
    assert resumed == ref and state_equal(m2, m_ref)


# --------------------------------------------------------------------------------------------------
# checkpoints record what their result depends on, and run no code


def test_checkpoint_with_more_epochs_than_asked_is_refused(digits, tmp_path):
    kw = dict(batch_size=32, progress=False, checkpoint_dir=tmp_path, max_iters_per_epoch=2)
    assert len(train(mlp(), digits, epochs=5, **kw).epoch) == 5
    with pytest.raises(ConfigMismatchError, match=r"epochs: the checkpoint has 5 trained epochs, more than the 2"):
        train(mlp(), digits, epochs=2, **kw)


def test_extending_a_run_whose_last_epoch_was_force_evaluated_is_refused(digits, tmp_path):
    kw = dict(batch_size=32, progress=False, checkpoint_dir=tmp_path, max_iters_per_epoch=2, eval_every=2)
    train(mlp(), digits, epochs=3, **kw)  # epoch 2 evaluated only because it was the last
    with pytest.raises(ConfigMismatchError, match=r"evaluated at its last epoch"):
        train(mlp(), digits, epochs=4, **kw)


def test_checkpoint_of_another_architecture_is_refused_before_loading(digits, tmp_path):
    kw = dict(epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path, max_iters_per_epoch=2)
    train(mlp(hidden=16), digits, **kw)
    with pytest.raises(ConfigMismatchError, match=r"architecture: 1\.weight: checkpoint \(16, 64\) float32 vs now "
                       r"\(32, 64\) float32"):  # fmt: skip
        train(mlp(hidden=32), digits, epochs=2, **{k: v for k, v in kw.items() if k != "epochs"})


def test_checkpoint_of_other_initial_weights_or_data_is_refused(digits, tmp_path):
    kw = dict(epochs=1, batch_size=32, progress=False, checkpoint_dir=tmp_path, max_iters_per_epoch=2)
    train(mlp(seed=0), digits, **kw)
    with pytest.raises(ConfigMismatchError, match="initial weights differ"):
        train(mlp(seed=1), digits, **kw)
    other = load_dataset("digits", train_size=128, val_size=64, seed=3)
    with pytest.raises(ConfigMismatchError, match="first_examples_sha256"):
        train(mlp(seed=0), other, **kw)
    assert len(train(mlp(seed=0), digits, **kw).epoch) == 1  # the same settings resume (here: are finished)


class _Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_planted_checkpoint_is_refused_without_running(digits, tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fingerprint": {}, "model": _Planted(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(UnsafeFileError, match=r"checkpoint .*checkpoint\.pt asks for Python objects .*not loaded"):
        train(mlp(), digits, epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert not marker.exists()


def test_real_checkpoint_loads_with_weights_only(digits, tmp_path):
    train(mlp(), digits, epochs=1, optimizer="adam", progress=False, checkpoint_dir=tmp_path, max_iters_per_epoch=2)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")  # numpy RNG state included
    assert ckpt["rng"]["numpy"][0] == "MT19937" and ckpt["fingerprint"]["epochs"] == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(lr=float("nan")), "lr must be a finite number >= 0, got nan"),
        (dict(lr=-0.1), "lr must be a finite number >= 0"),
        (dict(weight_decay=-1e-3), "weight_decay must be a finite number >= 0"),
        (dict(momentum=1.0), r"momentum must be a finite number in \[0, 1\)"),
        (dict(teleport_at=0, cob_range=1.5), r"cob_range must be in \[0, 1\)"),
    ],
)
def test_bad_numbers_are_refused_up_front(digits, kw, match):
    with pytest.raises(InvalidValueError, match=match):
        train(mlp(), digits, epochs=1, progress=False, **kw)
