"""Tests of the callback API of nnteleport.lab.training: event order, user loss terms, the Trainer driven by hand,
and the checkpointing of a user callback's state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nnteleport.errors import InvalidValueError
from nnteleport.lab.data import load_dataset
from nnteleport.lab.training import (
    Callback,
    EpochTimer,
    Evaluation,
    Penalty,
    RecordHistory,
    StepDecay,
    Trainer,
    load_checkpoint,
    train,
)
from nnteleport.lab.training import teleport as teleport_mod
from nnteleport.lab.training.rng import seed_all


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", train_size=128, val_size=64)


def identity_teleport(model, x, *, cob_range, sampling, generator, inplace):
    return model


def state_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


class Interrupt(Exception):
    pass


def crash_at(k: int):
    def cb(model, epoch, history):
        if epoch == k:
            raise Interrupt

    return cb


class Recorder(Callback):
    """Writes down every event with what the trainer shows at that moment."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_train_start(self, trainer):
        self.events.append(("train_start", trainer.epoch, trainer.epochs))

    def on_epoch_start(self, trainer):
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.events.append(("epoch_start", trainer.epoch, len(trainer.history.teleports), lr))

    def loss_term(self, trainer, out, y):
        self.events.append(("loss_term", trainer.epoch, tuple(out.shape)))
        return None

    def on_step_end(self, trainer, step):
        assert step.loss.ndim == 0 and len(step.x) == len(step.y) == len(step.out)
        self.events.append(("step_end", trainer.epoch, len(step.x)))

    def on_epoch_end(self, trainer):
        h = trainer.history
        self.events.append(("epoch_end", trainer.epoch, len(h.train_loss), len(h.val_loss), len(h.penalty)))

    def on_train_end(self, trainer):
        self.events.append(("train_end", trainer.epoch))


def test_user_callback_sees_the_events_in_order(digits, monkeypatch):
    monkeypatch.setattr(teleport_mod, "_teleport_fn", lambda: identity_teleport)
    rec = Recorder()
    # 128 examples, batch 48: steps of 48, 48, 32; the learning rate halves at epoch 2; a teleport at epoch 1
    train(mlp(), digits, epochs=3, batch_size=48, lr=0.1, lr_decay_epochs=(2,), lr_decay_gamma=0.5, teleport_at=1,
          callbacks=[rec], progress=False)  # fmt: skip
    expected: list[tuple] = [("train_start", 0, 3)]
    for epoch, n_teleports, lr in ((0, 0, 0.1), (1, 1, 0.1), (2, 1, 0.05)):
        expected.append(("epoch_start", epoch, n_teleports, lr))
        for size in (48, 48, 32):
            expected += [("loss_term", epoch, (size, 10)), ("step_end", epoch, size)]
        expected.append(("epoch_end", epoch, epoch + 1, epoch + 1, epoch + 1))  # the epoch is recorded already
    expected.append(("train_end", 3))
    assert rec.events == expected


def test_on_train_end_runs_when_training_raises(digits):
    rec = Recorder()
    with pytest.raises(Interrupt):
        train(mlp(), digits, epochs=3, batch_size=64, callbacks=[rec, crash_at(1)], progress=False)
    assert [e[0] for e in rec.events].count("epoch_end") == 2 and rec.events[-1] == ("train_end", 1)


class L2(Callback):
    def __init__(self, c: float) -> None:
        self.c = c

    def loss_term(self, trainer, out, y):
        return 0.5 * self.c * sum(p.pow(2).sum() for p in trainer.model.parameters())


def test_user_loss_term_enters_the_gradient(digits):
    # 0.5 c ||W||^2 as a user loss term = torch's weight_decay=c (same gradient c W; different op order)
    a, b = mlp().double(), mlp().double()
    train(a, digits, epochs=2, batch_size=32, lr=0.1, callbacks=[L2(0.05)], progress=False)
    train(b, digits, epochs=2, batch_size=32, lr=0.1, weight_decay=0.05, progress=False)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    c = mlp().double()
    train(c, digits, epochs=2, batch_size=32, lr=0.1, progress=False)
    assert not state_equal(a, c)


def test_trainer_with_the_standard_callbacks_by_hand_equals_train(digits):
    kw = dict(epochs=3, batch_size=32, lr=0.1, lr_decay_epochs=(2,), lr_decay_gamma=0.5, seed=5, eval_every=2)
    ref_model = mlp()
    ref = train(ref_model, digits, optimizer="momentum", progress=False, **kw)

    model = mlp()
    seed_all(5)
    trainer = Trainer(
        model,
        digits.train,
        optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
        batch_size=32,
        callbacks=[RecordHistory(), Evaluation(digits.val, every=2), StepDecay((2,), 0.5), Penalty(None), EpochTimer()],
        seed=5,
    )
    history = trainer.fit(3)
    assert history == ref and state_equal(model, ref_model)
    assert history.lr == [0.1, 0.1, 0.05] and len(history.seconds) == 3


class StepCounter(Callback):
    """Stateful: counts steps and sums the data losses (float64); checkpointed through state_dict."""

    def __init__(self, state_key: str | None = None) -> None:
        if state_key is not None:
            self.state_key = state_key
        self.steps, self.loss_sum = 0, 0.0

    def on_step_end(self, trainer, step):
        self.steps += 1
        self.loss_sum += float(step.loss.detach())

    def state_dict(self):
        return {"steps": self.steps, "loss_sum": self.loss_sum}

    def load_state_dict(self, state):
        self.steps, self.loss_sum = state["steps"], state["loss_sum"]


def test_user_callback_state_is_checkpointed_and_restored(digits, tmp_path):
    kw = dict(epochs=4, batch_size=32, optimizer="momentum", lr=0.05, seed=2, progress=False)
    ref_cb = StepCounter()
    ref_model = mlp()
    ref = train(ref_model, digits, callbacks=[ref_cb, StepCounter("named")], **kw)
    assert ref_cb.steps == 16

    with pytest.raises(Interrupt):
        train(mlp(), digits, callbacks=[StepCounter(), StepCounter("named"), crash_at(2)], checkpoint_dir=tmp_path,
              **kw)  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert ckpt["callback0"]["steps"] == 8 and ckpt["named"]["steps"] == 8  # 2 epochs of 4 steps
    assert "callback1" not in ckpt  # the crashing function has no state

    cb, named, model = StepCounter(), StepCounter("named"), mlp()
    resumed = train(model, digits, callbacks=[cb, named], checkpoint_dir=tmp_path, **kw)
    assert resumed == ref and state_equal(model, ref_model)
    assert (cb.steps, cb.loss_sum) == (ref_cb.steps, ref_cb.loss_sum)  # restored at 8, then 8 more steps
    assert named.steps == 16


def test_trainer_resumes_from_its_own_state_dict(digits):
    def run(resume_at: int | None) -> tuple[nn.Module, StepCounter, object]:
        model, counter = mlp(), StepCounter()
        seed_all(0)

        def make() -> Trainer:
            return Trainer(model, digits.train, optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=1e-3),
                           batch_size=32, callbacks=[RecordHistory(), counter])  # fmt: skip

        if resume_at is None:
            return model, counter, make().fit(3)
        first = make()
        first.fit(resume_at)
        state = first.state_dict()
        counter.load_state_dict({"steps": 0, "loss_sum": 0.0})  # forget: the state must come back from `state`
        torch.manual_seed(123)  # and so must the generators
        return model, counter, make().fit(3, resume=state)

    m_ref, c_ref, h_ref = run(None)
    m, c, h = run(2)
    assert h == h_ref and state_equal(m, m_ref) and c.loss_sum == c_ref.loss_sum and c.steps == 12


def test_clashing_state_keys_are_refused(digits):
    with pytest.raises(InvalidValueError, match="state_key 'twice'"):
        train(mlp(), digits, epochs=1, callbacks=[StepCounter("twice"), StepCounter("twice")], progress=False)
    with pytest.raises(InvalidValueError, match="state_key 'model'"):
        train(mlp(), digits, epochs=1, callbacks=[StepCounter("model")], progress=False)
    with pytest.raises(InvalidValueError, match="neither a Callback nor a function"):
        train(mlp(), digits, epochs=1, callbacks=[42], progress=False)
